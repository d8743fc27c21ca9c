"""Similarity search: cosine similarity of every patch to a query vector, as a lazy map, and the top-k patches as a
GeoDataFrame of patch footprints.

The query is the mean of the positive examples' unit features, minus the mean of the negative examples' when there
are any (few-shot search, Earth-Index style), or a vector given directly. Examples are points or geometries in
any CRS (see :func:`geodino.analysis.sample`).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import xarray as xr

from geodino.cube.reading import NORMALISED, as_cubes, patch_boxes, patch_map, single_or_list, unit_block
from geodino.analysis.sample import PartlyOutsideWarning, sample
from geodino.cube.sampling import row_bands, unit_rows
from geodino.errors import EmptySampleError, QueryError
from geodino.grid import cube_geobox

__all__ = ["SimilarityResult", "query_vector", "similarity", "top_patches"]


class SimilarityResult(NamedTuple):
    """``maps``: lazy ``(y, x)`` cosine similarity, one per cube searched (always a list); ``map``: the map of a
    single cube (a DataArray; for several cubes it is the list, as before: use ``maps``); ``top``: the ``top_k``
    most similar valid patches (rank, score, cube, row, col, x, y, footprint); ``query``: the unit query vector."""

    map: xr.DataArray | list[xr.DataArray]
    top: object  # geopandas.GeoDataFrame
    query: np.ndarray

    @property
    def maps(self) -> list[xr.DataArray]:
        return list(self.map) if isinstance(self.map, (list, tuple)) else [self.map]


def _examples(cubes, geoms, crs, tolerance, what: str) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PartlyOutsideWarning)
        feats = sample(cubes, geoms, crs=crs, tolerance=tolerance, normalize=True, strict=True)
    x = feats.values
    ok = np.all(np.isfinite(x), axis=1)
    if not ok.any():
        raise EmptySampleError(f"none of the {len(x)} {what} examples falls on a valid patch (they lie on nodata "
                               "or skipped tiles): choose examples on valid patches")
    if not ok.all():
        bad = np.flatnonzero(~ok)
        warnings.warn(f"{len(bad)} of {len(x)} {what} examples fall on invalid patches and are ignored "
                      f"(#{', #'.join(map(str, bad[:5]))})", PartlyOutsideWarning, stacklevel=3)
    for w in caught:
        if not issubclass(w.category, PartlyOutsideWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return unit_rows(x[ok]).mean(axis=0)


def query_vector(cube, positives, negatives=None, *, crs=None, tolerance: float | None = None) -> np.ndarray:
    """The unit query vector: mean unit feature of ``positives`` minus that of ``negatives`` (if any)."""
    cubes, _ = as_cubes(cube, relax=NORMALISED)
    q = _examples(cubes, positives, crs, tolerance, "positive")
    if negatives is not None and len(np.atleast_1d(np.asarray(negatives, dtype=object))) > 0:
        q = q - _examples(cubes, negatives, crs, tolerance, "negative")
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-6:
        raise QueryError("the positive and negative examples have the same mean feature: the query is empty; "
                         "choose examples that differ")
    return (q / n).astype(np.float32)


def _block_top(block: np.ndarray, r0: int, c0: int, k: int, cube: int):
    a = np.where(np.isfinite(block), block, -np.inf).ravel()
    k = min(k, int(np.isfinite(a).sum()))
    if k == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    idx = np.argpartition(-a, k - 1)[:k]
    r, c = np.unravel_index(idx, block.shape)
    return a[idx].astype(np.float32), r + r0, c + c0, np.full(k, cube, np.int64)


def _empty_top(crs):
    import geopandas as gpd

    return gpd.GeoDataFrame({"rank": [], "score": [], "cube": [], "row": [], "col": [], "x": [], "y": []},
                            geometry=[], crs=crs)


def top_patches(maps, cubes, k: int = 100):
    """The ``k`` highest-scoring valid patches over one or several lazy maps, as a GeoDataFrame of patch footprints
    in the first cube's CRS (one chunk per task: the maps are never held whole)."""
    import dask
    import geopandas as gpd
    import shapely

    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    crs = cubes[0].rio.crs
    if not maps or k < 1:
        return _empty_top(crs)

    def merge(acc, parts):  # keep a running top-k: memory stays bounded
        parts = ([acc] if acc is not None else []) + list(parts)
        s_, r_, c_, i_ = (np.concatenate([p[j] for p in parts]) for j in range(4))
        keep = np.lexsort((c_, r_, i_, -s_))[:k]  # deterministic order among ties
        return s_[keep], r_[keep], c_[keep], i_[keep]

    acc = None
    for ci, m in enumerate(maps):
        data = m.data
        if not hasattr(data, "to_delayed"):
            import dask.array as da

            data = da.from_array(np.asarray(data), chunks=(256, 256))
        cols = np.concatenate([[0], np.cumsum(data.chunks[1])])
        for r0, band in row_bands(data, 0):  # one band of chunk rows per graph
            rows = r0 + np.concatenate([[0], np.cumsum(band.chunks[0])])
            blocks = band.to_delayed()
            tasks = [dask.delayed(_block_top)(blocks[by, bx], int(rows[by]), int(cols[bx]), k, ci)
                     for by in range(blocks.shape[0]) for bx in range(blocks.shape[1])]
            acc = merge(acc, dask.compute(*tasks))
    scores, rr, cc, cube_idx = acc  # at most k, ordered by merge
    frames = []
    for ci in np.unique(cube_idx):
        sel = cube_idx == ci
        boxes = patch_boxes(cube_geobox(cubes[ci]), rr[sel], cc[sel])
        b = shapely.bounds(boxes)
        g = gpd.GeoDataFrame({"score": scores[sel], "cube": ci, "row": rr[sel], "col": cc[sel],
                              "x": (b[:, 0] + b[:, 2]) / 2, "y": (b[:, 1] + b[:, 3]) / 2},
                             geometry=boxes, crs=cubes[ci].rio.crs)
        frames.append(g.to_crs(crs) if crs is not None and g.crs != crs else g)
    if not frames:
        return _empty_top(crs)
    import pandas as pd

    top = pd.concat(frames).sort_values(["score", "cube", "row", "col"], ascending=[False, True, True, True])
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    return gpd.GeoDataFrame(top.reset_index(drop=True), geometry="geometry", crs=crs)


def similarity(cube, positives=None, negatives=None, *, crs=None, vector=None, top_k: int = 100,
               tolerance: float | None = None) -> SimilarityResult:
    """Cosine similarity of every valid patch to a query (NaN elsewhere), lazily, and the ``top_k`` patches.

    ``positives``/``negatives``: points or geometries (GeoDataFrame, shapely, ``(x, y)`` pairs with ``crs``);
    or ``vector``: a query feature vector ``[D]``. Computing ``top`` reads the cube once (``top_k=0`` skips it).
    Several cubes are searched together (one query, one ranking).
    """
    cubes, single = as_cubes(cube, relax=NORMALISED)
    if vector is not None:
        q = np.asarray(vector, np.float32).ravel()
        if q.size != cubes[0].sizes["feature"] or not np.all(np.isfinite(q)) or np.linalg.norm(q) == 0:
            raise QueryError(f"the query vector must hold {cubes[0].sizes['feature']} finite values, not all zero")
        q = q / np.linalg.norm(q)
    elif positives is None:
        raise QueryError("give positive examples (points or geometries) or a query vector")
    else:
        q = query_vector(cubes, positives, negatives, crs=crs, tolerance=tolerance)

    def cosine(f, v):
        s = (unit_block(f) @ q).astype(np.float32)
        s[~(v & np.isfinite(s))] = np.nan
        return s

    attrs = {"long_name": "cosine similarity to the query", "units": "1"}
    maps = [patch_map(ds, cosine, bands=None, dtype=np.float32, nodata=np.nan, name="similarity",
                      attrs=attrs) for ds in cubes]
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise QueryError(f"top_k must be a number of patches >= 0, got {top_k!r}")
    top = top_patches(maps, cubes, int(top_k))
    return SimilarityResult(single_or_list(maps, single), top, q)
