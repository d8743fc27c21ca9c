"""The query engine behind the page: a session of cubes, their in-memory vectors, and the results of queries.

A similarity query is exactly :func:`geodino.analysis.similarity`'s: its vector comes from
:func:`geodino.analysis.query_vector` (mean unit feature of the positives, points or polygons, minus that of the
negatives), and a patch's score is the cosine of its unit feature to it. The heat map of every cube of the chosen
date is computed once per query from the in-memory vectors and kept as a small 2-D array, from which map tiles are
cut (:mod:`geodino.explore.tiles`); the ranking keeps the best ``MAX_HITS`` patches, so ``k`` and the threshold
re-filter without recomputing anything. With compact vectors the best ``rerank`` candidates are re-scored with the
cube's full features (windowed reads of the chunks that hold them): their scores, flagged ``exact``, are then the
cube's own cosine and they rank ahead of the rest; the heat map stays the compact cosine.

The change mode ranks and maps ``1 - cos`` between two dates' cubes of one grid (:func:`geodino.analysis.change`'s
quantity).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from geodino.cube.sampling import valid_counts
from geodino.errors import ConfigError, EmptySampleError, GeodinoError, QueryError
from geodino.explore.cubes import ExploreCube, open_cubes
from geodino.explore.vectors import CubeVectors, build_vectors, choose_kind
from geodino.grid import cell_index

__all__ = ["Session", "Result", "MAX_HITS", "DEFAULT_RERANK"]

MAX_HITS = 25_000  # the largest k a result can be filtered to (GeoVibes' upper end)
DEFAULT_RERANK = 1000  # compact candidates re-scored with full features per query (~5 ms from the store)
KEEP_RESULTS = 8  # results kept for tiles, hits and exports (each holds one float32 map per cube)
LOOKUPS = 256  # tiles whose pixel -> patch lookup is cached (256 KiB each: a few views' worth)


class UnknownQueryError(QueryError):
    """A query id that this server does not hold (expired from the cache or never made)."""


class GoneError(GeodinoError, FileNotFoundError):
    """A cube or source raster that was readable at start-up is gone or changed."""


@dataclass
class Result:
    """One query's answer: per-cube maps (``maps[cube] -> float32 [H, W]``, NaN off valid patches) and the ranking
    (``cube``, ``flat``, ``score``, ``exact`` arrays, best first)."""

    id: str
    mode: str  # "similarity" or "change"
    date: str
    date_b: str | None
    positives: object  # GeoSeries in EPSG:4326
    negatives: object
    vector: np.ndarray | None
    maps: dict[int, np.ndarray]
    cube: np.ndarray
    flat: np.ndarray
    score: np.ndarray
    exact: np.ndarray
    seconds: float
    timings: dict = field(default_factory=dict)

    value_range: tuple[float, float] = (0.0, 1.0)  # the maps' min and max: the heat map's colour scale


def _geoseries(items, what: str):
    """Examples from the page (``[[lon, lat], ...]`` points, or GeoJSON geometries in lon/lat) as a GeoSeries."""
    import geopandas as gpd
    from shapely.errors import ShapelyError
    from shapely.geometry import Point, shape

    geoms = []
    for g in items or []:
        try:
            if isinstance(g, dict):
                if not isinstance(g.get("type"), str):
                    raise ValueError('a GeoJSON geometry needs a "type"')
                with np.errstate(invalid="ignore"):  # NaN coordinates: refused as not valid below
                    geom = shape(g)
            else:
                lon, lat = (float(v) for v in g)
                geom = Point(lon, lat)
        except (TypeError, ValueError, KeyError, AttributeError, ShapelyError) as e:
            # ShapelyError: an unknown "type" (GeometryTypeError), too few points for a line (GEOSException)
            raise QueryError(f"cannot read a {what} example {str(g)[:80]!r}: give [lon, lat] or a GeoJSON "
                             f"geometry ({str(e).strip()})") from None
        if geom.is_empty or not geom.is_valid:
            raise QueryError(f"a {what} example is empty or not a valid geometry: draw it again")
        geoms.append(geom)
    return gpd.GeoSeries(geoms, crs="EPSG:4326")


def _around(cube: ExploreCube, *examples):
    """The part of ``cube`` around the examples (whole patches, a margin of two) when they all lie inside it, else
    the cube: the query vector is then computed from the same patches, and dask's graph for it holds the few
    chunks involved instead of every chunk of the cube."""
    import pandas as pd
    from odc.geo.roi import roi_from_points
    from shapely.geometry import box

    g = pd.concat([e for e in examples if len(e)]).to_crs(cube.crs)
    if not g.within(box(*cube.gbox.boundingbox)).all():
        return cube.lean  # let analysis report what lies outside, against the whole cube
    x0, y0, x1, y1 = g.total_bounds
    rows, cols = roi_from_points(np.column_stack(cube.gbox.wld2pix(np.array([x0, x1]), np.array([y0, y1]))),
                                 cube.gbox.shape, padding=2)
    return cube.lean.isel(y=rows, x=cols)


class Session:
    """Cubes opened for exploring, their in-memory vectors (built once at start-up) and recent results."""

    def __init__(self, cubes, *, vectors: str = "auto", rerank: int = DEFAULT_RERANK, force: bool = False,
                 basemap: str | None = None, sample: int = 10_000):
        t0 = time.perf_counter()
        if not isinstance(rerank, (int, np.integer)) or isinstance(rerank, bool) or rerank < 0:
            raise ConfigError(f"rerank must be a number of candidates >= 0, got {rerank!r}")
        self.cubes: list[ExploreCube] = open_cubes(cubes, force=force)
        self.dates = sorted({c.date for c in self.cubes}, key=lambda d: (d == "", d))  # undated ("") last
        counts = [int(np.sum(valid_counts(c.ds))) for c in self.cubes]
        if sum(counts) == 0:
            raise QueryError("the cubes hold no valid patches: nothing to explore")
        self.valid_counts = counts
        self.kind = choose_kind([c.ds for c in self.cubes], vectors, counts)
        self.store_dir = self._store_dir(counts) if self.kind == "compact" and rerank > 0 else None
        self.vectors: list[CubeVectors] = build_vectors([c.ds for c in self.cubes], self.kind, sample=sample,
                                                        store_dir=self.store_dir)
        self._finalizer = weakref.finalize(self, _close_stores, self.vectors)
        self.rerank = int(rerank)
        self.basemap = basemap
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()
        self.current: str | None = None
        from geodino.explore.tiles import source_images, tile_lookup

        self.sources = {c.index: source_images(c) for c in self.cubes}
        gboxes = [c.gbox for c in self.cubes]  # (the cache holds the grids, not the session: no reference cycle)
        # cube ci's patch under each pixel of tile z/x/y, cached: a view's tiles serve every query
        self.tile_lookup = functools.lru_cache(LOOKUPS)(lambda ci, z, x, y: tile_lookup(gboxes[ci], z, x, y))
        # import and initialise now what the first click would otherwise wait for (torch's int8 product, geopandas,
        # pyproj): part of the reported start-up, not of the first query
        import geopandas  # noqa: F401
        import shapely  # noqa: F401

        for v in self.vectors:  # one scan each (tens of ms)
            d = v.unit.shape[1] if v.unit is not None else v.basis.mean.shape[0]
            v.scores(np.full(d, d ** -0.5, np.float32))
        for c in self.cubes:  # pyproj transformers (odc-geo caches them; pyproj >= 3.1 shares them across threads)
            c.gbox.crs.transformer_to_crs("EPSG:4326")
        self.startup_s = time.perf_counter() - t0

    def _store_dir(self, counts: list[int]) -> str | None:
        """The folder for the re-rank stores (the system's temporary folder, ``TMPDIR``), or None (re-rank from
        the cube's chunks) when the disk there lacks the room."""
        import shutil
        import tempfile

        need = sum(n * int(c.ds.sizes["feature"]) * c.ds["features"].dtype.itemsize
                   for n, c in zip(counts, self.cubes) if not c.compact)
        root = tempfile.gettempdir()
        return None if not need or shutil.disk_usage(root).free < 1.2 * need + 2**30 else root

    def close(self) -> None:
        """Close the re-rank stores (anonymous files: their space returns when closed, or when the process ends)."""
        self._finalizer()

    # ----- what the page needs to know
    def describe(self) -> dict:
        cubes = [{**c.describe(), "valid": v.n, "vectors": v.kind, "exact": v.exact,
                  "imagery": bool(self.sources[c.index])} for c, v in zip(self.cubes, self.vectors)]
        b = np.array([c["bounds"] for c in cubes])
        return {"cubes": cubes, "dates": self.dates, "vectors": self.kind, "rerank": self.rerank,
                "bounds": [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())],
                "basemap": self.basemap, "startup_s": round(self.startup_s, 2), "max_hits": MAX_HITS,
                "memory_mb": round(sum(v.nbytes for v in self.vectors) / 2**20, 1)}

    def cubes_of(self, date: str | None) -> list[ExploreCube]:
        date = self.dates[0] if date is None else str(date)
        if date not in self.dates:
            raise QueryError(f"no cube of date {date!r}: choose one of {', '.join(map(repr, self.dates))}")
        return [c for c in self.cubes if c.date == date]

    def cube(self, index) -> ExploreCube:
        try:
            i = int(index)
            if 0 <= i < len(self.cubes):
                return self.cubes[i]
        except (TypeError, ValueError):
            pass
        raise QueryError(f"no cube {index!r} in this session (0..{len(self.cubes) - 1})")

    # ----- results
    def result(self, qid: str | None) -> Result:
        with self._lock:
            qid = self.current if qid is None else qid
            if qid not in self._results:
                raise UnknownQueryError(f"no query {qid!r} on this server (it may have expired: only the last "
                                        f"{KEEP_RESULTS} are kept); run the query again")
            self._results.move_to_end(qid)
            return self._results[qid]

    def _keep(self, res: Result) -> Result:
        with self._lock:
            self._results[res.id] = res
            while len(self._results) > KEEP_RESULTS:
                self._results.popitem(last=False)
            self.current = res.id
        return res

    def _rank(self, parts: list[tuple[int, np.ndarray, np.ndarray]]):
        """The highest ``MAX_HITS`` of per-cube scores, ordered like :func:`geodino.analysis.top_patches` (score, then
        cube, row, col). Each cube's scores are partitioned in place of a sort, and no cube-sized array is
        copied more than once (at 1M patches every such pass costs milliseconds)."""
        n = min(MAX_HITS, sum(len(sc) for _, sc, _ in parts))
        cubes, idxs, scores = [], [], []
        for ci, sc, idx in parts:
            if not len(sc):
                continue
            if not np.isfinite(sc).all():
                sc = np.where(np.isfinite(sc), sc, -np.inf)
            m = min(n, len(sc))
            top = np.argpartition(sc, len(sc) - m)[len(sc) - m:]
            cubes.append(np.full(m, ci, np.int32))
            idxs.append(top if idx is None else idx[top])
            scores.append(sc[top].astype(np.float32))
        cube, idx, score = (np.concatenate(a) for a in (cubes, idxs, scores))
        keep = np.isfinite(score)
        cube, idx, score = cube[keep], idx[keep], score[keep]
        flat = np.zeros(len(idx), np.int64)
        for ci in np.unique(cube):
            sel = cube == ci
            flat[sel] = self.vectors[ci].flat[idx[sel]]
        order = np.lexsort((flat, cube, -score))[:n]
        return cube[order], idx[order], flat[order], score[order]

    def query(self, date=None, positives=(), negatives=(), polygons=()) -> Result:
        """A similarity query on the cubes of ``date`` from examples in lon/lat (points or GeoJSON polygons)."""
        from geodino.analysis import query_vector

        t0 = time.perf_counter()
        cubes = self.cubes_of(date)
        pos = _geoseries(list(positives or []) + list(polygons or []), "positive")
        neg = _geoseries(negatives, "negative")
        if len(pos) == 0:
            raise QueryError("give at least one positive example (click a patch, or draw a polygon)")
        q = self._stored_query_vector(cubes, pos, neg) if not polygons else None
        try:
            if q is None:
                target = [c.lean for c in cubes] if len(cubes) > 1 else _around(cubes[0], pos, neg)
                q = query_vector(target, pos, neg if len(neg) else None)
        except EmptySampleError:
            if self._valid_at_startup(cubes, pos):  # zarr reads vanished chunks as NaN: not the user's fault
                raise GoneError(f"the examples' patches were valid at start-up and now read as nodata: "
                                f"{cubes[0].path or 'the cube'} was removed or changed while the server runs; "
                                "restart geodino explore") from None
            raise
        t1 = time.perf_counter()
        parts = [(c.index, self.vectors[c.index].scores(q), None) for c in cubes]  # None: every patch, in order
        maps = {ci: s for ci, s, _ in parts}
        ranked = self._rank(parts)
        t2 = time.perf_counter()
        exact = np.array([self.vectors[c].exact for c in ranked[0]], bool)
        cube, idx, flat, score, exact = self._rerank(ranked, exact, lambda ci, idx, flat: self._exact_unit(ci, idx) @ q)
        t3 = time.perf_counter()
        res = Result(uuid.uuid4().hex[:12], "similarity", cubes[0].date, None, pos, neg, q,
                     {ci: self.vectors[ci].image(s) for ci, s in maps.items()}, cube, flat, score, exact,
                     time.perf_counter() - t0,
                     {"query_vector": t1 - t0, "scan": t2 - t1, "rerank": t3 - t2, "maps": time.perf_counter() - t3},
                     _value_range(maps.values()))
        return self._keep(res)

    def _stored_query_vector(self, cubes, pos, neg) -> np.ndarray | None:
        """:func:`geodino.analysis.query_vector` of point examples on one cube, from the features the start-up
        pass kept (the re-rank store, or the exact in-memory vectors) instead of the cube's chunks: the same patch
        for each point (the cell that holds it, as :func:`geodino.analysis.sample` picks it), the same features
        (the store holds the cube's own values), the same arithmetic. Reading the examples' chunks through dask
        took 40-160 ms of a 1 M-patch query on the 2-core Xeon (half of it); this takes well under 1 ms. None
        when the library must answer: several cubes, a point outside the cube, on an invalid patch or within
        1e-6 patch of a cell edge (where rounding could pick the neighbour), or an empty query (its message)."""
        if len(cubes) != 1:
            return None
        c = cubes[0]
        v = self.vectors[c.index]
        if v.store is None and v.kind != "full":
            return None
        h, w = c.shape
        means = []
        for g in (pos, neg):
            if len(g) == 0:
                continue
            if not (g.geom_type == "Point").all():
                return None
            p = g.to_crs(c.crs)
            fc, fr = c.gbox.wld2pix(p.x.to_numpy(), p.y.to_numpy())  # (1e-6 from an edge is refused below)
            col, row = np.floor(fc).astype(np.int64), np.floor(fr).astype(np.int64)
            edge = np.minimum.reduce([fc - col, col + 1 - fc, fr - row, row + 1 - fr])
            if not ((row >= 0) & (row < h) & (col >= 0) & (col < w)).all() or (edge < 1e-6).any():
                return None
            flat = row * w + col
            idx = np.searchsorted(v.flat, flat)
            if (idx >= v.n).any() or (v.flat[np.minimum(idx, v.n - 1)] != flat).any():
                return None  # an invalid patch: the library warns or refuses in its words
            x = v.exact_unit_rows(idx) if v.store is not None else v.unit[idx].astype(np.float32)
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # as sample(normalize=True)
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # as query_vector's _examples
            means.append(x.mean(axis=0))
        q = means[0] - means[1] if len(means) == 2 else means[0]
        n = float(np.linalg.norm(q))
        if not np.isfinite(n) or n < 1e-6:
            return None
        return (q / n).astype(np.float32)

    def _valid_at_startup(self, cubes, geoms) -> bool:
        """Whether any point of ``geoms`` lies on a patch that was valid when the session started."""
        pts = geoms[geoms.geom_type == "Point"]
        for c in cubes:
            g = pts.to_crs(c.crs)
            (h, w), (row, col) = c.shape, cell_index(c.gbox, g.x.to_numpy(), g.y.to_numpy())
            ok = (row >= 0) & (row < h) & (col >= 0) & (col < w)
            flat = self.vectors[c.index].flat
            if np.isin(row[ok] * w + col[ok], flat).any():
                return True
        return False

    def change(self, date=None, date_b=None) -> Result:
        """``1 - cos`` between the cubes of ``date`` and those of ``date_b`` on the same grids, ranked (most
        changed first)."""
        import geopandas as gpd

        t0 = time.perf_counter()
        if len(self.dates) < 2:
            raise QueryError("the change mode needs cubes of two dates: give several dates of one grid")
        a_cubes = self.cubes_of(date)
        b_cubes = self.cubes_of(date_b if date_b is not None else next(d for d in self.dates if d != a_cubes[0].date))
        if a_cubes[0].date == b_cubes[0].date:
            raise QueryError("choose two different dates for the change mode")
        from geodino.cube.compat import grid_differences

        parts, maps, pairs = [], {}, {}
        for a in a_cubes:
            b = next((b for b in b_cubes if not grid_differences(a.ds, b.ds)), None)
            if b is None:
                continue
            va, vb = self.vectors[a.index], self.vectors[b.index]
            _, ia, ib = np.intersect1d(va.flat, vb.flat, assume_unique=True, return_indices=True)
            d = np.empty(len(ia), np.float32)
            for i in range(0, len(ia), 16_384):
                ua, ub = va.unit_rows(ia[i:i + 16_384]), vb.unit_rows(ib[i:i + 16_384])
                d[i:i + 16_384] = 1.0 - np.sum(ua * ub, axis=1)
            full = np.full(va.n, np.nan, np.float32)
            full[ia] = d
            parts.append((a.index, d, ia))
            maps[a.index] = full
            pairs[a.index] = (b.index, ib, va.exact and vb.exact, ia)
        if not parts:
            raise QueryError(f"no cube of {b_cubes[0].date or 'the other date'} shares a grid with a cube of "
                             f"{a_cubes[0].date or 'this date'}: the change mode compares cubes of one grid")
        def rescore(ci, idx, flat):  # the exact 1 - cos of the same patch of the pair's cube of the other date
            bi, ib, _, ia = pairs[ci]
            at_b = ib[np.searchsorted(self.vectors[ci].flat[ia], flat)]
            return 1.0 - np.sum(self._exact_unit(ci, idx) * self._exact_unit(bi, at_b), axis=1)

        ranked = self._rank(parts)
        exact = np.array([pairs[c][2] for c in ranked[0]], bool)
        cube, idx, flat, score, exact = self._rerank(ranked, exact, rescore)
        empty = gpd.GeoSeries([], crs="EPSG:4326")
        res = Result(uuid.uuid4().hex[:12], "change", a_cubes[0].date, b_cubes[0].date, empty, empty, None,
                     {ci: self.vectors[ci].image(m) for ci, m in maps.items()}, cube, flat, score, exact,
                     time.perf_counter() - t0, {}, _value_range([d for _, d, _ in parts]))
        return self._keep(res)

    def _rerank(self, ranked, exact: np.ndarray, rescore):
        """The ranking ``(cube, idx, flat, score)`` and ``exact`` with the first ``rerank`` candidates that are not
        exact re-scored by ``rescore(ci, idx, flat)`` (per cube ``ci``), then the re-ranked head re-sorted and
        kept ahead of the rest: compact scores are not on the same scale as exact ones (PCA drops the isotropic
        part of the features, which raises cosines), so the two are never interleaved."""
        cube, idx, flat, score = ranked
        todo = np.flatnonzero(~exact[:self.rerank])
        if not len(todo):
            return cube, idx, flat, score, exact
        for ci in np.unique(cube[todo]):
            sel = todo[cube[todo] == ci]
            score[sel], exact[sel] = rescore(ci, idx[sel], flat[sel]), True
        n = min(self.rerank, len(score))
        order = np.concatenate([np.lexsort((flat[:n], cube[:n], -score[:n])), np.arange(n, len(score))])
        return tuple(a[order] for a in (cube, idx, flat, score, exact))

    def _exact_unit(self, ci: int, idx: np.ndarray) -> np.ndarray:
        """The cube's own unit features of patches ``idx`` of cube ``ci``: from its re-rank store, else from its
        chunks, read by the reading layer (dask's ``vindex``: only the chunks that hold them, in parallel)."""
        from geodino.cube.reading import read_patches, unit_rows

        v = self.vectors[ci]
        if v.store is not None or v.exact:
            return v.exact_unit_rows(idx) if v.store is not None else v.unit_rows(idx)
        ds = self.cubes[ci].ds
        out = unit_rows(np.asarray(read_patches(ds, *v.rows_cols(idx))[0], np.float32))
        if not np.isfinite(out).all():  # zarr reads a missing chunk as its fill value (NaN): never score that
            raise GoneError(f"cube {ds.encoding.get('source', '')}: patches that were valid at start-up now read "
                            "as nodata: the cube was removed or changed while the server runs; restart geodino "
                            "explore")
        return out

    # ----- hits
    def keep(self, qid: str | None, k: int, threshold: float | None) -> tuple[Result, np.ndarray]:
        """A result and the positions of its first ``k`` hits scoring at least ``threshold``."""
        res = self.result(qid)
        k = check_k(k)
        keep = np.arange(len(res.score))
        if threshold is not None:
            keep = keep[res.score >= float(threshold)]
        return res, keep[:k]

    def hits(self, qid: str | None = None, k: int = 100, threshold: float | None = None):
        """The first ``k`` patches of a result scoring at least ``threshold``, as a GeoDataFrame of footprints in
        the CRS of the result's first cube (columns as :func:`geodino.analysis.top_patches`, plus ``exact``,
        ``cube_path``, ``date``, ``lon``, ``lat``)."""
        res, keep = self.keep(qid, k, threshold)
        return hits_frame(self, res, keep)


def _value_range(arrays) -> tuple[float, float]:
    """min and max over per-patch score arrays (NaN ignored): the heat map's colour scale."""
    lo, hi = np.inf, -np.inf
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for a in arrays:
            if len(a):
                lo, hi = min(lo, float(np.nanmin(a))), max(hi, float(np.nanmax(a)))
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (0.0, 1.0)


def _close_stores(vectors) -> None:
    for v in vectors:
        if v.store is not None:
            v.store.close()


def check_k(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise QueryError(f"k must be a whole number of hits, got {k!r}") from None
    if not 1 <= k <= MAX_HITS:
        raise QueryError(f"k must be within 1..{MAX_HITS}, got {k}")
    return k


def hit_table(session: Session, res: Result, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The hits ``keep`` (positions in the ranking) as arrays: rank, score, exact, cube, row, col, x, y (patch
    centre in its cube's CRS), lon, lat and ``footprint`` [n, 5, 2] (lon/lat ring). Vectorised: the page asks
    for it after every query."""
    n = len(keep)
    out = {"rank": keep + 1, "score": res.score[keep].astype(np.float64), "exact": res.exact[keep],
           "cube": res.cube[keep].astype(np.int64), "row": np.zeros(n, np.int64), "col": np.zeros(n, np.int64),
           "x": np.zeros(n), "y": np.zeros(n), "lon": np.zeros(n), "lat": np.zeros(n),
           "footprint": np.zeros((n, 5, 2))}
    for ci in np.unique(out["cube"]):
        sel = np.flatnonzero(out["cube"] == ci)
        gbox = session.cubes[ci].gbox
        row, col = np.divmod(res.flat[keep[sel]], gbox.shape.x)
        out["row"][sel], out["col"][sel] = row, col
        out["x"][sel], out["y"][sel] = gbox.pix2wld(col + 0.5, row + 0.5)
        corners_c = np.stack([col, col + 1, col + 1, col, col], axis=1)
        corners_r = np.stack([row, row, row + 1, row + 1, row], axis=1)
        to_lonlat = gbox.crs.transformer_to_crs("EPSG:4326")
        out["footprint"][sel] = np.stack(to_lonlat(*gbox.pix2wld(corners_c, corners_r)), axis=-1)
        out["lon"][sel], out["lat"][sel] = to_lonlat(out["x"][sel], out["y"][sel])
    return out


def hits_frame(session: Session, res: Result, keep: np.ndarray):
    import geopandas as gpd
    import pandas as pd
    import shapely

    from geodino.cube.reading import patch_boxes

    first = session.cubes[int(res.cube[0])] if len(res.cube) else session.cubes_of(res.date)[0]
    frames = []
    for ci in np.unique(res.cube[keep]) if len(keep) else []:
        sel = keep[res.cube[keep] == ci]
        c = session.cubes[ci]
        row, col = np.divmod(res.flat[sel], c.shape[1])
        boxes = patch_boxes(c.gbox, row, col)
        b = shapely.bounds(boxes)
        g = gpd.GeoDataFrame({"rank": sel + 1, "score": res.score[sel].astype(np.float64), "exact": res.exact[sel],
                              "cube": int(ci), "row": row, "col": col, "x": (b[:, 0] + b[:, 2]) / 2,
                              "y": (b[:, 1] + b[:, 3]) / 2, "cube_path": c.path, "date": c.date,
                              "fingerprint": c.fingerprint}, geometry=boxes, crs=c.ds.rio.crs)
        # shapely.centroid: the planar centre of each patch box (what GeoSeries.centroid computes, without its
        # warning for a geographic CRS: planar is what is meant here)
        centre = gpd.GeoSeries(shapely.centroid(boxes), crs=g.crs).to_crs("EPSG:4326")
        g["lon"], g["lat"] = centre.x.to_numpy(), centre.y.to_numpy()
        frames.append(g.to_crs(first.ds.rio.crs) if g.crs != first.ds.rio.crs else g)
    if not frames:
        return gpd.GeoDataFrame({n: [] for n in ("rank", "score", "exact", "cube", "row", "col", "x", "y",
                                                  "cube_path", "date", "fingerprint", "lon", "lat")},
                                geometry=[], crs=first.ds.rio.crs)
    out = pd.concat(frames).sort_values("rank")
    return gpd.GeoDataFrame(out.reset_index(drop=True), geometry="geometry", crs=first.ds.rio.crs)
