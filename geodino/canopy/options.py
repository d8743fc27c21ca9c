"""Options of a canopy job: one frozen, validated value built from defaults < YAML config < CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from geodino._yaml import read_mapping
from geodino.errors import ConfigError
from geodino.raster.radiometry import RADIOMETRIES, parse_numbers

__all__ = ["CanopyOptions", "DTYPES", "UINT16_SCALE", "UINT16_NODATA"]

DTYPES = ("float32", "uint16")
UINT16_SCALE = 0.01  # metres per step of a uint16 COG: 0..655.34 m in centimetres, far beyond CHMv2's 96 m
UINT16_NODATA = 65535


@dataclass(frozen=True)
class CanopyOptions:
    """Every option of ``geodino canopy`` (see ``geodino canopy --help`` for their meaning)."""

    output: str | None = None  # the COG
    cube: str | None = None  # the zarr height cube (default: beside the COG, <name>.heights.zarr)
    model: str = "chmv2-vitl16-sat493m"  # registered canopy model
    backbone: str | None = None  # default: the canopy model's
    weights: str | None = None  # CHMv2 checkpoint, HF snapshot dir, cached hub id, or "random"
    backbone_weights: str | None = None  # for the head-only official .pth
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 4
    tile: int = 512
    halo: int = 32
    blend: int | None = None  # px of linear ramp each side of a core boundary; default = halo (the whole overlap)
    bands: str | None = None
    nodata: float | None = None
    radiometry: str | None = None
    s2_offset: float | None = None
    minmax: tuple[float, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    gsd: float | None = None  # target ground resolution, m; default: the model's (0.6 m for CHMv2)
    resampling: str = "bilinear"
    dtype: str = "float32"  # of the COG; the cube is float32 metres either way
    overwrite: bool = False
    arch: dict = field(default_factory=dict)
    head_arch: dict = field(default_factory=dict)
    scheduler: str | None = None
    resource: str = "GPU"
    micro_batch: int | None = None
    threads: int = 4
    prefetch: int = 2
    retries: int = 2
    configure_workers: bool = False
    gdal_cache_mb: int = 64
    allow_download: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "tile", "threads", "prefetch", "gdal_cache_mb"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise ConfigError(f"--micro-batch must be a positive integer, got {self.micro_batch!r}")
        for name in ("halo", "retries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"--{name} must be a non-negative integer, got {v!r}")
        if self.tile % 32:
            raise ConfigError(f"--tile {self.tile} must be a multiple of 32 px (CHMv2's head halves the 16-px "
                              "patch grid once)")
        if self.halo % 16:
            raise ConfigError(f"--halo {self.halo} must be a multiple of 16 px, so that tile + 2 * halo is a "
                              "multiple of 32")
        if self.blend is not None and not (isinstance(self.blend, int) and 0 <= self.blend <= self.halo):
            raise ConfigError(f"--blend {self.blend!r} px must lie in 0..halo ({self.halo}): windows overlap by "
                              "the halo only")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose float32 (metres) or uint16 (centimetres)")
        choices = [r for r in RADIOMETRIES if r != "geobench"]
        if self.radiometry is not None and self.radiometry not in choices:
            raise ConfigError(f"--radiometry {self.radiometry!r}: choose one of {', '.join(choices)}")
        if self.gsd is not None and not (isinstance(self.gsd, (int, float)) and self.gsd > 0):
            raise ConfigError(f"--gsd must be a ground resolution in metres > 0, got {self.gsd!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision {self.precision!r}: choose auto, fp32 or bf16")
        for name in ("arch", "head_arch"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping of architecture overrides")

    @property
    def blend_px(self) -> int:
        return self.halo if self.blend is None else self.blend

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, yaml_path: str | Path | None = None, **cli) -> "CanopyOptions":
        """Defaults, overridden by the YAML file (its ``canopy:`` mapping, or the whole file), overridden by CLI
        values that are not None."""
        values = {}
        if yaml_path:
            data = read_mapping(yaml_path)
            values = {str(k).replace("-", "_"): v for k, v in data.get("canopy", data).items()}
        values.update({k: v for k, v in cli.items() if v is not None and v != {} and v != ()})
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"unknown canopy option(s) {unknown} in {yaml_path or 'arguments'}; valid: "
                              f"{', '.join(cls.fields())}")
        for k in ("minmax", "percentiles"):
            if values.get(k) is not None:
                v = values[k]
                values[k] = parse_numbers(k, v)
        if isinstance(values.get("bands"), (list, tuple)):
            values["bands"] = ",".join(str(b) for b in values["bands"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"invalid canopy options: {e}") from e

    def replace(self, **kw) -> "CanopyOptions":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
