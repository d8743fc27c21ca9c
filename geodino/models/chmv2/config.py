"""The CHMv2 head's hyper-parameters (:class:`CHMv2Arch`) and the registry of named canopy models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from geodino.errors import ConfigError

__all__ = ["CHMv2Arch", "CanopyConfig", "CHMV2_MEAN", "CHMV2_STD", "CANOPY_DEFAULT_BACKBONE", "get_canopy_config",
           "list_canopy_models"]

CHMV2_MEAN = (0.420, 0.411, 0.296)
CHMV2_STD = (0.213, 0.156, 0.143)  # the SAT-493M std
CANOPY_DEFAULT_BACKBONE = "dinov3-vitl16-sat493m"
_BINS = ("linear", "log", "chmv2_mixlog")
_NORMS = ("linear", "softmax", "sigmoid", "chmv2_mixlog")
_READOUTS = ("project", "add", "ignore")


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
