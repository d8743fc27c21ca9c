"""Training data for the heads from a zarr feature cube and a label raster (any CRS, warped onto the cube)."""

from __future__ import annotations

import numpy as np

from geodino.errors import ConfigError

__all__ = ["cube_training_data"]


def cube_training_data(cube, labels, *, window: int = 32, label_scale: int = 4, nodata_label: int = -100,
                       min_valid: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Cut a cube into ``window`` x ``window``-patch pieces and pair each with its labels.

    ``cube``: an xarray Dataset from :func:`geodino.open_cube` (or its path). ``labels``: a label raster path.
    Labels are warped (nearest) onto the cube's grid at ``label_scale`` label pixels per patch side.
    Returns ``grids`` [N, 1, D, window, window] float32 and ``masks`` [N, window*s, window*s] int64, with
    pixels outside the label raster or under invalid patches set to ``nodata_label`` (use it as the ignore index).
    Pieces with less than ``min_valid`` valid patches are dropped.
    """
    import rasterio
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    from geodino import open_cube

    ds = open_cube(cube) if not hasattr(cube, "features") else cube
    t = ds.rio.transform()
    crs = ds.rio.crs
    ph, pw = ds.sizes["y"], ds.sizes["x"]
    s = label_scale
    target = np.full((ph * s, pw * s), nodata_label, dtype=np.int64)
    with rasterio.open(labels) as src:
        if crs is None or src.crs is None:
            raise ConfigError("cube and label raster both need a CRS to be aligned")
        tmp = np.full(target.shape, nodata_label, dtype=np.int32)
        reproject(src.read(1).astype(np.int32), tmp, src_transform=src.transform, src_crs=src.crs,
                  src_nodata=src.nodata, dst_transform=t @ Affine.scale(1 / s), dst_crs=crs,
                  dst_nodata=nodata_label, resampling=Resampling.nearest)
        target[:] = tmp
    valid = ds.valid.values
    target[~np.repeat(np.repeat(valid, s, 0), s, 1)] = nodata_label
    feats = ds.features
    grids, masks = [], []
    for y0 in range(0, ph - window + 1, window):
        for x0 in range(0, pw - window + 1, window):
            v = valid[y0:y0 + window, x0:x0 + window]
            if v.mean() < min_valid:
                continue
            g = feats[:, y0:y0 + window, x0:x0 + window].values.astype(np.float32)
            grids.append(np.nan_to_num(g)[None])
            masks.append(target[y0 * s:(y0 + window) * s, x0 * s:(x0 + window) * s])
    if not grids:
        raise ConfigError(f"no {window}x{window}-patch piece of the cube has enough valid patches")
    return np.stack(grids), np.stack(masks)
