#!/usr/bin/env python
"""Wall time of `geodino geobench run --tasks all` on the 12 synthetic GEO-Bench tasks, per task and budget.

Writes the 12 tasks in GEO-Bench's on-disk format (tests/geobench/synth.py: images whose labels follow their
colours), runs the CLI in a fresh process with a tiny random-weight backbone on the CPU and prints a table of
each task's wall time (features, heads) from results.json. With a tiny backbone the heads dominate, which is what
the budgets change. The exit code is the CLI's.

    python pipelines/bench_geobench.py                         # --budget quick, in $TMPDIR/bench-geobench/
    python pipelines/bench_geobench.py --budget full --samples 48 --workdir /tmp/g --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}
# (task, kind, classes, dtype) for the 12 tasks
TASKS = [("m-bigearthnet", "multilabel", 43, "int16"), ("m-brick-kiln", "classification", 2, "float32"),
         ("m-eurosat", "classification", 10, "int16"), ("m-forestnet", "classification", 12, "uint8"),
         ("m-pv4ger", "classification", 2, "uint8"), ("m-so2sat", "classification", 7, "float32"),
         ("m-cashew-plant", "segmentation", 7, "uint8"), ("m-chesapeake", "segmentation", 7, "uint8"),
         ("m-NeonTree", "segmentation", 2, "uint8"), ("m-nz-cattle", "segmentation", 2, "uint8"),
         ("m-pv4ger-seg", "segmentation", 2, "uint8"), ("m-SA-crop-type", "segmentation", 7, "uint8")]


def write(root: Path, samples: int, size: int) -> None:
    sys.path.insert(0, str(REPO))
    from tests.geobench.synth import write_task

    for i, (name, kind, k, dtype) in enumerate(TASKS):
        scale = {"float32": 1.0, "uint8": 255}.get(dtype, 3000.0)
        write_task(root, name, kind, n_classes=k, n_train=samples, n_valid=samples // 2, n_test=samples // 2,
                   size=size, dtype=dtype, scale=scale, seed=i)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="quick", choices=["quick", "full"])
    ap.add_argument("--samples", type=int, default=24, help="train samples per task (valid, test: half)")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench-geobench"))
    ap.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for the run")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    work = Path(a.workdir)
    root = work / f"bench-{a.samples}x{a.size}"
    if not (root / "segmentation_v1.0" / "m-SA-crop-type" / "band_stats.json").is_file():
        write(root, a.samples, a.size)
    out = work / f"results-{a.budget}"
    cmd = [sys.executable, "-m", "geodino", "geobench", "run", "--tasks", "all", "--budget", a.budget,
           "--model", "dinov3-vits16-lvd1689m", "--weights", "random",
           *[f"--arch={k}={v}" for k, v in TINY_ARCH.items()], "--benchmark-dir", str(root),
           "--cache-dir", str(work / f"cache-{a.budget}"), "-o", str(out), "--device", "cpu",
           *[x for s in a.set for x in ("--set", s)]]
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if not (out / "results.json").is_file():
        print(r.stderr, file=sys.stderr)
        return r.returncode or 1
    res = json.loads((out / "results.json").read_text())
    rows = [{"task": n, "status": t["status"], **t["wall_s"]} for n, t in res["tasks"].items()]
    print(f"\nbudget {a.budget}: {len(rows)} synthetic tasks ({a.samples} train samples of {a.size} px each), "
          f"tiny random backbone, CPU")
    print(f"{'task':16s} {'status':8s} {'total s':>8s} {'features s':>11s} {'heads s':>8s}")
    for row in rows:
        print(f"{row['task']:16s} {row['status']:8s} {row['total']:8.1f} {row.get('features', 0):11.1f} "
              f"{row.get('heads', 0):8.1f}")
    heads = sum(row.get("heads", 0) for row in rows)
    print(f"{'sum':16s} {'':8s} {sum(row['total'] for row in rows):8.1f} "
          f"{sum(row.get('features', 0) for row in rows):11.1f} {heads:8.1f}")
    print(f"CLI wall time (with start-up and model load): {wall:.1f} s; exit code {r.returncode}")
    if a.json:
        Path(a.json).write_text(json.dumps({"budget": a.budget, "wall_s": wall, "rows": rows}, indent=2))
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
