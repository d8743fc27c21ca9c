from __future__ import annotations

import numpy as np
import pytest
import rasterio

import geodino
from tests.cubes import make_cube, structured_features

SHAPE = (40, 48)  # patches
DIM = 32


def planted_labels(feats: np.ndarray, valid: np.ndarray, seed: int = 3) -> np.ndarray:
    """Classes that are a deterministic function of the features: the sign of a fixed projection (about the
    median over valid patches)."""
    w = np.random.default_rng(seed).normal(size=feats.shape[0])
    score = np.einsum("d,dhw->hw", w, np.nan_to_num(feats))
    return (score > np.median(score[valid])).astype(np.uint8)


def write_label_raster(path, labels: np.ndarray, ds, nodata=255, scale: int = 1):
    from affine import Affine

    prof = dict(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
                crs=ds.rio.crs, transform=ds.rio.transform() * Affine.scale(1 / scale), nodata=nodata)
    with rasterio.open(path, "w", **prof) as r:
        r.write(labels[None].astype(np.uint8))
    return path


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A cube with a skipped tile, its float16-read features, valid mask, planted labels and their raster."""
    d = tmp_path_factory.mktemp("heads")
    feats = structured_features(SHAPE, DIM, seed=1)
    valid = np.ones(SHAPE, bool)
    valid[0:8, 40:48] = False
    path = make_cube(d / "c.zarr", feats, valid)
    ds = geodino.open_cube(path)
    f = ds.features.values.astype(np.float32)  # what the cube holds (float16)
    planted = planted_labels(f, valid)
    lab = write_label_raster(d / "planted.tif", np.where(valid, planted, 255), ds)
    return {"dir": d, "path": path, "ds": ds, "features": f, "valid": valid, "planted": planted, "labels": lab}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The heads' tensors are tiny: on a loaded 2-core CI machine, torch's thread pool costs more than it gives."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
