#!/usr/bin/env python
"""Two versions of geodino side by side: parity on random weights, cubes from real rasters, CPU speed.

``--old DIR`` is a directory holding an older ``geodino/`` package, e.g. main before a change:
``git archive main geodino | tar -x -C DIR``; the new one is this repository's (or ``--new DIR``). Each measurement
runs each version in a fresh subprocess (``PYTHONPATH``), on the same weights file and inputs; timings alternate the
two (old, new, then new, old...) so that a shared host's drift hits both alike, and each row states the spread of
its rounds.

    python pipelines/before_after.py parity --old /tmp/old   # relative errors: CLS, registers, patches, layers
    python pipelines/before_after.py cubes --old /tmp/old --data ../shared/data  # georeference, valid, features
    python pipelines/before_after.py bench --old /tmp/old --rows model embed --rounds 2
    python pipelines/before_after.py bench --old /tmp/old --rows geobench --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name, arch overrides, input H x W, blocks whose normed grids are compared (the DPT layers of ViT-L and CHMv2)
PARITY = [("dinov3-vitl16-sat493m", {}, (224, 288), [4, 5, 11, 17, 23]),
          ("dinov3-vit7b16-sat493m", {"depth": 2}, (64, 96), [0, 1]),
          ("dinov3-vits16plus-lvd1689m", {"depth": 3}, (96, 128), [0, 2])]
RASTERS = [("s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif", {"bands": "B04,B03,B02", "radiometry": "s2-l2a",
                                                                  "s2_offset": 0}),
           ("rasterio_RGB.byte.tif", {}), ("rasterio_cogeo.tif", {})]


# ----------------------------------------------------------------------------------------- in the children

def _timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def child(spec: dict) -> dict:
    import geodino

    where = Path(geodino.__file__).resolve()
    if not where.is_relative_to(Path(spec["tree"]).resolve()):
        raise SystemExit(f"imported {where}, not the version under {spec['tree']}")
    import torch

    kind = spec["kind"]
    if kind == "parity":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from geodino.models import load_backbone

        m = load_backbone(spec["model"], spec["weights"], **spec["arch"])
        x = torch.randn(2, 3, *spec["hw"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            out = m.forward_features(x, layers=spec["layers"])
        del m  # and the engine's bf16 policy: bf16 matmul weights under autocast, default attention kernel
        b = load_backbone(spec["model"], spec["weights"], matmul_dtype=torch.bfloat16, **spec["arch"])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            low = b.forward_features(x)
        np.savez(spec["out"], cls=out["cls"].numpy(), registers=out["registers"].numpy(),
                 patches=out["patches"].numpy(), layers=torch.stack(out["layers"], 1).numpy(),
                 bf16_cls=low["cls"].float().numpy(), bf16_patches=low["patches"].float().numpy())
        return {}
    if kind == "cubes":
        from geodino.embed import EmbedConfig, embed

        for name, opts in RASTERS:
            cfg = EmbedConfig.build(model=spec["model"], weights=spec["weights"], device="cpu", precision="fp32",
                                    tile=512, halo=32, output=str(Path(spec["out"]) / f"{name}.zarr"),
                                    overwrite=True, **{"radiometry": None, "minmax": None, **opts})
            [s] = embed([Path(spec["data"]) / name], cfg, command="before_after cubes")
            assert s.status == "complete", s
        return {}
    from geodino.engine import Engine, EngineSpec

    model, weights, px = spec["model"], spec["weights"], 512
    if kind.startswith("model-"):
        eng = Engine(EngineSpec(model, weights, "cpu", kind.split("-")[1]))
        x = torch.randn(1, 3, px, px, generator=torch.Generator().manual_seed(0))
        want = {"crop": (slice(None), slice(None)), "layers": None, "patch_mean": False, "dtype": torch.float16}
        with torch.inference_mode():
            return {kind: 1 / _timed(lambda: eng._features(x, want), 1, spec["iters"])}
    if kind.startswith("embed-"):
        from geodino.embed import EmbedConfig, embed

        work = Path(spec["out"])

        def cfg(out: str):
            return EmbedConfig.build(model=model, weights=weights, device="cpu", tile=px, halo=0, blend=0,
                                     radiometry="minmax", minmax=(0, 6000), precision=kind.split("-")[1],
                                     output=str(work / out), overwrite=True)

        embed([Path(spec["warm"])], cfg("warm.zarr"), command="before_after warm-up")
        [s] = embed([Path(spec["scene"])], cfg("scene.zarr"), command="before_after")
        return {kind: s.tiles_per_s}
    if kind == "geobench":
        sys.path.insert(1, str(REPO / "pipelines"))  # after the version under test: bench_cpu's helpers only
        from bench_cpu import GEOBENCH_SIZES
        from geodino.heads import dpt_layers
        from geodino.raster import geobench_radiometry

        eng = Engine(EngineSpec(model, weights, "cpu", "auto"))
        rad = geobench_radiometry([(0.0, 3000.0)] * 3).engine_params
        out = {}
        for size, what in GEOBENCH_SIZES.items():  # as bench_cpu.geobench_rows: images/s
            side = size - size % 16
            n = max(eng.micro_batch(side, side), 8)
            raw = np.random.default_rng(1).uniform(0, 3000, (n, 3, side, side)).astype(np.float32)
            layers = dpt_layers(eng.model.arch.depth) if size == 512 else None
            s = _timed(lambda: eng.run(raw, None, rad, out_dtype=np.float16, layers=layers, patch_mean=True), 1,
                       spec["iters"])
            out[f"GEO-Bench {what} ({eng.precision}, images/s)"] = n / s
        return out
    raise ValueError(kind)


# ----------------------------------------------------------------------------------------- in the parent

def run_child(tree: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, __file__, "_child", json.dumps({**spec, "tree": str(tree)})], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{tree}: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _randomised_official(model: str, arch: dict, path: Path) -> Path:
    """Random weights where every parameter shapes the output (LayerScale and norm weights ~U(0.5, 1.5), matrices
    1/sqrt(fan-in), biases and tokens N(0, 0.3)), written by the new version in the official layout (both read it)."""
    import torch

    from geodino.models import build_model, save_weights

    m = build_model(model, **arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("gamma_1", "gamma_2")) or ("norm" in n and n.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.ndim > 1 and "token" not in n:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_weights(m, path, layout="official")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def parity(a, old: Path, new: Path) -> None:
    work = Path(a.workdir)
    print("| model | input | fp32 CLS | fp32 registers | fp32 patches | fp32 layers (block: error) | bf16 policy CLS, "
          "patches |\n|---|---|---|---|---|---|---|")
    for model, arch, hw, layers in PARITY:
        w = _randomised_official(model, arch, work / f"parity-{model}.pth")
        outs = {}
        for tag, tree in (("old", old), ("new", new)):
            outs[tag] = work / f"parity-{model}-{tag}.npz"
            run_child(tree, {"kind": "parity", "model": model, "arch": arch, "weights": str(w), "hw": hw,
                             "layers": layers, "out": str(outs[tag])})
        o, n = np.load(outs["old"]), np.load(outs["new"])
        errs = [_rel(n["layers"][:, i], o["layers"][:, i]) for i in range(len(layers))]
        size = f"{model} {arch or ''}".strip()
        print(f"| {size} | {hw[0]}x{hw[1]} | {_rel(n['cls'], o['cls']):.1e} | "
              f"{_rel(n['registers'], o['registers']):.1e}"
              f" | {_rel(n['patches'], o['patches']):.1e} | "
              + ", ".join(f"{b}: {e:.1e}" for b, e in zip(layers, errs))
              + f" | {_rel(n['bf16_cls'], o['bf16_cls']):.1e}, {_rel(n['bf16_patches'], o['bf16_patches']):.1e} |",
              flush=True)
        if not a.keep:
            w.unlink()


def cubes(a, old: Path, new: Path) -> None:
    from geodino.cube import open_cube
    from geodino.models import save_weights
    from geodino.models.testing import context_mixing_model

    work = Path(a.workdir)
    if not a.reuse:
        w = save_weights(context_mixing_model(a.model), work / f"cubes-{a.model}.safetensors")
        for tag, tree in (("old", old), ("new", new)):
            run_child(tree, {"kind": "cubes", "model": a.model, "weights": str(w), "data": a.data,
                             "out": str(work / f"cubes-{tag}")})
    print("| raster | cube (y x x) | CRS, transform, coords | valid | tile_status | features rel. err. (valid) | "
          "max per-patch rel. err. | CLS rel. err. |\n|---|---|---|---|---|---|---|---|")
    for name, _ in RASTERS:
        o, n = open_cube(work / "cubes-old" / f"{name}.zarr"), open_cube(work / "cubes-new" / f"{name}.zarr")
        geo = (o.rio.crs == n.rio.crs and tuple(o.rio.transform()) == tuple(n.rio.transform())
               and all(np.array_equal(o[c].values, n[c].values) for c in ("x", "y")))
        valid = o.valid.values
        fo = np.moveaxis(o.features.values, 0, -1)[valid]
        fn = np.moveaxis(n.features.values, 0, -1)[valid]
        per = np.linalg.norm(fn - fo, axis=-1) / np.linalg.norm(fo, axis=-1)
        ok = np.isfinite(o.cls.values[:, 0]) if o.cls.ndim == 2 else np.isfinite(o.cls.values)
        cls = _rel(n.cls.values[ok], o.cls.values[ok]) if ok.any() else float("nan")
        print(f"| {name} | {o.sizes['y']} x {o.sizes['x']} | {'same' if geo else 'DIFFERENT'} | "
              f"{'same' if np.array_equal(valid, n.valid.values) else 'DIFFERENT'} ({int(valid.sum())} valid) | "
              f"{'same' if np.array_equal(o.tile_status.values, n.tile_status.values) else 'DIFFERENT'} | "
              f"{_rel(fn, fo):.1e} | {per.max():.1e} | {cls:.1e} |", flush=True)


def bench(a, old: Path, new: Path) -> None:
    import torch

    sys.path.insert(1, str(REPO / "pipelines"))
    from bench_cpu import cpu_model
    from synthetic import make_raster

    from geodino.models import save_weights
    from geodino.models.testing import context_mixing_model

    work = Path(a.workdir)
    w = save_weights(context_mixing_model(a.model, weight_gain=0.0), work / f"bench-{a.model}-ls05.safetensors")
    scene = make_raster(work / f"scene-{a.scene}.tif", a.scene)
    warm = make_raster(work / "warm-512.tif", 512)
    kinds = {"model": ["model-bf16", "model-fp32"], "embed": ["embed-bf16", "embed-fp32"], "geobench": ["geobench"]}
    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    print(f"{cpu_model()} ({', '.join(f for f in ('amx_bf16', 'avx512_bf16', 'avx2') if f in flags.split())}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {a.model}, 512 px, "
          f"{a.rounds} rounds alternating old/new", flush=True)
    rates: dict[str, dict[str, list[float]]] = {}
    for kind in [k for r in a.rows for k in kinds[r]]:
        for rnd in range(a.rounds):
            for tag, tree in ((("old", old), ("new", new)) if rnd % 2 == 0 else (("new", new), ("old", old))):
                res = run_child(tree, {"kind": kind, "model": a.model, "weights": str(w), "iters": a.iters,
                                       "scene": str(scene), "warm": str(warm), "out": str(work / f"e2e-{tag}")})
                for row, v in res.items():
                    rates.setdefault(row, {"old": [], "new": []})[tag].append(v)
                    print(f"  {row} round {rnd} {tag}: {v:.3f}", flush=True)
    print("\n| row | before (old) | after (new) | after / before | spread of the rounds (old; new) |\n"
          "|---|---|---|---|---|")
    for row, r in rates.items():
        o, n = np.median(r["old"]), np.median(r["new"])
        spread = "; ".join(f"{(max(v) - min(v)) / np.median(v) * 100:.0f} %" for v in (r["old"], r["new"]))
        unit = "" if "images/s" in row else " tiles/s"
        print(f"| {row} | {o:.3f}{unit} | {n:.3f}{unit} | {n / o:.3f} | {spread} |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["parity", "cubes", "bench"])
    p.add_argument("--old", required=True, help="a directory holding the older geodino/ package")
    p.add_argument("--new", default=str(REPO), help="a directory holding the newer one (default: this repository)")
    p.add_argument("--model", default="dinov3-vitl16-sat493m")
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data"))
    p.add_argument("--rows", nargs="+", choices=["model", "embed", "geobench"], default=["model", "embed"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--scene", type=int, default=1024, help="side of the generated end-to-end scene, px")
    p.add_argument("--workdir", default="/tmp/geodino-before-after")
    p.add_argument("--keep", action="store_true", help="keep the parity weights files")
    p.add_argument("--reuse", action="store_true", help="cubes: compare the cubes of an earlier run")
    a = p.parse_args()
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    old, new = Path(a.old).resolve(), Path(a.new).resolve()
    for d in (old, new):
        if not (d / "geodino" / "__init__.py").is_file():
            raise SystemExit(f"{d} holds no geodino/ package")
    sys.path.insert(0, str(REPO))
    {"parity": parity, "cubes": cubes, "bench": bench}[a.what](a, old, new)


if __name__ == "__main__":
    main()
