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

__all__ = ["context_mixing_model"]


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
