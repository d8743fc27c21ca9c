"""The registry of named DINOv3 backbones: what to build (:class:`ViTArch`) and what belongs to the weights.

A :class:`ModelConfig` is a named, published set of weights for one architecture: the normalisation the weights were
trained with, and where they live (official file name, Hugging Face repo, timm name). Normalisation belongs to the
weights, never to user code. timm builds the network (``timm_name`` is its model and weight tag); the ``ViTArch``
fields are the official hyper-parameters, which :func:`geodino.models.backbone.timm_kwargs` translates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from geodino.errors import ConfigError

__all__ = ["ViTArch", "ModelConfig", "register", "get_config", "list_models", "SAT_MEAN", "SAT_STD",
           "IMAGENET_MEAN", "IMAGENET_STD"]

SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTArch:
    """Hyper-parameters of one DINOv3 ViT, as the official ``DinoVisionTransformer`` takes them.

    ``local_cls_norm`` says that the official checkpoint carries that training-only norm (it tells the SAT ViT-L
    file from the LVD one); ``qkv_bias`` that it carries q/v biases (zero in the released files)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglu"] = "mlp"
    ffn_ratio: float = 4.0
    swiglu_align: int = 8
    qkv_bias: bool = True
    n_registers: int = 4
    patch_size: int = 16
    in_chans: int = 3
    rope_base: float = 100.0
    layerscale_init: float = 1e-5
    norm_eps: float = 1e-5
    local_cls_norm: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ConfigError(f"head dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.ffn not in ("mlp", "swiglu"):
            raise ConfigError(f"ffn must be 'mlp' or 'swiglu', not {self.ffn!r}")
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN, as the official layers compute it."""
        hidden = int(self.embed_dim * self.ffn_ratio)
        if self.ffn == "mlp":
            return hidden
        d = int(hidden * 2 / 3)  # SwiGLU keeps the parameter count of a 2/3-width gated MLP
        return d + (-d % self.swiglu_align)

    @property
    def num_params(self) -> int:
        """Values in the official checkpoint: the parameters plus the training-only mask token and local_cls_norm
        and the masked key bias (the figure the model cards give; tests check it against timm's model)."""
        d, h = self.embed_dim, self.ffn_hidden
        ffn = (2 if self.ffn == "swiglu" else 1) * (d * h + h) + h * d + d
        block = 4 * d + 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d + 2 * d + ffn  # norms, qkv, proj, LS
        embed = (self.in_chans * self.patch_size ** 2 + 1) * d + (2 + self.n_registers) * d  # conv, cls, mask, regs
        return embed + self.depth * block + 2 * d + (2 * d if self.local_cls_norm else 0)

    def replace(self, **overrides) -> "ViTArch":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown architecture override(s) {sorted(unknown)}; valid: "
                              f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTArch":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ModelConfig:
    """A named, published DINOv3 backbone: architecture plus what belongs to its weights."""

    name: str
    arch: ViTArch
    dataset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hf_repo: str
    timm_name: str  # timm's model and weight tag, e.g. vit_large_patch16_dinov3.sat493m
    official_file: str
    native_gsd_m: float | None = None
    license: str = "dinov3-license"
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def normalization(self) -> str:
        return "sat493m" if self.mean == SAT_MEAN else "imagenet"


_REGISTRY: dict[str, ModelConfig] = {}
_ALIASES: dict[str, str] = {}


def register(cfg: ModelConfig) -> ModelConfig:
    if cfg.name in _REGISTRY:
        raise ValueError(f"model {cfg.name} registered twice")
    _REGISTRY[cfg.name] = cfg
    for alias in (cfg.timm_name, cfg.hf_repo, *cfg.aliases):
        _ALIASES[alias.lower()] = cfg.name
    return cfg


def list_models() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name (or its timm name / HF repo id)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    canon = _ALIASES.get(name.lower())
    if canon:
        return _REGISTRY[canon]
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())} (see `geodino models`)")


# ----------------------------------------------------------------------------------------- named configs

VITS16 = ViTArch(embed_dim=384, depth=12, num_heads=6)
VITS16PLUS = ViTArch(embed_dim=384, depth=12, num_heads=6, ffn="swiglu", ffn_ratio=6.0)
VITB16 = ViTArch(embed_dim=768, depth=12, num_heads=12)
VITL16 = ViTArch(embed_dim=1024, depth=24, num_heads=16)
VITH16PLUS = ViTArch(embed_dim=1280, depth=32, num_heads=20, ffn="swiglu", ffn_ratio=6.0)
VIT7B16 = ViTArch(embed_dim=4096, depth=40, num_heads=32, ffn="swiglu", ffn_ratio=3.0, swiglu_align=64,
                  qkv_bias=False, local_cls_norm=True)


def _named(arch_name: str, arch: ViTArch, data: str, hash_: str, timm_arch: str) -> ModelConfig:
    sat = data == "sat493m"
    return register(ModelConfig(
        name=f"dinov3-{arch_name}-{data}", arch=arch,
        dataset="SAT-493M (Maxar RGB, 0.6 m)" if sat else "LVD-1689M (web images)",
        mean=SAT_MEAN if sat else IMAGENET_MEAN, std=SAT_STD if sat else IMAGENET_STD,
        hf_repo=f"facebook/dinov3-{arch_name}-pretrain-{data}", timm_name=f"{timm_arch}.{data}",
        official_file=f"dinov3_{arch_name}_pretrain_{data}-{hash_}.pth", native_gsd_m=0.6 if sat else None))


_named("vits16", VITS16, "lvd1689m", "08c60483", "vit_small_patch16_dinov3")
_named("vits16plus", VITS16PLUS, "lvd1689m", "4057cbaa", "vit_small_plus_patch16_dinov3")
_named("vitb16", VITB16, "lvd1689m", "73cec8be", "vit_base_patch16_dinov3")
_named("vitl16", VITL16, "lvd1689m", "8aa4cbdd", "vit_large_patch16_dinov3")
_named("vith16plus", VITH16PLUS, "lvd1689m", "7c1da9a5", "vit_huge_plus_patch16_dinov3")
_named("vit7b16", VIT7B16, "lvd1689m", "a955f4ea", "vit_7b_patch16_dinov3")
# The mission's two satellite backbones. The SAT ViT-L checkpoint carries local_cls_norm (training only).
_named("vitl16", VITL16.replace(local_cls_norm=True), "sat493m", "eadcf0ff", "vit_large_patch16_dinov3")
_named("vit7b16", VIT7B16, "sat493m", "a6675841", "vit_7b_patch16_dinov3")
