"""Searching an index: k nearest patches of query vectors, as a GeoDataFrame of footprints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geodino.errors import ConfigError, IndexMismatchError, VectorIndexError
from geodino.index.build import FORMAT, INDEX_FILE, PATCHES_FILE, VECTORS_FILE

__all__ = ["VectorIndex", "open_index", "search"]


@dataclass
class VectorIndex:
    """An opened index: ``meta`` (index.json), the faiss index (memory-mapped) and the patch table (lazy)."""

    path: Path
    meta: dict
    ann: object
    _patches: object = field(default=None, repr=False)

    @property
    def cubes(self) -> list[dict]:
        return self.meta["cubes"]

    @property
    def relaxed(self) -> tuple[str, ...]:
        """The comparable fields this index was built to mix (:mod:`geodino.cube.compat`)."""
        return tuple((self.meta.get("compat") or {}).get("relaxed") or ())

    @property
    def patches(self):
        """The GeoParquet sidecar (read on first use)."""
        if self._patches is None:
            import geopandas as gpd

            self._patches = gpd.read_parquet(self.path / PATCHES_FILE)
        return self._patches

    def search(self, vectors: np.ndarray, k: int = 100, *, nprobe: int | None = None):
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
        for name, v in (("k", k), ("nprobe", nprobe)):
            if (v is not None or name == "k") and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                                                   or v < 1):
                raise ConfigError(f"{name} (-{'-' if name == 'nprobe' else ''}{name}) must be a positive integer, "
                                  f"got {v!r}")
        k = int(min(k, self.meta["vectors"]))
        if self.meta["params"]["nlist"]:
            import faiss

            faiss.extract_index_ivf(self.ann).nprobe = int(nprobe or self.meta["params"]["nprobe"])
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        scores, keys = self.ann.search(q, k)
        found = keys >= 0  # an inverted file may find fewer than k within nprobe lists
        qi = np.nonzero(found)[0]
        rank = np.concatenate([np.arange(1, n + 1) for n in found.sum(axis=1)])
        key, score = keys[found], scores[found].astype(np.float64)
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
    from geodino.checks import require_index

    require_index(path)
    import faiss

    p = Path(path)
    meta_file = p / INDEX_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise VectorIndexError(f"{meta_file} is damaged ({e}): rebuild the index") from None
    if meta.get("format") != FORMAT:
        raise VectorIndexError(f"{p} is an index of format {meta.get('format')!r}; this geodino reads {FORMAT}: "
                               f"rebuild it (geodino index CUBES... -o {p} --overwrite)")
    try:
        ann = faiss.read_index(str(p / VECTORS_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise VectorIndexError(f"{p / VECTORS_FILE} is missing or damaged ({str(e).splitlines()[0][:120]}): "
                               "rebuild the index") from None
    if ann.ntotal != meta["vectors"]:
        raise VectorIndexError(f"{p / VECTORS_FILE} holds {ann.ntotal} vectors, index.json {meta['vectors']}: "
                               "rebuild the index")
    return VectorIndex(p, meta, ann)


def search(index: str | os.PathLike | VectorIndex, vectors: np.ndarray, k: int = 100):
    """``k`` nearest patches of ``vectors`` in the index at ``index`` (see :meth:`VectorIndex.search`)."""
    idx = index if isinstance(index, VectorIndex) else open_index(index)
    return idx.search(vectors, k)
