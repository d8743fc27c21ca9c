"""Fixtures of the explorer's tests: a cube embedded from a real Sentinel-2 crop with the README's CPU demo config,
small synthetic cubes (two dates of one grid), sessions and a live server."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from tests.cubes import PROVENANCE, make_cube, structured_features

REPO = Path(__file__).resolve().parents[2]
S2 = "s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif"
SHAPE, DIM = (24, 40), 32


@pytest.fixture(scope="session")
def demo_cube(shared_data, tmp_path_factory) -> Path:
    """README's demo: the S2 crop through configs/embed/cpu-demo.yaml (2-block ViT-S, random weights)."""
    from geodino.cli import main

    out = tmp_path_factory.mktemp("explore-demo") / "demo.zarr"
    code = main(["embed", str(shared_data / S2), "-o", str(out), "--config", str(REPO / "configs/embed/cpu-demo.yaml"),
                 "--bands", "B04,B03,B02", "--radiometry", "s2-l2a", "--s2-offset", "0"])
    assert code == 0
    return out


def valid_mask(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).random(SHAPE) > 0.05
    v[:8, 32:40] = False  # a skipped tile
    return v


@pytest.fixture(scope="session")
def dated_cubes(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic cubes of one grid and model, dated by their names (2021-06-01, 2022-06-01); the second has a
    changed block."""
    d = tmp_path_factory.mktemp("explore-dates")
    f1 = structured_features(SHAPE, DIM, seed=3)
    f2 = f1.copy()
    f2[:, 10:16, 5:15] = structured_features(SHAPE, DIM, seed=9)[:, 10:16, 5:15]
    a = make_cube(d / "site_20210601.zarr", f1, valid_mask(0))
    b = make_cube(d / "site_20220601.zarr", f2, valid_mask(1))
    return a, b


@pytest.fixture(scope="session")
def other_model_cube(tmp_path_factory) -> Path:
    prov = copy.deepcopy(PROVENANCE)
    prov["model"]["weights"]["sha256"] = "1" * 64
    return make_cube(tmp_path_factory.mktemp("explore-other") / "other.zarr",
                     structured_features(SHAPE, DIM, seed=3), provenance=prov)


def patch_lonlat(ds, row: int, col: int) -> tuple[float, float]:
    """The lon/lat of a patch's centre (independent of the explorer: pyproj and the cube's transform)."""
    from pyproj import Transformer

    t = ds.rio.transform()
    x, y = t.c + (col + 0.5) * t.a, t.f + (row + 0.5) * t.e
    return Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True).transform(x, y)


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int, float, float]:
    """XYZ tile holding (lon, lat) and the point's pixel position in it (slippy-map formulas)."""
    n = 2 ** z
    fx = (lon + 180) / 360 * n
    fy = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return z, int(fx), int(fy), (fx - int(fx)) * 256, (fy - int(fy)) * 256
