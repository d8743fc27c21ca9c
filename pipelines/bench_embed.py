#!/usr/bin/env python
"""Throughput of geodino's embed path, printed as a table and written as JSON.

(a) model only: tiles/s, TFLOP/s and MFU (against a bf16 matmul measured in the same run) of geodino eager,
    geodino compiled and timm eager, ViT-L/16 and 7B/16 at 224 and 512 px (random weights, bf16 on a GPU).
(b) end to end: a generated Sentinel-2-sized scene (10980², uint16, 3 bands, tiled deflate GeoTIFF) into a cube:
    tiles/s, its ratio to (a) at the same window size, peak RSS and peak GPU memory.
The CPU side by side (timm, geodino model-only and end to end, the matmul ceilings) is ``pipelines/bench_cpu.py``.

    python pipelines/bench_embed.py                          # (a) and (b), on a GPU
    python pipelines/bench_embed.py --smoke --json out.json  # checks the script runs (no GPU: notes only)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import make_raster  # noqa: E402

from geodino.engine.engine import cast_matmul_weights  # noqa: E402
from geodino.models import build_model, flops_per_image, get_config  # noqa: E402

warnings.simplefilter("ignore")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def matmul_peak(device, dtype, n: int) -> float:
    """Achieved TFLOP/s of an n x n x n matmul in ``dtype`` (the MFU denominator)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = timed(lambda: a @ b, device, 3, 10)
    return 2 * n ** 3 / s / 1e12


def geodino_model(name, arch, device, bf16):
    with torch.device(device):
        m = build_model(name, device=device, **arch).eval()
    if bf16:
        cast_matmul_weights(m, torch.bfloat16)
    return m


def timm_model(name, arch, device, bf16):
    import timm

    cfg = get_config(name)
    tname = cfg.timm_name.split(".")[0] + ("_qkvb" if cfg.arch.qkv_bias else "")
    with torch.device(device):
        m = timm.create_model(tname, pretrained=False, num_classes=0, **arch).eval()
    return m.to(torch.bfloat16) if bf16 else m


def bench_model(name, arch, size, batch, device, bf16, iters, warmup, compile_: bool, with_timm: bool):
    a = get_config(name).arch.replace(**arch) if arch else get_config(name).arch
    flops = flops_per_image(a, size, size)
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast(device.type, enabled=False))
    model = geodino_model(name, arch, device, bf16)
    variants = [("geodino eager", model.forward_features)]
    if compile_:
        variants.append(("geodino compiled", torch.compile(model.forward_features,
                                                            mode="max-autotune" if device.type == "cuda" else "default")))
    for label, fn in variants:
        with torch.inference_mode(), ctx():
            s = timed(lambda: fn(x), device, warmup, iters)
        rows.append({"impl": label, "model": name, "size": size, "batch": batch, "tiles_per_s": batch / s,
                     "tflops": batch * flops / s / 1e12})
    del model, variants
    if with_timm:
        t = timm_model(name, arch, device, bf16)
        xt = x.to(torch.bfloat16) if bf16 else x
        with torch.inference_mode():
            s = timed(lambda: t.forward_features(xt), device, warmup, iters)
        rows.append({"impl": "timm eager", "model": name, "size": size, "batch": batch, "tiles_per_s": batch / s,
                     "tflops": batch * flops / s / 1e12})
        del t
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_end_to_end(scene, name, arch, weights, device, batch, tile, halo, workdir, threads):
    from geodino.embed import EmbedConfig, embed

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = EmbedConfig.build(model=name, weights=weights, arch=arch, device=str(device), batch_size=batch, tile=tile,
                            halo=halo, output=str(Path(workdir) / f"e2e_{name}_{tile}_{halo}.zarr"), overwrite=True,
                            radiometry="minmax", minmax=(0, 6000), threads=threads)
    [s] = embed([scene], cfg, command="bench_embed")
    return {"impl": "geodino embed", "model": name, "window": tile + 2 * halo, "tiles": s.tiles_total,
            "seconds": s.seconds, "tiles_per_s": s.tiles_per_s, "mpx_per_s": s.mpx_per_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "cube_mb": s.output_bytes / 1e6}


def print_table(title, rows, peak):
    print(f"\n{title}")
    if not rows:
        return
    print(f"{'impl':<18} {'model':<26} {'px':>5} {'batch':>5} {'tiles/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        mfu = r["tflops"] / peak if peak else float("nan")
        r["mfu"] = mfu
        print(f"{r['impl']:<18} {r['model']:<26} {r['size']:>5} {r['batch']:>5} {r['tiles_per_s']:>9.2f} "
              f"{r['tflops']:>8.2f} {mfu:>6.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["a", "b"], choices=["a", "b"])
    ap.add_argument("--models", nargs="+", default=["dinov3-vitl16-sat493m", "dinov3-vit7b16-sat493m"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--scene-size", type=int, default=10980)
    ap.add_argument("--workdir", default="bench-embed")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for CI: checks the script runs, nothing else")
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args()
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    cpu = torch.device("cpu")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "host": platform.node(), "gpu": torch.cuda.get_device_name(0) if gpu else None, "smoke": a.smoke,
           "a": [], "b": [], "notes": []}
    batch_for = {224: 64, 512: 16}
    if "a" in a.parts or "b" in a.parts:
        if gpu is None:
            out["notes"].append("no CUDA GPU: parts (a) and (b) skipped; run them on a GPU machine")
        else:
            out["bf16_matmul_tflops"] = matmul_peak(gpu, torch.bfloat16, 8192)
    if "a" in a.parts and gpu is not None:
        for name in a.models:
            for size in a.sizes:
                b = batch_for.get(size, 16) if "7b" not in name else max(1, batch_for.get(size, 16) // 4)
                out["a"] += bench_model(name, {}, size, b, gpu, True, a.iters, 3, not a.no_compile, True)
        print_table(f"(a) model only, bf16, {out['gpu']} (bf16 matmul {out['bf16_matmul_tflops']:.0f} TFLOP/s)",
                    out["a"], out["bf16_matmul_tflops"])
    if "b" in a.parts and gpu is not None:
        scene = make_raster(work / f"s2like_{a.scene_size}.tif", a.scene_size)
        for halo in (0, 64):
            out["b"].append(bench_end_to_end(scene, a.models[0], {}, "random", gpu, 16, 512, halo, work, 12))
        ref = {r["size"]: r["tiles_per_s"] for r in out["a"] if r["impl"] == "geodino eager" and r["model"] == a.models[0]}
        for r in out["b"]:
            r["ratio_to_model_only"] = r["tiles_per_s"] / ref[512] if r["window"] == 512 and 512 in ref else None
        print("\n(b) end to end", json.dumps(out["b"], indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
