"""State-dict layouts of DINOv3 checkpoints, converted to and from timm's (the model geodino runs).

``official`` (facebookresearch/dinov3 ``.pth``: ``storage_tokens``, ``rope_embed.periods``, masked ``qkv.bias``,
``ls1.gamma``, ``mlp.w1/w2/w3``, ``local_cls_norm``) is read through timm's own ``checkpoint_filter_fn``; ``hf``
(transformers ``DINOv3ViTModel``), ``timm`` (Eva) and ``geodino`` (the official names with ``register_tokens`` and
``rope.periods``) by the rename table below. The masked key bias carries no information: readers drop it, writers
put zeros; keys only official files carry (mask token, periods, local_cls_norm) are written with their defaults.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from geodino.errors import WeightsError
from geodino.models.config import ViTArch

LAYOUTS = ("geodino", "official", "hf", "timm")
StateDict = dict[str, Tensor]

_WRAPPERS = ("model", "state_dict", "teacher", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "_orig_mod.", "vit.")  # vit.: a geodino Backbone's own

# One row per tensor family: timm, transformers, official names (None: no such key; special-cased below).
_NAMES = [
    ("cls_token", "embeddings.cls_token", "cls_token"),
    ("reg_token", "embeddings.register_tokens", "storage_tokens"),
    ("patch_embed.proj.{t}", "embeddings.patch_embeddings.{t}", "patch_embed.proj.{t}"),
    ("blocks.{i}.norm{j}.{t}", "layer.{i}.norm{j}.{t}", "blocks.{i}.norm{j}.{t}"),
    ("blocks.{i}.attn.proj.{t}", "layer.{i}.attention.o_proj.{t}", "blocks.{i}.attn.proj.{t}"),
    ("blocks.{i}.attn.{x}_bias", "layer.{i}.attention.{x}_proj.bias", None),
    ("blocks.{i}.gamma_{j}", "layer.{i}.layer_scale{j}.lambda1", "blocks.{i}.ls{j}.gamma"),
    ("blocks.{i}.mlp.fc1_g.{t}", "layer.{i}.mlp.gate_proj.{t}", "blocks.{i}.mlp.w1.{t}"),
    ("blocks.{i}.mlp.fc1_x.{t}", "layer.{i}.mlp.up_proj.{t}", "blocks.{i}.mlp.w2.{t}"),
    ("blocks.{i}.mlp.fc1.{t}", "layer.{i}.mlp.up_proj.{t}", "blocks.{i}.mlp.fc1.{t}"),
    ("blocks.{i}.mlp.fc2.{t}", "layer.{i}.mlp.down_proj.{t}", "blocks.{i}.mlp.fc2.{t}"),  # official SwiGLU: w3
]
_GROUPS = {"i": r"\d+", "j": r"\d+", "k": r"\d+", "x": "[qv]", "t": "weight|bias"}


@functools.cache
def _regex(template: str) -> re.Pattern:
    pat = re.escape(template)
    for g, rx in _GROUPS.items():
        pat = pat.replace(re.escape("{" + g + "}"), f"(?P<{g}>{rx})")
    return re.compile(pat)


def rename(key: str, table: list[tuple], src: int, dst: int) -> str:
    """``key`` renamed from column ``src`` of a name table to column ``dst``; unknown keys unchanged."""
    for row in table:
        if row[src] and row[dst] and (m := _regex(row[src]).fullmatch(key)):
            return row[dst].format(**m.groupdict())
    return key


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
    raise WeightsError(f"not a DINOv3 ViT state dict (keys start {', '.join(sorted(keys)[:4])}...); expected an "
                       "official, HF, timm or geodino checkpoint")


def periods_key(layout: str) -> str | None:
    """The key of the RoPE periods in a layout that carries them."""
    return {"official": "rope_embed.periods", "geodino": "rope.periods"}.get(layout)


def local_cls_norm(sd: Mapping[str, Tensor], layout: str) -> bool | None:
    """Whether an official or geodino state dict carries local_cls_norm (which tells the SAT ViT-L file from the
    LVD one); None for the layouts that never carry it."""
    return any(k.startswith("local_cls_norm.") for k in sd) if periods_key(layout) else None


def blocks(sd: Mapping[str, Tensor]) -> list[int]:
    """The block ids of a state dict in timm's (or the official) names, sorted."""
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


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
    swiglu = any(".mlp.gate_proj." in k for k in sd)
    out: StateDict = {}
    qkv: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for k, v in sd.items():
        k = re.sub(r"^model\.layer\.", "layer.", k)
        if k == "embeddings.mask_token" or k.startswith("rope_embeddings."):
            continue  # training only / recomputed
        if m := re.fullmatch(r"layer\.(\d+)\.attention\.([qkv])_proj\.weight", k):
            qkv.setdefault(m.group(1), {})[m.group(2)] = (k, v)  # concatenated below
        elif re.fullmatch(r"layer\.\d+\.attention\.k_proj\.bias", k):
            if not v.is_meta and v.abs().max() > 0:
                raise WeightsError(f"{k} is non-zero: DINOv3 masks the key bias, so this checkpoint is not a "
                                   "DINOv3 model geodino can reproduce")
        else:
            k = rename(k, _NAMES, 1, 0)
            out[k if swiglu else k.replace(".mlp.fc1_x.", ".mlp.fc1.")] = v  # unknown keys: unexpected later
    for i, parts in qkv.items():
        if len(parts) == 3:
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts[x][1] for x in "qkv"], 0)
        else:  # an incomplete block: its parts surface as unexpected keys
            out.update(parts.values())
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


def from_timm(sd: Mapping[str, Tensor], layout: str, arch: ViTArch, periods: Tensor | None = None) -> StateDict:
    """A timm-layout state dict of a whole model in ``layout``, complete: keys the layout carries and timm's model
    does not (mask token, RoPE ``periods``, local_cls_norm, zero biases) are written with their defaults."""
    from geodino.models.backbone import rope_periods

    sd = dict(sd)
    ref = sd["cls_token"]
    d, zero, ids = ref.shape[-1], ref.new_zeros(ref.shape[-1]), blocks(sd)
    if layout == "timm":  # all-zero q/v biases: timm's variant without them (its released DINOv3 files)
        biases = [k for k in sd if k.endswith(("attn.q_bias", "attn.v_bias"))]
        if biases and all(not sd[k].is_meta and not sd[k].any() for k in biases):
            sd = {k: v for k, v in sd.items() if k not in biases}
        return sd
    if layout == "hf":
        out = {}
        for k, v in sd.items():
            if m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.weight", k):
                out.update({f"layer.{m.group(1)}.attention.{x}_proj.weight": w.contiguous()
                            for x, w in zip("qkv", v.chunk(3, 0))})
            else:
                out[rename(k, _NAMES, 0, 1)] = v
        for i in ids if arch.qkv_bias else ():
            for x in "qv":
                out.setdefault(f"layer.{i}.attention.{x}_proj.bias", zero)
        return {**out, "embeddings.mask_token": ref.new_zeros(1, 1, d)}
    if layout not in ("official", "geodino"):
        raise WeightsError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    swiglu = any(".mlp.fc1_g." in k for k in sd)
    out = {}
    for k, v in sd.items():
        if not k.endswith(("attn.q_bias", "attn.v_bias")):
            k = rename(k, _NAMES, 0, 2)
            out[k.replace(".mlp.fc2.", ".mlp.w3.") if swiglu else k] = v
    for i in ids:
        p = f"blocks.{i}.attn."
        qb, vb = sd.get(p + "q_bias"), sd.get(p + "v_bias")
        if arch.qkv_bias or qb is not None:
            out[p + "qkv.bias"] = torch.cat([zero if qb is None else qb, zero, zero if vb is None else vb])
            out[p + "qkv.bias_mask"] = torch.cat([ref.new_ones(d), zero, ref.new_ones(d)])
    out["mask_token"] = ref.new_zeros(1, d)
    out["rope_embed.periods"] = periods if periods is not None else \
        rope_periods(arch.head_dim, arch.rope_base).to(ref.device)
    if arch.local_cls_norm:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = ref.new_ones(d), ref.new_zeros(d)
    if layout == "official":
        return out
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
