#!/usr/bin/env python
"""Approximate-nearest-neighbour libraries for `geodino index`: build time, bytes per vector, query latency and
recall@k against exact search, on patch-feature-like vectors.

Vectors are synthetic but shaped like DINOv3 patch features (no 1M real features fit this machine's budget): a
mixture of 2000 clusters in a 48-d latent space with a power-law spectrum, mapped into D dimensions by a random
matrix, plus isotropic noise, L2-normalised; then stored as float16 (full features, D=1024) or as int8 after a
random projection to 64-d (standing in for the compact product). Queries are fresh draws of the same mixture.
Similarity is cosine; the exact top-k is a chunked float32 matrix product over exactly the stored values.

Each library gets one index configuration per vector kind and a grid of its search-time knob (HNSW ``ef``, IVF
``nprobe``); the table prints every grid point and marks the cheapest one that reaches the recall goal.

    python pipelines/bench_index.py                                   # 1M vectors, both kinds, every library
    python pipelines/bench_index.py --n 20000 --queries 50 --kinds i8x64 --libs usearch faiss --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = {"i8x64": (64, "int8"), "f16x1024": (1024, "float16")}
LIBS = ("usearch", "faiss", "lancedb", "hnswlib")
GOAL_RECALL, GOAL_P95_MS = 0.95, 50.0


# -- data -------------------------------------------------------------------------------------------
def _mixture(n: int, rng: np.random.Generator, centers: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    which = rng.integers(0, len(centers), n)
    return centers[which] + rng.standard_normal((n, centers.shape[1])).astype(np.float32) * spectrum * 0.35


def make_vectors(n: int, nq: int, kind: str, seed: int = 0, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(data [n, D], queries [nq, D]) of ``kind`` (float16 or int8), generated in chunks to bound memory."""
    dim, dtype = KINDS[kind]
    rng = np.random.default_rng(seed)
    latent = 48
    spectrum = (1.0 / np.arange(1, latent + 1) ** 0.7).astype(np.float32)
    centers = (rng.standard_normal((2000, latent)) * spectrum).astype(np.float32)
    mix = rng.standard_normal((latent, 1024)).astype(np.float32) / np.sqrt(latent)
    proj = (rng.standard_normal((1024, dim)) / np.sqrt(dim)).astype(np.float32) if dim != 1024 else None

    def draw(m: int) -> np.ndarray:
        z = _mixture(m, rng, centers, spectrum) @ mix
        z += rng.standard_normal(z.shape).astype(np.float32) * 0.08
        if proj is not None:
            z = z @ proj
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        if dtype == "int8":
            return np.clip(np.rint(z * 127 / np.abs(z).max(axis=1, keepdims=True)), -127, 127).astype(np.int8)
        return z.astype(dtype)

    data = np.empty((n, dim), dtype=dtype)
    for i in range(0, n, chunk):
        data[i:i + chunk] = draw(min(chunk, n - i))
    return data, draw(nq)


def unit_f32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Ids of the k highest cosine similarities, by brute force in float32."""
    q = unit_f32(queries)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for i in range(0, len(data), chunk):
        s = q @ unit_f32(data[i:i + chunk]).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.arange(i, i + s.shape[1])[None, :].repeat(len(q), 0)], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / truth.shape[1]
                          for f, t in zip(found, truth)]))


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- libraries: build(data, workdir) -> (searcher(q, k, knob) -> ids, bytes, knob grid, config) ------
def build_usearch(data, work: Path, threads: int):
    from usearch.index import Index

    dtype = "i8" if data.dtype == np.int8 else "f16"
    index = Index(ndim=data.shape[1], metric="cos", dtype=dtype, connectivity=16, expansion_add=128)
    index.add(np.arange(len(data), dtype=np.uint64), data, threads=threads)
    index.save(str(work / "usearch.idx"))

    def search(q, k, ef):
        index.expansion_search = ef
        return np.asarray(index.search(q, k, threads=1).keys, dtype=np.int64).reshape(1, -1)

    return search, du(work / "usearch.idx"), [100, 128, 192, 256, 384, 512], f"HNSW M=16 efC=128 {dtype}"


def build_faiss(data, work: Path, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    x = unit_f32(data)
    n, d = x.shape
    nlist = int(min(4096, max(16, 4 * np.sqrt(n))))
    codes = os.environ.get("BENCH_FAISS_CODES", "SQfp16")  # what geodino.index stores (SQ8: half the bytes)
    index = faiss.index_factory(d, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    train = x[np.random.default_rng(1).choice(n, min(n, 40 * nlist, 100_000), replace=False)]
    index.train(train)
    for i in range(0, n, 100_000):
        index.add(x[i:i + 100_000])
    del x
    faiss.write_index(index, str(work / "faiss.idx"))
    ivf = faiss.extract_index_ivf(index)

    def search(q, k, nprobe):
        faiss.omp_set_num_threads(1)
        ivf.nprobe = nprobe
        return index.search(unit_f32(q), k)[1]

    return search, du(work / "faiss.idx"), [8, 16, 32, 64, 128, 256], f"IVF{nlist},{codes} (inner product)"


def build_lancedb(data, work: Path, threads: int):
    import lancedb
    import pyarrow as pa

    x = data.astype(np.float16) if data.dtype == np.float16 else unit_f32(data)
    d = x.shape[1]
    db = lancedb.connect(str(work / "lance"))
    vtype = pa.float16() if x.dtype == np.float16 else pa.float32()

    def batches():
        for i in range(0, len(x), 100_000):
            flat = pa.array(x[i:i + 100_000].reshape(-1), type=vtype)
            yield pa.record_batch([pa.array(np.arange(i, i + len(flat) // d)),
                                   pa.FixedSizeListArray.from_arrays(flat, d)], names=["id", "vector"])

    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(vtype, d))])
    table = db.create_table("v", data=batches(), schema=schema)
    parts = int(min(1024, max(8, np.sqrt(len(x)))))
    table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                       num_partitions=parts)

    def search(q, k, nprobes):
        res = table.search(q[0].astype(np.float32)).metric("cosine").limit(k).nprobes(nprobes) \
            .select(["id", "_distance"]).to_arrow()
        return np.asarray(res["id"], dtype=np.int64).reshape(1, -1)

    return search, du(work / "lance"), [4, 8, 16, 32, 64], f"IVF{parts}_HNSW_SQ (cosine), vectors {vtype}"


def build_hnswlib(data, work: Path, threads: int):
    import hnswlib

    if data.shape[1] > 256:
        raise RuntimeError("float32 only: 4 KB per 1024-d vector before the graph; not run at this size")
    x = unit_f32(data)
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=128, M=16)
    index.add_items(x, np.arange(len(x)), num_threads=threads)
    del x
    index.save_index(str(work / "hnswlib.idx"))
    index.set_num_threads(1)

    def search(q, k, ef):
        index.set_ef(max(ef, k))
        return index.knn_query(unit_f32(q), k)[0].astype(np.int64)

    return search, du(work / "hnswlib.idx"), [100, 128, 192, 256, 384, 512], "HNSW M=16 efC=128 float32"


BUILDERS = {"usearch": build_usearch, "faiss": build_faiss, "lancedb": build_lancedb, "hnswlib": build_hnswlib}


def measure(search, queries: np.ndarray, truth: np.ndarray, k: int, knob: int) -> dict:
    ids, times = [], []
    search(queries[:1], k, knob)  # warm up
    for q in queries:
        t = time.perf_counter()
        ids.append(search(q[None], k, knob)[0][:k])
        times.append((time.perf_counter() - t) * 1e3)
    found = np.full((len(ids), k), -1, np.int64)
    for i, r in enumerate(ids):
        found[i, :len(r)] = r
    return {"knob": knob, "recall": recall(found, truth), "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95))}


def child(lib: str, kind: str, work: Path, k: int, threads: int) -> dict:
    """Build and query one library in this (fresh) process: faiss segfaults in ``index_factory`` once usearch's
    SIMD kernels (numkong) are loaded in the same process, and a fresh process also gives each library the same
    memory to start from."""
    data = np.load(work / f"{kind}-data.npy", mmap_mode="r")
    queries, truth = np.load(work / f"{kind}-queries.npy"), np.load(work / f"{kind}-truth.npy")
    lib_dir = Path(tempfile.mkdtemp(prefix=f"{lib}-", dir=work))
    row: dict = {"kind": kind, "lib": lib}
    try:
        t = time.perf_counter()
        search, nbytes, grid, config = BUILDERS[lib](np.asarray(data), lib_dir, threads)
        row.update(config=config, build_s=time.perf_counter() - t, bytes_per_vector=nbytes / len(data))
        row["grid"] = [measure(search, queries, truth, k, knob) for knob in grid]
    except Exception as e:  # a library missing or refusing a configuration is a row, not a crash
        row["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(lib_dir, ignore_errors=True)
    return row


def run(args) -> dict:
    results: dict = {"n": args.n, "queries": args.queries, "k": args.k, "threads": args.threads, "rows": []}
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.workdir))
    try:
        for kind in args.kinds:
            t = time.perf_counter()
            data, queries = make_vectors(args.n, args.queries, kind, seed=args.seed)
            np.save(work / f"{kind}-data.npy", data)
            np.save(work / f"{kind}-queries.npy", queries)
            np.save(work / f"{kind}-truth.npy", exact_topk(data, queries, args.k))
            del data, queries
            gc.collect()
            print(f"# {kind}: {args.n} vectors generated + exact top-{args.k} in {time.perf_counter() - t:.1f} s",
                  flush=True)
            for lib in args.libs:
                r = subprocess.run([sys.executable, __file__, "--child", lib, kind, str(work), "--k", str(args.k),
                                    "--threads", str(args.threads)], capture_output=True, text=True,
                                   env={**os.environ, "RUST_LOG": "error"})
                lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if r.returncode == 0 and lines else \
                    {"kind": kind, "lib": lib, "error": f"exit {r.returncode}: {r.stderr.strip()[-200:]}"}
                if "grid" in row:  # the cheapest knob that reaches the recall goal (else the best recall)
                    ok = [g for g in row["grid"] if g["recall"] >= GOAL_RECALL]
                    row["chosen"] = ok[0] if ok else max(row["grid"], key=lambda g: g["recall"])
                results["rows"].append(row)
                print_row(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_row(row: dict, flush: bool = False) -> None:
    if "error" in row:
        print(f"| {row['kind']} | {row['lib']} | - | - | - | - | - | - | {row['error'][:80]} |", flush=flush)
        return
    for g in row["grid"]:
        mark = " **chosen**" if g == row["chosen"] else ""
        print(f"| {row['kind']} | {row['lib']} | {row['config']} | {row['build_s']:.1f} | "
              f"{row['bytes_per_vector']:.0f} | {g['knob']} | {g['recall']:.3f} | {g['p50_ms']:.2f} | "
              f"{g['p95_ms']:.2f} |{mark}", flush=flush)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--libs", nargs="+", default=list(LIBS), choices=list(LIBS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for building")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", nargs=3, metavar=("LIB", "KIND", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        lib, kind, work = args.child
        print(json.dumps(child(lib, kind, Path(work), args.k, args.threads)))
        return 0
    print(f"# {args.n} vectors, {args.queries} single-vector queries, recall@{args.k} vs exact cosine search; "
          f"goals recall >= {GOAL_RECALL}, p95 < {GOAL_P95_MS:g} ms; build on {args.threads} threads, "
          "queries on 1")
    print("| vectors | library | index | build s | bytes/vector | knob | recall@k | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
