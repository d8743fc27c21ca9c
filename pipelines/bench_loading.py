#!/usr/bin/env python
"""Loading a big checkpoint: peak host RSS against the model's own bytes, load time, and the sha256 cache.

Writes a seeded random checkpoint of a registry model (default the ViT-7B/16 SAT: 6.7 B parameters) as a
safetensors file in the file dtype asked for (bf16: 13.4 GB, fp32: 26.9 GB), tensor by tensor, then loads it in a
fresh process the way the engine does (Linear/Conv weights in bf16, the rest fp32) and prints the peak RSS the
load added (VmHWM, reset just before loading) as a multiple of the loaded model's bytes. Importing timm (code, not
weights: ~0.2 GB with torchvision) happens before that reset and is printed apart. A second load shows the cached
sha256 (`$GEODINO_CACHE_DIR`).

    python pipelines/bench_loading.py --file-dtype bf16 --workdir /tmp/geodino-7b
    python pipelines/bench_loading.py --model dinov3-vitl16-sat493m --file-dtype fp32
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_ST = {"bf16": ("BF16", 2), "fp32": ("F32", 4), "fp16": ("F16", 2)}


def write_random_checkpoint(model: str, path: Path, file_dtype: str, seed: int = 0, shard_gb: float = 0) -> Path:
    """A random checkpoint written one tensor at a time. (safetensors.torch.save_file needs every tensor in
    memory at once: 27 GB for the 7B in fp32, more than this machine has; the format is a JSON header plus the
    raw bytes, so it is streamed here.) With ``shard_gb`` it is a directory of shards plus
    ``model.safetensors.index.json``, as HF ships big models (safetensors cannot map one 27 GB file on a 24 GB
    machine)."""
    import torch

    from geodino.models import build_model
    from geodino.models.layouts import from_timm

    meta = build_model(model, device="meta")
    sd = from_timm(meta.vit.state_dict(), "geodino", meta.arch)  # geodino's layout, as the earlier measurements
    if shard_gb:
        path.mkdir(parents=True, exist_ok=True)
        shards, cur, size_b = [], {}, 0
        for k, v in sd.items():
            n = v.numel() * _ST[file_dtype][1]
            if cur and size_b + n > shard_gb * 1e9:
                shards.append(cur)
                cur, size_b = {}, 0
            cur[k] = v
            size_b += n
        shards.append(cur)
        weight_map = {}
        for i, part in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write(meta, part, path / name, file_dtype, seed + i)
            weight_map.update({k: name for k in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return path
    return _write(meta, sd, path, file_dtype, seed)


def _write(meta, sd: dict, path: Path, file_dtype: str, seed: int) -> Path:
    import torch

    st_name, size = _ST[file_dtype]
    header, offset = {"__metadata__": {"format": "pt", "geodino.layout": "geodino", "geodino.model": meta.cfg.name}}, 0
    for k, v in sd.items():
        dt = "F32" if k == "rope.periods" else st_name
        n = v.numel() * (4 if dt == "F32" else size)
        header[k] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    g = torch.Generator().manual_seed(seed)
    torch_dt = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16}
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k, v in sd.items():
            if k == "rope.periods":
                from geodino.models import rope_periods

                t = rope_periods(meta.arch.head_dim, meta.arch.rope_base)
            elif k.endswith(("gamma",)):
                t = torch.full(v.shape, 1e-5)
            elif "norm" in k and k.endswith("weight"):
                t = torch.ones(v.shape)
            elif k.endswith("bias") or k == "mask_token":
                t = torch.zeros(v.shape)
            else:
                t = torch.randn(v.shape, generator=g) * 0.02
            t = t.to(torch_dt[header[k]["dtype"]]).contiguous()
            f.write(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.float32 else t.numpy().tobytes())
            del t
    return path


_CHILD = """
import json, sys, time, torch
from geodino.models import load_backbone
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
code0 = status("VmRSS")
import timm  # code, not weights (timm and torchvision): measured apart, before the load
code = status("VmRSS") - code0
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
t0 = time.perf_counter()
m = load_backbone(sys.argv[1], sys.argv[2], matmul_dtype=torch.bfloat16)
sec = time.perf_counter() - t0
nbytes = sum(p.numel() * p.element_size() for p in m.parameters()) + sum(b.numel() * b.element_size()
                                                                        for b in m.buffers())
print(json.dumps({"before": before, "peak": status("VmHWM"), "model_bytes": nbytes, "seconds": sec,
                  "sha256": m.weights_info.sha256, "import_timm_bytes": code}))
"""


def load_in_child(model: str, path: Path, cache: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, model, str(path)], capture_output=True, text=True,
                       env={**os.environ, "GEODINO_CACHE_DIR": str(cache)})
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dinov3-vit7b16-sat493m")
    p.add_argument("--file-dtype", choices=sorted(_ST), default="bf16")
    p.add_argument("--workdir", default="/tmp/geodino-bench-loading")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    p.add_argument("--shard-gb", type=float, default=0, help="write a sharded snapshot directory instead")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / (f"{a.model}-random-{a.file_dtype}" + ("-sharded" if a.shard_gb else ".safetensors"))
    t0 = time.perf_counter()
    if not ckpt.exists():
        write_random_checkpoint(a.model, ckpt, a.file_dtype, shard_gb=a.shard_gb)
    written = time.perf_counter() - t0
    cache = work / "cache"
    first = load_in_child(a.model, ckpt, cache)
    second = load_in_child(a.model, ckpt, cache)
    added = first["peak"] - first["before"]
    files = sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else [ckpt]
    row = {"model": a.model, "file": ckpt.name, "file_gb": sum(f.stat().st_size for f in files) / 1e9, "write_s": round(written, 1),
           "model_gb": first["model_bytes"] / 1e9, "rss_before_gb": first["before"] / 1e9,
           "peak_rss_gb": first["peak"] / 1e9, "added_gb": added / 1e9,
           "added_over_model": added / first["model_bytes"], "load_s": round(first["seconds"], 1),
           "load_cached_sha_s": round(second["seconds"], 1), "import_timm_gb": first["import_timm_bytes"] / 1e9}
    print("| model | file | file GB | model GB (bf16 matmuls) | RSS before | peak RSS | added / model | load s | "
          "load s, sha256 cached | importing timm (before) |\n|---|---|---|---|---|---|---|---|---|---|")
    kind = f"{len(files)} {a.file_dtype} shards" if ckpt.is_dir() else f"{a.file_dtype} safetensors"
    print(f"| {a.model} | {kind} | {row['file_gb']:.1f} | {row['model_gb']:.2f} | "
          f"{row['rss_before_gb']:.2f} GB | {row['peak_rss_gb']:.2f} GB | {row['added_over_model']:.3f} | "
          f"{row['load_s']} | {row['load_cached_sha_s']} | {row['import_timm_gb']:.2f} GB |")
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=2))
    if not a.keep:
        import shutil

        shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()


if __name__ == "__main__":
    main()
