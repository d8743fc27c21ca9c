"""The DINOv3 backbone: timm's ViT (``timm.models.eva``) in geodino's calling convention.

geodino adds one call, :meth:`Backbone.forward_features` (final-norm ``cls``/``registers``/``patches`` and, from
the same pass, the normed grids of chosen blocks for DPT heads); RoPE periods bf16-rounded as the released
checkpoints hold them (timm recomputes unrounded ones), kept through every cast; a one-line error for image sizes
that are not a multiple of the patch size; and a seeded official init that materialises one module at a time.
Under ``torch.autocast(bfloat16)`` timm keeps the tokens, LayerNorm, LayerScale, RoPE and the residual stream in
fp32, as the official inference does (tests/models/test_precision.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from geodino.errors import InputSizeError
from geodino.models.config import ModelConfig, ViTArch


def timm_kwargs(arch: ViTArch) -> dict:
    """``timm.create_model`` overrides that build ``arch`` from a timm DINOv3 model name."""
    from timm.layers import LayerNorm

    return {"embed_dim": arch.embed_dim, "depth": arch.depth, "num_heads": arch.num_heads,
            "qkv_bias": arch.qkv_bias, "num_reg_tokens": arch.n_registers, "patch_size": arch.patch_size,
            "in_chans": arch.in_chans, "rope_temperature": arch.rope_base, "init_values": arch.layerscale_init,
            "norm_layer": functools.partial(LayerNorm, eps=arch.norm_eps), "swiglu_mlp": arch.ffn == "swiglu",
            "swiglu_align_to": arch.swiglu_align if arch.ffn == "swiglu" else 0,
            # timm's hidden width is int(dim * ratio): the half keeps float error from flooring a width below
            "mlp_ratio": (arch.ffn_hidden + 0.5) / arch.embed_dim, "num_classes": 0, "global_pool": "token"}


def create_vit(cfg: ModelConfig, arch: ViTArch) -> nn.Module:
    """timm's model for ``cfg`` with ``arch``, on the meta device (no memory, no init; see :func:`init_weights`)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(cfg.timm_name, pretrained=False, **timm_kwargs(arch))


def rope_periods(head_dim: int, base: float = 100.0, bf16_round: bool = True) -> Tensor:
    """RoPE periods ``base ** (2i / (head_dim / 2))`` for i < head_dim/4, bf16-rounded like the checkpoints."""
    periods = base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32, device="cpu") / (head_dim // 2))
    return periods.to(torch.bfloat16).to(torch.float32) if bf16_round else periods


def _fixed(periods: Tensor, device="cpu", dtype=torch.float32) -> Tensor:
    return periods.to(device=device, dtype=dtype)


def set_rope_periods(vit: nn.Module, periods: Tensor) -> None:
    """Give timm's RoPE these periods (fp32), also wherever timm recomputes them (``_apply`` after a cast)."""
    rope = vit.rope
    fixed = periods.detach().to("cpu", torch.float32).clone()
    if fixed.shape != rope.periods.shape:
        raise ValueError(f"RoPE periods of shape {tuple(fixed.shape)} for a model with {tuple(rope.periods.shape)}")
    rope._compute_periods = functools.partial(_fixed, fixed)  # timm's hook for (re)computing its periods
    device = rope.periods.device if not rope.periods.is_meta else "cpu"
    rope.register_buffer("periods", fixed.to(device), persistent=False)


def materialise_buffers(vit: nn.Module, device: torch.device | str) -> None:
    """timm's non-persistent buffers left on the meta device (the zero key bias): zeros on ``device``."""
    for m in vit.modules():
        for n, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[n] = torch.zeros(b.shape, dtype=torch.float32, device=device)


@torch.no_grad()
def init_weights(vit: nn.Module, arch: ViTArch, generator: torch.Generator | None = None,
                 dtype_for: Callable[[str], torch.dtype] | None = None, device="cpu") -> None:
    """The official random init: trunc-normal 0.02 linears, zero biases, LayerScale ``arch.layerscale_init``, then
    PyTorch's uniform for the patch conv, then normal 0.02 tokens (the draws in the order geodino's own ViT made
    them, so a seed gives the model it gave before timm). Values are drawn in fp32 on the CPU (they do not depend on
    the target), one module at a time, each cast at once to ``dtype_for(name)`` and moved to ``device``."""
    later = []
    for mn, m in vit.named_modules():
        for pn, p in list(m.named_parameters(recurse=False)):
            t = torch.empty(p.shape, dtype=torch.float32)
            if isinstance(m, nn.Conv2d) or pn in ("cls_token", "reg_token"):
                later.append((not isinstance(m, nn.Conv2d), mn, m, pn, t))
                continue
            if isinstance(m, nn.Linear) and pn == "weight":
                nn.init.trunc_normal_(t, std=0.02, generator=generator)
            elif isinstance(m, nn.LayerNorm) and pn == "weight":
                t.fill_(1.0)
            elif pn.startswith("gamma_"):
                t.fill_(arch.layerscale_init)
            else:
                t.zero_()  # biases (q/v included)
            _put(m, mn, pn, t, dtype_for, device)
    for token, mn, m, pn, t in sorted(later, key=lambda e: e[0]):  # conv weight, conv bias, cls, registers
        if token:
            nn.init.normal_(t, std=0.02, generator=generator)
        else:
            k = 1 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
            nn.init.uniform_(t, -k, k, generator=generator)
        _put(m, mn, pn, t, dtype_for, device)
    materialise_buffers(vit, device)
    set_rope_periods(vit, rope_periods(arch.head_dim, arch.rope_base))


def _put(m: nn.Module, mn: str, pn: str, t: Tensor, dtype_for, device) -> None:
    dt = dtype_for(f"{mn}.{pn}" if mn else pn) if dtype_for else torch.float32
    setattr(m, pn, nn.Parameter(t.to(device=device, dtype=dt), requires_grad=False))


def _after_load(module: "Backbone", incompatible) -> None:
    """``load_state_dict(..., assign=True)`` into a model built on the meta device leaves timm's non-persistent
    buffers there: materialise them (bf16-rounded RoPE periods) where the weights went."""
    vit = module.vit
    if vit.rope.periods.is_meta and not vit.cls_token.is_meta:
        materialise_buffers(vit, vit.cls_token.device)
        set_rope_periods(vit, rope_periods(module.arch.head_dim, module.arch.rope_base))


class Backbone(nn.Module):
    """A DINOv3 ViT backbone: ``self.vit`` is timm's model, ``arch``/``cfg`` what it was built as.

    ``forward_features(x)`` returns ``{"cls": [B, D], "registers": [B, R, D], "patches": [B, h, w, D]}``, all after
    the final norm, for ``x`` of shape [B, 3, H, W] already normalised with ``cfg.mean/std``.
    """

    def __init__(self, vit: nn.Module, arch: ViTArch, cfg: ModelConfig | None = None):
        super().__init__()
        self.vit, self.arch, self.cfg = vit, arch, cfg
        self.patch_size, self.embed_dim, self.n_registers = arch.patch_size, arch.embed_dim, arch.n_registers
        self.weights_info = None  # set by load_backbone: provenance of the loaded weights
        self.register_load_state_dict_post_hook(_after_load)

    def _check_size(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != self.arch.in_chans:
            raise InputSizeError(f"expected images [B, {self.arch.in_chans}, H, W], got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise InputSizeError(
                f"image size {H}x{W} px is not a multiple of the patch size {p}: crop or pad it to "
                f"{H - H % p}x{W - W % p} or {H + (-H) % p}x{W + (-W) % p} first "
                f"(geodino.models.crop_to_patch_multiple crops as the official model does)")
        return H // p, W // p

    def _block_ids(self, layers: int | Sequence[int]) -> list[int]:
        n = self.arch.depth
        if isinstance(layers, int):
            if not 1 <= layers <= n:
                raise ValueError(f"asked for the last {layers} blocks of a {n}-block model")
            return list(range(n - layers, n))
        ids = [int(i) for i in layers]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"block ids {bad} out of range for a {n}-block model (0-based)")
        return ids

    def _split(self, tokens: Tensor, h: int, w: int) -> dict[str, Tensor]:
        r = self.n_registers
        return {"cls": tokens[:, 0], "registers": tokens[:, 1:1 + r],
                "patches": tokens[:, 1 + r:].reshape(tokens.shape[0], h, w, tokens.shape[-1])}

    def forward_features(self, x: Tensor, layers: int | Sequence[int] | None = None) -> dict[str, Tensor]:
        """Final-norm ``cls``, ``registers`` and ``patches``; with ``layers`` (the number of last blocks, or 0-based
        block ids) also ``layers``, the normed patch grids ``[B, D, h, w]`` after those blocks in increasing block
        order, and ``layer_cls``, their normed class tokens ``[B, D]`` (what DPT heads read) — all from one pass."""
        h, w = self._check_size(x)
        if layers is None:
            return self._split(self.vit.forward_features(x), h, w)
        tokens, taken = self.vit.forward_intermediates(x, indices=self._block_ids(layers), norm=True,
                                                       output_fmt="NCHW", return_prefix_tokens=True)
        return {**self._split(tokens, h, w), "layers": tuple(g for g, _ in taken),
                "layer_cls": tuple(prefix[:, 0] for _, prefix in taken)}
        # (other reads of the blocks, e.g. without the final norm: timm's ``self.vit.forward_intermediates``)

    def forward(self, x: Tensor) -> Tensor:
        """The CLS embedding (what the official model's ``forward`` returns at inference)."""
        return self.forward_features(x)["cls"]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def flops_per_image(arch: ViTArch, height: int, width: int) -> float:
    """Forward FLOPs (2 x multiply-adds) of one image: patch embedding, attention and FFN matmuls."""
    p, d, hid = arch.patch_size, arch.embed_dim, arch.ffn_hidden
    n = (height // p) * (width // p)
    t = n + 1 + arch.n_registers
    ffn_mats = 3 if arch.ffn == "swiglu" else 2
    block = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * t * d + ffn_mats * 2 * t * d * hid
    return 2.0 * n * arch.in_chans * p * p * d + arch.depth * block


def crop_to_patch_multiple(x: Tensor, patch_size: int = 16) -> Tensor:
    """Drop the bottom/right remainder so H and W are multiples of ``patch_size`` (the official behaviour)."""
    H, W = x.shape[-2:]
    return x[..., : H - H % patch_size, : W - W % patch_size]
