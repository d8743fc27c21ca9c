"""State-dict layouts of DINOv3 checkpoints, converted to and from timm's (the model geodino runs).

* ``official``: facebookresearch/dinov3 ``.pth`` files (``storage_tokens``, ``rope_embed.periods``, ``qkv.bias`` with
  a ``bias_mask`` that zeroes the key bias, ``ls1.gamma``, ``mlp.w1/w2/w3``, ``local_cls_norm``), read through timm's
  own ``checkpoint_filter_fn``;
* ``hf``: transformers ``DINOv3ViTModel`` safetensors (``embeddings.*``, ``layer.N.attention.{q,k,v}_proj``;
  transformers 5 names the blocks ``model.layer.N`` in memory; both are read);
* ``timm``: timm's Eva (``reg_token``, ``gamma_1``, ``q_bias``/``v_bias``, ``mlp.fc1_g/fc1_x`` for SwiGLU);
* ``geodino``: the official names with ``register_tokens`` and ``rope.periods`` (geodino's files before timm).

The key third of the official ``qkv.bias`` is masked at run time (``bias_mask``), so it carries no information:
readers drop it, writers put zeros. Keys no layout but the official ones carry (mask token, RoPE periods,
local_cls_norm: none used at inference) are written with their defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from geodino.errors import WeightsError
from geodino.models.config import ViTArch

__all__ = ["LAYOUTS", "detect_layout", "unwrap_state_dict", "to_timm", "from_timm", "convert_state_dict",
           "periods_key"]

LAYOUTS = ("geodino", "official", "hf", "timm")
StateDict = dict[str, Tensor]

_WRAPPERS = ("model", "state_dict", "teacher", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "_orig_mod.", "vit.")  # vit.: a geodino Backbone's own


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


def periods_key(layout: str) -> str | None:
    """The key of the RoPE periods in a layout that carries them."""
    return {"official": "rope_embed.periods", "geodino": "rope.periods"}.get(layout)


def _blocks(sd: Mapping[str, Tensor], pattern: str = r"blocks\.(\d+)\.") -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


# ------------------------------------------------------------------------------------------- to timm's

def _official_to_timm(sd: StateDict) -> StateDict:
    from timm.models.eva import checkpoint_filter_fn

    out, rest = {}, {}
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):  # q and v thirds; the key third is masked by bias_mask, never used
            q, _, vb = v.chunk(3)
            out[k[: -len("qkv.bias")] + "q_bias"], out[k[: -len("qkv.bias")] + "v_bias"] = q, vb
        elif k in ("patch_embed.proj.weight", "pos_embed"):  # timm would resample them: a mismatch must surface
            out[k] = v
        else:
            rest[k] = v
    # timm's filter knows Meta's checkpoints by their storage_tokens, which a group of blocks read alone lacks
    alone = "storage_tokens" not in rest
    if alone:
        rest["storage_tokens"] = torch.empty(0, device="meta")
    rest = checkpoint_filter_fn(rest, model=None)
    if alone:
        rest.pop("reg_token")
    return {**rest, **out}


def _hf_to_timm(sd: StateDict) -> StateDict:
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in sd.items()}
    swiglu = any(".mlp.gate_proj." in k for k in sd)
    mlp = {"gate_proj": "fc1_g", "up_proj": "fc1_x" if swiglu else "fc1", "down_proj": "fc2"}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token"}
    out: StateDict = {}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k == "embeddings.mask_token" or k.startswith("rope_embeddings."):
            continue  # training only / recomputed
        elif (m := re.match(r"layer\.(\d+)\.(.+)$", k)):
            i, rest = m.groups()
            if rest in ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"):
                continue  # concatenated below
            if rest == "attention.k_proj.bias":
                if not v.is_meta and v.abs().max() > 0:
                    raise WeightsError(f"{k} is non-zero: DINOv3 masks the key bias, so this checkpoint is not a "
                                       "DINOv3 model geodino can reproduce")
                continue
            rest = re.sub(r"^attention\.([qv])_proj\.bias$", r"attn.\1_bias", rest)
            rest = re.sub(r"^attention\.o_proj\.", "attn.proj.", rest)
            rest = re.sub(r"^layer_scale([12])\.lambda1$", r"gamma_\1", rest)
            if (mm := re.match(r"mlp\.(\w+)\.(weight|bias)$", rest)) and mm.group(1) in mlp:
                rest = f"mlp.{mlp[mm.group(1)]}.{mm.group(2)}"
            out[f"blocks.{i}.{rest}"] = v
        else:
            out[k] = v  # norm.*, or unknown: surfaces as an unexpected key
    for i in _blocks(sd, r"layer\.(\d+)\."):
        ws = [sd.get(f"layer.{i}.attention.{x}_proj.weight") for x in "qkv"]
        if all(w is not None for w in ws):
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(ws, 0)
        else:  # an incomplete block: its parts surface as unexpected keys
            out.update({f"layer.{i}.attention.{x}_proj.weight": w for x, w in zip("qkv", ws) if w is not None})
    return out


def to_timm(sd: Mapping[str, Tensor], layout: str) -> StateDict:
    """``sd`` (all of a checkpoint, or the keys of some of its blocks) in timm's names. Keys timm's model does
    not hold (mask token, periods, bias_mask, local_cls_norm) are dropped; unknown keys pass through."""
    sd = dict(sd)
    if layout == "timm":
        return sd
    if layout == "hf":
        return _hf_to_timm(sd)
    if layout == "geodino":
        sd = {{"register_tokens": "storage_tokens", "rope.periods": "rope_embed.periods"}.get(k, k): v
              for k, v in sd.items()}
    elif layout != "official":
        raise WeightsError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return _official_to_timm(sd)


# ----------------------------------------------------------------------------------------- from timm's

def _timm_to_official(sd: StateDict, arch: ViTArch, periods: Tensor | None) -> StateDict:
    from geodino.models.backbone import rope_periods

    swiglu = any(".mlp.fc1_g." in k for k in sd)
    out: StateDict = {}
    for k, v in sd.items():
        if k.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        k = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k.replace("reg_token", "storage_tokens"))
        if swiglu:
            k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    ref = sd["cls_token"]
    d = ref.shape[-1]
    for i in _blocks(sd):
        p = f"blocks.{i}.attn."
        qb, vb = sd.get(p + "q_bias"), sd.get(p + "v_bias")
        if arch.qkv_bias or qb is not None:
            z = ref.new_zeros(d)
            out[p + "qkv.bias"] = torch.cat([qb if qb is not None else z, z, vb if vb is not None else z])
            out[p + "qkv.bias_mask"] = torch.cat([ref.new_ones(d), z, ref.new_ones(d)])
    out["mask_token"] = ref.new_zeros(1, d)
    out["rope_embed.periods"] = periods if periods is not None else \
        rope_periods(arch.head_dim, arch.rope_base).to(ref.device)
    if arch.local_cls_norm:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = ref.new_ones(d), ref.new_zeros(d)
    return out


def _timm_to_hf(sd: StateDict, arch: ViTArch) -> StateDict:
    mlp = {"fc1_g": "gate_proj", "fc1_x": "up_proj", "fc1": "up_proj", "fc2": "down_proj"}
    simple = {"cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
              "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
              "patch_embed.proj.bias": "embeddings.patch_embeddings.bias"}
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if not m:
            out[simple.get(k, k)] = v
            continue
        i, rest = m.groups()
        if rest == "attn.qkv.weight":
            for x, w in zip("qkv", v.chunk(3, 0)):
                out[f"layer.{i}.attention.{x}_proj.weight"] = w.contiguous()
            continue
        rest = re.sub(r"^attn\.([qv])_bias$", r"attention.\1_proj.bias", rest)
        rest = re.sub(r"^attn\.proj\.", "attention.o_proj.", rest)
        rest = re.sub(r"^gamma_([12])$", r"layer_scale\1.lambda1", rest)
        if (mm := re.match(r"mlp\.(\w+)\.(weight|bias)$", rest)) and mm.group(1) in mlp:
            rest = f"mlp.{mlp[mm.group(1)]}.{mm.group(2)}"
        out[f"layer.{i}.{rest}"] = v
    ref = sd["cls_token"]
    for i in _blocks(sd):
        for x in "qv":
            if arch.qkv_bias:
                out.setdefault(f"layer.{i}.attention.{x}_proj.bias", ref.new_zeros(ref.shape[-1]))
    out["embeddings.mask_token"] = ref.new_zeros(1, 1, ref.shape[-1])
    return out


def from_timm(sd: Mapping[str, Tensor], layout: str, arch: ViTArch, periods: Tensor | None = None) -> StateDict:
    """A timm-layout state dict of a whole model in ``layout``, complete: keys the layout carries and timm's model
    does not (mask token, RoPE ``periods``, local_cls_norm, zero biases) are written with their defaults."""
    sd = dict(sd)
    if layout == "timm":  # all-zero q/v biases: timm's variant without them (its released DINOv3 files)
        zero = [k for k in sd if k.endswith(("attn.q_bias", "attn.v_bias"))]
        if zero and all(not sd[k].is_meta and not sd[k].any() for k in zero):
            sd = {k: v for k, v in sd.items() if k not in zero}
        return sd
    if layout == "hf":
        return _timm_to_hf(sd, arch)
    out = _timm_to_official(sd, arch, periods)
    if layout == "official":
        return out
    if layout != "geodino":
        raise WeightsError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return {{"storage_tokens": "register_tokens", "rope_embed.periods": "rope.periods"}.get(k, k): v
            for k, v in out.items() if not k.endswith(".bias_mask")}


def convert_state_dict(sd: Mapping[str, Tensor], src: str | None = None, dst: str = "timm",
                       arch: ViTArch | None = None) -> StateDict:
    """Convert a whole DINOv3 state dict between layouts (``src`` detected when None). Writing a layout other than
    timm's needs ``arch`` (for the keys timm's model lacks); official and geodino periods are carried over."""
    sd = unwrap_state_dict(sd)
    src = src or detect_layout(sd)
    timm_sd = to_timm(sd, src)
    if dst == "timm":
        return timm_sd
    if arch is None:
        raise WeightsError(f"converting to the {dst} layout needs the architecture (pass arch)")
    pk = periods_key(src)
    return from_timm(timm_sd, dst, arch, sd.get(pk) if pk else None)
