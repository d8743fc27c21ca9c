"""DINOv3 ViT backbones: the registry of named models, building, strict checkpoint loading and layouts.

>>> from geodino.models import list_models, build_model, load_backbone
>>> model = build_model("dinov3-vitl16-sat493m", depth=2)          # random init, small for tests
>>> model = load_backbone("dinov3-vitl16-sat493m", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth")

Also Meta's CHMv2 canopy-height head on the SAT ViT-L (``chmv2.py``):

>>> from geodino.models import load_canopy_model
>>> chm = load_canopy_model("facebook/dinov3-vitl16-chmv2-dpt-head")   # heights = chm(x): [B, H, W] in metres
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from geodino.errors import ConfigError, WeightsError, WeightsMismatchError
from geodino.models.config import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD, ModelConfig, ViTArch, \
    get_config, list_models
from geodino.models.dinov3 import DinoV3ViT, crop_to_patch_multiple, flops_per_image, rope_periods
from geodino.models.layouts import LAYOUTS, convert_state_dict, detect_layout
from geodino.models.weights import (RANDOM, RandomWeightsWarning, WeightsInfo, check_state_dict, file_sha256,
                                    geodino_state_dict, hf_config_arch, load_tensors, match_models, read_checkpoint,
                                    warn_random)

__all__ = [
    "DinoV3ViT", "ViTArch", "ModelConfig", "WeightsInfo", "RandomWeightsWarning", "LAYOUTS",
    "list_models", "get_config", "build_model", "load_backbone", "detect_layout", "convert_state_dict",
    "save_weights", "inspect_weights", "validate_weights", "file_sha256", "crop_to_patch_multiple", "rope_periods",
    "flops_per_image",
    "SAT_MEAN", "SAT_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]


def build_model(name: str, *, device: str | torch.device | None = None, seed: int | None = None,
                dtype: torch.dtype | None = None, matmul_dtype: torch.dtype | None = None,
                **overrides) -> DinoV3ViT:
    """Build a registered backbone with random init (official scheme). Overrides change the architecture
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
    with torch.device("meta"):
        model = DinoV3ViT(arch, cfg)
    model.weights_info = WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
    if target.type == "meta":
        return model.eval()
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    model.init_weights(g, dtype_for=_dtype_policy(model, dtype, matmul_dtype))
    return model.to(device=target).eval()


def _matmul_params(model: DinoV3ViT) -> set[str]:
    """Names of the Linear and Conv2d parameters (what runs as a matrix multiply)."""
    from torch import nn

    return {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            for pn, _ in m.named_parameters(recurse=False)}


def _dtype_policy(model: DinoV3ViT, dtype: torch.dtype | None, matmul_dtype: torch.dtype | None):
    """``name -> dtype``: matmul weights in ``matmul_dtype``, everything else in ``dtype``; RoPE periods stay fp32."""
    if dtype is None and matmul_dtype is None:
        return None
    base = dtype or torch.float32
    mm = _matmul_params(model) if matmul_dtype is not None else set()
    return lambda k: torch.float32 if k == "rope.periods" else (matmul_dtype if k in mm else base)


def _expected_shapes(model: DinoV3ViT) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


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
                  allow_download: bool = False, **overrides) -> DinoV3ViT:
    """Build ``name`` and load ``weights`` into it strictly.

    ``weights``: a .safetensors or .pth file, an HF snapshot directory, a hub repo id (from the local HF cache;
    downloaded only with ``allow_download``), ``"random"`` (random init with seed 0, with a warning), or None for the
    model's own HF repo in the local cache. Any missing or unexpected key or wrong shape raises
    :class:`~geodino.errors.WeightsMismatchError`, naming the model the file seems to hold.

    Tensors go from the file straight into their target dtype (``dtype``; Linear/Conv weights in ``matmul_dtype``
    when given) and device, one block at a time, into a model built on the meta device (``assign``): host memory
    peaks at the model's size in those dtypes plus one block, never at a full fp32 copy.
    The returned model is in eval mode; ``model.weights_info`` records source, layout and sha256.
    """
    cfg = get_config(name)
    check_device(device)
    if weights is not None and str(weights) == RANDOM:
        warn_random(cfg.name)  # seeded, so every process (resumed runs, dask workers) builds the same model
        return build_model(name, seed=0, dtype=dtype, matmul_dtype=matmul_dtype, device=device, **overrides)
    arch = cfg.arch.replace(**overrides) if overrides else cfg.arch
    ckpt = read_checkpoint(weights if weights is not None else cfg.hf_repo, allow_download=allow_download,
                           meta_only=True)
    _checked_state_dict(cfg, ckpt, overrides)
    with torch.device("meta"):
        model = DinoV3ViT(arch, cfg)
    policy = _dtype_policy(model, dtype, matmul_dtype) or (lambda k: torch.float32 if k == "rope.periods" else dtype)
    dev = torch.device(device)
    sd: dict[str, torch.Tensor] = {}
    for group in _block_groups(list(ckpt.state_dict)):
        part = load_tensors(ckpt, group, lambda k, t: t)  # views of the memory-mapped file
        part = convert_state_dict(part, src=ckpt.layout, dst="geodino")  # renames and concatenations: exact
        for k in list(part):
            # copy=True even where the dtype is already right: a view would keep the file mapped (in RSS)
            sd[k] = part.pop(k).to(device=dev, dtype=policy(k), copy=True)
    from geodino.models.layouts import DROPPED_BY, fill_dropped

    if DROPPED_BY[ckpt.layout]:
        sd = {k: v.to(device=dev, dtype=policy(k)) for k, v in fill_dropped(sd, arch).items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.weights_info = ckpt.info
    return model.eval()


def _block_groups(keys: list[str]) -> list[list[str]]:
    """Checkpoint keys grouped by transformer block (whatever the layout), non-block keys last: each group holds
    everything a layout converter needs to convert that block (e.g. HF's separate q/k/v)."""
    import re

    groups: dict[int, list[str]] = {}
    for k in keys:
        m = re.match(r"^(?:model\.)?(?:blocks|layer)\.(\d+)\.", k)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(k)
    return [groups[i] for i in sorted(i for i in groups if i >= 0)] + ([groups[-1]] if -1 in groups else [])


def validate_weights(name: str, weights: str | os.PathLike | None = None, *, allow_download: bool = False,
                     **overrides) -> WeightsInfo:
    """Check that ``weights`` fit model ``name`` (keys and shapes, from file headers only) and return their
    provenance, without loading tensor data. Raises like :func:`load_backbone`."""
    cfg = get_config(name)
    if weights is not None and str(weights) == RANDOM:
        return WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
    ckpt = read_checkpoint(weights if weights is not None else cfg.hf_repo, allow_download=allow_download,
                           meta_only=True)
    _checked_state_dict(cfg, ckpt, overrides)
    return ckpt.info


def _checked_state_dict(cfg: ModelConfig, ckpt, overrides: dict) -> dict:
    arch = cfg.arch.replace(**overrides) if overrides else cfg.arch
    if ckpt.hf_config:
        stated = hf_config_arch(ckpt.hf_config)
        off = {k: (v, getattr(arch, k)) for k, v in stated.items() if getattr(arch, k) != v}
        if off:
            k, (file_v, model_v) = next(iter(off.items()))
            guess = [n for n in list_models() if all(getattr(get_config(n).arch, f) == v for f, v in stated.items())]
            hint = f"; it looks like {' or '.join(guess[:2])}" if guess else ""
            raise WeightsMismatchError(f"config.json of {ckpt.info.source} says {k}={file_v}, but {cfg.name} "
                                       f"has {k}={model_v}{hint}")
    sd = geodino_state_dict(ckpt, arch)
    with torch.device("meta"):
        model = DinoV3ViT(arch, cfg)
    check_state_dict(sd, _expected_shapes(model), cfg.name, ckpt.layout)
    return sd


def _arch_for(sd_geo: dict, model: str | None) -> ViTArch | None:
    if model:
        return get_config(model).arch
    hits = match_models(sd_geo)
    return get_config(hits[0]).arch if hits else None


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


def save_weights(state: DinoV3ViT | dict, path: str | os.PathLike, layout: str = "geodino",
                 model: str | None = None) -> Path:
    """Write weights in ``layout``. ``.pth`` -> torch.save; a path without a suffix and ``layout="hf"`` -> an
    HF snapshot directory (config.json + model.safetensors); anything else -> safetensors."""
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if isinstance(state, DinoV3ViT):
        arch, name = state.arch, (state.cfg.name if state.cfg else model)
        sd_geo = state.state_dict()
    else:
        sd_geo = convert_state_dict(state, dst="geodino")
        arch = _arch_for(sd_geo, model)
        name = model or (match_models(sd_geo)[0] if match_models(sd_geo) else None)
    sd = convert_state_dict(sd_geo, src="geodino", dst=layout, arch=arch)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    path = Path(path)
    if layout == "hf" and not path.suffix:
        if arch is None:
            raise ConfigError("an HF snapshot directory needs the architecture: pass the model name")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(hf_config_for(arch), indent=2))
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pth", ".pt", ".bin"):
        torch.save(sd, path)
    else:
        meta = {"format": "pt", "geodino.layout": layout}
        if name:
            meta["geodino.model"] = name
        if arch is not None:
            meta["geodino.arch"] = json.dumps(arch.to_dict())
        save_file(sd, str(path), metadata=meta)
    return path


def inspect_weights(weights: str | os.PathLike, allow_download: bool = False) -> dict:
    """Layout, matching registered models, tensor count and sha256 of a checkpoint."""
    ckpt = read_checkpoint(weights, allow_download=allow_download)
    sd_geo = convert_state_dict(ckpt.state_dict, src=ckpt.layout, dst="geodino")
    n_params = sum(v.numel() for k, v in ckpt.state_dict.items() if not k.endswith(("bias_mask", "periods")))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in ckpt.state_dict.values()})
    return {"source": str(weights), "files": list(ckpt.info.files), "layout": ckpt.layout,
            "models": match_models(sd_geo, ckpt.layout), "tensors": len(ckpt.state_dict),
            "numel": n_params, "dtypes": dtypes, "sha256": ckpt.info.sha256,
            "metadata": {k: v for k, v in (ckpt.metadata or {}).items() if k != "geodino.arch"}}


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, to: str = "geodino",
                    model: str | None = None) -> Path:
    """Convert a checkpoint file/dir to another layout on disk."""
    ckpt = read_checkpoint(src)
    sd_geo = convert_state_dict(ckpt.state_dict, src=ckpt.layout, dst="geodino")
    if model is None:
        hits = match_models(sd_geo, ckpt.layout)
        if not hits:
            raise WeightsError(f"{src} matches no registered model: pass --model to say which architecture it is")
        model = hits[0]
    arch = get_config(model).arch
    from geodino.models.layouts import fill_dropped

    sd_geo = fill_dropped(sd_geo, arch)
    with torch.device("meta"):
        expected = _expected_shapes(DinoV3ViT(arch))
    check_state_dict(sd_geo, expected, model, ckpt.layout)
    return save_weights(sd_geo, dst, layout=to, model=model)


# The CHMv2 canopy-height head (a DPT decoder on the SAT ViT-L); imported last: it uses the helpers above.
from geodino.models.chmv2 import (CHMV2_MEAN, CHMV2_STD, CanopyConfig, CanopyHeightModel,  # noqa: E402
                                  CHMv2Arch, CHMv2Head, convert_canopy_state_dict, detect_canopy_layout,
                                  get_canopy_config, list_canopy_models, load_canopy_model,
                                  save_canopy_weights, validate_canopy_weights)

__all__ += [
    "CHMv2Arch", "CHMv2Head", "CanopyHeightModel", "CanopyConfig", "CHMV2_MEAN", "CHMV2_STD",
    "load_canopy_model", "validate_canopy_weights", "save_canopy_weights", "convert_canopy_state_dict",
    "detect_canopy_layout", "get_canopy_config", "list_canopy_models",
]
