"""Building an index over the valid patch vectors of complete, comparable cubes.

Cubes are comparable by the one rule of :mod:`geodino.cube.compat` (model, weights, architecture, normalisation,
radiometry, precision, quantisation, compact or full features, tile, halo, blend, scale); an index that mixes, on
purpose, cubes differing in some of these names them (``relax=("radiometry",)``, ``--relax radiometry``), and
``index.json`` records the fingerprint, the relaxed fields and each cube's differences (``compat``), which queries
from other cubes are checked against. Compact cubes are read through :func:`geodino.open_cube`, decoded.

Library: faiss (``faiss-cpu``), an inverted file (``IVF{4 sqrt(n)},SQfp16``: k-means lists, vectors kept as
float16, i.e. the cube's own precision) searched over ``nprobe`` lists, or an exact scan below 50k vectors. It
was chosen by measuring usearch (HNSW), faiss (IVF), LanceDB (IVF_HNSW_SQ) and hnswlib on 1M vectors on the
project's 2-core machine (``pipelines/bench_index.py``; table and discussion in docs/benchmarks.md). Every
library reaches recall@100 >= 0.95 well under 50 ms p95, so the choice falls to what grows with the data on a CPU:
faiss's inverted file builds several times faster than the HNSW graphs (training is fixed, adding is linear),
needs no graph on top of the vectors, and searches memory-mapped; it is one numpy-only wheel. usearch answers
faster per query and stores float16 too, but its graph build dominated (875 s for 1M 64-d vectors vs 162 s);
LanceDB was 10-50x slower per single query here and brings pyarrow plus lance; hnswlib holds float32 only
(4 KB per 1024-d feature). 8-bit codes (SQ8) halve the bytes but lose neighbours among the near-identical patches
of uniform ground, so vectors stay float16.

An index directory holds ``index.json`` (written last: its presence marks a complete index), ``vectors.faiss``
and ``patches.parquet`` (GeoParquet: ``key``, ``cube``, ``row``, ``col``, ``x``, ``y`` in the cube's CRS,
``geometry`` the patch footprint in EPSG:4326, so that cubes in several UTM zones share one table; a vector's id
is its row in that table). The directory is a local path or an object-store URL (``s3://bucket/idx``). A local
index is built in a temporary sibling directory and renamed into place; a remote one is built in a local temporary
directory and uploaded file by file with ``index.json`` last (an index being replaced loses its ``index.json``
first), and a failed upload removes what it put. Either way a failed build leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from geodino.cube.compat import check_comparable, fingerprint, normalize_relax
from geodino.cube import storage
from geodino.cube.storage import cube_url
from geodino.cube.store import STATUS_ATTR, check_feature_cube, read_attrs
from geodino.errors import ConfigError, CubeError, IndexMismatchError, VectorIndexError
from geodino.grid import cell_boxes, cube_geobox
from geodino.index.vectors import vector_source

__all__ = ["build_index", "IndexInfo", "check_index_cube", "indexable_cube", "INDEX_FILE", "VECTORS_FILE",
           "PATCHES_FILE", "FORMAT"]

INDEX_FILE, VECTORS_FILE, PATCHES_FILE = "index.json", "vectors.faiss", "patches.parquet"
FORMAT = "geodino-index/2"  # 2: the compat fingerprint (geodino.cube.compat) and the relaxations it was built with


@dataclass(frozen=True)
class IndexInfo:
    """What ``build_index`` wrote."""

    path: str
    vectors: int
    cubes: int
    kind: dict
    seconds: float
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_index_cube(reference, cube, *, relax=(), force: bool = False, what: str = "index them together",
                     ref_name: str | None = None, name: str | None = None):
    """The one comparability rule between an index's cubes (or an index's recorded fingerprint) and ``cube``:
    :func:`geodino.cube.compat.check_comparable`, raising :class:`IndexMismatchError`."""
    return check_comparable(reference, cube, relax=relax, force=force, what=what, a_name=ref_name, b_name=name,
                            hint="index and search cubes made the same way, or name the fields an index may mix "
                                 "(--relax FIELD)", error=IndexMismatchError)


def indexable_cube(path: str):
    """``(root attributes, opened cube)`` of a complete cube with a CRS (compact cubes come decoded)."""
    from geodino.cube.reading import open_cube

    attrs = read_attrs(path)
    check_feature_cube(path, attrs)
    if attrs.get(STATUS_ATTR) != "complete":
        raise CubeError(f"cube {path} is incomplete: finish it (rerun its `geodino embed` command) before indexing")
    if not attrs.get("proj:wkt2"):
        raise CubeError(f"cube {path} has no CRS (pixel coordinates): hits could not be placed on a map")
    return attrs, open_cube(path)  # a path or URL (s3://...)


def _check_index_output(out, overwrite: bool, storage_options: dict | None) -> None:
    """Refuse an output that is not, or not only, an index (or an index without ``overwrite``)."""
    if isinstance(out, str):  # an object-store URL
        keys = storage.list_keys(out, storage_options=storage_options)
        has_index = INDEX_FILE in keys
        foreign = bool(keys) and not has_index
    else:
        blocker = next((q for q in out.parents if q.is_file()), None)
        if blocker is not None:
            raise VectorIndexError(f"cannot write the index {out}: {blocker} is a file, not a folder; choose another "
                                   "-o")
        has_index = (out / INDEX_FILE).is_file()
        foreign = out.exists() and not has_index and (out.is_file() or any(out.iterdir()))
    if foreign:
        raise VectorIndexError(f"{out} exists and is not a geodino index: choose another -o")
    if has_index and not overwrite:
        raise VectorIndexError(f"{out} already holds an index: choose another -o, or pass --overwrite to replace it")


def _upload(tmp: Path, url: str, storage_options: dict | None) -> None:
    """Publish a finished index folder at ``url``: an index it replaces loses its ``index.json`` first (no longer
    complete), then the vectors and the patch table go up and ``index.json`` last. A failed upload removes what
    it put, so nothing that looks complete stays."""
    old = storage.list_keys(url, storage_options=storage_options)
    storage.delete(storage.join(url, INDEX_FILE), storage_options=storage_options)
    put = []
    try:
        for name in (VECTORS_FILE, PATCHES_FILE, INDEX_FILE):
            target = storage.join(url, name)
            put.append(target)
            storage.put_atomic(target, tmp / name, overwrite=True, storage_options=storage_options)
    except BaseException:
        for target in put:
            try:
                storage.delete(target, storage_options=storage_options)
            except Exception:  # noqa: BLE001 - the store may be what failed; index.json is absent either way
                pass
        raise
    for key in old:  # files of the index replaced that this one does not have
        if key not in (VECTORS_FILE, PATCHES_FILE, INDEX_FILE):
            storage.delete(storage.join(url, key), storage_options=storage_options)


def build_index(cubes: list[str | os.PathLike], out_dir: str | os.PathLike, *, vectors: str = "features",
                ivf_min: int = 50_000, train_max: int = 100_000, nprobe: int | None = None, threads: int = 0,
                overwrite: bool = False, relax=(), force: bool = False,
                storage_options: dict | None = None) -> IndexInfo:
    """Index the valid patch vectors of ``cubes`` (complete, comparable, one vector kind) into ``out_dir``.

    Cubes must be comparable with the first (:mod:`geodino.cube.compat`) except in the fields named in ``relax``
    (e.g. ``("radiometry",)`` for an index over several sensors on purpose); ``force`` accepts any difference.
    Both are recorded in ``index.json`` (``compat``).

    Vectors are L2-normalised (inner product = cosine similarity) and stored as float16.
    Below ``ivf_min`` vectors the index is an exact scan of the codes; from it on, an inverted file trained on at
    most ``train_max`` vectors sampled evenly, searched over ``nprobe`` lists (default 32: a query then scans
    ~8 sqrt(n) vectors; at 1M 1024-d vectors recall@100 was 1.000 and p95 22 ms in the benchmark).

    faiss's OpenMP thread count (``threads``; 0 leaves it as it is) is set for the build only and put back
    afterwards (it is process-wide).

    ``out_dir`` is a local folder or an object-store URL (``s3://bucket/idx``; ``storage_options``: obstore's
    settings, credentials otherwise from the environment).
    """
    import faiss

    before = faiss.omp_get_max_threads()
    try:
        return _build_index(cubes, out_dir, vectors, ivf_min, train_max, nprobe, threads, overwrite, relax, force,
                            storage_options)
    finally:
        faiss.omp_set_num_threads(before)


def _build_index(cubes, out_dir, vectors, ivf_min, train_max, nprobe, threads, overwrite, relax, force,
                 storage_options) -> IndexInfo:
    import faiss
    import geopandas as gpd
    import pandas as pd

    from geodino.cube.reading import is_count, unit_block

    t0 = time.perf_counter()
    if nprobe is not None and not is_count(nprobe):
        raise ConfigError(f"nprobe (--nprobe) must be a positive integer, got {nprobe!r}")
    remote = not storage.is_local(out_dir)
    out = cube_url(out_dir) if remote else Path(out_dir)
    _check_index_output(out, overwrite, storage_options)
    if not cubes:
        raise VectorIndexError("no cubes to index")
    source = vector_source(vectors)
    relax = normalize_relax(relax)
    opened, fp, kind, compared = [], None, None, []
    for p in map(str, cubes):
        attrs, ds = indexable_cube(p)
        k = source.kind(ds)
        if fp is None:
            fp, kind, first = fingerprint(ds), k, p
        res = check_index_cube(fp, ds, relax=relax, force=force, ref_name=f"cube {first}", name=f"cube {p}")
        if res:
            compared.append({"path": cube_url(p), **res.to_dict()})
        if k != kind:
            raise IndexMismatchError(f"cube {p} holds {k} vectors but cube {first} holds {kind}: one index holds one "
                                     "kind of vector; index them separately")
        opened.append((p, attrs, ds))
    n_total = sum(int(source.count(ds)) for _, _, ds in opened)
    if n_total == 0:
        raise VectorIndexError("the cubes hold no valid patches: nothing to index")
    if threads:
        faiss.omp_set_num_threads(threads)
    # an exact scan below ivf_min vectors, else an inverted file of ~4 sqrt(n) lists; vectors kept as float16
    # either way (the cube's own precision: 8-bit codes lose neighbours among near-identical patches, e.g. a
    # recall@50 of 0.7 on a desert scene)
    nlist = 0 if n_total < ivf_min else int(min(65536, max(16, 4 * np.sqrt(n_total))))
    factory = f"IVF{nlist},SQfp16" if nlist else "SQfp16"
    index = faiss.index_factory(kind.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if nlist:  # train the inverted file's centroids on an even sample, the same on every run
        rng = np.random.default_rng(0)
        frac = min(1.0, train_max / n_total)
        sample = [unit_block(v)[rng.random(len(v)) < frac] for _, _, ds in opened for v, _, _ in source.blocks(ds)]
        index.train(np.concatenate(sample))
        del sample
    nprobe = min(nlist, nprobe or 32)

    if remote:
        tmp = Path(tempfile.mkdtemp(prefix="geodino-index-"))
    else:
        tmp = out.parent / f".{out.name}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        tables, described, key = [], [], 0
        for ci, (p, attrs, ds) in enumerate(opened):
            gbox = cube_geobox(ds)
            x0, y0 = np.asarray(ds["x"].values), np.asarray(ds["y"].values)
            n_cube = 0
            for vec, rows, cols in source.blocks(ds):
                index.add(unit_block(vec))  # ids are insertion order: the sidecar's row numbers
                # the patch footprints (polygons of the 4 corners) in EPSG:4326
                foot = gpd.GeoSeries(cell_boxes(gbox, rows, cols), crs=gbox.crs.proj).to_crs("EPSG:4326")
                tables.append(gpd.GeoDataFrame(
                    {"key": np.arange(key, key + len(vec), dtype=np.int64), "cube": np.full(len(vec), ci, np.int32),
                     "row": rows.astype(np.int32), "col": cols.astype(np.int32), "x": x0[cols], "y": y0[rows]},
                    geometry=foot.values, crs="EPSG:4326"))
                key += len(vec)
                n_cube += len(vec)
            if n_cube == 0 and np.count_nonzero(ds["valid"].values):
                raise CubeError(f"cube {p} is damaged: it has valid patches but its tile_status says no tile is "
                                "written; re-create the cube or restore it from a copy")
            described.append({"path": cube_url(p), "cube_id": attrs["geodino"].get("cube_id"),
                              "crs": attrs.get("proj:code") or attrs["proj:wkt2"], "crs_wkt": attrs["proj:wkt2"],
                              "transform": list(gbox.affine)[:6], "shape": attrs.get("spatial:shape"),
                              "vectors": n_cube})
        faiss.write_index(index, str(tmp / VECTORS_FILE))
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        gpd.GeoDataFrame(table, geometry="geometry", crs="EPSG:4326").to_parquet(tmp / PATCHES_FILE)
        from geodino import __version__

        meta = {"format": FORMAT, "library": f"faiss {faiss.__version__}", "metric": "cosine (inner product of "
                "unit vectors)", "vectors": key, "kind": kind.to_dict(), "fingerprint": fp,
                "compat": {"rule": fp["rule"], "relaxed": list(relax), "forced": any(c["forced"] for c in compared),
                           "differences": compared}, "cubes": described,
                "params": {"factory": factory, "nlist": nlist, "nprobe": nprobe, "trained_on": min(n_total, train_max)},
                "geodino_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=1))  # last: marks the index complete
        nbytes = sum(f.stat().st_size for f in tmp.iterdir())
        if remote:
            _upload(tmp, out, storage_options)
        else:
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
    finally:  # a failed build leaves no folder (a local one that succeeded was renamed into place)
        shutil.rmtree(tmp, ignore_errors=True)
    return IndexInfo(str(out), key, len(opened), kind.to_dict(), time.perf_counter() - t0, nbytes)
