"""State-dict layouts of DINOv3 checkpoints, and conversion between them.

Four layouts exist in the wild (see the table in the project docs):

* ``official``: facebookresearch/dinov3 ``.pth`` files (``storage_tokens``, ``rope_embed.periods``,
  ``qkv.bias`` with a ``bias_mask`` that zeroes the key bias, ``ls1.gamma``, ``local_cls_norm``);
* ``hf``: transformers ``DINOv3ViTModel`` safetensors (``embeddings.*``, ``layer.N.attention.{q,k,v}_proj``;
  transformers 5 names the blocks ``model.layer.N`` in memory; both are accepted);
* ``timm``: timm's Eva (``reg_token``, ``gamma_1``, ``q_bias``/``v_bias`` in the ``_qkvb`` variants,
  ``mlp.fc1_g/fc1_x`` for SwiGLU);
* ``geodino``: this package's own module names (``register_tokens``, ``rope.periods``...).

Every conversion goes through the geodino layout. As in the official model, the key third of ``qkv.bias`` is
masked out at run time (``bias_mask``), so it carries no information: converters drop it or write zeros.
Keys that a layout drops (mask token, rope periods, local_cls_norm: none is used at inference) are filled
with their defaults when ``arch`` is given; :func:`geodino.models.load_backbone` fills them from the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from geodino.errors import WeightsError
from geodino.models.config import ViTArch

__all__ = ["LAYOUTS", "detect_layout", "convert_state_dict", "unwrap_state_dict", "infer_arch_fields"]

LAYOUTS = ("geodino", "official", "hf", "timm")
StateDict = dict[str, Tensor]

_WRAPPERS = ("model", "state_dict", "teacher", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "_orig_mod.")


def unwrap_state_dict(obj) -> StateDict:
    """Find the tensor dict inside common checkpoint wrappers ({"model": ...}, "module." prefixes...)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"checkpoint holds a {type(obj).__name__}, not a state dict of tensors")
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise WeightsError("checkpoint holds no tensors")
    for p in _PREFIXES:
        if all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """Which layout a state dict is in: ``"official" | "hf" | "timm" | "geodino"``."""
    keys = set(state_dict)
    if "register_tokens" in keys or "rope.periods" in keys:
        return "geodino"
    if "storage_tokens" in keys or any(k.startswith("rope_embed.") for k in keys):
        return "official"
    if any(k.startswith(("embeddings.", "layer.", "model.layer.")) for k in keys):
        return "hf"
    if "reg_token" in keys or any(".gamma_1" in k for k in keys):
        return "timm"
    if any(k.startswith("blocks.") and ".ls1.gamma" in k for k in keys):
        return "official"  # an official file without registers
    sample = ", ".join(sorted(keys)[:4])
    raise WeightsError(f"not a DINOv3 ViT state dict (keys start {sample}...); expected an official, HF, "
                       "timm or geodino checkpoint")


def _n_blocks(sd: Mapping[str, Tensor], pattern: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(ids) + 1 if ids else 0


def infer_arch_fields(sd: Mapping[str, Tensor]) -> dict:
    """What the shapes of a geodino-layout state dict say of its architecture (not num_heads)."""
    out: dict = {}
    if "cls_token" in sd:
        out["embed_dim"] = sd["cls_token"].shape[-1]
    if "register_tokens" in sd:
        out["n_registers"] = sd["register_tokens"].shape[1]
    if "patch_embed.proj.weight" in sd:
        out["patch_size"] = sd["patch_embed.proj.weight"].shape[-1]
        out["in_chans"] = sd["patch_embed.proj.weight"].shape[1]
    out["depth"] = _n_blocks(sd, r"blocks\.(\d+)\.")
    if "blocks.0.mlp.w1.weight" in sd:
        out["ffn"], out["ffn_hidden"] = "swiglu", sd["blocks.0.mlp.w1.weight"].shape[0]
    elif "blocks.0.mlp.fc1.weight" in sd:
        out["ffn"], out["ffn_hidden"] = "mlp", sd["blocks.0.mlp.fc1.weight"].shape[0]
    out["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    out["local_cls_norm"] = "local_cls_norm.weight" in sd
    return out


def _qkv_bias_mask(n: int, like: Tensor) -> Tensor:
    mask = torch.ones(n, dtype=like.dtype, device=like.device)
    mask[n // 3: 2 * n // 3] = 0
    return mask


# ---------------------------------------------------------------------------------- to the geodino layout

def _from_official(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        if k.endswith(".bias_mask"):
            continue
        if k.endswith("attn.qkv.bias"):
            mask = sd.get(k + "_mask")
            v = v * (mask.to(v.dtype) if mask is not None else _qkv_bias_mask(v.shape[0], v))
        k = k.replace("storage_tokens", "register_tokens").replace("rope_embed.periods", "rope.periods")
        out[k] = v
    return out


def _from_hf(sd: StateDict) -> StateDict:
    out: StateDict = {}
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in sd.items()}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "register_tokens",
              "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
              "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k == "embeddings.mask_token":
            out["mask_token"] = v.reshape(1, -1)
        elif not k.startswith("layer.") and not k.startswith("rope_embeddings."):
            out[k] = v  # unknown: surfaces as an unexpected key
    swiglu = any(".mlp.gate_proj." in k for k in sd)
    mlp_names = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if swiglu else \
        {"up_proj": "fc1", "down_proj": "fc2"}
    for i in range(_n_blocks(sd, r"layer\.(\d+)\.")):
        p, q = f"layer.{i}.", f"blocks.{i}."
        a = p + "attention."
        for n in ("norm1", "norm2"):
            for t in ("weight", "bias"):
                if p + f"{n}.{t}" in sd:
                    out[q + f"{n}.{t}"] = sd[p + f"{n}.{t}"]
        ws = [sd.get(a + f"{x}_proj.weight") for x in "qkv"]
        if all(w is not None for w in ws):
            out[q + "attn.qkv.weight"] = torch.cat(ws, 0)
        bs = [sd.get(a + f"{x}_proj.bias") for x in "qkv"]
        if bs[1] is not None and not bs[1].is_meta and bs[1].abs().max() > 0:
            raise WeightsError(f"{a}k_proj.bias is non-zero: DINOv3 masks the key bias, so this checkpoint is "
                               "not a DINOv3 model geodino can reproduce")
        if any(b is not None for b in bs):
            ref = next(b for b in bs if b is not None)
            out[q + "attn.qkv.bias"] = torch.cat([b if b is not None else torch.zeros_like(ref) for b in bs])
        for t in ("weight", "bias"):
            if a + f"o_proj.{t}" in sd:
                out[q + f"attn.proj.{t}"] = sd[a + f"o_proj.{t}"]
        for j in (1, 2):
            if p + f"layer_scale{j}.lambda1" in sd:
                out[q + f"ls{j}.gamma"] = sd[p + f"layer_scale{j}.lambda1"]
        for src, dst in mlp_names.items():
            for t in ("weight", "bias"):
                if p + f"mlp.{src}.{t}" in sd:
                    out[q + f"mlp.{dst}.{t}"] = sd[p + f"mlp.{src}.{t}"]
        known = {a + f"{x}_proj.{t}" for x in "qkvo" for t in ("weight", "bias")} | \
            {p + f"{n}.{t}" for n in ("norm1", "norm2") for t in ("weight", "bias")} | \
            {p + f"layer_scale{j}.lambda1" for j in (1, 2)} | \
            {p + f"mlp.{s}.{t}" for s in mlp_names for t in ("weight", "bias")}
        for k in sd:
            if k.startswith(p) and k not in known:
                out[k] = sd[k]  # surfaces as unexpected
    return out


def _from_timm(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k.endswith(("attn.q_bias", "attn.v_bias", "attn.k_bias")) or k.endswith("rope.periods"):
            continue
        k = k.replace("reg_token", "register_tokens")
        k = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k)
        k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.")
        out[k] = v
    if any(".mlp.w1." in k for k in out):  # SwiGLU: timm's fc2 is the official w3
        out = {k.replace("mlp.fc2.", "mlp.w3."): v for k, v in out.items()}
    for i in range(_n_blocks(sd, r"blocks\.(\d+)\.")):
        p = f"blocks.{i}.attn."
        qb, vb, kb = sd.get(p + "q_bias"), sd.get(p + "v_bias"), sd.get(p + "k_bias")
        if qb is not None or vb is not None:
            ref = qb if qb is not None else vb
            z = torch.zeros_like(ref)
            out[p + "qkv.bias"] = torch.cat([qb if qb is not None else z, kb if kb is not None else z,
                                             vb if vb is not None else z])
    return out


# -------------------------------------------------------------------------------- from the geodino layout

def _to_official(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        k2 = k.replace("register_tokens", "storage_tokens").replace("rope.periods", "rope_embed.periods")
        out[k2] = v
        if k.endswith("attn.qkv.bias"):
            out[k2 + "_mask"] = _qkv_bias_mask(v.shape[0], v)
    return out


def _to_hf(sd: StateDict) -> StateDict:
    out: StateDict = {}
    swiglu = any(".mlp.w1." in k for k in sd)
    mlp_names = {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"} if swiglu else \
        {"fc1": "up_proj", "fc2": "down_proj"}
    for k, v in sd.items():
        if k in ("rope.periods",) or k.startswith("local_cls_norm."):
            continue
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "register_tokens":
            out["embeddings.register_tokens"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v.reshape(1, 1, -1)
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings." + k.rsplit(".", 1)[1]] = v
        elif (m := re.match(r"blocks\.(\d+)\.(.*)$", k)):
            i, rest = m.groups()
            p = f"layer.{i}."
            if rest == "attn.qkv.weight":
                for x, w in zip("qkv", v.chunk(3, 0)):
                    out[p + f"attention.{x}_proj.weight"] = w.contiguous()
            elif rest == "attn.qkv.bias":
                qb, kb, vb = v.chunk(3, 0)
                out[p + "attention.q_proj.bias"] = qb.contiguous()
                out[p + "attention.v_proj.bias"] = vb.contiguous()
            elif rest.startswith("attn.proj."):
                out[p + "attention.o_proj." + rest.rsplit(".", 1)[1]] = v
            elif (m2 := re.match(r"ls([12])\.gamma$", rest)):
                out[p + f"layer_scale{m2.group(1)}.lambda1"] = v
            elif (m2 := re.match(r"mlp\.(\w+)\.(weight|bias)$", rest)) and m2.group(1) in mlp_names:
                out[p + f"mlp.{mlp_names[m2.group(1)]}.{m2.group(2)}"] = v
            else:
                out[p + rest] = v
        else:
            out[k] = v
    return out


def _to_timm(sd: StateDict) -> StateDict:
    out: StateDict = {}
    swiglu = any(".mlp.w1." in k for k in sd)
    for k, v in sd.items():
        if k in ("rope.periods", "mask_token") or k.startswith("local_cls_norm."):
            continue
        if k.endswith("attn.qkv.bias"):
            qb, kb, vb = v.chunk(3, 0)
            if qb.abs().max() > 0 or vb.abs().max() > 0:  # all-zero biases: timm's variant without q/v bias
                p = k[: -len("qkv.bias")]
                out[p + "q_bias"], out[p + "v_bias"] = qb.contiguous(), vb.contiguous()
            continue
        k = k.replace("register_tokens", "reg_token")
        k = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k)
        if swiglu:
            k = k.replace("mlp.w1.", "mlp.fc1_g.").replace("mlp.w2.", "mlp.fc1_x.").replace("mlp.w3.", "mlp.fc2.")
        out[k] = v
    return out


_TO_GEODINO = {"geodino": dict, "official": _from_official, "hf": _from_hf, "timm": _from_timm}
_FROM_GEODINO = {"geodino": dict, "official": _to_official, "hf": _to_hf, "timm": _to_timm}


def fill_dropped(sd: StateDict, arch: ViTArch) -> StateDict:
    """Add the inference-irrelevant keys some layouts drop, with their defaults for ``arch``."""
    from geodino.models.dinov3 import rope_periods

    sd = dict(sd)
    ref = sd.get("cls_token")
    dtype = ref.dtype if ref is not None else torch.float32
    d = arch.embed_dim
    sd.setdefault("mask_token", torch.zeros(1, d, dtype=dtype))
    sd.setdefault("rope.periods", rope_periods(arch.head_dim, arch.rope_base))
    if arch.local_cls_norm:
        sd.setdefault("local_cls_norm.weight", torch.ones(d, dtype=dtype))
        sd.setdefault("local_cls_norm.bias", torch.zeros(d, dtype=dtype))
    if arch.qkv_bias:  # timm's bias-free variants dropped all-zero qkv biases
        for i in range(arch.depth):
            if f"blocks.{i}.attn.qkv.weight" in sd:
                sd.setdefault(f"blocks.{i}.attn.qkv.bias", torch.zeros(3 * d, dtype=dtype))
    return sd


# Which keys each layout leaves out of its files.
DROPPED_BY = {"geodino": set(), "official": set(),
              "hf": {"rope", "local_cls_norm"},
              "timm": {"rope", "local_cls_norm", "mask_token", "qkv_bias"}}


def convert_state_dict(sd: Mapping[str, Tensor], src: str | None = None, dst: str = "geodino",
                       arch: ViTArch | None = None) -> StateDict:
    """Convert a DINOv3 state dict between layouts (``src`` is detected when None).

    With ``arch``, keys the source layout dropped (mask token, RoPE periods, local_cls_norm, zero qkv
    biases) are restored with their defaults before converting, so e.g. timm -> official yields a
    complete official checkpoint.
    """
    sd = unwrap_state_dict(sd)
    src = src or detect_layout(sd)
    for name in (src, dst):
        if name not in LAYOUTS:
            raise WeightsError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    geo = _TO_GEODINO[src](sd)
    if arch is not None:
        geo = fill_dropped(geo, arch)
    return _FROM_GEODINO[dst](geo)
