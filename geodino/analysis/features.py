"""Feature channels of cubes as lazy georeferenced maps (``feature_map``, ``feature_maps``)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from geodino.cube.reading import as_cubes, as_list, patch_map, single_or_list
from geodino.errors import SampleError

__all__ = ["feature_map", "feature_maps"]


def feature_map(cube, bands=(0, 1, 2)) -> xr.DataArray:
    """Chosen feature channels as a lazy ``(band, y, x)`` float32 map, NaN on invalid patches (one cube; for
    several, :func:`feature_maps`)."""
    cubes, single = as_cubes(cube)
    return single_or_list(_feature_maps(cubes, bands), single, "feature_map")


def feature_maps(cubes, bands=(0, 1, 2)) -> list[xr.DataArray]:
    """:func:`feature_map` of each cube: always a list, one map per cube given (even of one)."""
    return _feature_maps(as_cubes(as_list(cubes))[0], bands)


def _feature_maps(cubes: list, bands) -> list[xr.DataArray]:
    idx = np.atleast_1d(np.asarray(bands, dtype=np.int64))

    def channels(f, v):
        out = f[..., idx].astype(np.float32)
        out[~v] = np.nan
        return out

    out = []
    for ds in cubes:
        d = ds.sizes["feature"]
        if idx.size == 0 or idx.min() < -d or idx.max() >= d:
            raise SampleError(f"feature bands {idx.tolist()} are out of range for a cube of {d} features "
                              f"(0..{d - 1})")
        m = patch_map(ds, channels, bands=int(idx.size), dtype=np.float32, nodata=np.nan,
                      name="features", attrs={"long_name": f"features {idx.tolist()}"})
        out.append(m.assign_coords(feature=("band", idx)))
    return out
