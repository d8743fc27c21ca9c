"""DINOv3 Vision Transformer in plain PyTorch, numerically faithful to facebookresearch/dinov3.

Layout of this file (timm style): layers, the model, then the named configs of every published ViT.

Numerics follow the official code:

* tokens are ``[cls, registers, patches (row-major)]``; position comes only from 2-D RoPE;
* RoPE uses per-axis ("separate") normalised patch-centre coordinates in (-1, 1), rotate-half, periods
  ``base ** (i / (head_dim / 4))`` (bf16-rounded like the released checkpoints unless a checkpoint brings its
  own), and is computed in fp32 whatever dtype the model runs in; cls and register tokens are not rotated;
* LayerNorm eps 1e-5, evaluated in fp32; LayerScale on both residual branches;
* GELU (erf) MLP, or SwiGLU ``w3(silu(w1 x) * w2 x)`` with the official hidden width;
* attention through ``torch.nn.functional.scaled_dot_product_attention``.

Image-size policy: inputs whose height or width is not a multiple of the patch size are rejected with
:class:`~geodino.errors.InputSizeError` (the official model silently drops the remainder; geodino makes the
caller choose, see :func:`crop_to_patch_multiple`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.errors import InputSizeError
from geodino.models.config import (IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD, ModelConfig, ViTArch,
                                   register)

__all__ = ["DinoV3ViT", "rope_periods", "crop_to_patch_multiple", "flops_per_image"]


# ----------------------------------------------------------------------------------------------- layers


class LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 whatever the activation dtype (as the released models were run)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def rope_periods(head_dim: int, base: float = 100.0, bf16_round: bool = True) -> Tensor:
    """RoPE periods ``base ** (2i / (head_dim / 2))`` for i < head_dim/4, bf16-rounded like the checkpoints."""
    n = head_dim // 4
    # computed on the CPU even under a meta-device context (meta arange pulls in torch._refs: seconds of imports)
    periods = base ** (2 * torch.arange(n, dtype=torch.float32, device="cpu") / (head_dim // 2))
    if bf16_round:
        periods = periods.to(torch.bfloat16).to(torch.float32)
    return periods


class RopeEmbedding(nn.Module):
    """Axial 2-D RoPE of DINOv3 (eval behaviour: no coordinate augmentation). Periods stay fp32."""

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("periods", rope_periods(head_dim, base), persistent=True)

    def _apply(self, fn, recurse=True):
        # Model-wide casts (.half(), .to(bfloat16)) must not round the periods: keep them fp32.
        periods = self.periods
        super()._apply(fn, recurse)
        if self.periods.dtype != torch.float32:
            self.periods = periods.to(device=self.periods.device, dtype=torch.float32)
        return self

    def forward(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """``(sin, cos)``, each ``[h*w, head_dim]`` in fp32, for an h x w patch grid."""
        dd = {"device": self.periods.device, "dtype": torch.float32}
        cy = torch.arange(0.5, h, **dd) / h
        cx = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), dim=-1).flatten(0, 1)  # [hw, 2]
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [hw, 2, hd/4]
        angles = angles.flatten(1, 2).tile(2)  # [hw, hd]
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate the trailing patch tokens of ``x`` [B, heads, N, hd] in fp32; prefix tokens pass through."""
    n_prefix = x.shape[-2] - sin.shape[-2]
    prefix, patches = x[..., :n_prefix, :], x[..., n_prefix:, :]
    p = patches.float()
    p = p * cos + _rotate_half(p) * sin
    return torch.cat([prefix, p.to(x.dtype)], dim=-2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        B, N, C = x.shape
        bias = self.qkv.bias
        if bias is not None:  # the official key-bias mask: keys get no bias (it would break RoPE invariance)
            bias = torch.cat([bias[:C], bias.new_zeros(C), bias[2 * C:]])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        sin, cos = rope
        q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``; w1 is the gate (official naming)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, arch: ViTArch):
        super().__init__()
        d = arch.embed_dim
        self.norm1 = LayerNorm(d, eps=arch.norm_eps)
        self.attn = Attention(d, arch.num_heads, arch.qkv_bias)
        self.ls1 = LayerScale(d, arch.layerscale_init)
        self.norm2 = LayerNorm(d, eps=arch.norm_eps)
        self.mlp = (Mlp if arch.ffn == "mlp" else SwiGLU)(d, arch.ffn_hidden)
        self.ls2 = LayerScale(d, arch.layerscale_init)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


# ------------------------------------------------------------------------------------------------ model


class DinoV3ViT(nn.Module):
    """A DINOv3 ViT backbone.

    ``forward_features(x)`` returns ``{"cls": [B, D], "registers": [B, R, D], "patches": [B, h, w, D]}``,
    all after the final norm, for ``x`` of shape [B, 3, H, W] already normalised with ``cfg.mean/std``.
    """

    def __init__(self, arch: ViTArch, cfg: ModelConfig | None = None):
        super().__init__()
        self.arch = arch
        self.cfg = cfg
        d = arch.embed_dim
        self.embed_dim = d
        self.patch_size = arch.patch_size
        self.n_registers = arch.n_registers
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(arch.in_chans, d, kernel_size=arch.patch_size, stride=arch.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, arch.n_registers, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # training only; kept so checkpoints load strictly
        self.rope = RopeEmbedding(arch.head_dim, arch.rope_base)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = LayerNorm(d, eps=arch.norm_eps)
        # Training-only norm of the SAT/7B checkpoints; never used at inference, present for strict loading.
        self.local_cls_norm = LayerNorm(d, eps=arch.norm_eps) if arch.local_cls_norm else None
        self.weights_info = None  # set by load_backbone: provenance of the loaded weights

    # -- init ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, dtype_for=None) -> "DinoV3ViT":
        """Random init as the official code does (trunc-normal 0.02 linears, zero biases, LayerScale
        ``arch.layerscale_init``, 1e-5 officially).

        Works on a model built on the meta device too: each module is materialised on the CPU just before it is
        initialised (in fp32, so the values do not depend on the target dtype) and cast at once with
        ``dtype_for(param_name) -> dtype``, so a 7B model never exists in fp32 as a whole.
        """
        def ready(prefix: str, m: nn.Module) -> None:
            # plain torch.empty: Module.to_empty on meta tensors goes through torch._refs (seconds of imports)
            for n, t in list(m._parameters.items()):
                if t is not None and t.is_meta:
                    m._parameters[n] = nn.Parameter(torch.empty(t.shape, dtype=torch.float32),
                                                    requires_grad=t.requires_grad)
            for n, t in list(m._buffers.items()):
                if t is not None and t.is_meta:
                    m._buffers[n] = torch.empty(t.shape, dtype=torch.float32)

        def cast(prefix: str, m: nn.Module) -> None:
            if dtype_for is None:
                return
            for n, t in m.named_parameters(recurse=False):
                t.data = t.data.to(dtype_for(f"{prefix}.{n}" if prefix else n))

        later = []
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                ready(name, m)
                nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                ready(name, m)
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                ready(name, m)
                nn.init.constant_(m.gamma, self.arch.layerscale_init)
            else:
                later.append((name, m))
                continue
            cast(name, m)
        for name, m in later:
            ready(name, m)
        conv = self.patch_embed.proj
        k = 1 / math.sqrt(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
        nn.init.uniform_(conv.weight, -k, k, generator=generator)
        nn.init.uniform_(conv.bias, -k, k, generator=generator)
        nn.init.normal_(self.cls_token, std=0.02, generator=generator)
        nn.init.normal_(self.register_tokens, std=0.02, generator=generator)
        nn.init.zeros_(self.mask_token)
        self.rope.periods.copy_(rope_periods(self.arch.head_dim, self.arch.rope_base))
        for name, m in later:
            cast(name, m)
        return self

    # -- forward ---------------------------------------------------------------------------------------
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

    def prepare_tokens(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Tokens entering block 0. Their dtype is that of the cls token (fp32 unless the whole model was cast),
        whatever the patch embedding computed in: under bf16 autocast the tokens and the residual stream stay
        fp32, as in the official autocast inference."""
        h, w = self._check_size(x)
        x = self.patch_embed.proj(x.to(self.patch_embed.proj.weight.dtype))  # [B, D, h, w]
        dtype = self.cls_token.dtype
        x = x.flatten(2).transpose(1, 2).to(dtype)
        B = x.shape[0]
        prefix = torch.cat([self.cls_token, self.register_tokens], dim=1).expand(B, -1, -1)
        return torch.cat([prefix, x], dim=1), h, w

    def _run_blocks(self, x: Tensor, h: int, w: int, take: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        rope = self.rope(h, w)
        taken = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope)
            if i in take:
                taken.append(x)
        return x, taken

    def _split(self, x: Tensor, h: int, w: int) -> dict[str, Tensor]:
        r = self.n_registers
        return {"cls": x[:, 0], "registers": x[:, 1:1 + r],
                "patches": x[:, 1 + r:].reshape(x.shape[0], h, w, x.shape[-1])}

    def forward_features(self, x: Tensor, layers: int | Sequence[int] | None = None) -> dict[str, Tensor]:
        """Final-norm ``cls``, ``registers`` and ``patches``; with ``layers`` (the number of last blocks, or 0-based
        block ids) also ``layers``: a tuple of normed patch grids ``[B, D, h, w]`` after those blocks, in increasing
        block order — everything from one pass through the blocks."""
        tokens, h, w = self.prepare_tokens(x)
        ids = set(self._block_ids(layers)) if layers is not None else set()
        tokens, taken = self._run_blocks(tokens, h, w, take=ids)
        out = self._split(self.norm(tokens), h, w)
        if layers is not None:
            out["layers"] = tuple(self._split(self.norm(t), h, w)["patches"].permute(0, 3, 1, 2) for t in taken)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The CLS embedding (what the official model's ``forward`` returns at inference)."""
        return self.forward_features(x)["cls"]

    def _block_ids(self, layers: int | Sequence[int]) -> list[int]:
        n = len(self.blocks)
        if isinstance(layers, int):
            if not 1 <= layers <= n:
                raise ValueError(f"asked for the last {layers} blocks of a {n}-block model")
            return list(range(n - layers, n))
        ids = [int(i) for i in layers]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"block ids {bad} out of range for a {n}-block model (0-based)")
        return ids

    def get_intermediate_layers(self, x: Tensor, layers: int | Sequence[int] = 1, norm: bool = True,
                                return_class_token: bool = False) -> tuple:
        """Patch grids ``[B, D, h, w]`` after the given blocks, like the official method with ``reshape=True``.

        ``layers`` is the number of last blocks (int) or a list of 0-based block ids; outputs come in
        increasing block order. ``norm`` applies the final LayerNorm. With ``return_class_token`` each item
        is ``(grid, cls)``.
        """
        ids = self._block_ids(layers)
        tokens, h, w = self.prepare_tokens(x)
        _, taken = self._run_blocks(tokens, h, w, take=set(ids))
        out = []
        for t in taken:
            if norm:
                t = self.norm(t)
            s = self._split(t, h, w)
            grid = s["patches"].permute(0, 3, 1, 2).contiguous()
            out.append((grid, s["cls"]) if return_class_token else grid)
        return tuple(out)

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


# ----------------------------------------------------------------------------------------- named configs

VITS16 = ViTArch(embed_dim=384, depth=12, num_heads=6)
VITS16PLUS = ViTArch(embed_dim=384, depth=12, num_heads=6, ffn="swiglu", ffn_ratio=6.0)
VITB16 = ViTArch(embed_dim=768, depth=12, num_heads=12)
VITL16 = ViTArch(embed_dim=1024, depth=24, num_heads=16)
VITH16PLUS = ViTArch(embed_dim=1280, depth=32, num_heads=20, ffn="swiglu", ffn_ratio=6.0)
VIT7B16 = ViTArch(embed_dim=4096, depth=40, num_heads=32, ffn="swiglu", ffn_ratio=3.0, swiglu_align=64,
                  qkv_bias=False, local_cls_norm=True)

_OFFICIAL = "dinov3_{arch}_pretrain_{data}-{hash}.pth"


def _named(arch_name: str, arch: ViTArch, data: str, hash_: str, timm_arch: str, **kw) -> ModelConfig:
    sat = data == "sat493m"
    return register(ModelConfig(
        name=f"dinov3-{arch_name}-{data}",
        arch=arch,
        dataset="SAT-493M (Maxar RGB, 0.6 m)" if sat else "LVD-1689M (web images)",
        mean=SAT_MEAN if sat else IMAGENET_MEAN,
        std=SAT_STD if sat else IMAGENET_STD,
        hf_repo=f"facebook/dinov3-{arch_name}-pretrain-{data}",
        timm_name=f"{timm_arch}.{data}",
        official_file=_OFFICIAL.format(arch=arch_name, data=data, hash=hash_),
        native_gsd_m=0.6 if sat else None,
        **kw,
    ))


_named("vits16", VITS16, "lvd1689m", "08c60483", "vit_small_patch16_dinov3")
_named("vits16plus", VITS16PLUS, "lvd1689m", "4057cbaa", "vit_small_plus_patch16_dinov3")
_named("vitb16", VITB16, "lvd1689m", "73cec8be", "vit_base_patch16_dinov3")
_named("vitl16", VITL16, "lvd1689m", "8aa4cbdd", "vit_large_patch16_dinov3")
_named("vith16plus", VITH16PLUS, "lvd1689m", "7c1da9a5", "vit_huge_plus_patch16_dinov3")
_named("vit7b16", VIT7B16, "lvd1689m", "a955f4ea", "vit_7b_patch16_dinov3")
# The mission's two satellite backbones. The SAT ViT-L checkpoint carries local_cls_norm (training only).
_named("vitl16", VITL16.replace(local_cls_norm=True), "sat493m", "eadcf0ff", "vit_large_patch16_dinov3")
_named("vit7b16", VIT7B16, "sat493m", "a6675841", "vit_7b_patch16_dinov3")
