"""The reading layer: what every reader of feature cubes (analysis, heads, torchgeo, exports, the index, explore)
uses to take cubes in. A cube argument is a Dataset from :func:`geodino.open_cube` or a path/URL; several cubes are
checked comparable by the project's one rule (:mod:`geodino.cube.compat`); per-patch maps come back lazy, keep the
cube's georeference and declare their nodata; features are read as unit-normalised blocks; and valid-patch counts
bound samples."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import xarray as xr

from geodino.cube.compat import check_comparable  # the one rule of "comparable", for every reader
from geodino.cube.sampling import feature_blocks, unit_rows, valid_counts
from geodino.errors import CubeError, SampleError

__all__ = ["NORMALISED", "open_cube", "as_cube", "as_cubes", "as_list", "single_or_list", "check_comparable",
           "patch_map", "patch_boxes", "unit_rows", "unit_block", "n_valid", "check_k", "is_count", "feature_arrays",
           "read_patches", "patch_grid", "check_fitted", "local_scheduler"]


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


def check_fitted(reference: dict | None, cubes, *, what: str, a_name: str) -> None:
    """A fit made on one cube (its ``reference`` fingerprint; None: not recorded) applied to ``cubes``: their
    features must be comparable, compact or full alike (:data:`NORMALISED`)."""
    if reference is not None:
        for ds in cubes:
            check_comparable(reference, ds, relax=NORMALISED, what=what, a_name=a_name)


def n_valid(cubes: list[xr.Dataset]) -> tuple[int, list[np.ndarray]]:
    """Total valid patches and the per-chunk counts of each cube."""
    counts = [valid_counts(c) for c in cubes]
    return int(sum(int(c.sum()) for c in counts)), counts


def is_count(v, minimum: int = 1) -> bool:
    """Whether ``v`` is a whole number (a Python or numpy integer, not a bool) of at least ``minimum``: the check
    every count a reader takes (k, sample sizes, scales, block sizes, nprobe...) goes through."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def check_k(k: int, what: str, total_valid: int, sample_size: int) -> None:
    if not is_count(k):
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
    feats, valid = feature_arrays(ds)
    out_core = [[]] if bands is None else [[band_dim]]
    kw = {} if bands is None else {"dask_gufunc_kwargs": {"output_sizes": {band_dim: bands}}}
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


def feature_arrays(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """A cube's ``features [feature, y, x]`` and ``valid [y, x]`` as aligned dask-backed DataArrays
    (:func:`geodino.cube.sampling.feature_blocks`) on its ``y``/``x`` (without ``spatial_ref``: a map made from
    them takes the cube's, as :func:`patch_map` does)."""
    f, v = feature_blocks(ds)
    coords = {"y": ds["y"], "x": ds["x"]}
    return (xr.DataArray(f, dims=("feature", "y", "x"), coords=coords),
            xr.DataArray(v, dims=("y", "x"), coords=coords))


def read_patches(ds: xr.Dataset, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """The features ``[N, D]`` (the cube's dtype) and valid flags ``[N]`` of patches ``(rows, cols)``: dask's
    ``vindex``, which reads only the chunks holding some of them and puts the indexed axis first."""
    import dask

    f, v = feature_blocks(ds)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    feats, ok = dask.compute(f.vindex[:, rows, cols], v.vindex[rows, cols])
    return np.asarray(feats), np.asarray(ok, bool)


def patch_grid(ds: xr.Dataset, scale: int = 1):
    """The cube's patch grid (odc-geo's ``ds.odc.geobox``) refined ``scale`` times: ``scale`` cells per patch side
    (label cells, a pixel head's output). For an integer scale ``zoom_to``'s affine is the cube's times
    ``Affine.scale(1 / scale)``, bit for bit."""
    from geodino.grid import cube_geobox

    g = cube_geobox(ds)
    return g if scale == 1 else g.zoom_to(shape=(g.shape[0] * scale, g.shape[1] * scale))


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


def local_scheduler():
    """The scheduler for a reader's dask compute: ``None`` (dask's own choice) when a distributed client may exist
    (``distributed`` imported) or a scheduler is configured, else dask's threaded scheduler, the one dask picks
    for arrays then. Given as a function, because for ``None`` or a name dask imports ``distributed`` to look for
    a client: +11 MiB of peak RSS for ``predict_map`` (2000² cube, 245 vs 256 MiB, Intel Xeon, 2 cores)."""
    import dask

    if "distributed" in sys.modules or dask.config.get("scheduler", None) is not None:
        return None
    import dask.threaded

    return dask.threaded.get
