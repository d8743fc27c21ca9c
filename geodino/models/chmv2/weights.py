"""Loading and saving CHMv2 checkpoints strictly: the transformers snapshot (backbone and head), the official
head-only ``.pth`` on a separate backbone, and geodino's own files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from geodino.errors import ConfigError, WeightsError, WeightsMismatchError, WeightsNotFoundError
from geodino.models.backbone import Backbone
from geodino.models.chmv2.config import CHMv2Arch, CanopyConfig, get_canopy_config
from geodino.models.chmv2.head import CanopyHeightModel, CHMv2Head, check_compatible
from geodino.models.chmv2.layouts import (HEAD_LAYOUTS, _rename_head, _split, convert_canopy_state_dict,
                                          detect_canopy_layout, hf_canopy_config)
from geodino.models.config import ViTArch, get_config
from geodino.models.layouts import detect_layout, periods_key, to_timm, unwrap_state_dict
from geodino.models.weights import (RANDOM, Checkpoint, WeightsInfo, read_checkpoint, state_dict_differences,
                                    warn_random, write_state_dict)

__all__ = ["load_canopy_model", "validate_canopy_weights", "save_canopy_weights"]


def _stated_head(ckpt: Checkpoint) -> CHMv2Arch | None:
    """The head a checkpoint says it holds: geodino's safetensors metadata or a transformers config.json."""
    src = ckpt.info.source
    if ckpt.metadata and "geodino.chmv2" in ckpt.metadata:
        return CHMv2Arch.from_dict(json.loads(ckpt.metadata["geodino.chmv2"]))
    cfg = ckpt.hf_config
    if not cfg:
        return None
    if cfg.get("model_type") != "chmv2":
        raise WeightsError(f"config.json of {src} describes a {cfg.get('model_type')!r} model, not CHMv2 "
                           "('chmv2'): pass the CHMv2 checkpoint")
    bb = cfg.get("backbone_config")
    if not bb:
        raise WeightsError(f"config.json of {src} has no backbone_config, so it does not say which backbone "
                           "layers the head reads")
    idx = bb.get("out_indices") or [int(s.removeprefix("stage")) for s in bb.get("out_features") or []
                                    if s.startswith("stage")]
    if not idx:
        raise WeightsError(f"config.json of {src} names no backbone out_indices for the head")
    if min(idx) < 1:
        raise WeightsError(f"config.json of {src} reads backbone stage 0 (the patch embedding): geodino's CHMv2 "
                           "reads block outputs only")
    for flag, default in (("apply_layernorm", True), ("reshape_hidden_states", True), ("return_class_token", False)):
        if not bb.get(flag, default):
            raise WeightsError(f"config.json of {src} sets backbone {flag}=false; CHMv2ForDepthEstimation "
                               "(and geodino) read normed layer grids with their class tokens")
    fields = {"embed_dim": bb.get("hidden_size", 384), "layers": [i - 1 for i in idx],
              "patch_size": cfg.get("patch_size"), "reassemble_factors": cfg.get("reassemble_factors"),
              "post_process_channels": cfg.get("post_process_channels"),
              "fusion_hidden_size": cfg.get("fusion_hidden_size"), "head_hidden_size": cfg.get("head_hidden_size"),
              "n_bins": cfg.get("number_output_channels"), "readout_type": cfg.get("readout_type"),
              "min_depth": cfg.get("min_depth"), "max_depth": cfg.get("max_depth"),
              "bins_strategy": cfg.get("bins_strategy"), "norm_strategy": cfg.get("norm_strategy")}
    try:
        return CHMv2Arch().replace(**{k: v for k, v in fields.items() if v is not None})
    except ConfigError as e:
        raise WeightsError(f"config.json of {src}: {e}") from e


def _check_stated(stated: CHMv2Arch | None, expected: CHMv2Arch, name: str, src: str) -> None:
    if stated is None or stated == expected:
        return
    diff = [f.name for f in dataclasses.fields(CHMv2Arch) if getattr(stated, f.name) != getattr(expected, f.name)]
    k = diff[0]
    more = f" (and {len(diff) - 1} more field(s))" if len(diff) > 1 else ""
    raise WeightsMismatchError(f"the CHMv2 head in {src} has {k}={getattr(stated, k)!r}{more}, but {name} has "
                               f"{k}={getattr(expected, k)!r}: pass head_arch overrides for a non-standard head")


def _describe_head(sd: dict[str, Tensor]) -> str:
    n = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"reassemble\.(\d+)\.proj\.weight$", k))),
                default=-1)
    if not n:
        return "no CHMv2 reassemble layers"
    width = sd["reassemble.0.proj.weight"].shape[1] if "reassemble.0.proj.weight" in sd else "?"
    chans = [sd[f"reassemble.{i}.proj.weight"].shape[0] for i in range(n) if f"reassemble.{i}.proj.weight" in sd]
    bins = sd["depth.conv3.weight"].shape[0] if "depth.conv3.weight" in sd else "?"
    readout = "project" if "readout.0.weight" in sd else "add or ignore"
    return f"a head for {width}-wide tokens: {n} layers, channels {chans}, {bins} bins, readout {readout}"


def _check_head(sd: dict[str, Tensor], head: CHMv2Head, name: str, layout: str, src: str) -> None:
    parts = state_dict_differences(sd, {k: v.shape for k, v in head.state_dict().items()})
    if not parts:
        return
    raise WeightsMismatchError(f"CHMv2 head weights in {src} ({layout} layout) do not fit {name}: "
                               f"{'; '.join(parts)}; the file holds {_describe_head(sd)}")


@dataclass
class _Resolved:
    cfg: CanopyConfig
    backbone_name: str
    backbone_arch: ViTArch
    head_arch: CHMv2Arch
    head_sd: dict[str, Tensor]
    backbone_sd: dict[str, Tensor] | None  # None: the file holds the head alone
    info: WeightsInfo
    backbone_info: WeightsInfo | None
    backbone: Backbone | None  # built on the meta device, checked against backbone_sd


def _resolve(weights, model: str, backbone: str | None, backbone_weights, allow_download: bool,
             arch: dict | None, head_arch: dict | None, meta_only: bool) -> _Resolved:
    """Read a CHMv2 checkpoint and check everything (keys, shapes, configs, backbone fit) before building."""
    from geodino.models import _checked

    cfg = get_canopy_config(model)
    bcfg = get_config(backbone or cfg.backbone)
    barch = bcfg.arch.replace(**arch) if arch else bcfg.arch
    expected = cfg.head.replace(**head_arch) if head_arch else cfg.head
    source = weights if weights is not None else cfg.hf_repo
    ckpt = read_checkpoint(source, allow_download=allow_download, meta_only=meta_only, detect=detect_canopy_layout)
    src = ckpt.info.source
    if ckpt.layout == "none":
        try:
            what = f"a DINOv3 backbone ({detect_layout(ckpt.state_dict)} layout) but no CHMv2 head"
        except WeightsError:
            what = f"no CHMv2 head (keys start {', '.join(sorted(ckpt.state_dict)[:3])}...)"
        raise WeightsError(f"{src} holds {what}: pass the CHMv2 checkpoint ({cfg.hf_repo} or "
                           f"{cfg.official_file}); a separate backbone goes in backbone_weights")
    stated = _stated_head(ckpt)
    check_compatible(barch, stated or expected, bcfg.name, f"the CHMv2 head in {src}")
    _check_stated(stated, expected, cfg.name, src)
    bsd, hsd = _split(ckpt.state_dict)
    hsd = {_rename_head(k, ckpt.layout, "geodino"): v for k, v in hsd.items()}
    with torch.device("meta"):
        _check_head(hsd, CHMv2Head(expected), cfg.name, ckpt.layout, src)
    if not bsd:
        return _Resolved(cfg, bcfg.name, barch, expected, hsd, None, ckpt.info, None, None)
    if backbone_weights is not None:
        raise ConfigError(f"{src} holds its own backbone as well as the CHMv2 head: drop backbone_weights")
    bb_json = (ckpt.hf_config or {}).get("backbone_config")
    eps = (bb_json or {}).get("layer_norm_eps", barch.norm_eps)
    if not math.isclose(eps, barch.norm_eps):
        raise WeightsMismatchError(f"config.json of {src} says backbone layer_norm_eps={eps:g}, but {bcfg.name} "
                                   f"uses {barch.norm_eps:g}: pass arch={{'norm_eps': {eps:g}}}")
    bsd = unwrap_state_dict(bsd)  # geodino's own files hold the model's backbone.vit.*
    binfo = dataclasses.replace(ckpt.info, layout=detect_layout(bsd))
    bb = _checked(bcfg, barch, Checkpoint(bsd, binfo.layout, binfo, bb_json, ckpt.metadata))
    return _Resolved(cfg, bcfg.name, barch, expected, hsd, bsd, ckpt.info, binfo, bb)


def load_canopy_model(weights: str | os.PathLike | None = None, *, model: str = "chmv2-vitl16-sat493m",
                      backbone: str | None = None, backbone_weights: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      allow_download: bool = False, arch: dict | None = None,
                      head_arch: dict | None = None) -> CanopyHeightModel:
    """Build the canopy model ``model`` and load ``weights`` into it strictly.

    ``weights``: the transformers checkpoint (an HF snapshot directory with config.json + model.safetensors, its
    safetensors file, or the hub id ``facebook/dinov3-vitl16-chmv2-dpt-head`` from the local HF cache, downloaded
    only with ``allow_download``), which holds backbone and head; the official head-only ``.pth`` (its backbone
    then comes from ``backbone_weights``, by default the SAT-493M ViT-L from the HF cache); a file written by
    :func:`save_canopy_weights`; ``"random"`` (seeded, with a :class:`RandomWeightsWarning`); or None for the
    model's HF repo. ``backbone`` names another registered backbone, ``arch``/``head_arch`` override architecture
    fields (small test models). Missing or unexpected keys, wrong shapes, a config.json that disagrees, or a head
    that cannot read the backbone raise one-line :class:`~geodino.errors.WeightsMismatchError`s.
    """
    from geodino.models import check_device

    check_device(device)
    cfg = get_canopy_config(model)
    if weights is not None and str(weights) == RANDOM:
        from geodino.models import build_model

        warn_random(cfg.name)  # seeded: every process (resumed runs, dask workers) builds the same model
        bb = build_model(backbone or cfg.backbone, seed=0, **(arch or {}))
        head = CHMv2Head(cfg.head.replace(**head_arch) if head_arch else cfg.head)
        head.init_weights(torch.Generator().manual_seed(0))
        m = CanopyHeightModel(bb, head, cfg)
        m.weights_info = WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
        return m.to(device=device, dtype=dtype).eval()
    r = _resolve(weights, model, backbone, backbone_weights, allow_download, arch, head_arch, meta_only=False)
    with torch.device("meta"):
        head = CHMv2Head(r.head_arch)
    head.load_state_dict(r.head_sd, strict=True, assign=True)
    if r.backbone_sd is not None:
        from geodino.models import _assign

        bb, layout, fp32 = r.backbone, r.backbone_info.layout, torch.float32
        pk = periods_key(layout)
        sd = {k: v.to(fp32) for k, v in to_timm(r.backbone_sd, layout).items()}
        periods = r.backbone_sd[pk].to(fp32) if pk in r.backbone_sd else None
        _assign(bb, sd, periods, torch.device("cpu"), lambda k: fp32)
        bb.weights_info = r.backbone_info
    else:
        from geodino.models import load_backbone

        try:
            bb = load_backbone(r.backbone_name, backbone_weights, allow_download=allow_download, **(arch or {}))
        except WeightsNotFoundError as e:
            if backbone_weights is not None:
                raise
            raise WeightsNotFoundError(f"{r.info.source} holds the CHMv2 head alone, so the backbone is read from "
                                       f"its default place; pass backbone_weights. {e}") from e
    m = CanopyHeightModel(bb, head, r.cfg)
    m.weights_info = r.info
    return m.to(device=device, dtype=dtype).eval()


def validate_canopy_weights(weights: str | os.PathLike | None = None, *, model: str = "chmv2-vitl16-sat493m",
                            backbone: str | None = None, backbone_weights: str | os.PathLike | None = None,
                            allow_download: bool = False, arch: dict | None = None,
                            head_arch: dict | None = None) -> tuple[WeightsInfo, WeightsInfo]:
    """Check, from file headers only, that ``weights`` (and the backbone) fit; return (head, backbone) provenance.
    Raises like :func:`load_canopy_model`."""
    if weights is not None and str(weights) == RANDOM:
        info = WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
        return info, info
    r = _resolve(weights, model, backbone, backbone_weights, allow_download, arch, head_arch, meta_only=True)
    if r.backbone_info is not None:
        return r.info, r.backbone_info
    from geodino.models import validate_weights

    return r.info, validate_weights(r.backbone_name, backbone_weights, allow_download=allow_download, **(arch or {}))


def save_canopy_weights(model: CanopyHeightModel, path: str | os.PathLike, layout: str = "geodino") -> Path:
    """Write a canopy model's weights in ``layout``.

    ``hf`` + a path without a suffix: an HF snapshot directory (config.json + model.safetensors) that
    ``CHMv2ForDepthEstimation.from_pretrained`` loads; ``official``: the head alone in the official names (as
    released); ``.pth`` -> torch.save; anything else -> safetensors carrying both architectures in its metadata."""
    if layout not in HEAD_LAYOUTS:
        raise ConfigError(f"unknown CHMv2 layout {layout!r}; choose one of {', '.join(HEAD_LAYOUTS)}")
    sd = convert_canopy_state_dict(model.state_dict(), dst=layout, src="geodino", backbone_arch=model.backbone.arch)
    meta = {"geodino.layout": layout, "geodino.chmv2": json.dumps(model.head.arch.to_dict()),
            **({"geodino.canopy_model": model.cfg.name} if model.cfg else {}),
            **({"geodino.arch": json.dumps(model.backbone.arch.to_dict())} if layout != "official" else {})}
    hf = hf_canopy_config(model.backbone.arch, model.head.arch) if layout == "hf" else None
    return write_state_dict(sd, path, meta, hf)
