"""Building and loading DINOv3 backbones: random-initialised models of the registry, strict loading of every
checkpoint layout block by block (bounded memory for the 7B), and the weights tools (save, inspect, convert).
Re-exported by :mod:`geodino.models`; the CHMv2 head's loading builds on it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from geodino.errors import ConfigError, WeightsError, WeightsMismatchError
from geodino.models.backbone import (Backbone, create_vit, init_weights, materialise_buffers, rope_periods,
                                     set_rope_periods)
from geodino.models.config import ModelConfig, ViTArch, get_config, list_models
from geodino.models.layouts import (LAYOUTS, detect_layout, from_timm, local_cls_norm, periods_key, to_timm,
                                    unwrap_state_dict)
from geodino.models.weights import (RANDOM, Checkpoint, WeightsInfo, check_state_dict, infer_arch_fields,
                                    load_tensors, match_models, read_checkpoint, warn_random, write_state_dict)


def _dtype_policy(vit: torch.nn.Module, dtype: torch.dtype | None, matmul_dtype: torch.dtype | None):
    """``name -> dtype``: Linear and Conv parameters (what runs as a matrix multiply) in ``matmul_dtype``, the rest
    (tokens, norms, LayerScale, q/v biases) in ``dtype``."""
    base = dtype or torch.float32
    if matmul_dtype is None:
        return lambda k: base
    mm = {f"{mn}.{pn}" for mn, m in vit.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
          for pn, _ in m.named_parameters(recurse=False)}
    return lambda k: matmul_dtype if k in mm else base


def build_model(name: str, *, device: str | torch.device | None = None, seed: int | None = None,
                dtype: torch.dtype | None = None, matmul_dtype: torch.dtype | None = None,
                **overrides) -> Backbone:
    """Build a registered backbone with the official random init. Overrides change the architecture
    (``depth=2``, ``embed_dim=...``) for small test models.

    ``device`` defaults to the ambient default device, so ``with torch.device("meta"): build_model(...)`` builds
    without memory, like ``device="meta"``. ``dtype``/``matmul_dtype`` store parameters in that dtype (Linear and
    Conv weights in ``matmul_dtype``); each module is initialised in fp32 and cast at once, so a 7B model is
    never materialised in fp32 as a whole.
    """
    cfg = get_config(name)
    arch = cfg.arch.replace(**overrides) if overrides else cfg.arch
    check_device(device)
    target = torch.device(device) if device is not None else torch.get_default_device()
    model = Backbone(create_vit(cfg, arch), arch, cfg)
    model.weights_info = WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
    if target.type != "meta":
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model.vit, arch, g, _dtype_policy(model.vit, dtype, matmul_dtype), device=target)
    return model.eval()


# Keys only official and geodino files carry (none used at inference), checked for strictness.
_EXTRAS = ("mask_token", "rope_embed.periods", "rope.periods", "local_cls_norm.weight", "local_cls_norm.bias")


def _checked(cfg: ModelConfig, arch: ViTArch, ckpt: Checkpoint) -> Backbone:
    """The model ``cfg`` with ``arch`` on the meta device, after checking that ``ckpt`` fits it: keys and shapes (from
    the file headers), config.json, and the extras official files carry. Raises one-line WeightsMismatchErrors."""
    c = ckpt.hf_config or {}
    if c.get("model_type") == "dinov3_vit":  # what a transformers config.json says of the architecture
        stated = {k: v for k, v in {"embed_dim": c.get("hidden_size"), "depth": c.get("num_hidden_layers"),
                                    "num_heads": c.get("num_attention_heads"), "patch_size": c.get("patch_size"),
                                    "n_registers": c.get("num_register_tokens"),
                                    "ffn": "swiglu" if c.get("use_gated_mlp") else "mlp"}.items() if v is not None}
        off = {k: (v, getattr(arch, k)) for k, v in stated.items() if getattr(arch, k) != v}
        if off:
            k, (file_v, model_v) = next(iter(off.items()))
            guess = [n for n in list_models() if all(getattr(get_config(n).arch, f) == v for f, v in stated.items())]
            hint = f"; it looks like {' or '.join(guess[:2])}" if guess else ""
            raise WeightsMismatchError(f"config.json of {ckpt.info.source} says {k}={file_v}, but {cfg.name} "
                                       f"has {k}={model_v}{hint}")
    model = Backbone(create_vit(cfg, arch), arch, cfg)
    layout, raw = ckpt.layout, ckpt.state_dict
    sd = to_timm(raw, layout)
    expected = {k: v.shape for k, v in model.vit.state_dict().items()}
    if layout in ("official", "geodino"):
        sd.update({k: v for k, v in raw.items() if k in _EXTRAS})
        d = arch.embed_dim
        expected.update({"mask_token": (1, d), periods_key(layout): (arch.head_dim // 4,)})
        if arch.local_cls_norm:
            expected.update({"local_cls_norm.weight": (d,), "local_cls_norm.bias": (d,)})
    else:  # timm's and transformers' variants without q/v biases (all zero in the released models)
        expected = {k: v for k, v in expected.items() if k in sd or not k.endswith(("attn.q_bias", "attn.v_bias"))}
    check_state_dict(sd, expected, cfg.name, layout, local_cls_norm(raw, layout))
    return model


def _block_groups(keys: list[str]) -> list[list[str]]:
    """Checkpoint keys grouped by transformer block (whatever the layout), non-block keys last: each group holds
    everything a layout converter needs to convert that block (e.g. HF's separate q/k/v)."""
    groups: dict[int, list[str]] = {}
    for k in keys:
        m = re.match(r"^(?:model\.)?(?:blocks|layer)\.(\d+)\.", k)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(k)
    return [groups[i] for i in sorted(i for i in groups if i >= 0)] + ([groups[-1]] if -1 in groups else [])


def check_device(device: str | torch.device | None) -> None:
    """A device this machine has, or one line saying it has not (not torch's raw CUDA error)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU here"
        raise ConfigError(f"device {str(device)!r} asked for, but {why}: use device='cpu' (or pick the device with "
                          "geodino.engine.resolve_device('auto'))")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) "
                          "are visible")


def load_backbone(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, *, matmul_dtype: torch.dtype | None = None,
                  allow_download: bool = False, **overrides) -> Backbone:
    """Build ``name`` and load ``weights`` into it strictly.

    ``weights``: a .safetensors or .pth file (official, HF, timm or geodino layout), an HF snapshot directory, a hub
    repo id (from the local HF cache; downloaded only with ``allow_download``), ``"random"`` (random init with seed
    0, with a warning), or None for the model's own HF repo in the local cache. Any missing or unexpected key or
    wrong shape raises :class:`~geodino.errors.WeightsMismatchError`, naming the model the file seems to hold.

    Tensors go from the file straight into their target dtype (``dtype``; Linear/Conv weights in ``matmul_dtype``
    when given) and device, one block at a time, into timm's model built on the meta device (``assign``): host
    memory peaks at the model's size in those dtypes plus one block, never at a full fp32 copy. RoPE periods are
    the checkpoint's own where it carries them (official, geodino), else bf16-rounded as in the released files.
    The returned model is in eval mode; ``model.weights_info`` records source, layout and sha256.
    """
    cfg = get_config(name)
    check_device(device)
    if weights is not None and str(weights) == RANDOM:
        warn_random(cfg.name)  # seeded, so every process (resumed runs, dask workers) builds the same model
        return build_model(name, seed=0, dtype=dtype, matmul_dtype=matmul_dtype, device=device, **overrides)
    arch = cfg.arch.replace(**overrides) if overrides else cfg.arch
    ckpt = read_checkpoint(weights if weights is not None else cfg.hf_repo, allow_download=allow_download)
    return _load(_checked(cfg, arch, ckpt), ckpt, device, dtype, matmul_dtype)


def _load(model: Backbone, ckpt: Checkpoint, device, dtype: torch.dtype = torch.float32,
          matmul_dtype: torch.dtype | None = None) -> Backbone:
    """Load a checked ``ckpt`` into ``model`` (on the meta device), one block at a time, each tensor straight into
    its target dtype and device (``assign``); the zero q/v biases timm's and HF's files may leave out, timm's
    non-persistent buffers and the RoPE periods (the file's, else bf16-rounded) added."""
    policy, dev, pk = _dtype_policy(model.vit, dtype, matmul_dtype), torch.device(device), periods_key(ckpt.layout)
    sd: dict[str, torch.Tensor] = {}
    periods = None
    for group in _block_groups(list(ckpt.state_dict)):
        part = load_tensors(ckpt, group)  # views of the memory-mapped file
        if pk in part:
            periods = part[pk].to(torch.float32, copy=True)
        for k, v in to_timm(part, ckpt.layout).items():
            # copy=True even where the dtype is already right: a view would keep the file mapped (in RSS)
            sd[k] = v.to(device=dev, dtype=policy(k), copy=True)
        del part
    for k, v in model.vit.state_dict().items():
        if k.endswith(("attn.q_bias", "attn.v_bias")) and k not in sd:
            sd[k] = torch.zeros(v.shape, dtype=policy(k), device=dev)
    model.vit.load_state_dict(sd, strict=True, assign=True)
    materialise_buffers(model.vit, dev)
    a = model.arch
    set_rope_periods(model.vit, periods if periods is not None else rope_periods(a.head_dim, a.rope_base))
    model.weights_info = ckpt.info
    return model.eval()


def hf_config_for(arch: ViTArch) -> dict:
    """A transformers ``config.json`` for ``arch`` (what ``save_pretrained`` writes for DINOv3ViTModel)."""
    return {
        "architectures": ["DINOv3ViTModel"], "model_type": "dinov3_vit",
        "hidden_size": arch.embed_dim, "intermediate_size": arch.ffn_hidden,
        "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads,
        "hidden_act": "silu" if arch.ffn == "swiglu" else "gelu", "use_gated_mlp": arch.ffn == "swiglu",
        "layer_norm_eps": arch.norm_eps, "rope_theta": arch.rope_base, "image_size": 224,
        "patch_size": arch.patch_size, "num_channels": arch.in_chans,
        "query_bias": arch.qkv_bias, "key_bias": False, "value_bias": arch.qkv_bias, "proj_bias": True,
        "mlp_bias": True, "layerscale_value": arch.layerscale_init, "num_register_tokens": arch.n_registers,
        "pos_embed_rescale": 2.0,
    }


def _timm_and_model(raw: dict, layout: str, model: str | None, what: str) -> tuple[dict, torch.Tensor | None, str]:
    """A state dict in timm's names, its RoPE periods if it carries them, and the model: ``model`` or the
    registered one its shapes match (an official or geodino file's local_cls_norm tells the SAT ViT-L apart)."""
    sd, pk = to_timm(raw, layout), periods_key(layout)
    hits = match_models(sd, local_cls_norm(raw, layout))
    if not (model or hits):
        raise WeightsError(f"{what} matches no registered model: pass the model (--model, model=) it belongs to")
    return sd, raw.get(pk) if pk else None, model or hits[0]


def save_weights(state: Backbone | dict, path: str | os.PathLike, layout: str = "geodino",
                 model: str | None = None) -> Path:
    """Write a backbone's weights (or a state dict in any layout) in ``layout``: ``.pth`` -> torch.save; a path
    without a suffix and ``layout="hf"`` -> an HF snapshot directory (config.json + model.safetensors); anything else
    -> safetensors with geodino's metadata. A state dict is taken for ``model``, else for the registered
    architecture its shapes match."""
    if isinstance(state, Backbone):
        sd, arch, periods = state.vit.state_dict(), state.arch, state.vit.rope.periods
        name = state.cfg.name if state.cfg else model
    else:
        raw = unwrap_state_dict(state)
        sd, periods, name = _timm_and_model(raw, detect_layout(raw), model, "the state dict")
        arch = get_config(name).arch.replace(depth=infer_arch_fields(sd)["depth"] or get_config(name).arch.depth)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    meta = {"geodino.layout": layout, "geodino.arch": json.dumps(arch.to_dict()),
            **({"geodino.model": name} if name else {})}
    return write_state_dict(from_timm(sd, layout, arch, periods), path, meta,
                            hf_config_for(arch) if layout == "hf" else None)


def inspect_weights(weights: str | os.PathLike, allow_download: bool = False) -> dict:
    """Layout, matching registered models, tensor count and sha256 of a checkpoint (from the file headers)."""
    ckpt = read_checkpoint(weights, allow_download=allow_download)
    raw = ckpt.state_dict
    return {"source": str(weights), "files": list(ckpt.info.files), "layout": ckpt.layout,
            "models": match_models(to_timm(raw, ckpt.layout), local_cls_norm(raw, ckpt.layout)),
            "tensors": len(raw),
            "numel": sum(v.numel() for k, v in raw.items() if not k.endswith(("bias_mask", "periods"))),
            "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in raw.values()}), "sha256": ckpt.info.sha256,
            "metadata": {k: v for k, v in (ckpt.metadata or {}).items() if k != "geodino.arch"}}


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, to: str = "geodino",
                    model: str | None = None) -> Path:
    """Convert a checkpoint file or directory to another layout on disk, after checking strictly that it fits
    ``model`` (guessed from its shapes when None)."""
    if to not in LAYOUTS:
        raise ConfigError(f"unknown layout {to!r}; choose one of {', '.join(LAYOUTS)}")
    ckpt = read_checkpoint(src)
    cfg = get_config(_timm_and_model(ckpt.state_dict, ckpt.layout, model, str(src))[2])
    _checked(cfg, cfg.arch, ckpt)
    return save_weights(load_tensors(ckpt, list(ckpt.state_dict)), dst, to, cfg.name)  # views of the mapped files
