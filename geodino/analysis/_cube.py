"""What every analysis function shares: cube arguments (a Dataset, a path, or several), lazy per-patch maps that
keep the cube's georeference and declare their nodata, and the cubes' valid-patch counts."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import xarray as xr

from geodino.cube.sampling import feature_blocks, unit_rows, valid_counts
from geodino.errors import CubeError, SampleError

__all__ = ["NORMALISED", "as_cubes", "as_list", "single_or_list", "patch_map", "unit_rows", "n_valid", "check_k",
           "feature_map", "feature_maps"]


def _open(obj) -> xr.Dataset:
    if isinstance(obj, xr.Dataset):
        if "features" not in obj or "valid" not in obj:
            raise CubeError("the Dataset is not a geodino cube (it needs `features` and `valid`): open one with "
                            "geodino.open_cube(path)")
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from geodino import open_cube

        return open_cube(obj)
    raise CubeError(f"expected a cube (an xarray Dataset from geodino.open_cube, or its path), got "
                    f"{type(obj).__name__}")


# What analysis that unit-normalises features first may relax: a compact cube's decoded features are unit vectors
# up to PCA truncation, so cosines, PCA and k-means of unit features mean the same on full and compact cubes.
NORMALISED = ("compact",)


def as_cubes(cube, *, relax=(), what: str = "analyse them together") -> tuple[list[xr.Dataset], bool]:
    """``cube`` as a list of Datasets and whether a single one was given. Several cubes must be comparable
    (:func:`geodino.cube.compat.check_comparable`, relaxing the fields named in ``relax``)."""
    if isinstance(cube, (list, tuple)):
        if not cube:
            raise CubeError("no cube given")
        cubes = [_open(c) for c in cube]
        if len(cubes) > 1:
            from geodino.cube.compat import check_comparable

            for other in cubes[1:]:
                check_comparable(cubes[0], other, relax=relax, what=what)
        return cubes, False
    return [_open(cube)], True


def single_or_list(items: list, single: bool, what: str = ""):
    """The one map of one cube, or (deprecated) the list of several cubes' maps. One function, one return type:
    ``what(cube)`` gives a DataArray and ``what_maps(cubes)`` a list (even of one); a list given to ``what`` still
    gets its list back, with a FutureWarning naming ``what_maps``."""
    if single:
        return items[0]
    if what:
        import warnings

        warnings.warn(f"{what}() of a list of cubes returns a list and will take one cube only: call "
                      f"{what}_maps(cubes) (always a list) or {what}(cube) (always one DataArray)", FutureWarning,
                      stacklevel=3)
    return items


def as_list(cube) -> list:
    """``cube`` (one cube or several) as a list: what the ``*_maps`` functions take."""
    return list(cube) if isinstance(cube, (list, tuple)) else [cube]


def n_valid(cubes: list[xr.Dataset]) -> tuple[int, list[np.ndarray]]:
    """Total valid patches and the per-chunk counts of each cube."""
    counts = [valid_counts(c) for c in cubes]
    return int(sum(int(c.sum()) for c in counts)), counts


def check_k(k: int, what: str, total_valid: int, sample_size: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise SampleError(f"{what} must be a positive integer, got {k!r}")
    if k > total_valid:
        raise SampleError(f"{what}={k} is larger than the number of valid patches ({total_valid}): choose "
                          f"{what} <= {total_valid}")
    if k > sample_size:
        raise SampleError(f"{what}={k} is larger than the sample ({sample_size} patches): raise the sample size "
                          f"(sample=, --sample) or lower {what}")


def patch_map(ds: xr.Dataset, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], *, bands: int | None,
              dtype, nodata, name: str, attrs: dict | None = None, band_dim: str = "band") -> xr.DataArray:
    """A lazy map computed chunk by chunk from the cube's features.

    ``fn(features [h, w, D] float32, valid [h, w] bool)`` returns ``[h, w, bands]`` (or ``[h, w]`` when
    ``bands`` is None) already holding ``nodata`` on invalid patches. The result keeps ``x``/``y`` and
    ``spatial_ref`` (so ``.rio.crs``/``.rio.transform()`` work) and declares its nodata (``.rio.nodata``).
    """
    f, v = feature_blocks(ds)
    feats = xr.DataArray(f, dims=("feature", "y", "x"), coords={"y": ds["y"], "x": ds["x"]})
    valid = xr.DataArray(v, dims=("y", "x"), coords={"y": ds["y"], "x": ds["x"]})
    kw = {}
    if bands is None:
        out_core, sizes = [[]], {}
    else:
        out_core, sizes = [[band_dim]], {band_dim: bands}
        kw["dask_gufunc_kwargs"] = {"output_sizes": sizes}
    out = xr.apply_ufunc(fn, feats, valid, input_core_dims=[["feature"], []], output_core_dims=out_core,
                         dask="parallelized", output_dtypes=[np.dtype(dtype)], **kw)
    if bands is not None:
        out = out.transpose(band_dim, "y", "x").assign_coords({band_dim: np.arange(1, bands + 1)})
    if "spatial_ref" in ds.coords:
        out = out.assign_coords(spatial_ref=ds["spatial_ref"])
    out.name = name
    out.attrs.update(attrs or {})
    prov = ds.attrs.get("geodino", {})
    if prov.get("cube_id"):
        out.attrs["geodino_cube_id"] = prov["cube_id"]
    return out.rio.write_nodata(nodata, encoded=False)


def _features_fn(index: np.ndarray):
    def fn(f, v):
        out = f[..., index].astype(np.float32)
        out[~v] = np.nan
        return out

    return fn


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
    out = []
    for ds in cubes:
        d = ds.sizes["feature"]
        if idx.size == 0 or idx.min() < -d or idx.max() >= d:
            raise SampleError(f"feature bands {idx.tolist()} are out of range for a cube of {d} features "
                              f"(0..{d - 1})")
        m = patch_map(ds, _features_fn(idx), bands=int(idx.size), dtype=np.float32, nodata=np.nan,
                      name="features", attrs={"long_name": f"features {idx.tolist()}"})
        out.append(m.assign_coords(feature=("band", idx)))
    return out


def unit_block(f: np.ndarray) -> np.ndarray:
    """Unit-normalised feature block ``[h, w, D]`` as float32 (NaN rows stay NaN)."""
    return unit_rows(f.astype(np.float32))
