"""The CHMv2 head's hyper-parameters (:class:`CHMv2Arch`) and the named canopy models."""

from __future__ import annotations

from dataclasses import dataclass

from geodino.errors import ConfigError
from geodino.models.config import ArchFields

CHMV2_MEAN = (0.420, 0.411, 0.296)
CHMV2_STD = (0.213, 0.156, 0.143)  # the SAT-493M std
CANOPY_DEFAULT_BACKBONE = "dinov3-vitl16-sat493m"
_CHOICES = {"readout_type": ("project", "add", "ignore"), "bins_strategy": ("linear", "log", "chmv2_mixlog"),
            "norm_strategy": ("linear", "softmax", "sigmoid", "chmv2_mixlog")}


@dataclass(frozen=True)
class CHMv2Arch(ArchFields):
    """Hyper-parameters of a CHMv2 head (field names follow transformers' ``CHMv2Config`` where they can)."""

    _what = "CHMv2 head field(s)"

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
        lists = (self.layers, self.reassemble_factors, self.post_process_channels)
        bad = [f"{k} {getattr(self, k)!r} not in {v}" for k, v in _CHOICES.items() if getattr(self, k) not in v]
        if not self.layers or len({len(x) for x in lists}) > 1:
            bad.append(f"layers, reassemble_factors and post_process_channels {[list(x) for x in lists]} must have "
                       "the same non-zero length")
        elif any(b <= a for a, b in zip(self.layers, self.layers[1:])) or min(self.layers) < 0:
            bad.append(f"layers {list(self.layers)} must be increasing 0-based block ids")
        bad += [f"reassemble factor {f} must be an integer or 1/integer" for f in self.reassemble_factors
                if not (f >= 1 and float(f).is_integer() or 0 < f < 1 and float(1 / f).is_integer())]
        if self.fusion_hidden_size % 2:
            bad.append(f"fusion_hidden_size {self.fusion_hidden_size} must be even")
        if bad:
            raise ConfigError(f"CHMv2 head: {bad[0]}")

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """The height map's size for an input of ``height`` x ``width`` px: the deepest layer's reassembled grid
        (a stride-s 3x3 conv gives ceil(n / s)), doubled by every fusion block and once more by the depth head."""
        f, k = self.reassemble_factors[-1], 2 ** (len(self.layers) + 1)
        grid = (lambda n: n * int(f)) if f >= 1 else (lambda n: -(-n // round(1 / f)))
        return grid(height // self.patch_size) * k, grid(width // self.patch_size) * k

    @property
    def size_multiple(self) -> int:
        """Input sizes, in px, for which the map is exactly the input size (32 for CHMv2)."""
        f = self.reassemble_factors[-1]
        return self.patch_size * (round(1 / f) if f < 1 else 1)


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


_CANOPY = [CanopyConfig("chmv2-vitl16-sat493m", CANOPY_DEFAULT_BACKBONE, CHMv2Arch(), CHMV2_MEAN, CHMV2_STD,
                        "facebook/dinov3-vitl16-chmv2-dpt-head", "dinov3_vitl16_chmv2_dpt_head-3703d643.pth", 0.6)]


def get_canopy_config(name: str) -> CanopyConfig:
    """A named canopy model, by name or HF repo id."""
    for cfg in _CANOPY:
        if name in (cfg.name, cfg.hf_repo):
            return cfg
    raise ConfigError(f"unknown canopy model {name!r}; choose one of {', '.join(c.name for c in _CANOPY)}")
