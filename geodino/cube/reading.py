"""The reading layer: what every reader of feature cubes (analysis, heads, torchgeo, exports, the index, explore)
uses to take cubes in. A cube argument is a Dataset from :func:`geodino.open_cube` or a path/URL; several cubes are
checked comparable by the project's one rule (:mod:`geodino.cube.compat`); per-patch maps come back lazy, keep the
cube's georeference and declare their nodata; features are read as unit-normalised blocks; and valid-patch counts
bound samples."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import xarray as xr

from geodino.cube.compat import check_comparable  # the one rule of "comparable", for every reader
from geodino.cube.sampling import feature_blocks, unit_rows, valid_counts
from geodino.errors import CubeError, SampleError

__all__ = ["NORMALISED", "open_cube", "as_cube", "as_cubes", "as_list", "single_or_list", "check_comparable",
           "patch_map", "patch_boxes", "unit_rows", "unit_block", "n_valid", "check_k"]


def open_cube(url, *, storage_options: dict | None = None, chunks: dict | str | None = None,
              require_complete: bool = False) -> xr.Dataset:
    """Open a feature cube (a local path or a URL) as a lazy, dask-backed ``xarray.Dataset`` with its georeference
    (compact cubes decoded): :func:`geodino.open_cube` is this and the ``ds.geodino`` accessor."""
    from geodino.cube.store import open_cube as _open

    return _open(url, require_complete=require_complete, storage_options=storage_options, chunks=chunks)


def as_cube(obj) -> xr.Dataset:
    """One cube argument (a Dataset from :func:`geodino.open_cube`, or a path/URL) as a Dataset."""
    if isinstance(obj, xr.Dataset):
        if "features" not in obj or "valid" not in obj:
            raise CubeError("the Dataset is not a geodino cube (it needs `features` and `valid`): open one with "
                            "geodino.open_cube(path)")
        return obj
    if isinstance(obj, (str, os.PathLike)):
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
        cubes = [as_cube(c) for c in cube]
        if len(cubes) > 1:
            for other in cubes[1:]:
                check_comparable(cubes[0], other, relax=relax, what=what)
        return cubes, False
    return [as_cube(cube)], True


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


def unit_block(f: np.ndarray) -> np.ndarray:
    """Unit-normalised feature block ``[h, w, D]`` as float32 (NaN rows stay NaN)."""
    return unit_rows(f.astype(np.float32))


def patch_boxes(gbox, rows, cols):
    """Footprints of the patches ``(rows, cols)`` of a cube's grid (``ds.odc.geobox``) as an array of shapely
    polygons in its CRS: the corners are ``gbox.pix2wld`` of the patch's two opposite pixel corners."""
    import shapely

    rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    xa, ya = gbox.pix2wld(cols, rows)
    xb, yb = gbox.pix2wld(cols + 1, rows + 1)
    return shapely.box(np.minimum(xa, xb), np.minimum(ya, yb), np.maximum(xa, xb), np.maximum(ya, yb))
