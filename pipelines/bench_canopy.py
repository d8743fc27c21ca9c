#!/usr/bin/env python
"""Benchmarks of `geodino canopy`: seams on heights, peak memory against scene size, tiles/s.

Parts (``--parts``, default all three):

* ``seams``: the seam ratio on heights (``geodino.cube.seams.seam_ratio(metric="absolute")``: mean |Δh| of
  neighbouring pixels across tile-core boundaries ÷ inside cores; 1.0 = seamless) for several halo/blend settings,
  on real rasters of ../shared/data resampled to 0.6 m, with a context-mixing random canopy model
  (``geodino.models.testing.context_mixing_canopy_model``: LayerScale 0.5 backbone, head weights 1/√fan-in).
  The backbone has the ViT-S/16 shape (384 wide, 12 blocks) and the head reduced channels, so that it runs in
  minutes on a shared CPU; ``--seam-backbone vitl`` uses the real ViT-L/16 and head shapes.
* ``memory``: peak RSS (VmHWM, a fresh process per scene) of whole runs, COG export included, on synthetic 8-bit
  RGB scenes at 0.6 m of each ``--sizes`` side, with a tiny model (width 64, 4 blocks, small head).
* ``speed``: tiles/s of the real ViT-L/16 + CHMv2 head shapes (random weights: the speed of the real ones) at
  the default tile (512 px + 32-px halo: 576-px windows) through the canopy engine, next to the backbone alone on
  the same windows in the same process.

    python pipelines/bench_canopy.py                                  # all parts
    python pipelines/bench_canopy.py --parts memory --sizes 1024 4096
    python pipelines/bench_canopy.py --smoke                          # seconds: tiny everything (tests)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

TINY = {"depth": 4, "embed_dim": 64, "num_heads": 2}
TINY_HEAD = {"embed_dim": 64, "layers": [0, 1, 2, 3], "post_process_channels": [16, 32, 48, 64],
             "fusion_hidden_size": 32, "head_hidden_size": 16, "n_bins": 64}
SMALL_BACKBONE = "dinov3-vits16-lvd1689m"  # ViT-S/16 shape: 384 wide, 12 blocks
SMALL_HEAD = {"embed_dim": 384, "layers": [2, 5, 8, 11], "post_process_channels": [48, 96, 192, 384],
              "fusion_hidden_size": 64, "head_hidden_size": 32, "n_bins": 256}
REAL = {"cogeo": "rasterio_cogeo.tif", "naip": "naip_m_3607717_sw_18_1_20160620_subset.tif"}
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def make_rgb8(path: Path, size: int, block: int = 512, height: int | None = None) -> Path:
    """A size (wide) x height (default size) 8-bit RGB tiled GeoTIFF at 0.6 m (UTM, central meridian), written
    block by block."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    rows = height or size
    profile = dict(driver="GTiff", width=size, height=rows, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(0.6, 0, 500000, 0, -0.6, 5000000), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER")
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, rows, block):
            for c in range(0, size, block):
                h, w = min(block, rows - r), min(block, size - c)
                yy, xx = np.mgrid[r:r + h, c:c + w]
                base = (np.sin(yy / 17.0) + np.cos(xx / 23.0) + np.sin((xx + yy) / 91.0)) * 30 + 110
                rng = np.random.default_rng(r * size + c)
                data = np.stack([base + rng.normal(0, 12, (h, w)) + k * 15 for k in range(3)])
                ds.write(np.clip(data, 1, 255).astype("uint8"), window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def _weights(work: Path, backbone: str | None, arch: dict, head_arch: dict, name: str) -> Path:
    from geodino.models import save_canopy_weights
    from geodino.models.testing import context_mixing_canopy_model

    p = work / f"{name}.safetensors"
    if not p.exists():
        kw = {"backbone": backbone} if backbone else {}
        m = context_mixing_canopy_model(**kw, arch=arch, head_arch={k: tuple(v) if isinstance(v, list) else v
                                                                    for k, v in head_arch.items()})
        save_canopy_weights(m, p)
    return p


# -- seams -------------------------------------------------------------------------------------------------
def seams(a, work: Path) -> list[dict]:
    from geodino.canopy import canopy, open_heights
    from geodino.cube.seams import seam_ratio

    if a.seam_backbone == "vitl":
        backbone, arch, head, name = None, {}, {}, "vitl_chm"
    elif a.smoke:
        backbone, arch, head, name = None, TINY, TINY_HEAD, "tiny_chm"
    else:
        backbone, arch, head, name = SMALL_BACKBONE, {}, SMALL_HEAD, "vits_chm"
    weights = _weights(work, backbone, arch, head, name)
    rows = []
    for raster in a.rasters:
        path = SHARED / REAL[raster] if raster in REAL else Path(raster)
        if not path.exists():
            print(f"skipping {raster}: {path} not found", file=sys.stderr)
            continue
        for spec in a.settings:
            halo, blend = (int(x) for x in spec.split(":"))
            out = work / f"seams_{Path(path).stem}_{a.tile}_{halo}_{blend}.tif"
            t0 = time.perf_counter()
            s = canopy(str(path), output=str(out), weights=str(weights), backbone=backbone, arch=arch,
                       head_arch=head, tile=a.tile, halo=halo, blend=blend, device="cpu", overwrite=True,
                       threads=2, command="bench_canopy seams")
            h = open_heights(s.cube)
            r = seam_ratio(h.data, a.tile, np.isfinite(h.values), metric="absolute")
            window = a.tile + 2 * halo
            rows.append({"raster": Path(path).name, "shape": list(h.shape), "tile": a.tile, "halo": halo,
                         "blend": blend, "ratio": r.ratio, "straddling_m": r.straddling, "inside_m": r.inside,
                         "pairs": r.n_straddling, "compute": window ** 2 / a.tile ** 2,
                         "seconds": time.perf_counter() - t0, "mean_h": float(np.nanmean(h.values)),
                         "std_h": float(np.nanstd(h.values))})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nseams on heights: tile {a.tile} px, model {name} (context-mixing random weights)")
    print(f"{'raster':<46} {'halo':>5} {'blend':>6} {'ratio':>7} {'|dh| across':>12} {'|dh| inside':>12} "
          f"{'pairs':>7} {'compute':>8}")
    for r in rows:
        print(f"{r['raster'] + ' ' + 'x'.join(map(str, r['shape'][::-1])):<46} {r['halo']:>5} {r['blend']:>6} "
              f"{r['ratio']:>7.3f} {r['straddling_m']:>12.4f} {r['inside_m']:>12.4f} {r['pairs']:>7} "
              f"{r['compute']:>8.2f}")
    return rows


# -- memory ------------------------------------------------------------------------------------------------
def memory_child(scene: str, out: str, weights: str, tile: int, batch: int) -> None:
    from geodino._process import bound_memory
    from geodino.canopy import canopy
    from geodino.cli._signals import graceful_stop

    warnings.simplefilter("ignore")
    seen = {}

    def tiles_done(_scene, done, total):  # the peak of the streaming part, before the COG export
        if done == total:
            seen["tiles_peak_mib"] = _vmhwm_mib()

    bound_memory()  # as `geodino canopy` runs it: its process-wide memory policy, its signal handlers
    with graceful_stop() as stop:
        s = canopy(scene, output=out, weights=weights, arch=TINY, head_arch=TINY_HEAD, device="cpu", tile=tile,
                   batch_size=batch, overwrite=True, threads=2, command="bench_canopy memory",
                   progress=tiles_done, stop=stop)
    print(json.dumps({**s.to_dict(), **seen, "peak_rss_mib": _vmhwm_mib(),
                      "cog_mb": Path(out).stat().st_size / 1e6}))


def _vmhwm_mib() -> float:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS at fork
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024


def memory(a, work: Path) -> list[dict]:
    weights = _weights(work, None, TINY, TINY_HEAD, "tiny_chm")
    rows = []
    for size in a.sizes:  # SIDE or WIDTHxHEIGHT
        w, _, h = str(size).partition("x")
        scene = make_rgb8(work / f"rgb8_{size}.tif", int(w), height=int(h) if h else None)
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(scene), str(work / f"chm_{size}.tif"),
                            str(weights), "--tile", str(a.tile), "--batch-size", str(a.batch_size)],
                           capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            raise SystemExit(r.returncode)
        rows.append({**json.loads(r.stdout.strip().splitlines()[-1]), "size": size})
    print(f"\npeak RSS of whole canopy runs (fresh process each; tiny model, tile {a.tile}, COG export included)")
    print(f"{'scene':>14} {'tiles':>6} {'seconds':>8} {'tiles/s':>8} {'COG MB':>7} {'peak RSS MiB: tiles':>20} "
          f"{'+ COG':>7}")
    for r in rows:
        name = f"{r['size']}²" if "x" not in str(r["size"]) else str(r["size"])
        print(f"{name:>10} RGB8 {r['tiles_total']:>6} {r['seconds']:>8.1f} {r['tiles_per_s']:>8.2f} "
              f"{r['cog_mb']:>7.1f} {r.get('tiles_peak_mib', float('nan')):>20.0f} {r['peak_rss_mib']:>7.0f}")
    peaks = [r["peak_rss_mib"] for r in rows]
    spread = (max(peaks) - min(peaks)) / min(peaks)
    print(f"peak RSS spread across sizes: {spread * 100:.1f} % ({'PASS' if spread <= 0.10 else 'FAIL'}: "
          "must be <= 10 %)")
    return rows


# -- speed -------------------------------------------------------------------------------------------------
def speed(a, work: Path) -> dict:
    import torch

    from geodino.engine import CanopyEngineSpec, get_engine

    warnings.simplefilter("ignore")
    arch, head = (TINY, TINY_HEAD) if a.smoke else ({}, {})
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in head.items()))
    t0 = time.perf_counter()
    eng = get_engine(CanopyEngineSpec("dinov3-vitl16-sat493m", "random", "cpu", a.precision,
                                      tuple(sorted(arch.items())), head_arch=frozen))
    load = time.perf_counter() - t0
    window = a.tile + 2 * 32
    n = a.speed_tiles
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (n, 3, window, window), dtype=np.uint8)
    valid = np.ones((n, window, window), bool)
    rad = ((1 / 255,) * 3, (0.0,) * 3, None)
    crop = (slice(32, 32 + a.tile + 64), slice(32, 32 + a.tile + 64))  # blend 32: the extended core
    t0 = time.perf_counter()
    eng.run(raw, valid, rad, crop=crop)
    full = time.perf_counter() - t0
    x = torch.randn(1, 3, window, window)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            if eng.autocast_dtype is not None:
                with torch.autocast("cpu", dtype=eng.autocast_dtype):
                    eng.model.forward_features(x)
            else:
                eng.model.forward_features(x)
    bb = time.perf_counter() - t0
    res = {"model": "ViT-L/16 SAT + CHMv2 head" if not a.smoke else "tiny", "precision": eng.precision,
           "device": eng.device_name, "window": window, "tiles": n, "load_s": load,
           "canopy_tiles_per_s": n / full, "backbone_tiles_per_s": n / bb, "micro_batch": eng.micro_batch(window,
                                                                                                             window)}
    print(f"\ntiles/s on the CPU ({res['device']}, {torch.get_num_threads()} threads, {res['precision']}), "
          f"{window}-px windows, micro-batch {res['micro_batch']}, {n} tile(s) timed")
    print(f"{'model':<28} {'canopy tiles/s':>15} {'backbone-only tiles/s':>22} {'s/tile':>8}")
    print(f"{res['model']:<28} {res['canopy_tiles_per_s']:>15.4f} {res['backbone_tiles_per_s']:>22.4f} "
          f"{full / n:>8.1f}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["seams", "memory", "speed"], choices=["seams", "memory", "speed"])
    ap.add_argument("--workdir", default="bench-canopy")
    ap.add_argument("--tile", type=int, default=None, help="seams: 256; memory and speed: 512")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rasters", nargs="+", default=["cogeo", "naip"], help="cogeo, naip or raster paths")
    ap.add_argument("--settings", nargs="+", default=["0:0", "32:0", "32:16", "32:32", "64:64"],
                    help="HALO:BLEND pairs in px")
    ap.add_argument("--seam-backbone", choices=["vits", "vitl"], default="vits")
    ap.add_argument("--sizes", nargs="+", default=["1024", "4096"], help="SIDE or WIDTHxHEIGHT px")
    ap.add_argument("--speed-tiles", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny models and scenes: a test that the script runs")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--memory-child", nargs=3, metavar=("SCENE", "OUT", "WEIGHTS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        memory_child(*a.memory_child, a.tile or 512, a.batch_size)
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        a.sizes, a.settings, a.rasters = ["256"], ["0:0", "32:32"], [str(make_rgb8(work / "smoke.tif", 256))]
    out = {}
    if "seams" in a.parts:
        a_tile = a.tile
        a.tile = a.tile or (128 if a.smoke else 256)
        out["seams"] = seams(a, work)
        a.tile = a_tile
    if "memory" in a.parts:
        a.tile = a.tile or (128 if a.smoke else 512)
        out["memory"] = memory(a, work)
    if "speed" in a.parts:
        a.tile = a.tile or 512
        if a.smoke:
            a.tile = 128
        out["speed"] = speed(a, work)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
