"""The registry of named DINOv3 backbones: the architecture (:class:`ViTArch`, the official hyper-parameters) and
what belongs to the weights (:class:`ModelConfig`: normalisation, official file, HF repo, timm name and tag)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from geodino.errors import ConfigError

SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ArchFields:
    """What the architecture dataclasses share: ``replace`` with a one-line error naming unknown fields, and the
    dict forms (tuples as lists, as JSON writes them) for metadata and cube attributes."""

    _what = "architecture override(s)"

    def replace(self, **overrides):
        names = [f.name for f in dataclasses.fields(self)]
        if set(overrides) - set(names):
            raise ConfigError(f"unknown {self._what} {sorted(set(overrides) - set(names))}; valid: {names}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


@dataclass(frozen=True)
class ViTArch(ArchFields):
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


@dataclass(frozen=True)
class ModelConfig:
    """A named, published DINOv3 backbone: architecture plus what belongs to its weights."""

    name: str
    arch: ViTArch
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hf_repo: str
    timm_name: str  # timm's model and weight tag, e.g. vit_large_patch16_dinov3.sat493m
    official_file: str

    @property
    def normalization(self) -> str:
        return "sat493m" if self.mean == SAT_MEAN else "imagenet"


def list_models() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name (or its timm name / HF repo id)."""
    cfg = _REGISTRY.get(name) or _REGISTRY.get(_ALIASES.get(name.lower(), ""))
    if cfg is None:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())} (see `geodino models`)")
    return cfg


# The named configs: official name, architecture, timm model, official file hash per training set. The SAT ViT-L
# checkpoint carries local_cls_norm (training only); the 7B ones both do.
_SWIGLU = {"ffn": "swiglu", "ffn_ratio": 6.0}
_NAMED = [
    ("vits16", ViTArch(384, 12, 6), "vit_small_patch16_dinov3", {"lvd1689m": "08c60483"}),
    ("vits16plus", ViTArch(384, 12, 6, **_SWIGLU), "vit_small_plus_patch16_dinov3", {"lvd1689m": "4057cbaa"}),
    ("vitb16", ViTArch(768, 12, 12), "vit_base_patch16_dinov3", {"lvd1689m": "73cec8be"}),
    ("vitl16", ViTArch(1024, 24, 16), "vit_large_patch16_dinov3", {"lvd1689m": "8aa4cbdd", "sat493m": "eadcf0ff"}),
    ("vith16plus", ViTArch(1280, 32, 20, **_SWIGLU), "vit_huge_plus_patch16_dinov3", {"lvd1689m": "7c1da9a5"}),
    ("vit7b16", ViTArch(4096, 40, 32, ffn="swiglu", ffn_ratio=3.0, swiglu_align=64, qkv_bias=False,
                        local_cls_norm=True), "vit_7b_patch16_dinov3", {"lvd1689m": "a955f4ea", "sat493m": "a6675841"}),
]
_REGISTRY = {f"dinov3-{a}-{data}": ModelConfig(
    name=f"dinov3-{a}-{data}", arch=arch.replace(local_cls_norm=True) if data == "sat493m" else arch,
    mean=SAT_MEAN if data == "sat493m" else IMAGENET_MEAN, std=SAT_STD if data == "sat493m" else IMAGENET_STD,
    hf_repo=f"facebook/dinov3-{a}-pretrain-{data}", timm_name=f"{timm_arch}.{data}",
    official_file=f"dinov3_{a}_pretrain_{data}-{h}.pth")
    for a, arch, timm_arch, hashes in _NAMED for data, h in hashes.items()}
_ALIASES = {alias.lower(): c.name for c in _REGISTRY.values() for alias in (c.timm_name, c.hf_repo)}
