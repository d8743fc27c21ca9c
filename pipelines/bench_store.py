"""Objects, bytes and single-patch read time of a cube, one object per tile core vs tile cores in shards.

Writes the cube layout of a ``--size`` px scene (default 10980, a Sentinel-2 tile; 512-px tiles, 16-px patches)
twice, unsharded and with geodino's default shards, filled with synthetic float16 features of width ``--dim``
(1024, ViT-L) through the writer `geodino embed` uses (no model runs), then counts the objects and bytes and
times reading one patch's feature vector (a fresh store per read: metadata, then the chunk; in a sharded
cube also the shard's index). ``--store s3-local`` does the same on the local S3 server of the tests (moto,
needs the dev extra), where each object read is an HTTP request.

    python pipelines/bench_store.py                      # 10980 px, D = 1024, local files
    python pipelines/bench_store.py --store s3-local --dim 256
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def layout_for(size: int, tile: int, shard: tuple[int, int] | None):
    from geodino.cube.store import CubeLayout, default_shard
    from affine import Affine
    from odc.geo.geobox import GeoBox

    patch = 16
    ph = pw = size // patch
    n = tile // patch
    nt = math.ceil(ph / n)
    from pyproj import CRS

    grid = GeoBox((ph, pw), Affine(10 * patch, 0, 300000, 0, -10 * patch, 5000000), CRS.from_epsg(32633).to_wkt())
    ys = tuple((5000000 - i * n * 160.0, 5000000 - min((i + 1) * n, ph) * 160.0) for i in range(nt))
    xs = tuple((300000 + i * n * 160.0, 300000 + min((i + 1) * n, pw) * 160.0) for i in range(nt))
    return CubeLayout(grid, n, ys, xs, shard or default_shard((nt, nt)))


def write_cube(url: str, layout, dim: int, seed: int = 0) -> float:
    """Create the cube and write every tile (whole shards when sharded); returns seconds."""
    from geodino.cube.store import CubeWriter, TileResult, create_cube, finalize_cube

    t0 = time.perf_counter()
    create_cube(url, layout, dim, "float16", {"settings": {}, "benchmark": "bench_store"})
    w = CubeWriter(url)
    nty, ntx = layout.tiles
    ph, pw = layout.patch_grid.shape.yx
    n = layout.chunk
    sy, sx = w.shard
    rng = np.random.default_rng(seed)
    for sr in range(math.ceil(nty / sy)):
        for sc in range(math.ceil(ntx / sx)):
            tiles = []
            for ty in range(sr * sy, min((sr + 1) * sy, nty)):
                for tx in range(sc * sx, min((sc + 1) * sx, ntx)):
                    rows, cols = slice(ty * n, min((ty + 1) * n, ph)), slice(tx * n, min((tx + 1) * n, pw))
                    h, wd = rows.stop - rows.start, cols.stop - cols.start
                    f = rng.standard_normal((h, wd, dim), dtype=np.float32)
                    tiles.append(TileResult(ty, tx, rows, cols, f, np.ones((h, wd), bool), f.mean(axis=(0, 1))))
            w.write_shard(tiles)
    finalize_cube(url)
    return time.perf_counter() - t0


def read_patch_ms(url: str, n: int, seed: int = 1) -> tuple[float, float]:
    """Median and p95 ms of reading one patch's feature vector through a freshly opened store."""
    import zarr

    from geodino.cube.storage import zarr_store

    shape = zarr.open_group(zarr_store(url), mode="r")["features"].shape
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n):
        y, x = int(rng.integers(shape[1])), int(rng.integers(shape[2]))
        t0 = time.perf_counter()
        v = zarr.open_array(zarr_store(url), path="features", mode="r")[:, y, x]
        times.append((time.perf_counter() - t0) * 1e3)
        assert v.shape == (shape[0],)
    return float(np.median(times)), float(np.percentile(times, 95))


@contextlib.contextmanager
def store_root(kind: str):
    if kind == "local":
        with tempfile.TemporaryDirectory(prefix="bench_store-") as d:
            yield d
        return
    from tests.servers import S3Server

    with S3Server() as s3:
        os.environ.update(s3.env)
        s3.create_bucket("bench")
        yield "s3://bench"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10980, help="scene side in px")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--dim", type=int, default=1024, help="features per patch (1024: ViT-L)")
    ap.add_argument("--reads", type=int, default=100)
    ap.add_argument("--store", choices=["local", "s3-local"], default="local")
    args = ap.parse_args(argv)
    from geodino.cube.storage import join, list_keys, store_nbytes

    rows = []
    with store_root(args.store) as root:
        for name, shard in (("one object per tile core", (1, 1)), ("sharded (default)", None)):
            lay = layout_for(args.size, args.tile, shard)
            url = join(root, f"{'sharded' if shard is None else 'plain'}.zarr")
            secs = write_cube(url, lay, args.dim)
            keys = list_keys(url)
            med, p95 = read_patch_ms(url, args.reads)
            rows.append((name, f"{lay.shard[0]}x{lay.shard[1]}", len(keys), store_nbytes(url), secs, med, p95))
    nt = lay.tiles
    print(f"scene {args.size} px, {args.tile}-px tiles ({nt[0]} x {nt[1]} tiles), D = {args.dim}, float16, "
          f"store: {args.store}")
    print(f"| layout | tiles per shard | objects | MB | write s | read 1 patch ms (median / p95) |")
    print("|---|---|---|---|---|---|")
    for name, sh, n, b, s, med, p95 in rows:
        print(f"| {name} | {sh} | {n} | {b / 1e6:.1f} | {s:.1f} | {med:.2f} / {p95:.2f} |")


if __name__ == "__main__":
    main()
