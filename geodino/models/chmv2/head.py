"""The CHMv2 DPT head (reassemble, fusion, depth bins) and the canopy model: a DINOv3 backbone plus that head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.errors import InputSizeError, WeightsMismatchError
from geodino.models.backbone import Backbone
from geodino.models.chmv2.config import CANOPY_DEFAULT_BACKBONE, CHMV2_MEAN, CHMV2_STD, CanopyConfig, CHMv2Arch
from geodino.models.config import ViTArch
from geodino.models.weights import WeightsInfo


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
    n, lo, hi = arch.n_bins, arch.min_depth, arch.max_depth / (8.0 if arch.bins_strategy == "chmv2_mixlog" else 1)
    linear = torch.linspace(lo, hi, n, device=device)
    log = torch.exp(torch.linspace(torch.log(torch.tensor(lo)), torch.log(torch.tensor(hi)), n, device=device))
    if arch.bins_strategy != "chmv2_mixlog":
        return linear if arch.bins_strategy == "linear" else log
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

    def __init__(self, backbone: Backbone, head: CHMv2Head, cfg: CanopyConfig | None = None):
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
        """The backbone layers the head reads, after the final norm, with their class tokens (one pass of the
        backbone's one call, as the engine makes it)."""
        out = self.backbone.forward_features(x, layers=self.head.arch.layers)
        return list(zip(out["layers"], out["layer_cls"]))

    def forward(self, x: Tensor) -> Tensor:
        self.check_size(x)
        return self.head(self.features(x))
