"""Searching an index: k nearest patches of query vectors, as a GeoDataFrame of footprints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geodino.errors import IndexMismatchError, VectorIndexError
from geodino.index.build import FORMAT, INDEX_FILE, PATCHES_FILE, VECTORS_FILE

__all__ = ["VectorIndex", "open_index", "search"]


@dataclass
class VectorIndex:
    """An opened index: ``meta`` (index.json), the usearch index (memory-mapped) and the patch table (lazy)."""

    path: Path
    meta: dict
    ann: object
    _patches: object = field(default=None, repr=False)

    @property
    def cubes(self) -> list[dict]:
        return self.meta["cubes"]

    @property
    def patches(self):
        """The GeoParquet sidecar (read on first use)."""
        if self._patches is None:
            import geopandas as gpd

            self._patches = gpd.read_parquet(self.path / PATCHES_FILE)
        return self._patches

    def search(self, vectors: np.ndarray, k: int = 100, *, expansion: int | None = None):
        """The ``k`` nearest patches of each query vector (cosine similarity): a GeoDataFrame with ``query``,
        ``rank``, ``score`` (cosine similarity), ``cube`` (path), ``crs``, ``row``, ``col``, ``x``, ``y`` and
        the patch footprint (EPSG:4326)."""
        import geopandas as gpd

        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        dim = self.meta["kind"]["dim"]
        if q.shape[1] != dim:
            raise IndexMismatchError(f"query vectors have {q.shape[1]} dimensions but the index holds {dim}-d "
                                     f"{self.meta['kind']['name']} vectors")
        if not np.isfinite(q).all() or not np.any(q, axis=1).all():
            raise VectorIndexError("a query vector is zero or not finite (e.g. positives equal to negatives)")
        k = int(min(k, self.meta["vectors"]))
        self.ann.expansion_search = max(expansion or 2 * k, k, 64)
        res = self.ann.search(q, k)
        keys = np.atleast_2d(np.asarray(res.keys)).astype(np.int64)
        dist = np.atleast_2d(np.asarray(res.distances)).astype(np.float64)
        counts = np.atleast_1d(np.asarray(getattr(res, "counts", [keys.shape[1]] * len(q))))
        rows = []
        for qi in range(len(q)):
            n = int(counts[qi])
            rows.append((np.full(n, qi), np.arange(1, n + 1), keys[qi, :n], 1.0 - dist[qi, :n]))
        qi, rank, key, score = (np.concatenate(c) for c in zip(*rows))
        table = self.patches.iloc[key]  # keys are row numbers of the sidecar
        cubes = self.cubes
        out = gpd.GeoDataFrame({
            "query": qi, "rank": rank, "score": score, "key": key,
            "cube": [cubes[c]["path"] for c in table["cube"]], "crs": [cubes[c]["crs"] for c in table["cube"]],
            "row": table["row"].to_numpy(), "col": table["col"].to_numpy(), "x": table["x"].to_numpy(),
            "y": table["y"].to_numpy()}, geometry=table.geometry.values, crs="EPSG:4326")
        return out


def open_index(path: str | os.PathLike) -> VectorIndex:
    """Open an index directory written by :func:`geodino.index.build_index`."""
    from usearch.index import Index

    p = Path(path)
    meta_file = p / INDEX_FILE
    if not meta_file.is_file():
        what = "does not exist" if not p.exists() else "is not a geodino index (no index.json; an interrupted build?)"
        raise VectorIndexError(f"{p} {what}: build one with `geodino index CUBES... -o {p}`")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise VectorIndexError(f"{meta_file} is damaged ({e}): rebuild the index") from None
    if meta.get("format") != FORMAT:
        raise VectorIndexError(f"{p} is an index of format {meta.get('format')!r}; this geodino reads {FORMAT}: "
                               "rebuild it")
    ann = Index.restore(str(p / VECTORS_FILE), view=True)
    if ann is None or len(ann) != meta["vectors"]:
        raise VectorIndexError(f"{p / VECTORS_FILE} is missing or damaged: rebuild the index")
    return VectorIndex(p, meta, ann)


def search(index: str | os.PathLike | VectorIndex, vectors: np.ndarray, k: int = 100):
    """``k`` nearest patches of ``vectors`` in the index at ``index`` (see :meth:`VectorIndex.search`)."""
    idx = index if isinstance(index, VectorIndex) else open_index(index)
    return idx.search(vectors, k)
