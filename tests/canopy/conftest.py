"""A tiny context-mixing CHMv2 checkpoint (4-block width-64 backbone, small head) and synthetic 0.6 m scenes."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from geodino.models import save_canopy_weights, save_weights
from geodino.models.testing import context_mixing_canopy_model
from tests.rasters import texture, write_raster

TINY = {"depth": 4, "embed_dim": 64, "num_heads": 2}
TINY_HEAD = {"embed_dim": 64, "layers": (0, 1, 2, 3), "post_process_channels": (16, 32, 48, 64),
             "fusion_hidden_size": 32, "head_hidden_size": 16, "n_bins": 64}
GSD = 0.6
UTM = Affine(GSD, 0, 500000.0, 0, -GSD, 4500000.0)  # EPSG:32633 on its central meridian: 0.6 m on the ground


@pytest.fixture(scope="session")
def canopy_model():
    return context_mixing_canopy_model(arch=TINY, head_arch=TINY_HEAD)


@pytest.fixture(scope="session")
def canopy_weights(canopy_model, tmp_path_factory):
    return save_canopy_weights(canopy_model, tmp_path_factory.mktemp("chm") / "tiny_chmv2.safetensors")


@pytest.fixture(scope="session")
def backbone_only(canopy_model, tmp_path_factory):
    return save_weights(canopy_model.backbone, tmp_path_factory.mktemp("bb") / "backbone.safetensors")


@pytest.fixture
def opts(canopy_weights):
    """A tiny CPU job in fp32: 64-px cores, 32-px halos (128-px windows)."""
    return {"weights": str(canopy_weights), "arch": dict(TINY), "head_arch": dict(TINY_HEAD), "device": "cpu",
            "precision": "fp32", "threads": 2, "tile": 64, "halo": 32, "batch_size": 3}


def scene_raster(path, shape=(200, 232), seed=3, transform=UTM, nodata=None, crs="EPSG:32633", hole=None):
    """An 8-bit RGB texture; ``hole`` (rows, cols slices) is set to ``nodata``."""
    data = texture(shape, seed=seed, dtype="uint8", scale=250)
    if hole is not None:
        data[:, hole[0], hole[1]] = nodata
    return write_raster(path, data, crs=crs, transform=transform, nodata=nodata)


def cli_args(opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, dict):
            for kk, vv in v.items():
                vv = list(vv) if isinstance(vv, tuple) else vv
                out += [flag, f"{kk}={str(vv).replace(' ', '')}"]
        else:
            out += [flag, str(v)]
    return out


def np_heights(path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)
