#!/usr/bin/env python
"""`geodino explore` at scale: start-up, query and tile latency, and peak RSS of the server, on synthetic cubes of
0.1 M and ~1 M valid patches of 1024 float16 features (a Sentinel-2 tile at 10 m is ~470 k patches).

Each cube is written under a temporary folder through geodino's own cube writer (512-px tiles: chunks of 32 x 32
patches, shards of one tile row by up to 16 tiles, as `geodino embed` writes them) and deleted afterwards. Its
features mimic land cover: a Voronoi partition of the grid into regions of 48 classes, each class a centre in a
32-d latent space with a power-law spectrum, mapped to 1024-d by a random matrix, plus per-patch latent and
isotropic noise; about 2 % of patches are nodata.

The server is the real one: `python -m geodino explore CUBE --port 0` in a subprocess (start-up = from launch to
the page's first answer). Each query is what a click does: POST /api/query with a random valid patch as the
positive (every third query adds a negative) and k = 100, then the heat-map tiles of a 1280 x 800 viewport
around the clicked patch at a zoom where one patch covers ~4 screen pixels, fetched 6 at a time as a browser does.
Peak RSS is the server's VmHWM. Recall@k compares the hits with the exact top-k of `geodino.analysis.similarity`
(a full scan of the cube, so only a few queries).

    python pipelines/bench_explore.py --workdir /tmp/bx --generate-only            # write the cubes (~3 min)
    flock -x /tmp/geodino-cpu.lock python pipelines/bench_explore.py --workdir /tmp/bx   # time them, alone
    rm -rf /tmp/bx                                                                   # 0.1 M and 1.05 M patches
    python pipelines/bench_explore.py --sizes 320 --queries 20 --recall 2          # a quick run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D, CHUNK, CLASSES, LATENT = 1024, 32, 48, 32


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_cube(path: Path, side: int, seed: int = 0) -> int:
    """A ``side`` x ``side`` patch cube of land-cover-like features; returns its valid patch count."""
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from pyproj import CRS

    from geodino.cube.store import CubeLayout, CubeWriter, create_cube, default_shard, finalize_cube
    from tests.cubes import PROVENANCE

    rng = np.random.default_rng(seed)
    spectrum = (1.0 / np.arange(1, LATENT + 1)) ** 0.7
    centres = rng.normal(size=(CLASSES, LATENT)) * spectrum
    lift = rng.normal(size=(LATENT, D)).astype(np.float32) / math.sqrt(LATENT)
    n_seeds = max(16, side * side // 400)  # regions of ~400 patches
    seeds = rng.uniform(0, side, size=(n_seeds, 2))
    seed_class = rng.integers(0, CLASSES, n_seeds)
    transform = Affine(160.0, 0, 300000.0, 0, -160.0, 4000000.0)
    grid = GeoBox((side, side), transform, CRS.from_epsg(32633).to_wkt())
    nt = -(-side // CHUNK)
    yb = tuple((transform.f + r * CHUNK * transform.e, transform.f + min(side, (r + 1) * CHUNK) * transform.e)
               for r in range(nt))
    xb = tuple((transform.c + c * CHUNK * transform.a, transform.c + min(side, (c + 1) * CHUNK) * transform.a)
               for c in range(nt))
    prov = json.loads(json.dumps(PROVENANCE))
    prov["model"]["embed_dim"] = D
    prov["tiling"] = {"tile": CHUNK * 16, "halo": 0, "patch": 16, "window": CHUNK * 16, "tiles": [nt, nt]}
    create_cube(path, CubeLayout(grid, CHUNK, yb, xb, default_shard((nt, nt))), D, "float16", prov)
    writer = CubeWriter(path)
    from scipy.spatial import cKDTree

    tree = cKDTree(seeds)
    total = 0
    for ty in range(nt):
        for tx in range(nt):
            rows, cols = slice(ty * CHUNK, min(side, (ty + 1) * CHUNK)), slice(tx * CHUNK, min(side, (tx + 1) * CHUNK))
            yy, xx = np.mgrid[rows, cols]
            h, w = yy.shape
            _, nearest = tree.query(np.stack([yy.ravel() + 0.5, xx.ravel() + 0.5], axis=1))
            cls = seed_class[nearest]
            lat = centres[cls] + 0.35 * rng.normal(size=(h * w, LATENT)) * spectrum
            f = lat.astype(np.float32) @ lift + 0.15 * rng.standard_normal((h * w, D), dtype=np.float32) + 0.2
            valid = (rng.random(h * w) > 0.02).reshape(h, w)
            feats = np.where(valid[..., None], f.reshape(h, w, D), np.nan)
            writer.write_tile(ty, tx, rows, cols, feats, valid, np.nanmean(feats, axis=(0, 1)))
            total += int(valid.sum())
    finalize_cube(path)
    return total


def _lonlat(transform, crs, rows, cols):
    from pyproj import Transformer

    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return t.transform(x, y)


def _tiles_around(lon: float, lat: float, zoom: int, width: int = 1280, height: int = 800):
    n = 2 ** zoom
    fx = (lon + 180) / 360 * n
    fy = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    hx, hy = width / 512, height / 512
    return [(zoom, x, y) for x in range(math.floor(fx - hx), math.floor(fx + hx) + 1)
            for y in range(math.floor(fy - hy), math.floor(fy + hy) + 1) if 0 <= x < n and 0 <= y < n]


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def bench_cube(path: Path, n_valid: int, args) -> dict:
    import httpx

    import geodino

    ds = geodino.open_cube(path)
    transform, crs = ds.rio.transform(), ds.rio.crs
    valid = np.asarray(ds["valid"].values)
    rng = np.random.default_rng(1)
    rows, cols = np.nonzero(valid)
    pick = rng.choice(len(rows), size=args.queries + 1, replace=False)
    lons, lats = _lonlat(transform, crs, rows[pick], cols[pick])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "geodino", "explore", str(path), "--port", "0",
                             "--vectors", args.vectors], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the server did not start: {proc.stderr.read()[-2000:]}")
        client = httpx.Client(base_url=url, timeout=120)
        info = client.get("api/session").json()
        startup = time.perf_counter() - t0
        # one patch ~ 4 screen px: 160 m patches -> 40 m per px -> zoom ~ 12 at mid latitudes
        zoom = int(round(math.log2(40075016.7 * math.cos(math.radians(float(np.mean(lats)))) / 256 / 40.0)))
        q_ms, t_ms, total_ms, recall, server_ms = [], [], [], [], []
        pool = cf.ThreadPoolExecutor(6)
        for i in range(args.queries + 1):
            body = {"positives": [[lons[i], lats[i]]], "k": 100}
            if i % 3 == 2:
                body["negatives"] = [[lons[i - 1], lats[i - 1]]]
            a = time.perf_counter()
            r = client.post("api/query", json=body)
            r.raise_for_status()
            res = r.json()
            b = time.perf_counter()
            tiles = _tiles_around(lons[i], lats[i], zoom)

            def get(t, qid=res["id"]):
                s = time.perf_counter()
                resp = client.get(f"tiles/heat/{t[0]}/{t[1]}/{t[2]}.png", params={"query": qid})
                resp.raise_for_status()
                return time.perf_counter() - s

            per_tile = list(pool.map(get, tiles))
            c = time.perf_counter()
            if i == 0:
                continue  # the first query warms caches and imports: reported separately
            q_ms.append((b - a) * 1e3)
            t_ms.extend(x * 1e3 for x in per_tile)
            total_ms.append((c - a) * 1e3)
            server_ms.append(res["seconds"] * 1e3)
            if len(recall) < args.recall:
                from geodino import analysis

                exact = analysis.similarity(ds, [(lons[i], lats[i])], body.get("negatives") and
                                            [tuple(body["negatives"][0])], crs="EPSG:4326", top_k=100).top
                want = set(zip(exact["row"], exact["col"]))
                got = {(h["row"], h["col"]) for h in res["hits"]}
                recall.append(len(want & got) / len(want))
        rss = _rss_peak_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    pct = lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan")  # noqa: E731
    return {"valid_patches": n_valid, "features": D, "vectors": info["vectors"], "startup_s": startup,
            "session_startup_s": info["startup_s"], "memory_mb": info["memory_mb"],
            "query_p50_ms": pct(q_ms, 50), "query_p95_ms": pct(q_ms, 95), "server_query_p50_ms": pct(server_ms, 50),
            "tile_p50_ms": pct(t_ms, 50), "tile_p95_ms": pct(t_ms, 95), "tiles_per_view": len(tiles),
            "click_p50_ms": pct(total_ms, 50), "click_p95_ms": pct(total_ms, 95), "queries": len(q_ms),
            "recall_at_100": float(np.mean(recall)) if recall else float("nan"), "recall_queries": len(recall),
            "rss_peak_mib": rss / 1024, "zoom": zoom}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 1024], help="cube sides in patches")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--recall", type=int, default=3, help="queries checked against the exact full scan")
    ap.add_argument("--vectors", default="compact", choices=["auto", "full", "compact"])
    ap.add_argument("--workdir", default=None, help="folder for the synthetic cubes, kept and reused between "
                                                       "runs (default: a temporary folder, deleted at the end)")
    ap.add_argument("--generate-only", action="store_true", help="write the cubes into --workdir and stop (so "
                                                                 "that timing runs alone under the lock)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="bench-explore-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for side in args.sizes:
            path = work / f"cube{side}.zarr"
            done = path / "zarr.json"
            if done.exists() and json.loads(done.read_text())["attributes"].get("geodino_status") == "complete":
                import geodino

                n = int(np.asarray(geodino.open_cube(path)["valid"].values).sum())
            else:
                shutil.rmtree(path, ignore_errors=True)
                t0 = time.perf_counter()
                n = write_cube(path, side)
                print(f"wrote {path.name}: {n} valid patches x {D} float16 in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
            if args.generate_only:
                continue
            rows.append(bench_cube(path, n, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if not keep:
                shutil.rmtree(path)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.generate_only:
        return
    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} cores); {args.vectors} vectors; k = 100; "
          f"{rows[0]['tiles_per_view'] if rows else '?'} heat tiles per 1280x800 view\n")
    print("| valid patches | start-up s | query p50 / p95 ms | tile p50 / p95 ms | click + view p50 / p95 ms | "
          "recall@100 | vectors MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['valid_patches']:,} | {r['startup_s']:.1f} | {r['query_p50_ms']:.0f} / {r['query_p95_ms']:.0f} | "
              f"{r['tile_p50_ms']:.0f} / {r['tile_p95_ms']:.0f} | {r['click_p50_ms']:.0f} / {r['click_p95_ms']:.0f} | "
              f"{r['recall_at_100']:.3f} ({r['recall_queries']}) | {r['memory_mb']:.0f} | {r['rss_peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
