"""Synthetic rasters for tests, written with rasterio (several CRSs, dtypes and nodata layouts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def texture(shape: tuple[int, int], bands: int = 3, seed: int = 0, dtype="uint16", scale: float = 3000.0) -> np.ndarray:
    """Smooth random texture with structure at several scales (so context matters to the model)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((bands, h, w))
    for b in range(bands):
        for k in range(4):
            fy, fx = rng.uniform(0.005, 0.08, 2)
            ph = rng.uniform(0, 2 * np.pi, 2)
            out[b] += np.sin(fy * yy + ph[0]) * np.cos(fx * xx + ph[1]) / (k + 1)
        out[b] += rng.normal(0, 0.15, (h, w))
    out = (out - out.min()) / (out.max() - out.min())
    if np.dtype(dtype).kind == "f":
        return out.astype(dtype)
    info = np.iinfo(dtype)
    lo = max(info.min, 1)
    return np.clip(lo + out * min(scale, info.max - lo), lo, info.max).astype(dtype)


def write_raster(path: Path, data: np.ndarray, *, crs="EPSG:32633", transform=None, nodata=None,
                 descriptions=None, tiled=True, compress="deflate", driver="GTiff", colorinterp=None,
                 mask: np.ndarray | None = None, tags: dict | None = None) -> Path:
    bands, h, w = data.shape
    transform = transform or Affine(10.0, 0, 500000.0, 0, -10.0, 4500000.0)
    profile = dict(driver=driver, width=w, height=h, count=bands, dtype=data.dtype.name, crs=crs,
                   transform=transform, nodata=nodata, compress=compress)
    if tiled and driver == "GTiff":
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
        if colorinterp:
            ds.colorinterp = colorinterp
        if mask is not None:
            ds.write_mask(mask.astype(np.uint8) * 255)
        if tags:
            ds.update_tags(**tags)
    return path
