from __future__ import annotations

import numpy as np
import pytest

import geodino
from tests.cubes import make_cube, structured_features

SHAPE = (40, 48)  # patches
DIM = 32


def holes(shape=SHAPE, seed=0) -> np.ndarray:
    """Valid mask with one skipped tile (top-right 8x8 chunk), a nodata band and scattered invalid patches."""
    rng = np.random.default_rng(seed)
    v = rng.random(shape) > 0.05
    v[0:8, 40:48] = False
    v[30:33, :] = False
    return v


@pytest.fixture(scope="session")
def feats() -> np.ndarray:
    return structured_features(SHAPE, DIM, seed=1)


@pytest.fixture(scope="session")
def valid() -> np.ndarray:
    return holes()


@pytest.fixture(scope="session")
def cube_path(tmp_path_factory, feats, valid):
    return make_cube(tmp_path_factory.mktemp("cubes") / "a.zarr", feats, valid)


@pytest.fixture
def cube(cube_path):
    return geodino.open_cube(cube_path)


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)
