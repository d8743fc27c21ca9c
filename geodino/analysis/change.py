"""Change between two cubes: ``1 - cosine`` of co-located patch features, lazily, NaN where either is invalid.

The cubes must be comparable (:mod:`geodino.cube.compat`: same model, weights, radiometry, numerics and tiling; a
compact cube may be compared with a full one, since cosines unit-normalise first) and, by default, on exactly the
same patch grid. ``align="reproject"`` resamples the second cube onto the first's grid (nearest patch)
when both share a CRS.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from geodino.cube.reading import NORMALISED, as_cubes, unit_block
from geodino.cube.compat import check_comparable, check_same_grid, grid_differences, normalize_relax
from geodino.cube.sampling import feature_blocks
from geodino.errors import ConfigError, CubeMismatchError

__all__ = ["change", "regrid_nearest"]


def _axis_index(dst_centres: np.ndarray, origin: float, step: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.floor((dst_centres - origin) / step).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    return np.clip(idx, 0, n - 1), ok


def regrid_nearest(src: xr.Dataset, dst: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """``src``'s features and valid mask on ``dst``'s patch grid (same CRS): each destination patch takes the
    source patch whose cell holds its centre; patches off the source grid are invalid.

    Hand-written rather than a general warp: with one CRS and north-up grids the mapping separates into one index
    per axis, so it is an exact nearest-neighbour resampling done as a lazy, chunk-preserving orthogonal take.
    """
    ts, td = src.rio.transform(), dst.rio.transform()
    if ts.b or ts.d or td.b or td.d:
        raise CubeMismatchError("align='reproject' needs north-up grids")
    ix, okx = _axis_index(td.c + (np.arange(dst.sizes["x"]) + 0.5) * td.a, ts.c, ts.a, src.sizes["x"])
    iy, oky = _axis_index(td.f + (np.arange(dst.sizes["y"]) + 0.5) * td.e, ts.f, ts.e, src.sizes["y"])
    f, v = feature_blocks(src)
    f2 = f[:, iy][:, :, ix]
    v2 = v[iy][:, ix] & (oky[:, None] & okx[None, :])
    coords = {"y": dst["y"].values, "x": dst["x"].values}
    return (xr.DataArray(f2, dims=("feature", "y", "x"), coords=coords),
            xr.DataArray(v2, dims=("y", "x"), coords=coords))


def _change_block(fa, va, fb, vb):
    ua, ub = unit_block(fa), unit_block(fb)
    out = (1.0 - np.sum(ua * ub, axis=-1)).astype(np.float32)
    out[~(va & vb & np.isfinite(out))] = np.nan
    return out


def change(before, after, *, align: str = "exact", relax=(), force: bool = False) -> xr.DataArray:
    """``1 - cos(before, after)`` per patch as a lazy ``(y, x)`` float32 map on ``before``'s grid (0: same
    features, up to 2: opposite), NaN where either cube is invalid.

    ``align="exact"`` refuses cubes on different grids; ``align="reproject"`` resamples ``after`` onto
    ``before``'s grid (same CRS only). ``relax`` names comparable fields that may differ (e.g. ``("halo",)``;
    compact and full cubes are always accepted); ``force=True`` compares cubes however they differ. What was
    relaxed or forced is recorded in the map's ``geodino_compat`` attribute.
    """
    (a,), _ = as_cubes(before)
    (b,), _ = as_cubes(after)
    if align not in ("exact", "reproject"):
        raise ConfigError(f"align={align!r}: choose 'exact' or 'reproject'")
    comparison = check_comparable(a, b, relax=(*NORMALISED, *normalize_relax(relax)), force=force,
                                  what="compare them")
    if a.sizes["feature"] != b.sizes["feature"]:
        raise CubeMismatchError(f"the cubes hold {a.sizes['feature']} and {b.sizes['feature']} features: they "
                                "cannot be compared")
    fa, va = feature_blocks(a)
    coords = {"y": a["y"], "x": a["x"]}
    xa = xr.DataArray(fa, dims=("feature", "y", "x"), coords=coords)
    ma = xr.DataArray(va, dims=("y", "x"), coords=coords)
    if align == "exact":
        check_same_grid(a, b)
        fb, vb = feature_blocks(b)
        xb = xr.DataArray(fb, dims=("feature", "y", "x"), coords=coords)
        mb = xr.DataArray(vb, dims=("y", "x"), coords=coords)
    else:
        if "crs" in grid_differences(a, b):
            check_same_grid(a, b)  # raises, naming both CRSs
        xb, mb = regrid_nearest(b, a)
        xb, mb = xb.assign_coords(coords), mb.assign_coords(coords)
    out = xr.apply_ufunc(_change_block, xa, ma, xb, mb, input_core_dims=[["feature"], [], ["feature"], []],
                         dask="parallelized", output_dtypes=[np.float32])
    if "spatial_ref" in a.coords:
        out = out.assign_coords(spatial_ref=a["spatial_ref"])
    out.name = "change"
    out.attrs.update({"long_name": "1 - cosine similarity between the two cubes", "units": "1", "align": align})
    if comparison:
        import json

        out.attrs["geodino_compat"] = json.dumps(comparison.to_dict())
    for key, ds in (("geodino_cube_id", a), ("geodino_other_cube_id", b)):
        if ds.attrs.get("geodino", {}).get("cube_id"):
            out.attrs[key] = ds.attrs["geodino"]["cube_id"]
    return out.rio.write_nodata(np.nan, encoded=False)
