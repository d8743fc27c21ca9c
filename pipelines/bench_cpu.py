#!/usr/bin/env python
"""geodino on the CPU, side by side in one run: matmul ceilings, timm, geodino model-only and end to end.

Every row gives tiles/s, MFU against the measured matmul ceiling of its precision (bf16 rows against the bf16
ceiling), and km² per hour of this machine at 10 m (for 512-px tiles: 26.2 km² per tile). The model has random
weights with every LayerScale gamma at 0.5 (a context-mixing checkpoint, see geodino.models.testing): the rates
do not depend on the values, but the bf16 and int8 fidelity rows do.

    python pipelines/bench_cpu.py                         # ViT-L/16 and ViT-S/16 at 512 px
    python pipelines/bench_cpu.py --models dinov3-vitl16-sat493m --no-compile --json out.json
    python pipelines/bench_cpu.py --smoke                 # seconds: checks the script (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "pipelines"))

warnings.simplefilter("ignore")


def timed(fn, warmup: int, iters: int) -> float:
    """Seconds per call: the median of ``iters`` timed calls after ``warmup`` untimed ones (the median, because
    on a shared host a neighbour's burst slows single calls down and a mean would carry it into the row)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_ceiling(dtype, n: int, iters: int) -> float:
    """The matmul ceiling: the best of ``iters`` timed n³ products after two warm-up ones (a peak, so the best
    single call rather than the mean: a busy neighbour on a shared host only ever slows a call down)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    s = min(timed(lambda: a @ b, 2 if i == 0 else 0, 1) for i in range(iters))
    return 2 * n ** 3 / s / 1e12


def cpu_model() -> str:
    from geodino.engine.engine import cpu_name

    return cpu_name()


class Bench:
    def __init__(self, args):
        from geodino.models import get_config

        self.a = args
        self.rows: list[dict] = []
        self.size = args.size
        self.ceiling = {}
        self.get_config = get_config

    def flops(self, model: str, arch: dict, px: int) -> float:
        from geodino.models import flops_per_image

        a = self.get_config(model).arch.replace(**arch) if arch else self.get_config(model).arch
        return flops_per_image(a, px, px)

    def add(self, impl: str, model: str, precision: str, px: int, tiles_per_s: float, arch: dict, core: int,
            **extra) -> dict:
        tflops = tiles_per_s * self.flops(model, arch, px) / 1e12
        ceiling = self.ceiling["bf16" if precision in ("bf16", "int8") else "fp32"]
        km2_h = tiles_per_s * (core * 10 / 1000) ** 2 * 3600 if core else None
        row = {"impl": impl, "model": model, "precision": precision, "window": px, "core": core,
               "tiles_per_s": tiles_per_s, "tflops": tflops, "mfu": tflops / ceiling, "km2_per_hour_10m": km2_h,
               **extra}
        self.rows.append(row)
        km2 = f"{km2_h:>8.0f} km²/h" if km2_h is not None else " " * 13
        print(f"{impl:<44} {model:<24} {precision:<5} {px:>4} {tiles_per_s:>8.3f} tiles/s  MFU {row['mfu']:.3f}"
              f"  {km2}" + "".join(f"  {k}={v}" for k, v in extra.items()), flush=True)
        return row


def timm_model(name: str, arch: dict):
    import timm

    from geodino.models import get_config

    cfg = get_config(name)
    tname = cfg.timm_name.split(".")[0] + ("_qkvb" if cfg.arch.qkv_bias else "")
    kw = {"depth": arch["depth"]} if "depth" in arch else {}
    if "embed_dim" in arch:
        kw.update(embed_dim=arch["embed_dim"], num_heads=arch["num_heads"])
    m = timm.create_model(tname, pretrained=False, num_classes=0, dynamic_img_size=True, **kw).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("gamma_1", "gamma_2")):
                p.fill_(0.5)
    return m


def bench_timm(b: Bench, model: str, arch: dict, px: int, iters: int, compile_: bool, int8: bool):
    x = torch.randn(1, 3, px, px)
    m = timm_model(model, arch)
    with torch.inference_mode():
        b.add("timm fp32 eager", model, "fp32", px, 1 / timed(lambda: m.forward_features(x), 1, iters), arch, px)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b.add("timm bf16 autocast", model, "bf16", px, 1 / timed(lambda: m.forward_features(x), 1, iters), arch,
                  px)
        mb = m.to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        b.add("timm bf16 weights", model, "bf16", px, 1 / timed(lambda: mb.forward_features(xb), 1, iters), arch, px)
        if compile_:
            c = torch.compile(mb.forward_features)
            t0 = time.perf_counter()
            c(xb)
            first = time.perf_counter() - t0
            b.add("timm bf16 weights + compile", model, "bf16", px, 1 / timed(lambda: c(xb), 1, iters), arch, px,
                  first_call_s=round(first, 1))
    if int8:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            m = timm_model(model, arch)
            quantize_(m, Int8DynamicActivationInt8WeightConfig())
        except Exception as e:  # noqa: BLE001 - an optional row
            print(f"timm int8 rows skipped: {type(e).__name__}: {e}")
            return
        with torch.inference_mode():
            try:
                b.add("timm torchao int8 dynamic, eager", model, "int8", px,
                      1 / timed(lambda: m.forward_features(x), 1, iters), arch, px)
            except Exception as e:  # noqa: BLE001 - an optional row
                print(f"timm int8 eager row skipped: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            try:
                c = torch.compile(m.forward_features)
                c(x)
                b.add("timm torchao int8 dynamic + compile", model, "int8", px, 1 / timed(lambda: c(x), 1, iters),
                      arch, px)
            except Exception as e:  # noqa: BLE001 - an optional row
                print(f"timm int8 + compile row skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def engine_rows(b: Bench, model: str, weights: str, arch: dict, px: int, iters: int, compile_: bool,
                int8: bool) -> dict:
    """geodino's own model (forward only) and its engine (with the device-side input contract, crop, cast)."""
    from geodino.engine import Engine, EngineSpec

    out = {}
    raw = np.random.default_rng(0).integers(1, 4000, (1, 3, px, px)).astype(np.uint16)
    valid = np.ones((1, px, px), bool)
    rad = ((2.25e-4,) * 3, (0.0,) * 3, None)
    arch_t = tuple(sorted(arch.items()))
    for prec in ("fp32", "bf16"):
        eng = Engine(EngineSpec(model, weights, "cpu", prec, arch_t))
        x = torch.randn(1, 3, px, px)
        with torch.inference_mode():
            fwd = eng._features
            want = {"crop": (slice(None), slice(None)), "layers": None, "patch_mean": False, "dtype": torch.float16}
            b.add(f"geodino model only ({'bf16 weights + autocast' if prec == 'bf16' else 'eager'})", model, prec,
                  px, 1 / timed(lambda: fwd(x, want), 1, iters), arch, px)
        b.add("geodino engine (input contract, crop, cast)", model, prec, px,
              1 / timed(lambda: eng.run(raw, valid, rad, out_dtype=np.float16), 1, iters), arch, px)
        out[prec] = eng.run(raw, valid, rad)["patches"].reshape(-1, eng.embed_dim)
    cos = (out["fp32"] * out["bf16"]).sum(-1) / np.linalg.norm(out["fp32"], axis=-1) / np.linalg.norm(out["bf16"],
                                                                                                      axis=-1)
    fid = {"bf16_vs_fp32_cos_mean": float(cos.mean()), "bf16_vs_fp32_cos_p1": float(np.percentile(cos, 1))}
    print(f"bf16 vs fp32 patch cosine: mean {fid['bf16_vs_fp32_cos_mean']:.6f}, "
          f"1st percentile {fid['bf16_vs_fp32_cos_p1']:.6f}")
    if compile_:
        t0 = time.perf_counter()
        eng = Engine(EngineSpec(model, weights, "cpu", "bf16", arch_t, compile=True))
        eng.run(raw, valid, rad)
        first = time.perf_counter() - t0
        b.add("geodino engine + compile", model, "bf16", px,
              1 / timed(lambda: eng.run(raw, valid, rad, out_dtype=np.float16), 1, iters), arch, px,
              first_tile_s=round(first, 1), graphs=eng.compiled_graphs())
    if int8:  # torchao int8 dynamic activations + int8 weights (AMX-INT8): measured here, not offered by geodino
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            eng = Engine(EngineSpec(model, weights, "cpu", "bf16", arch_t))
            quantize_(eng.model, Int8DynamicActivationInt8WeightConfig(),
                      filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
            for tag, fwd in (("eager", eng.model.forward_features),
                             ("+ compile", torch.compile(eng.model.forward_features, dynamic=False))):
                eng._forward = fwd
                q = eng.run(raw, valid, rad)["patches"].reshape(-1, eng.embed_dim)
                c = (q * out["bf16"]).sum(-1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(out["bf16"], axis=-1)
                b.add(f"geodino model, torchao int8 dynamic {tag}", model, "int8", px,
                      1 / timed(lambda: eng.run(raw, valid, rad, out_dtype=np.float16), 1, iters), arch, px,
                      cos_vs_bf16=round(float(c.mean()), 5))
        except Exception as e:  # noqa: BLE001 - an optional row
            print(f"geodino int8 row skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return fid


GEOBENCH_SIZES = {64: "m-eurosat, m-brick-kiln (native)", 120: "m-bigearthnet (native)",
                  332: "m-forestnet (native; the engine crops to 320)", 512: "segmentation (resized to 512)"}


def geobench_rows(b: Bench, model: str, weights: str, arch: dict, iters: int) -> list[dict]:
    """GEO-Bench feature extraction through the engine at the protocol's input sizes: images/s (CLS + mean patch
    feature; at 512 also the 4 DPT layers), with the geobench preset (band_stats min-max, 255 steps)."""
    from geodino.engine import Engine, EngineSpec
    from geodino.heads import dpt_layers
    from geodino.raster import geobench_radiometry

    eng = Engine(EngineSpec(model, weights, "cpu", "auto", tuple(sorted(arch.items()))))
    rad = geobench_radiometry([(0.0, 3000.0)] * 3).engine_params
    rows = []
    for px, what in GEOBENCH_SIZES.items():
        side = px - px % 16
        n = max(eng.micro_batch(side, side), 8)
        raw = np.random.default_rng(1).uniform(0, 3000, (n, 3, side, side)).astype(np.float32)
        layers = dpt_layers(eng.model.arch.depth) if px == 512 else None
        s = timed(lambda: eng.run(raw, None, rad, out_dtype=np.float16, layers=layers, patch_mean=True), 1,
                  max(1, iters // 2))
        rows.append(b.add(f"GEO-Bench features, {what} (images/s)", model, eng.precision, side, n / s, arch, 0,
                          images_per_call=n))
    return rows


def end_to_end(b: Bench, model: str, weights: str, arch: dict, scene: Path, halo: int, blend: int, work: Path,
               precision: str = "auto", runs: int = 2, bracket=None) -> dict:
    from geodino.embed import EmbedConfig, embed

    cfg = EmbedConfig.build(model=model, weights=weights, arch=arch, device="cpu", tile=b.size, halo=halo,
                            blend=blend, radiometry="minmax", minmax=(0, 6000), precision=precision,
                            output=str(work / f"e2e-{model}-{halo}-{blend}.zarr"), overwrite=True)
    warm = EmbedConfig.build(**{**cfg.to_dict(), "output": str(work / "warm.zarr")})
    embed([make_small(work, b.size + 2 * halo)], warm, command="bench_cpu warm-up")
    rates, around = [], []
    for _ in range(runs):  # the best of ``runs`` whole runs (a shared host's bursts only ever slow a run down)
        if bracket:
            around.append(bracket())
        [s] = embed([scene], cfg, command="bench_cpu")
        rates.append(s.tiles_per_s)
        if bracket:
            around.append(bracket())
    from geodino.cube import read_attrs

    n = read_attrs(s.output)["geodino"]["numerics"]
    row = b.add(f"geodino embed end to end (halo {halo}, blend {blend})", model, n["precision"], b.size + 2 * halo,
                max(rates), arch, b.size, tiles=s.tiles_total, compiled=bool(n.get("compile")),
                runs=[round(r, 3) for r in rates])
    if bracket:  # the same run's neighbours: each rate measured right before and after each end-to-end run
        row["bracket"] = {k: float(np.median([a[k] for a in around])) for k in around[0]}
        row["bracket_ratios"] = {f"e2e / {k}": max(rates) / v for k, v in row["bracket"].items()}
        print("   measured around these runs: " + ", ".join(f"{k} {v:.3f} tiles/s" for k, v in row["bracket"].items())
              + "\n   ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in row["bracket_ratios"].items()), flush=True)
    return row


def bracket_rates(model: str, weights: str, arch: dict, px: int):
    """Rates measured right around each end-to-end run (2 calls each, median): timm fp32 eager, timm bf16
    weights, and geodino's model only at the precision ``embed`` resolves (auto), on one fixed 512-px tile."""
    from geodino.engine import Engine, EngineSpec

    tm = timm_model(model, arch)
    tb = timm_model(model, arch).to(torch.bfloat16)
    eng = Engine(EngineSpec(model, weights, "cpu", "auto", tuple(sorted(arch.items()))))
    x = torch.randn(1, 3, px, px)
    xb = x.to(torch.bfloat16)
    want = {"crop": (slice(None), slice(None)), "layers": None, "patch_mean": False, "dtype": torch.float16}

    def measure() -> dict:
        with torch.inference_mode():
            return {"timm fp32 eager": 1 / timed(lambda: tm.forward_features(x), 0, 2),
                    "timm bf16 weights": 1 / timed(lambda: tb.forward_features(xb), 0, 2),
                    f"geodino model only ({eng.precision})": 1 / timed(lambda: eng._features(x, want), 0, 2)}

    with torch.inference_mode():
        tm.forward_features(x), tb.forward_features(xb), eng._features(x, want)
    return measure


def make_small(work: Path, px: int) -> Path:
    from synthetic import make_raster

    return make_raster(work / f"warm-{px}.tif", px)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["dinov3-vitl16-sat493m", "dinov3-vits16-lvd1689m"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--scene", type=int, default=2048, help="side of the generated end-to-end scene, px")
    p.add_argument("--halo", type=int, default=None, help="the default halo (geodino's own default if unset)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--workdir", default="/tmp/geodino-bench-cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    from geodino.embed import EmbedConfig
    from geodino.models import save_weights
    from geodino.models.testing import context_mixing_model
    from synthetic import make_raster

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a cold compile cache: first_call_s is what a user meets
        import shutil

        shutil.rmtree(work / "inductor-cache", ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    arch = {"depth": 2, "embed_dim": 64, "num_heads": 2} if a.smoke else {}
    if a.smoke:
        a.size, a.iters, a.scene, a.models, a.no_compile, a.no_int8 = 64, 1, 192, a.models[-1:], True, True
    b = Bench(a)
    n = 256 if a.smoke else 4096
    b.ceiling = {"fp32": matmul_ceiling(torch.float32, n, 5), "bf16": matmul_ceiling(torch.bfloat16, n, 8)}
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}: matmul {n}³ "
          f"fp32 {b.ceiling['fp32']:.3f} TFLOP/s, bf16 {b.ceiling['bf16']:.3f} TFLOP/s", flush=True)
    defaults = EmbedConfig()
    halo = defaults.halo if a.halo is None else a.halo
    scene = make_raster(work / f"scene-{a.scene}.tif", a.scene)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "host": platform.node(),
           "ceiling_tflops": b.ceiling, "fidelity": {}}
    for model in a.models:
        weights = save_weights(context_mixing_model(model, weight_gain=0.0, **arch), work / f"{model}-ls05.safetensors")
        bench_timm(b, model, arch, a.size, a.iters, not a.no_compile, not a.no_int8)
        out["fidelity"][model] = engine_rows(b, model, str(weights), arch, a.size, a.iters, not a.no_compile,
                                             not a.no_int8)
        geobench_rows(b, model, str(weights), arch, a.iters)
        end_to_end(b, model, str(weights), arch, scene, 0, 0, work,
                   bracket=bracket_rates(model, str(weights), arch, a.size) if not a.smoke else None)
        end_to_end(b, model, str(weights), arch, scene, halo, min(defaults.blend, halo // 16), work)
        r0, rd = b.rows[-2], b.rows[-1]
        print(f"   halo {halo} (blend {min(defaults.blend, halo // 16)}) costs "
              f"{r0['tiles_per_s'] / rd['tiles_per_s']:.2f}x the time of halo 0 per tile core", flush=True)
    out["rows"] = b.rows
    cores = torch.get_num_threads()
    print(f"\n| impl | model | precision | window px | tiles/s | MFU | km² per hour at 10 m ({cores} cores) | "
          f"km² per core-hour |\n|---|---|---|---|---|---|---|---|")
    for r in b.rows:
        km2 = "" if r["km2_per_hour_10m"] is None else f"{r['km2_per_hour_10m']:.0f}"
        km2c = "" if r["km2_per_hour_10m"] is None else f"{r['km2_per_hour_10m'] / cores:.0f}"
        print(f"| {r['impl']} | {r['model']} | {r['precision']} | {r['window']} | {r['tiles_per_s']:.3f} | "
              f"{r['mfu']:.3f} | {km2} | {km2c} |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
