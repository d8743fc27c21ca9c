#!/usr/bin/env python
"""Peak memory of `geodino embed` does not grow with raster size.

Writes synthetic 3-band uint16 tiled, deflate-compressed GeoTIFFs (5000² and 20000² px by default), embeds each
with a tiny random-weight model on the CPU in a fresh process, and prints a table of peak RSS, tiles/s and time.
Peak RSS must agree within 10 % across sizes.

``--compile`` is off by default: ``compile: auto`` turns torch.compile on for CPU scenes of 300 tiles and more,
which adds a fixed cost (inductor and its compiled code, about 200 MiB with the tiny model) to the large scene
only; ``--compile auto`` measures what a user gets with the defaults.

``--policy cli`` (the default) runs the job as `geodino embed` does: its process-wide memory policy
(``bound_memory``) and its signal handlers, the job on the main thread. ``--policy opt-in`` is a library call under
``with geodino.memory_policy():`` (what a notebook that asks gets); ``--policy none`` a plain library call (the
library leaves malloc alone unless asked).

    python pipelines/bench_memory.py                       # 5000 and 20000 px, in ./bench-memory/
    python pipelines/bench_memory.py --sizes 2000 6000 --workdir /tmp/b --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from synthetic import make_raster

TINY_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def child(scene: str, out: str, tile: int, halo: int, batch: int, blend: int = 1, compile: str = "off",
          policy: str = "cli") -> None:
    """Run one embed in this (fresh) process and print its figures as JSON."""
    import contextlib
    import warnings

    from geodino import memory_policy
    from geodino._process import bound_memory
    from geodino.cli._signals import graceful_stop
    from geodino.embed import EmbedConfig, embed

    warnings.simplefilter("ignore")
    cfg = EmbedConfig.build(model="dinov3-vits16-lvd1689m", weights="random", arch=TINY_ARCH, device="cpu",
                            tile=tile, halo=halo, blend=blend, batch_size=batch, output=out, radiometry="minmax",
                            minmax=(0, 6000), overwrite=True,
                            compile={"on": True, "off": False}.get(compile, compile))
    if policy == "cli":  # as geodino.cli.embed_cmd runs it
        bound_memory(cfg.gdal_cache_mb)
        with graceful_stop() as stop:
            [s] = embed([scene], cfg, command="bench_memory", stop=stop)
    else:
        with memory_policy(cfg.gdal_cache_mb) if policy == "opt-in" else contextlib.nullcontext():
            [s] = embed([scene], cfg, command="bench_memory")
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS at fork
    peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
    print(json.dumps({**s.to_dict(), "peak_rss_mib": peak_kib / 1024}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--workdir", default="bench-memory")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--blend", type=int, default=1)
    ap.add_argument("--compile", choices=["off", "on", "auto"], default="off")
    ap.add_argument("--policy", choices=["cli", "opt-in", "none"], default="cli",
                    help="cli: as `geodino embed` runs (default); opt-in: a library call under "
                         "geodino.memory_policy(); none: a plain library call")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child, a.tile, a.halo, a.batch_size, a.blend, a.compile, a.policy)
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in a.sizes:
        t0 = time.perf_counter()
        scene = make_raster(work / f"synthetic_{size}.tif", size)
        gen = time.perf_counter() - t0
        r = subprocess.run([sys.executable, __file__, "--child", str(scene), str(work / f"synthetic_{size}.zarr"),
                            "--tile", str(a.tile), "--halo", str(a.halo), "--batch-size", str(a.batch_size), "--blend", str(a.blend),
                            "--compile", a.compile, "--policy", a.policy],
                           capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(size=size, raster_mb=scene.stat().st_size / 1e6, generate_s=gen, policy=a.policy)
        rows.append(res)
    print(f"{'raster':>12} {'file MB':>8} {'tiles':>6} {'seconds':>8} {'tiles/s':>8} {'Mpx/s':>7} {'cube MB':>8} "
          f"{'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['size']:>6}²x3 u16 {r['raster_mb']:>8.0f} {r['tiles_total']:>6} {r['seconds']:>8.1f} "
              f"{r['tiles_per_s']:>8.2f} {r['mpx_per_s']:>7.2f} {r['output_bytes'] / 1e6:>8.1f} "
              f"{r['peak_rss_mib']:>13.0f}")
    print(f"memory policy: {a.policy}")
    peaks = [r["peak_rss_mib"] for r in rows]
    spread = (max(peaks) - min(peaks)) / min(peaks)
    verdict = "PASS" if spread <= 0.10 else "FAIL"
    print(f"peak RSS spread across sizes: {spread * 100:.1f} % ({verdict}: must be <= 10 %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "rss_spread": spread}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
