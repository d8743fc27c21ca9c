"""Options of an embed job: one frozen, validated value built from defaults < YAML config < CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from geodino._yaml import read_mapping
from geodino.errors import ConfigError
from geodino.raster.radiometry import RADIOMETRIES, parse_numbers

__all__ = ["EmbedConfig", "load_yaml"]

_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class EmbedConfig:
    """Every option of ``geodino embed`` (see ``geodino embed --help`` for their meaning)."""

    output: str | None = None
    model: str = "dinov3-vitl16-sat493m"
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    tile: int = 512
    halo: int = 32  # with blend 1: seam ratio 0.89 on a context-mixing ViT-L (docs/benchmarks.md), 1.3x compute
    blend: int = 1
    bands: str | None = None
    nodata: float | None = None
    radiometry: str | None = None
    radiometry_like: str | None = None
    s2_offset: float | None = None
    minmax: tuple[float, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    scale: float = 1.0
    resampling: str = "bilinear"
    dtype: str = "float16"
    min_valid: float = 0.5
    overwrite: bool = False
    arch: dict = field(default_factory=dict)
    scheduler: str | None = None
    resource: str = "GPU"
    compile: bool | str = "auto"  # True, False or "auto" (see geodino.engine.compile_pays_back)
    quantize: str | None = None
    micro_batch: int | None = None
    threads: int = 4
    prefetch: int = 2
    retries: int = 2
    configure_workers: bool = False
    gdal_cache_mb: int = 64
    allow_download: bool = False
    on_read_error: str = "fail"  # fail | skip (mark the tile failed, go on); not part of the fingerprint
    mosaic: bool = False  # one cube per CRS on a common grid (geodino.embed.mosaic)

    def __post_init__(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")

        for name in ("batch_size", "tile", "threads", "prefetch", "gdal_cache_mb"):
            positive_int(name)
        for name in ("halo", "blend", "retries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.micro_batch is not None:
            positive_int("micro_batch")
        if self.radiometry and self.radiometry_like:
            raise ConfigError("give either --radiometry or --radiometry-like, not both")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose float16 or float32")
        choices = [r for r in RADIOMETRIES if r != "geobench"]
        if self.radiometry is not None and self.radiometry not in choices:
            raise ConfigError(f"--radiometry {self.radiometry!r}: choose one of {', '.join(choices)}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise ConfigError(f"--scale must be a number > 0, got {self.scale!r}")
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise ConfigError(f"--min-valid must lie in [0, 1], got {self.min_valid}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be true, false or auto, got {self.compile!r}")
        if self.quantize not in (None, "int8", "int4"):
            raise ConfigError(f"--quantize {self.quantize!r}: choose int8 or int4 (weight-only)")
        if self.precision not in ("auto", "fp32", "bf16", "fp8"):
            raise ConfigError(f"--precision {self.precision!r}: choose auto, fp32, bf16 or fp8")
        if self.on_read_error not in ("fail", "skip"):
            raise ConfigError(f"--on-read-error {self.on_read_error!r}: choose fail or skip")
        if not isinstance(self.arch, dict):
            raise ConfigError(f"arch must be a mapping of architecture overrides, got {self.arch!r}")

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, yaml_path: str | Path | None = None, **cli) -> "EmbedConfig":
        """Defaults, overridden by the YAML file, overridden by CLI values that are not None."""
        values = load_yaml(yaml_path) if yaml_path else {}
        values.update({k: v for k, v in cli.items() if v is not None and v != {} and v != ()})
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"unknown embed option(s) {unknown} in {yaml_path or 'arguments'}; valid: "
                              f"{', '.join(cls.fields())}")
        for k in ("minmax", "percentiles"):
            if k in values and values[k] is not None:
                v = values[k]
                values[k] = parse_numbers(k, v)
        if isinstance(values.get("bands"), (list, tuple)):
            values["bands"] = ",".join(str(b) for b in values["bands"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"invalid embed options: {e}") from e

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "EmbedConfig":
        return dataclasses.replace(self, **kw)


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping of options; keys may use dashes (``batch-size``) or underscores."""
    data = read_mapping(path)
    data = data.get("embed", data)
    return {str(k).replace("-", "_"): v for k, v in data.items()}
