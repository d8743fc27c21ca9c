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


def make_cube(path: Path, size: int, dim: int = 384, *, seed: int = 0, tile: int = 512, changed: bool = False,
              radiometry_gain: float = 1e-4) -> Path:
    """A complete feature cube as `geodino embed` would write for a size x size px raster (tile cores of ``tile``
    px, 16-px patches), filled tile by tile with seeded synthetic float16 features of width ``dim``: a few smooth
    spatial fields mixed into the channels plus noise, a cloud of invalid patches and a skipped corner tile.
    ``changed`` replaces the features of a central square (a second date of the same scene)."""
    import math

    from affine import Affine
    from odc.geo.geobox import GeoBox
    from pyproj import CRS

    from geodino.cube.store import CubeLayout, CubeWriter, create_cube, finalize_cube, is_cube, read_attrs

    path = Path(path)
    if is_cube(path) and read_attrs(path).get("geodino_status") == "complete":
        return path
    if path.exists():
        import shutil

        shutil.rmtree(path)
    n = tile // 16
    ph = pw = math.ceil(size / 16)
    grid = GeoBox((ph, pw), Affine(160, 0, 300000, 0, -160, 5000000), CRS.from_epsg(32633).to_wkt())
    nt = math.ceil(ph / n)
    t = grid.affine
    ybounds = tuple((t.f + r * n * t.e, t.f + min(ph, (r + 1) * n) * t.e) for r in range(nt))
    xbounds = tuple((t.c + c * n * t.a, t.c + min(pw, (c + 1) * n) * t.a) for c in range(nt))
    prov = {"model": {"name": "synthetic", "arch_overrides": {}, "embed_dim": dim, "patch_size": 16,
                      "weights": {"source": "synthetic", "sha256": "synthetic"}, "random_weights": True},
            "normalization": {"name": "none", "mean": [0.0] * 3, "std": [1.0] * 3},
            "radiometry": {"kind": "reflectance", "gain": [radiometry_gain] * 3, "bias": [0.0] * 3, "params": {}},
            "tiling": {"tile": tile, "halo": 0, "patch": 16, "window": tile, "tiles": [nt, nt]},
            "source": {"path": f"synthetic {size}x{size} px"}}
    create_cube(path, CubeLayout(grid, n, ybounds, xbounds), dim, "float16", prov)
    rng0 = np.random.default_rng(seed)
    rank = 8
    mix = rng0.normal(size=(rank, dim)).astype(np.float32)
    freq = rng0.uniform(0.01, 0.2, (rank, 2))
    phase = rng0.uniform(0, 6.3, (rank, 2))
    w = CubeWriter(path)
    for ty in range(nt):
        for tx in range(nt):
            r0, c0 = ty * n, tx * n
            h, wd = min(n, ph - r0), min(n, pw - c0)
            if ty == 0 and tx == nt - 1 and nt > 1:  # an all-nodata corner tile
                w.skip_tile(ty, tx)
                continue
            yy, xx = np.mgrid[r0:r0 + h, c0:c0 + wd].astype(np.float32)
            fields = np.stack([np.sin(yy * freq[k, 0] + phase[k, 0]) * np.cos(xx * freq[k, 1] + phase[k, 1])
                               for k in range(rank)], axis=-1)
            rng = np.random.default_rng([seed, ty, tx, int(changed)])
            f = fields @ mix + 0.3 * rng.standard_normal((h, wd, dim), dtype=np.float32) + 0.5
            if changed:
                inside = ((yy > ph * 0.4) & (yy < ph * 0.6) & (xx > pw * 0.4) & (xx < pw * 0.6))
                f[inside] = rng.standard_normal((int(inside.sum()), dim), dtype=np.float32)
            cloud = (yy - ph * 0.3) ** 2 + (xx - pw * 0.7) ** 2 < (ph * 0.08) ** 2
            valid = ~cloud
            if not valid.any():
                w.skip_tile(ty, tx)
                continue
            f[cloud] = np.nan
            w.write_tile(ty, tx, slice(r0, r0 + h), slice(c0, c0 + wd), f, valid, np.nanmean(f, axis=(0, 1)))
    finalize_cube(path)
    return path
