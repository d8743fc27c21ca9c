"""Synthetic scenes for the benchmarks: large uint16 GeoTIFFs written block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_raster(path: Path, size: int, bands: int = 3, block: int = 512) -> Path:
    """A size x size uint16 tiled, deflate GeoTIFF (Sentinel-2-like values), never held in memory whole."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    if path.exists():
        return path
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint16", crs="EPSG:32633",
                   transform=Affine(10, 0, 300000, 0, -10, 5000000), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER")
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                yy, xx = np.mgrid[r:r + h, c:c + w]
                base = (np.sin(yy / 37.0) + np.cos(xx / 53.0) + np.sin((xx + yy) / 211.0)) * 900 + 3000
                rng = np.random.default_rng(r * size + c)
                data = np.stack([base + rng.normal(0, 150, (h, w)) + k * 200 for k in range(bands)])
                ds.write(np.clip(data, 1, 65535).astype("uint16"), window=Window(c, r, w, h))
    tmp.rename(path)
    return path
