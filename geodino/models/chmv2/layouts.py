"""Key layouts of CHMv2 checkpoints (geodino, transformers, official) and conversion between them."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from geodino.errors import WeightsError
from geodino.models.chmv2.config import CHMv2Arch
from geodino.models.config import ViTArch
from geodino.models.layouts import convert_state_dict, rename

HEAD_LAYOUTS = ("geodino", "hf", "official")
# CHMv2Arch fields -> transformers' CHMv2Config keys (embed_dim and layers are in its backbone config)
HF_HEAD_KEYS = {f.name: {"n_bins": "number_output_channels"}.get(f.name, f.name)
                for f in dataclasses.fields(CHMv2Arch) if f.name not in ("embed_dim", "layers")}

# One row per tensor family: geodino, transformers (CHMv2ForDepthEstimation.head), official dinov3 DPTHead.
# The official names follow transformers' convert_chmv2_to_hf.py and dinov3/eval/depth/models/dpt_head.py.
_HEAD_NAMES = [
    ("readout.{i}.{t}", "reassemble_stage.readout_projects.{i}.0.{t}", "reassemble_blocks.readout_projects.{i}.0.{t}"),
    ("reassemble.{i}.proj.{t}", "reassemble_stage.layers.{i}.projection.{t}",
     "reassemble_blocks.projects.{i}.conv.{t}"),
    ("reassemble.{i}.resize.{t}", "reassemble_stage.layers.{i}.resize.{t}", "reassemble_blocks.resize_layers.{i}.{t}"),
    ("convs.{i}.{t}", "convs.{i}.{t}", "convs.{i}.conv.{t}"),
    ("fusion.{i}.proj.{t}", "fusion_layers.{i}.projection.{t}", "fusion_blocks.{i}.project.conv.{t}"),
    ("fusion.{i}.res{j}.conv{k}.{t}", "fusion_layers.{i}.residual_layer{j}.convolution{k}.{t}",
     "fusion_blocks.{i}.res_conv_unit{j}.conv{k}.conv.{t}"),
    ("depth.conv1.{t}", "conv_depth.head.0.{t}", "conv_depth.head.0.{t}"),
    ("depth.conv2.{t}", "conv_depth.head.2.{t}", "conv_depth.head.2.{t}"),
    ("depth.conv3.{t}", "conv_depth.head.4.{t}", "conv_depth.head.4.{t}"),
]


_HEAD_PREFIX = {"geodino": "head.", "hf": "head.", "official": ""}  # official releases hold the head alone


def _rename_head(key: str, src: str, dst: str) -> str:
    return rename(key, _HEAD_NAMES, HEAD_LAYOUTS.index(src), HEAD_LAYOUTS.index(dst))


def detect_canopy_layout(sd: dict[str, Tensor]) -> str:
    """Layout of the CHMv2 head in a state dict (``geodino | hf | official``), or ``"none"`` without a head."""
    keys = [k.removeprefix("head.") for k in sd if not k.startswith("backbone.")]
    for layout, first in (("hf", "reassemble_stage."), ("official", "reassemble_blocks."),
                          ("geodino", "reassemble.")):
        if any(k.startswith(first) for k in keys):
            return layout
    return "none"


def convert_canopy_state_dict(sd: dict[str, Tensor], dst: str = "geodino", src: str | None = None,
                              backbone_arch: ViTArch | None = None) -> dict[str, Tensor]:
    """Convert a CHMv2 state dict (``backbone.*`` if present, and the head) between layouts.

    The head is renamed with the table above; the backbone part goes through
    :func:`geodino.models.convert_state_dict`: transformers' names for ``hf`` (``backbone_arch`` writes the keys
    timm's model lacks), timm's under ``backbone.vit.`` for ``geodino`` (what :class:`CanopyHeightModel` holds).
    ``official`` writes the head alone, as released."""
    src = src or detect_canopy_layout(sd)
    if src not in HEAD_LAYOUTS or dst not in HEAD_LAYOUTS:
        raise WeightsError(f"unknown CHMv2 layout {src if src not in HEAD_LAYOUTS else dst!r}; choose one of "
                           f"{', '.join(HEAD_LAYOUTS)}")
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    out = {_HEAD_PREFIX[dst] + _rename_head(k.removeprefix("head."), src, dst): v for k, v in sd.items()
           if not k.startswith("backbone.")}
    if backbone and dst != "official":
        prefix = "backbone." if dst == "hf" else "backbone.vit."
        out.update({prefix + k: v for k, v in
                    convert_state_dict(backbone, dst="hf" if dst == "hf" else "timm", arch=backbone_arch).items()})
    return out


def hf_canopy_config(backbone_arch: ViTArch, head: CHMv2Arch) -> dict:
    """A transformers ``config.json`` for ``CHMv2ForDepthEstimation`` (what ``save_pretrained`` writes)."""
    from geodino.models.loading import hf_config_for

    bb = {k: v for k, v in hf_config_for(backbone_arch).items() if k != "architectures"}
    bb.update(out_indices=[i + 1 for i in head.layers], apply_layernorm=True, reshape_hidden_states=True,
              return_class_token=True)
    d = head.to_dict()
    return {"architectures": ["CHMv2ForDepthEstimation"], "model_type": "chmv2", "backbone_config": bb,
            "patch_size": head.patch_size, **{k: d[f] for f, k in HF_HEAD_KEYS.items()}}
