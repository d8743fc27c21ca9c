#!/usr/bin/env python
"""Heads on cubes: time and peak RSS of `geodino train` + `geodino predict` on synthetic cubes of growing size.

Cubes are written the way `geodino embed` lays them out (pipelines/synthetic.py: 512-px tiles, 16-px patches,
float16, a cloud of invalid patches and a skipped tile) without running a model, with planted labels: class 1
where the first of the smooth fields mixed into the features is positive (a deterministic function of the
features, so a linear head can recover it), written as a label GeoTIFF at patch resolution. Every step runs in a
fresh process (peak RSS is that process's VmHWM):

* ``predict``: one logistic-regression head (trained once on the smallest cube) applied to each cube, class map and
  probabilities written as COGs: peak RSS must agree within 10 % across sizes;
* ``train+predict``: at ``--time-size`` (default 10,000² px), align the labels, train the head (``--heads``,
  default ``linear``: BatchNorm + 1x1 conv at ``--label-scale`` cells per patch, 300 iterations; and ``logreg``)
  and predict the whole cube; the table gives each stage's seconds and the map's accuracy against the planted
  labels on valid patches.

    python pipelines/bench_predict.py                              # 2000 and 20000 px (RSS), 10000 px (time)
    python pipelines/bench_predict.py --sizes 1000 3000 --time-size 2000 --dim 64 --workdir /tmp/b --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from synthetic import make_cube


def planted_raster(path: Path, size: int, dim: int, seed: int = 0) -> Path:
    """The planted labels of ``make_cube(size, dim, seed)`` at patch resolution: sign of its first field (the
    same seeded draws as the cube's)."""
    import rasterio
    from affine import Affine

    if path.exists():
        return path
    rng0 = np.random.default_rng(seed)
    rank = 8
    rng0.normal(size=(rank, dim))  # the mixing matrix, drawn first
    freq = rng0.uniform(0.01, 0.2, (rank, 2))
    phase = rng0.uniform(0, 6.3, (rank, 2))
    n = math.ceil(size / 16)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    field = np.sin(yy * freq[0, 0] + phase[0, 0]) * np.cos(xx * freq[0, 1] + phase[0, 1])
    prof = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint8", crs="EPSG:32633",
                transform=Affine(160, 0, 300000, 0, -160, 5000000), nodata=255, tiled=True, blockxsize=256,
                blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **prof) as r:
        r.write((field > 0).astype(np.uint8)[None])
    return path


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _accuracy(map_path: Path, labels: Path, scale: int) -> float:
    import rasterio

    with rasterio.open(map_path) as m, rasterio.open(labels) as lab:
        pred = m.read(1)
        truth = np.repeat(np.repeat(lab.read(1), scale, 0), scale, 1)
    keep = pred != 255
    return float((pred[keep] == truth[keep]).mean())


def _small_split(ds) -> dict:
    """The default split (blocks and a ring one model window wide: 32 patches at 512-px tiles) needs a cube a few
    windows across; on the smoke test's small cubes, smaller blocks and ring (the card then says "optimistic")."""
    return {} if min(ds.sizes["y"], ds.sizes["x"]) >= 4 * 32 else {"block": 8, "buffer": 4}


def child(op: str, cube: str, labels: str, out: str, head: str, scale: int) -> None:
    import warnings

    import geodino
    from geodino.heads import align_labels, predict_map, save_head, train_on_cube

    warnings.simplefilter("ignore")
    out_p = Path(out)
    info: dict = {"op": op}
    t0 = time.perf_counter()
    if op == "fit":  # the head the RSS rows apply
        ds = geodino.open_cube(cube)
        h = train_on_cube(ds, align_labels(ds, labels), head="logreg", **_small_split(ds))
        save_head(h, out_p / "logreg.safetensors", overwrite=True)
    elif op == "predict":
        res = predict_map(cube, out_p / "logreg.safetensors", out_p / f"map_{Path(cube).stem}.tif", overwrite=True)
        info["chunks"] = res.chunks
    elif op == "train+predict":
        ds = geodino.open_cube(cube)
        grid = align_labels(ds, labels, scale=scale)
        info["align_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        h = train_on_cube(ds, grid, head=head, **({"iterations": 300, "lr": 1e-2} if head == "linear" else {}),
                          **_small_split(ds))
        info["train_s"] = time.perf_counter() - t1
        info["valid_accuracy"] = h.card["metrics"]["valid"]["accuracy"]["value"]
        info["split_optimistic"] = h.card["split"]["optimistic"]
        t2 = time.perf_counter()
        res = predict_map(ds, h, out_p / f"map_{head}.tif", overwrite=True)
        info["predict_s"] = time.perf_counter() - t2
        info["map_accuracy"] = _accuracy(res.class_map, Path(labels), res.scale)
    info.update(seconds=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib())
    print(json.dumps(info))


def _run(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="raster sides in px (RSS rows)")
    ap.add_argument("--time-size", type=int, default=10000, help="raster side of the train+predict rows (0: none)")
    ap.add_argument("--heads", nargs="+", default=["linear", "logreg"], help="heads of the train+predict rows")
    ap.add_argument("--label-scale", type=int, default=4, help="label cells per patch side for pixel heads")
    ap.add_argument("--dim", type=int, default=384, help="feature width (384: ViT-S, 1024: ViT-L)")
    ap.add_argument("--workdir", default="bench-predict")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child[:5], int(a.child[5]))
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cubes = {}
    for size in sorted(set(a.sizes + ([a.time_size] if a.time_size else []))):
        t0 = time.perf_counter()
        cubes[size] = (make_cube(work / f"cube_{size}_{a.dim}.zarr", size, a.dim, seed=0),
                       planted_raster(work / f"planted_{size}_{a.dim}.tif", size, a.dim, seed=0))
        print(f"cube {size}² px ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    smallest = min(a.sizes)
    _run(["fit", str(cubes[smallest][0]), str(cubes[smallest][1]), str(work), "logreg", "1"])
    rows = []
    for size in a.sizes:
        r = _run(["predict", str(cubes[size][0]), str(cubes[size][1]), str(work), "logreg", "1"])
        rows.append({**r, "size": size, "patches": math.ceil(size / 16), "head": "logreg"})
    if a.time_size:
        for head in a.heads:
            scale = a.label_scale if head in ("linear", "dpt") else 1
            r = _run(["train+predict", str(cubes[a.time_size][0]), str(cubes[a.time_size][1]), str(work), head,
                      str(scale)])
            rows.append({**r, "size": a.time_size, "patches": math.ceil(a.time_size / 16), "head": head,
                         "label_scale": scale})
    print(f"{'step':>14} {'head':>7} {'raster px':>10} {'patches':>9} {'align s':>8} {'train s':>8} "
          f"{'predict s':>9} {'total s':>8} {'peak RSS MiB':>13} {'map acc':>8}")
    for r in rows:
        def f(k, fmt="8.1f"):
            return format(r[k], fmt) if k in r else "-"
        print(f"{r['op']:>14} {r['head']:>7} {r['size']:>8}² {r['patches']:>7}² {f('align_s'):>8} "
              f"{f('train_s'):>8} {f('predict_s'):>9} {r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f} "
              f"{f('map_accuracy', '8.4f'):>8}")
    peaks = [r["peak_rss_mib"] for r in rows if r["op"] == "predict"]
    spread = (max(peaks) - min(peaks)) / min(peaks)
    verdict = "PASS" if spread <= 0.10 else "FAIL"
    print(f"predict peak RSS spread across sizes: {spread * 100:.1f} % ({verdict}: must be <= 10 %); "
          f"feature width {a.dim}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "rss_spread": spread, "dim": a.dim}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
