"""Meta's CHMv2 canopy-height head (a DPT decoder with depth bins) on a DINOv3 backbone, in plain PyTorch.

Numerically faithful to transformers' ``CHMv2ForDepthEstimation`` / ``CHMv2Config`` (5.x) and to the official
``dinov3/eval/depth/models/dpt_head.py`` + ``dinov3/hub/depthers.py::dinov3_vitl16_chmv2`` (facebookresearch/dinov3).
Layout of this file: the head's config, its layers, the head, the backbone + head model, key layouts, the named
config, then loading and saving.

The model (official config, ``_get_chmv2_config`` in dinov3/hub/depthers.py, and the transformers defaults):

* the backbone is the SAT-493M ViT-L/16, run once; the head reads blocks ``[5, 11, 17, 23]`` (0-based; transformers'
  ``out_indices`` ``[6, 12, 18, 24]`` count the patch embedding as stage 0), each after the backbone's final
  LayerNorm, with that block's (normed) class token;
* readout ``project``: every patch token is concatenated with the class token, ``GELU(Linear(2D -> D))``;
* reassemble: 1x1 conv to ``[128, 256, 512, 1024]`` channels, then resize by ``[4, 2, 1, 0.5]`` (transposed conv
  4x4/4, 2x2/2, identity, 3x3 stride-2 conv): patch grids at 1/4, 1/8, 1/16 and 1/32 of the input;
* 3x3 convs to 256 channels, then four fusion blocks (pre-activation residual units, 2x bilinear upsampling with
  ``align_corners=True``, 1x1 projection; a skip of another size is resized with ``align_corners=False``);
* depth head: 3x3 conv 256 -> 128, 2x bilinear upsample, 3x3 conv -> 128, ReLU, 1x1 conv -> 256 bin logits;
* heights: ``chmv2_mixlog`` bins (a linear-to-log blend from 0.001 m to 96/8 m) weighted by the ReLU'd logits, sum
  normalised, times 8. Heights lie in [0.008, 96] m.

Input contract (what the streaming job must feed :class:`CanopyHeightModel`):

* RGB, 3 bands in R, G, B order, scaled to 0..1 (uint8 / 255 in the official notebook), then normalised with
  :data:`CHMV2_MEAN` = (0.420, 0.411, 0.296) and :data:`CHMV2_STD` = (0.213, 0.156, 0.143). These are CHMv2's own
  values: ``notebooks/chmv2_inference.ipynb`` (facebookresearch/dinov3) and transformers' ``CHMv2ImageProcessor``
  both use them. They differ from the SAT-493M backbone's mean (0.430, ...) in the first channel only, so use the
  canopy model's ``mean``/``std``, not the backbone config's.
* Imagery of about 0.6 m ground sampling distance: the backbone was pretrained on SAT-493M, Maxar RGB at 0.6 m
  (DINOv3 model card), and CHMv2 maps canopy height at metre resolution from such imagery (Brandt et al. 2026,
  arXiv:2603.06382). Resample other resolutions in the read (:attr:`CanopyHeightModel.native_gsd_m`).
* H and W multiples of 32 (checked). The head halves the 1/16 patch grid once and doubles it five times, so the
  map is ``32 * ceil(H / 32)`` px tall: exactly the input size only for multiples of 32. The references pad instead
  (official: centre-pad to a multiple of 16, then resize the map back with bilinear interpolation; transformers:
  centre-pad with ``CHMv2ImageProcessor``, resize with ``post_process_depth_estimation``); geodino makes the caller
  choose tiles that need neither.
* Output: heights in metres, ``[B, H, W]``, float32 (the bin arithmetic runs in fp32 whatever the model dtype),
  pixel-aligned with the input.

Checkpoints: the HF repo ``facebook/dinov3-vitl16-chmv2-dpt-head`` (gated) holds ``config.json`` and one F32
``model.safetensors`` whose hub metadata counts 336,876,800 values: exactly a whole ``CHMv2ForDepthEstimation``
with the SAT ViT-L backbone and no key bias (483 tensors). transformers' converter (``convert_chmv2_to_hf.py``)
writes it with ``save_pretrained``: ``backbone.embeddings.*``, ``backbone.layer.N.*`` (``backbone.model.layer.N``
in memory; both are read), ``backbone.norm.*`` and ``head.*``, without key bias, ``bias_mask`` or local_cls_norm.
The official release is the head alone, ``dinov3_vitl16_chmv2_dpt_head-3703d643.pth`` in the official module names
(``dinov3/hub/depthers.py`` loads it onto the SAT-493M backbone). Both load here, strictly: see
:func:`load_canopy_model`. transformers recomputes RoPE frequencies unrounded; geodino keeps the bf16-rounded
periods of the released backbone, as the official code does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.errors import ConfigError, InputSizeError, WeightsError, WeightsMismatchError, WeightsNotFoundError
from geodino.models.config import ViTArch, get_config
from geodino.models.dinov3 import DinoV3ViT
from geodino.models.layouts import convert_state_dict, detect_layout
from geodino.models.weights import RANDOM, Checkpoint, WeightsInfo, read_checkpoint, warn_random

__all__ = ["CHMv2Arch", "CHMv2Head", "CanopyHeightModel", "CanopyConfig", "CHMV2_MEAN", "CHMV2_STD",
           "HEAD_LAYOUTS", "load_canopy_model", "validate_canopy_weights", "save_canopy_weights",
           "convert_canopy_state_dict", "detect_canopy_layout", "get_canopy_config", "list_canopy_models",
           "logits_to_heights"]

CHMV2_MEAN = (0.420, 0.411, 0.296)
CHMV2_STD = (0.213, 0.156, 0.143)  # the SAT-493M std
HEAD_LAYOUTS = ("geodino", "hf", "official")
_BINS = ("linear", "log", "chmv2_mixlog")
_NORMS = ("linear", "softmax", "sigmoid", "chmv2_mixlog")
_READOUTS = ("project", "add", "ignore")


# ------------------------------------------------------------------------------------------------ config

@dataclass(frozen=True)
class CHMv2Arch:
    """Hyper-parameters of a CHMv2 head (field names follow transformers' ``CHMv2Config`` where they can)."""

    embed_dim: int = 1024
    layers: tuple[int, ...] = (5, 11, 17, 23)  # 0-based backbone blocks, increasing
    reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
    post_process_channels: tuple[int, ...] = (128, 256, 512, 1024)
    fusion_hidden_size: int = 256
    head_hidden_size: int = 128
    n_bins: int = 256  # transformers: number_output_channels
    readout_type: str = "project"
    min_depth: float = 0.001
    max_depth: float = 96.0
    bins_strategy: str = "chmv2_mixlog"
    norm_strategy: str = "chmv2_mixlog"
    patch_size: int = 16

    def __post_init__(self) -> None:
        for f in ("layers", "reassemble_factors", "post_process_channels"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        n = len(self.layers)
        if not n or len(self.reassemble_factors) != n or len(self.post_process_channels) != n:
            raise ConfigError(f"CHMv2 head: layers {list(self.layers)}, reassemble_factors "
                              f"{list(self.reassemble_factors)} and post_process_channels "
                              f"{list(self.post_process_channels)} must have the same non-zero length")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])) or min(self.layers) < 0:
            raise ConfigError(f"CHMv2 head: layers {list(self.layers)} must be increasing 0-based block ids")
        for f in self.reassemble_factors:
            if not (f >= 1 and float(f).is_integer() or 0 < f < 1 and float(1 / f).is_integer()):
                raise ConfigError(f"CHMv2 head: reassemble factor {f} must be an integer or 1/integer")
        if self.readout_type not in _READOUTS:
            raise ConfigError(f"CHMv2 head: readout_type {self.readout_type!r} not in {_READOUTS}")
        if self.bins_strategy not in _BINS or self.norm_strategy not in _NORMS:
            raise ConfigError(f"CHMv2 head: bins/norm strategy {self.bins_strategy!r}/{self.norm_strategy!r} "
                              f"not in {_BINS}/{_NORMS}")
        if self.fusion_hidden_size % 2:
            raise ConfigError(f"CHMv2 head: fusion_hidden_size {self.fusion_hidden_size} must be even")

    def replace(self, **overrides) -> "CHMv2Arch":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown CHMv2 head field(s) {sorted(unknown)}; valid: "
                              f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CHMv2Arch":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the height map for an input of ``height`` x ``width`` px (multiples of the patch size):
        the deepest layer's reassembled grid, doubled by every fusion block and once more by the depth head."""
        f, k = self.reassemble_factors[-1], 2 ** (len(self.layers) + 1)

        def grid(n: int) -> int:
            return n * int(f) if f >= 1 else -(-n // round(1 / f))  # a stride-s 3x3 conv, padding 1: ceil(n / s)

        return grid(height // self.patch_size) * k, grid(width // self.patch_size) * k

    @property
    def size_multiple(self) -> int:
        """Input sizes, in px, for which the map is exactly the input size (32 for CHMv2)."""
        f = self.reassemble_factors[-1]
        return self.patch_size * (round(1 / f) if f < 1 else 1)


# ------------------------------------------------------------------------------------------------ layers

class _Reassemble(nn.Module):
    """1x1 projection, then resize: transposed conv (factor > 1), identity, or strided 3x3 conv (factor < 1)."""

    def __init__(self, dim: int, channels: int, factor: float):
        super().__init__()
        self.proj = nn.Conv2d(dim, channels, kernel_size=1)
        if factor > 1:
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor))
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=round(1 / factor), padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.resize(self.proj(x))


class _ResidualUnit(nn.Module):
    """Pre-activation residual unit: ``x + conv2(relu(conv1(relu(x))))``."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """DPT fusion block: add the refined skip, refine, upsample 2x (align_corners=True), 1x1 projection."""

    def __init__(self, c: int, first: bool):
        super().__init__()
        self.res1 = None if first else _ResidualUnit(c)
        self.res2 = _ResidualUnit(c)
        self.proj = nn.Conv2d(c, c, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None and self.res1 is not None:
            if skip.shape != x.shape:  # odd patch grids: the upsampled path is one patch larger
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res1(skip)
        x = self.res2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.proj(x)


class _DepthHead(nn.Module):
    """Conv3x3 (c -> c/2), 2x bilinear upsample, Conv3x3 -> hidden, ReLU, Conv1x1 -> bins."""

    def __init__(self, c: int, hidden: int, n_bins: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c // 2, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, n_bins, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv3(F.relu(self.conv2(x)))


def depth_bins(arch: CHMv2Arch, device: torch.device | str | None = None) -> Tensor:
    """The bin centres (fp32), computed as the references do (the mixlog bins end at max_depth / 8)."""
    n, lo, hi = arch.n_bins, arch.min_depth, arch.max_depth
    if arch.bins_strategy == "linear":
        return torch.linspace(lo, hi, n, device=device)
    if arch.bins_strategy == "log":
        return torch.exp(torch.linspace(torch.log(torch.tensor(lo)), torch.log(torch.tensor(hi)), n, device=device))
    hi = hi / 8.0
    linear = torch.linspace(lo, hi, n, device=device)
    log = torch.exp(torch.linspace(torch.log(torch.tensor(lo)), torch.log(torch.tensor(hi)), n, device=device))
    t = torch.linspace(1.0, 0.0, n, device=device)
    return t * log + (1.0 - t) * linear


def logits_to_heights(logits: Tensor, arch: CHMv2Arch) -> Tensor:
    """Bin logits ``[B, n_bins, H, W]`` -> heights ``[B, H, W]`` in metres, in fp32.

    Same arithmetic as the references, except that the bin-weighted sum is taken before dividing by the
    normaliser (one reduction, no [B, n_bins, H, W] weight tensor; differs by float rounding only)."""
    x = logits.float()
    if x.shape[1] == 1:
        return torch.relu(x[:, 0]) + arch.min_depth
    bins = depth_bins(arch, x.device)
    if arch.norm_strategy == "chmv2_mixlog":
        y = torch.relu(x)  # a new tensor: the shift below may go in place
        y.add_((-y.amin(dim=1, keepdim=True)).clamp_min(0.0).clamp_max(1e-4) + 1e-8)
        denom = torch.nan_to_num(y.sum(dim=1), nan=1.0, posinf=1.0, neginf=1.0).clamp_min(1e-12)
        out = torch.einsum("bchw,c->bhw", y, bins.clamp_min(1e-12)) / denom
        return out.clamp_min(1e-12) * 8.0  # the mixlog bins were scaled by 1/8 in training
    if arch.norm_strategy == "linear":
        w = torch.relu(x) + 0.1
    elif arch.norm_strategy == "softmax":
        w = torch.softmax(x, dim=1)
    else:
        w = torch.sigmoid(x)
    if arch.norm_strategy != "softmax":
        w = w / w.sum(dim=1, keepdim=True)
    return torch.einsum("bchw,c->bhw", w, bins)


# -------------------------------------------------------------------------------------------------- head

class CHMv2Head(nn.Module):
    """The CHMv2 DPT head: ``forward([(grid [B, D, h, w], cls [B, D]), ...])`` -> heights ``[B, H', W']`` (m),
    with ``(H', W') = arch.map_size(16 h, 16 w)``; :meth:`bin_logits` gives the logits before the bins."""

    def __init__(self, arch: CHMv2Arch | None = None):
        super().__init__()
        self.arch = arch = arch or CHMv2Arch()
        d, c = arch.embed_dim, arch.fusion_hidden_size
        self.readout = nn.ModuleList(nn.Linear(2 * d, d) for _ in arch.layers) \
            if arch.readout_type == "project" else None
        self.reassemble = nn.ModuleList(_Reassemble(d, ch, f) for ch, f in
                                        zip(arch.post_process_channels, arch.reassemble_factors))
        self.convs = nn.ModuleList(nn.Conv2d(ch, c, kernel_size=3, padding=1, bias=False)
                                   for ch in arch.post_process_channels)
        self.fusion = nn.ModuleList(_Fusion(c, first=i == 0) for i in range(len(arch.layers)))
        self.depth = _DepthHead(c, arch.head_hidden_size, arch.n_bins)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> "CHMv2Head":
        """Random init as transformers does: trunc-normal 0.02 weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return self

    def _read(self, i: int, grid: Tensor, cls: Tensor) -> Tensor:
        if self.readout is not None:
            # Linear(cat(patch, cls)) = W_p patch + (W_c cls + b): the class half once per image, not per patch.
            lin, d = self.readout[i], grid.shape[1]
            seq = grid.flatten(2).transpose(1, 2)  # [B, hw, D]
            seq = F.linear(seq, lin.weight[:, :d]) + F.linear(cls, lin.weight[:, d:], lin.bias)[:, None]
            return F.gelu(seq).transpose(1, 2).reshape(grid.shape)
        if self.arch.readout_type == "add":
            return grid + cls[:, :, None, None]
        return grid

    def bin_logits(self, features: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Bin logits ``[B, n_bins, H', W']`` from the backbone layers (patch grid, class token)."""
        if len(features) != len(self.reassemble):
            raise ValueError(f"the CHMv2 head takes {len(self.reassemble)} backbone layers, got {len(features)}")
        x = [conv(reas(self._read(i, g, c))) for i, ((g, c), reas, conv)
             in enumerate(zip(features, self.reassemble, self.convs))]
        out = self.fusion[0](x[-1])  # from the deepest, coarsest layer up
        for i in range(1, len(self.fusion)):
            out = self.fusion[i](out, x[-(i + 1)])
        return self.depth(out)

    def forward(self, features: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        return logits_to_heights(self.bin_logits(features), self.arch)


# ----------------------------------------------------------------------------------------- whole model

def check_compatible(backbone_arch: ViTArch, head: CHMv2Arch, backbone_name: str = "the backbone",
                     head_source: str = "the CHMv2 head") -> None:
    """One :class:`WeightsMismatchError` line if ``head`` cannot read ``backbone_arch``."""
    bad = []
    if head.embed_dim != backbone_arch.embed_dim:
        bad.append(f"reads {head.embed_dim}-wide tokens but {backbone_name} is {backbone_arch.embed_dim} wide")
    if max(head.layers) >= backbone_arch.depth:
        bad.append(f"reads blocks {list(head.layers)} but {backbone_name} has {backbone_arch.depth} blocks")
    if head.patch_size != backbone_arch.patch_size:
        bad.append(f"expects patch size {head.patch_size} but {backbone_name} has {backbone_arch.patch_size}")
    if bad:
        raise WeightsMismatchError(f"{head_source} does not fit {backbone_name}: it {'; it '.join(bad)}; use the "
                                   f"backbone it was trained on ({CANOPY_DEFAULT_BACKBONE} for CHMv2)")


class CanopyHeightModel(nn.Module):
    """A DINOv3 backbone and a CHMv2 head: ``forward(x [B, 3, H, W]) -> heights [B, H, W]`` in metres.

    ``x`` is RGB normalised with ``self.mean``/``self.std`` (CHMv2's values), H and W multiples of 32. The
    backbone runs once, returning every layer the head reads with its class token."""

    def __init__(self, backbone: DinoV3ViT, head: CHMv2Head, cfg: "CanopyConfig | None" = None):
        super().__init__()
        name = backbone.cfg.name if backbone.cfg else "the backbone"
        check_compatible(backbone.arch, head.arch, name)
        self.backbone, self.head, self.cfg = backbone, head, cfg
        self.mean = cfg.mean if cfg else CHMV2_MEAN
        self.std = cfg.std if cfg else CHMV2_STD
        self.patch_size = backbone.patch_size
        self.size_multiple = head.arch.size_multiple  # 32
        self.native_gsd_m = cfg.native_gsd_m if cfg else None
        self.weights_info: WeightsInfo | None = None  # the head's file; the backbone's is backbone.weights_info

    def check_size(self, x: Tensor) -> None:
        H, W = x.shape[-2:]
        m = self.size_multiple
        if x.ndim != 4 or H % m or W % m or self.head.arch.map_size(H, W) != (H, W):
            raise InputSizeError(
                f"CHMv2 needs images [B, 3, H, W] with H and W multiples of {m} px (its head halves the patch "
                f"grid once), got shape {tuple(x.shape)}: crop or pad to {H - H % m}x{W - W % m} or "
                f"{H + (-H) % m}x{W + (-W) % m}")

    def features(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The backbone layers the head reads, after the final norm, with their class tokens (one pass)."""
        return list(self.backbone.get_intermediate_layers(x, self.head.arch.layers, norm=True,
                                                          return_class_token=True))

    def forward(self, x: Tensor) -> Tensor:
        self.check_size(x)
        return self.head(self.features(x))

    def provenance(self) -> dict:
        """Model, normalisation and both weight sources, for output metadata."""
        b = self.backbone
        return {"model": self.cfg.name if self.cfg else None,
                "backbone": b.cfg.name if b.cfg else None, "head": self.head.arch.to_dict(),
                "mean": list(self.mean), "std": list(self.std),
                "weights": self.weights_info.to_dict() if self.weights_info else None,
                "backbone_weights": b.weights_info.to_dict() if b.weights_info else None}


# --------------------------------------------------------------------------------------------- layouts

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


def _regex(template: str) -> re.Pattern:
    pat = re.escape(template)
    for g in "ijk":
        pat = pat.replace(re.escape("{" + g + "}"), rf"(?P<{g}>\d+)")
    return re.compile(pat.replace(re.escape("{t}"), r"(?P<t>weight|bias)"))


_HEAD_REGEX = [tuple(_regex(t) for t in row) for row in _HEAD_NAMES]
_HEAD_PREFIX = {"geodino": "head.", "hf": "head.", "official": ""}  # official releases hold the head alone


def _rename_head(key: str, src: str, dst: str) -> str:
    a, b = HEAD_LAYOUTS.index(src), HEAD_LAYOUTS.index(dst)
    for names, rx in zip(_HEAD_NAMES, _HEAD_REGEX):
        if m := rx[a].fullmatch(key):
            return names[b].format(**m.groupdict())
    return key  # not a head tensor: surfaces as an unexpected key


def detect_canopy_layout(sd: dict[str, Tensor]) -> str:
    """Layout of the CHMv2 head in a state dict (``geodino | hf | official``), or ``"none"`` without a head."""
    keys = [k.removeprefix("head.") for k in sd if not k.startswith("backbone.")]
    for layout, first in (("hf", "reassemble_stage."), ("official", "reassemble_blocks."),
                          ("geodino", "reassemble.")):
        if any(k.startswith(first) for k in keys):
            return layout
    return "none"


def _split(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    head = {k.removeprefix("head."): v for k, v in sd.items() if not k.startswith("backbone.")}
    return backbone, head


def convert_canopy_state_dict(sd: dict[str, Tensor], dst: str = "geodino", src: str | None = None,
                              backbone_arch: ViTArch | None = None) -> dict[str, Tensor]:
    """Convert a CHMv2 state dict (``backbone.*`` if present, and the head) between layouts.

    The backbone part goes through :func:`geodino.models.convert_state_dict` (``backbone_arch`` restores keys a
    layout drops); the head is renamed with the table above. ``official`` writes the head alone, as released."""
    src = src or detect_canopy_layout(sd)
    if src not in HEAD_LAYOUTS or dst not in HEAD_LAYOUTS:
        raise WeightsError(f"unknown CHMv2 layout {src if src not in HEAD_LAYOUTS else dst!r}; choose one of "
                           f"{', '.join(HEAD_LAYOUTS)}")
    backbone, head = _split(sd)
    out = {_HEAD_PREFIX[dst] + _rename_head(k, src, dst): v for k, v in head.items()}
    if backbone and dst != "official":
        bdst = "hf" if dst == "hf" else "geodino"
        out.update({"backbone." + k: v for k, v in
                    convert_state_dict(backbone, dst=bdst, arch=backbone_arch).items()})
    return out


# ------------------------------------------------------------------------------------ named config

@dataclass(frozen=True)
class CanopyConfig:
    """A named, published canopy model: its backbone, head, input normalisation and where the weights live."""

    name: str
    backbone: str
    head: CHMv2Arch
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hf_repo: str
    official_file: str
    native_gsd_m: float
    license: str = "dinov3-license"


CANOPY_DEFAULT_BACKBONE = "dinov3-vitl16-sat493m"
_CANOPY: dict[str, CanopyConfig] = {}


def _register(cfg: CanopyConfig) -> CanopyConfig:
    _CANOPY[cfg.name] = cfg
    return cfg


def list_canopy_models() -> list[str]:
    return sorted(_CANOPY)


def get_canopy_config(name: str) -> CanopyConfig:
    """A registered canopy model, by name or HF repo id."""
    for cfg in _CANOPY.values():
        if name in (cfg.name, cfg.hf_repo):
            return cfg
    raise ConfigError(f"unknown canopy model {name!r}; choose one of {', '.join(list_canopy_models())}")


CHMV2_VITL16 = _register(CanopyConfig(
    name="chmv2-vitl16-sat493m", backbone=CANOPY_DEFAULT_BACKBONE, head=CHMv2Arch(),
    mean=CHMV2_MEAN, std=CHMV2_STD, hf_repo="facebook/dinov3-vitl16-chmv2-dpt-head",
    official_file="dinov3_vitl16_chmv2_dpt_head-3703d643.pth", native_gsd_m=0.6))


# ------------------------------------------------------------------------------------ loading and saving

def hf_canopy_config(backbone_arch: ViTArch, head: CHMv2Arch) -> dict:
    """A transformers ``config.json`` for ``CHMv2ForDepthEstimation`` (what ``save_pretrained`` writes)."""
    from geodino.models import hf_config_for

    bb = {k: v for k, v in hf_config_for(backbone_arch).items() if k != "architectures"}
    bb.update(out_indices=[i + 1 for i in head.layers], apply_layernorm=True, reshape_hidden_states=True,
              return_class_token=True)
    return {"architectures": ["CHMv2ForDepthEstimation"], "model_type": "chmv2", "backbone_config": bb,
            "patch_size": head.patch_size, "reassemble_factors": list(head.reassemble_factors),
            "post_process_channels": list(head.post_process_channels),
            "fusion_hidden_size": head.fusion_hidden_size, "head_hidden_size": head.head_hidden_size,
            "number_output_channels": head.n_bins, "readout_type": head.readout_type,
            "min_depth": head.min_depth, "max_depth": head.max_depth,
            "bins_strategy": head.bins_strategy, "norm_strategy": head.norm_strategy}


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
    from geodino.models.weights import state_dict_differences

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


def _resolve(weights, model: str, backbone: str | None, backbone_weights, allow_download: bool,
             arch: dict | None, head_arch: dict | None, meta_only: bool) -> _Resolved:
    """Read a CHMv2 checkpoint and check everything (keys, shapes, configs, backbone fit) before building."""
    from geodino.models import _checked_state_dict

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
        return _Resolved(cfg, bcfg.name, barch, expected, hsd, None, ckpt.info, None)
    if backbone_weights is not None:
        raise ConfigError(f"{src} holds its own backbone as well as the CHMv2 head: drop backbone_weights")
    bb_json = (ckpt.hf_config or {}).get("backbone_config")
    eps = (bb_json or {}).get("layer_norm_eps", barch.norm_eps)
    if not math.isclose(eps, barch.norm_eps):
        raise WeightsMismatchError(f"config.json of {src} says backbone layer_norm_eps={eps:g}, but {bcfg.name} "
                                   f"uses {barch.norm_eps:g}: pass arch={{'norm_eps': {eps:g}}}")
    binfo = dataclasses.replace(ckpt.info, layout=detect_layout(bsd))
    bsd = _checked_state_dict(bcfg, Checkpoint(bsd, binfo.layout, binfo, bb_json, ckpt.metadata), arch or {})
    return _Resolved(cfg, bcfg.name, barch, expected, hsd, bsd, ckpt.info, binfo)


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
        sd = {k: v.to(torch.float32) if k == "rope.periods" else v for k, v in r.backbone_sd.items()}
        with torch.device("meta"):
            bb = DinoV3ViT(r.backbone_arch, get_config(r.backbone_name))
        bb.load_state_dict(sd, strict=True, assign=True)
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
    from safetensors.torch import save_file

    if layout not in HEAD_LAYOUTS:
        raise ConfigError(f"unknown CHMv2 layout {layout!r}; choose one of {', '.join(HEAD_LAYOUTS)}")
    sd = convert_canopy_state_dict(model.state_dict(), dst=layout, src="geodino", backbone_arch=model.backbone.arch)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    path = Path(path)
    if layout == "hf" and not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        cfg = hf_canopy_config(model.backbone.arch, model.head.arch)
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pth", ".pt", ".bin"):
        torch.save(sd, path)
        return path
    meta = {"format": "pt", "geodino.layout": layout, "geodino.chmv2": json.dumps(model.head.arch.to_dict())}
    if model.cfg:
        meta["geodino.canopy_model"] = model.cfg.name
    if layout != "official":
        meta["geodino.arch"] = json.dumps(model.backbone.arch.to_dict())
    save_file(sd, str(path), metadata=meta)
    return path
