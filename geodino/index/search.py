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
    """An opened index: ``meta`` (index.json), the faiss index (memory-mapped when local, read into memory from an
    object store) and the patch table (lazy). ``path`` is a Path, or the URL of a remote index."""

    path: Path | str
    meta: dict
    ann: object
    _patches: object = field(default=None, repr=False)
    storage_options: dict | None = field(default=None, repr=False)

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

            from geodino.cube.storage import is_local, join, open_input

            if is_local(self.path):
                self._patches = gpd.read_parquet(Path(self.path) / PATCHES_FILE)
            else:
                with open_input(join(self.path, PATCHES_FILE), storage_options=self.storage_options) as f:
                    self._patches = gpd.read_parquet(f)
        return self._patches

    def search(self, vectors: np.ndarray, k: int = 100, *, nprobe: int | None = None):
        """The ``k`` nearest patches of each query vector (cosine similarity): a GeoDataFrame with ``query``,
        ``rank``, ``score`` (cosine similarity), ``cube`` (path), ``crs``, ``row``, ``col``, ``x``, ``y`` and
        the patch footprint (EPSG:4326)."""
        import geopandas as gpd

        from geodino.cube.reading import is_count

        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        dim = self.meta["kind"]["dim"]
        if q.shape[1] != dim:
            raise IndexMismatchError(f"query vectors have {q.shape[1]} dimensions but the index holds {dim}-d "
                                     f"{self.meta['kind']['name']} vectors")
        if not np.isfinite(q).all() or not np.any(q, axis=1).all():
            raise VectorIndexError("a query vector is zero or not finite (e.g. positives equal to negatives)")
        for name, v in (("k", k), ("nprobe", nprobe)):
            if (v is not None or name == "k") and not is_count(v):
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
        return gpd.GeoDataFrame({
            "query": qi, "rank": rank, "score": score, "key": key,
            "cube": [cubes[c]["path"] for c in table["cube"]], "crs": [cubes[c]["crs"] for c in table["cube"]],
            "row": table["row"].to_numpy(), "col": table["col"].to_numpy(), "x": table["x"].to_numpy(),
            "y": table["y"].to_numpy()}, geometry=table.geometry.values, crs="EPSG:4326")


def open_index(path: str | os.PathLike, *, storage_options: dict | None = None) -> VectorIndex:
    """Open an index directory written by :func:`geodino.index.build_index`: a local folder (its vectors are
    memory-mapped) or an object-store URL (``s3://bucket/idx``; the vectors are read into memory)."""
    from geodino.cube.storage import cube_url, is_local, join, read_bytes

    remote = not is_local(path)
    if not remote:
        from geodino.checks import require_index

        require_index(path)
    import faiss

    p = cube_url(path) if remote else Path(path)
    meta_file = join(p, INDEX_FILE)
    try:
        meta = json.loads(read_bytes(meta_file, storage_options=storage_options))
    except FileNotFoundError:
        raise VectorIndexError(f"{p} is not a geodino index (no index.json; an interrupted build?): build one with "
                               f"`geodino index CUBES... -o {p}`") from None
    except ValueError as e:
        raise VectorIndexError(f"{meta_file} is damaged ({e}): rebuild the index") from None
    if meta.get("format") != FORMAT:
        raise VectorIndexError(f"{p} is an index of format {meta.get('format')!r}; this geodino reads {FORMAT}: "
                               f"rebuild it (geodino index CUBES... -o {p} --overwrite)")
    vectors = join(p, VECTORS_FILE)
    try:
        if remote:  # faiss memory-maps local files only: the serialized index comes in one read
            ann = faiss.deserialize_index(np.frombuffer(read_bytes(vectors, storage_options=storage_options),
                                                        dtype=np.uint8))
        else:
            ann = faiss.read_index(vectors, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except (RuntimeError, FileNotFoundError) as e:
        raise VectorIndexError(f"{vectors} is missing or damaged ({str(e).splitlines()[0][:120]}): "
                               "rebuild the index") from None
    if ann.ntotal != meta["vectors"]:
        raise VectorIndexError(f"{vectors} holds {ann.ntotal} vectors, index.json {meta['vectors']}: "
                               "rebuild the index")
    return VectorIndex(p, meta, ann, storage_options=storage_options)


def search(index: str | os.PathLike | VectorIndex, vectors: np.ndarray, k: int = 100):
    """``k`` nearest patches of ``vectors`` in the index at ``index`` (see :meth:`VectorIndex.search`)."""
    idx = index if isinstance(index, VectorIndex) else open_index(index)
    return idx.search(vectors, k)
