"""Loading and saving CHMv2 checkpoints strictly: the transformers snapshot (backbone and head), the official
head-only ``.pth`` on a separate backbone, and geodino's own files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from geodino.errors import ConfigError, WeightsError, WeightsMismatchError, WeightsNotFoundError
from geodino.models.chmv2.config import CHMv2Arch, get_canopy_config
from geodino.models.chmv2.head import CanopyHeightModel, CHMv2Head, check_compatible
from geodino.models.chmv2.layouts import (HEAD_LAYOUTS, HF_HEAD_KEYS, _rename_head, convert_canopy_state_dict,
                                          detect_canopy_layout, hf_canopy_config)
from geodino.models.config import get_config
from geodino.models.layouts import detect_layout, unwrap_state_dict
from geodino.models.weights import (RANDOM, Checkpoint, WeightsInfo, load_tensors, read_checkpoint,
                                    state_dict_differences, warn_random, write_state_dict)


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
    bb = cfg.get("backbone_config") or {}
    idx = bb.get("out_indices") or [int(s.removeprefix("stage")) for s in bb.get("out_features") or []
                                    if s.startswith("stage")]
    if not idx or min(idx) < 1:
        raise WeightsError(f"config.json of {src} names no backbone block outputs (out_indices >= 1) for the head "
                           "to read, so it does not say which backbone layers the head reads")
    for flag, default in (("apply_layernorm", True), ("reshape_hidden_states", True), ("return_class_token", False)):
        if not bb.get(flag, default):
            raise WeightsError(f"config.json of {src} sets backbone {flag}=false; CHMv2ForDepthEstimation "
                               "(and geodino) read normed layer grids with their class tokens")
    fields = {"embed_dim": bb.get("hidden_size", 384), "layers": [i - 1 for i in idx],
              **{f: cfg.get(k) for f, k in HF_HEAD_KEYS.items()}}
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


def load_canopy_model(weights: str | os.PathLike | None = None, *, model: str = "chmv2-vitl16-sat493m",
                      backbone: str | None = None, backbone_weights: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      allow_download: bool = False, arch: dict | None = None,
                      head_arch: dict | None = None) -> CanopyHeightModel:
    """Build the canopy model ``model`` and load ``weights`` into it strictly.

    ``weights``: the transformers checkpoint (an HF snapshot directory, its safetensors file, or the hub id
    ``facebook/dinov3-vitl16-chmv2-dpt-head`` from the local HF cache, downloaded only with ``allow_download``),
    which holds backbone and head; the official head-only ``.pth`` (its backbone then comes from
    ``backbone_weights``, by default the SAT-493M ViT-L from the HF cache); a file written by
    :func:`save_canopy_weights`; ``"random"`` (seeded, with a :class:`RandomWeightsWarning`); or None for the
    model's HF repo. ``backbone`` names another registered backbone, ``arch``/``head_arch`` override architecture
    fields (small test models). Any misfit (keys, shapes, config.json, a head that cannot read the backbone) raises
    a one-line :class:`~geodino.errors.WeightsMismatchError`; nothing is read until everything is checked.
    """
    from geodino.models.loading import _checked, _load, build_model, check_device, load_backbone

    check_device(device)
    cfg = get_canopy_config(model)
    bcfg = get_config(backbone or cfg.backbone)
    barch = bcfg.arch.replace(**arch) if arch else bcfg.arch
    expected = cfg.head.replace(**head_arch) if head_arch else cfg.head
    if weights is not None and str(weights) == RANDOM:
        warn_random(cfg.name)  # seeded: every process (resumed runs, dask workers) builds the same model
        m = CanopyHeightModel(build_model(bcfg.name, seed=0, **(arch or {})),
                              CHMv2Head(expected).init_weights(torch.Generator().manual_seed(0)), cfg)
        m.weights_info = WeightsInfo(source=RANDOM, layout="geodino", sha256="random-init", random=True)
        return m.to(device=device, dtype=dtype).eval()
    ckpt = read_checkpoint(weights if weights is not None else cfg.hf_repo, allow_download=allow_download,
                           detect=detect_canopy_layout)
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
    bkeys = [k for k in ckpt.state_dict if k.startswith("backbone.")]
    hkeys = {_rename_head(k.removeprefix("head."), ckpt.layout, "geodino"): k for k in ckpt.state_dict
             if not k.startswith("backbone.")}
    with torch.device("meta"):
        head = CHMv2Head(expected)
    hsd = {k: ckpt.state_dict[v] for k, v in hkeys.items()}
    if parts := state_dict_differences(hsd, {k: v.shape for k, v in head.state_dict().items()}):
        raise WeightsMismatchError(f"CHMv2 head weights in {src} ({ckpt.layout} layout) do not fit {cfg.name}: "
                                   f"{'; '.join(parts)}; the file holds {_describe_head(hsd)}")
    if bkeys:
        if backbone_weights is not None:
            raise ConfigError(f"{src} holds its own backbone as well as the CHMv2 head: drop backbone_weights")
        bb_json = (ckpt.hf_config or {}).get("backbone_config")
        eps = (bb_json or {}).get("layer_norm_eps", barch.norm_eps)
        if not math.isclose(eps, barch.norm_eps):
            raise WeightsMismatchError(f"config.json of {src} says backbone layer_norm_eps={eps:g}, but "
                                       f"{bcfg.name} uses {barch.norm_eps:g}: pass arch={{'norm_eps': {eps:g}}}")
        bsd = unwrap_state_dict({k.removeprefix("backbone."): ckpt.state_dict[k] for k in bkeys})
        inner = bkeys[0][: len(bkeys[0]) - len(next(iter(bsd)))]  # "backbone." (geodino files: "backbone.vit.")
        binfo = dataclasses.replace(ckpt.info, layout=detect_layout(bsd))
        bckpt = Checkpoint(bsd, binfo.layout, binfo, bb_json, ckpt.metadata,
                           {k: ckpt.index[inner + k] for k in bsd})
        bb = _load(_checked(bcfg, barch, bckpt), bckpt, "cpu")
    else:
        try:
            bb = load_backbone(bcfg.name, backbone_weights, allow_download=allow_download, **(arch or {}))
        except WeightsNotFoundError as e:
            if backbone_weights is not None:
                raise
            raise WeightsNotFoundError(f"{src} holds the CHMv2 head alone, so the backbone is read from its "
                                       f"default place; pass backbone_weights. {e}") from e
    tensors = load_tensors(ckpt, list(hkeys.values()))
    head.load_state_dict({k: tensors[v].clone() for k, v in hkeys.items()}, strict=True, assign=True)
    m = CanopyHeightModel(bb, head, cfg)
    m.weights_info = ckpt.info
    return m.to(device=device, dtype=dtype).eval()


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
