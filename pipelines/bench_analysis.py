#!/usr/bin/env python
"""Analysis out of core: time and peak RSS of each operation on cubes of growing size.

For each raster size (default 2,000² and 20,000² px, i.e. 125² and 1,250² patches) two synthetic feature cubes are
written the way `geodino embed` lays them out (512-px tiles, 16-px patches, float16, one tile core per chunk),
filled with seeded synthetic features of width --dim (384 by default: ViT-S; 1024 is ViT-L), a cloud of invalid
patches and a skipped tile; the second is the first with a changed square. Each operation then runs in a fresh
process and writes its full result to disk (a zarr map, a COG, a compact cube), and the table gives its time and
peak RSS. Peak RSS must agree within 10 % across sizes for every operation.

    python pipelines/bench_analysis.py                          # 2000 and 20000 px, in ./bench-analysis/
    python pipelines/bench_analysis.py --sizes 1000 3000 --dim 64 --workdir /tmp/b --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from synthetic import make_cube

OPS = ("baseline", "pca_rgb", "similarity", "cluster", "change", "compress", "cog")


def _store_map(m, path: Path) -> None:
    """Stream a lazy map into a zarr array, chunk by chunk (its result never sits in memory whole)."""
    import dask.array as da
    import zarr

    arr = zarr.create_array(str(path), shape=m.shape, chunks=m.data.chunksize, dtype=m.dtype, overwrite=True,
                            zarr_format=3)
    da.store(m.data, arr, lock=False)


def child(op: str, cube: str, other: str, out: str) -> None:
    """Run one operation in this fresh process and print its figures as JSON."""
    import warnings

    import geodino
    from geodino import analysis
    from geodino.cube.compact import compress
    from geodino.export import write_cog

    warnings.simplefilter("ignore")
    out_p = Path(out)
    t0 = time.perf_counter()
    ds = geodino.open_cube(cube)
    info = {}
    if op == "pca_rgb":
        _store_map(analysis.pca_rgb(ds), out_p / "pca_rgb.zarr")
    elif op == "similarity":
        h, w = ds.sizes["y"], ds.sizes["x"]
        pick = [(0.2, 0.2), (0.5, 0.5), (0.8, 0.3), (0.1, 0.9), (0.6, 0.8)]
        pts = [(float(ds.x[int(fx * (w - 1))]), float(ds.y[int(fy * (h - 1))])) for fy, fx in pick]
        res = analysis.similarity(ds, pts[:3], pts[3:], crs=ds.rio.crs, top_k=100)
        _store_map(res.map, out_p / "similarity.zarr")
        info["top_score"] = float(res.top.score.iloc[0])
    elif op == "cluster":
        _store_map(analysis.cluster(ds, 8), out_p / "cluster.zarr")
    elif op == "change":
        _store_map(analysis.change(ds, geodino.open_cube(other)), out_p / "change.zarr")
    elif op == "compress":
        s = compress(ds, out_p / "compact.zarr", k=64, overwrite=True)
        info.update(cosine_mean=s.cosine_mean, stored_bytes_per_patch=s.stored_bytes_per_patch)
    elif op == "cog":
        write_cog(analysis.pca_rgb(ds), out_p / "pca_rgb.tif", nodata=float("nan"), overwrite=True)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"op": op, "seconds": seconds, "peak_rss_mib": peak_kib / 1024, **info}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="raster sides in px")
    ap.add_argument("--dim", type=int, default=384, help="feature width")
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--workdir", default="bench-analysis")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=4, metavar=("OP", "CUBE", "OTHER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in a.sizes:
        t0 = time.perf_counter()
        cube = make_cube(work / f"cube_{size}_{a.dim}.zarr", size, a.dim, seed=0)
        other = make_cube(work / f"cube_{size}_{a.dim}_later.zarr", size, a.dim, seed=0, changed=True)
        gen = time.perf_counter() - t0
        out = work / f"out_{size}"
        out.mkdir(exist_ok=True)
        for op in a.ops:
            r = subprocess.run([sys.executable, __file__, "--child", op, str(cube), str(other), str(out)],
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(size=size, patches=-(-size // 16), dim=a.dim, generate_s=gen)
            rows.append(res)
    print(f"{'operation':>11} {'raster px':>10} {'patches':>10} {'seconds':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['op']:>11} {r['size']:>8}² {r['patches']:>8}² {r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    verdict = "PASS"
    spreads = {}
    for op in a.ops:
        peaks = [r["peak_rss_mib"] for r in rows if r["op"] == op]
        spreads[op] = (max(peaks) - min(peaks)) / min(peaks)
        if op != "baseline" and spreads[op] > 0.10:
            verdict = "FAIL"
    print("peak RSS spread across sizes: " + ", ".join(f"{op} {s * 100:.1f} %" for op, s in spreads.items())
          + f" ({verdict}: each must be <= 10 %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "rss_spread": spreads}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
