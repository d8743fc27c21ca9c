"""Random checkpoints for tests and benchmarks that behave like trained ones where it matters: context.

The official random init (LayerScale 1e-5, weights of std 0.02) gives a backbone whose patch features barely
depend on anything but their own pixels, so seams, halos, quantisation error and bf16 drift all look perfect
with it. :func:`context_mixing_model` keeps the official init but sets every LayerScale gamma to ``gamma`` and
draws Linear weights with std ``weight_gain / sqrt(fan_in)``, so attention logits are of order one and a patch's
features change with the context around it. Measured on ``rasterio_cogeo.tif`` (ViT-S/16, 256-px windows): the
same 4x4 patches seen in two windows shifted by 6 patches differ by a cosine distance of 0.040 (0.015 with the
gammas alone, 0.000 with the official init), against 0.17 between neighbouring patches of one window.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["context_mixing_model", "context_mixing_canopy_model"]


@torch.no_grad()
def context_mixing_model(name: str, *, seed: int = 0, gamma: float = 0.5, weight_gain: float = 0.5, **overrides):
    """A seeded random backbone of registry model ``name`` whose features mix context (see the module doc).
    Save it with :func:`geodino.models.save_weights` and load it as a weights file: random weights are never
    passed off as real ones (the file's provenance is its sha256)."""
    from geodino.models import build_model

    model = build_model(name, seed=seed, layerscale_init=gamma, **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.Linear) and weight_gain:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (weight_gain / math.sqrt(m.in_features)))
    return model


@torch.no_grad()
def context_mixing_canopy_model(backbone: str = "dinov3-vitl16-sat493m", *, seed: int = 0, gamma: float = 0.5,
                                weight_gain: float = 0.5, head_gain: float = 1.0, arch: dict | None = None,
                                head_arch: dict | None = None):
    """A seeded random :class:`~geodino.models.CanopyHeightModel`: :func:`context_mixing_model` as its backbone and
    a head whose heights vary with the image (the official head init, std 0.02 and zero biases, gives an almost
    constant map: every bin weighted alike). Head convolutions get std ``head_gain / sqrt(fan_in)`` and biases of
    std 0.1, so heights span metres and each pixel's height depends on the context its layers saw. Save it with
    :func:`geodino.models.save_canopy_weights` and load it as a weights file."""
    from geodino.models.chmv2 import CanopyHeightModel, CHMv2Head, get_canopy_config

    cfg = get_canopy_config("chmv2-vitl16-sat493m")
    bb = context_mixing_model(backbone, seed=seed, gamma=gamma, weight_gain=weight_gain, **(arch or {}))
    head = CHMv2Head(cfg.head.replace(**head_arch) if head_arch else cfg.head)
    g = torch.Generator().manual_seed(seed + 2)
    for m in head.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose2d) else m.weight.shape[0]
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (head_gain / math.sqrt(fan_in)))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return CanopyHeightModel(bb, head, cfg).eval()
