"""What every product's options share: the options themselves (:class:`JobOptions`: output, model and engine,
tiling, reading and radiometry, scheduling), built from defaults < a YAML file (its ``<product>:`` mapping, or the
whole file) < call/CLI values, validated once, frozen. A product's options are a frozen dataclass that derives
from :class:`JobOptions`, adds its own fields, may give a shared field another default (its position stays), and
calls :meth:`JobOptions.check_common` first in its ``__post_init__``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from geodino._yaml import read_mapping
from geodino.errors import ConfigError
from geodino.raster.radiometry import RADIOMETRIES, parse_numbers

__all__ = ["JobOptions", "load_yaml"]

POSITIVE = ("batch_size", "tile", "threads", "prefetch", "gdal_cache_mb")
NON_NEGATIVE = ("halo", "retries")


def load_yaml(path: str | Path, section: str) -> dict:
    """A YAML mapping of options (its ``section:`` mapping, or the whole file); keys may use dashes
    (``batch-size``) or underscores."""
    data = read_mapping(path)
    data = data.get(section, data)
    return {str(k).replace("-", "_"): v for k, v in data.items()}


@dataclass(frozen=True)
class JobOptions:
    """The options every product has, and their shared behaviour (see ``geodino embed --help``)."""

    SECTION: ClassVar[str] = "job"  # the product's name: its YAML section and the word in messages
    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "bf16")
    LISTED_AFTER: ClassVar[dict[str, str]] = {}  # a product's own option -> the option it is listed after

    output: str | None = None
    model: str = ""  # a registered model: each product gives its default
    weights: str | None = None  # a checkpoint, HF snapshot dir, cached hub id, or "random"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    tile: int = 512
    halo: int = 32
    blend: int | None = None
    bands: str | None = None
    nodata: float | None = None
    radiometry: str | None = None
    s2_offset: float | None = None
    minmax: tuple[float, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    resampling: str = "bilinear"
    dtype: str = "float32"
    overwrite: bool = False
    arch: dict = field(default_factory=dict)
    scheduler: str | None = None
    resource: str = "GPU"
    micro_batch: int | None = None
    threads: int = 4
    prefetch: int = 2
    retries: int = 2
    configure_workers: bool = False
    gdal_cache_mb: int = 64
    allow_download: bool = False

    def check_common(self) -> None:
        """The checks of the options every product has (the tiling, scheduling and radiometry options)."""
        for name in POSITIVE + (("micro_batch",) if self.micro_batch is not None else ()) + NON_NEGATIVE:
            v, least = getattr(self, name), 0 if name in NON_NEGATIVE else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                what = "non-negative" if least == 0 else "positive"
                raise ConfigError(f"--{name.replace('_', '-')} must be a {what} integer, got {v!r}")
        choices = [r for r in RADIOMETRIES if r != "geobench"]
        if self.radiometry is not None and self.radiometry not in choices:
            raise ConfigError(f"--radiometry {self.radiometry!r}: choose one of {', '.join(choices)}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.precision not in self.PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: choose {', '.join(self.PRECISIONS[:-1])} or "
                              f"{self.PRECISIONS[-1]}")
        for f in dataclasses.fields(self):
            if f.name.endswith("arch") and not isinstance(getattr(self, f.name), dict):
                raise ConfigError(f"{f.name} must be a mapping of architecture overrides, got "
                                  f"{getattr(self, f.name)!r}")

    @classmethod
    def fields(cls) -> list[str]:
        """The option names as messages list them: the shared ones, each of a product's own listed after the
        option its ``LISTED_AFTER`` names (else at the end)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in cls.LISTED_AFTER]
        for name in [f.name for f in dataclasses.fields(cls) if f.name in cls.LISTED_AFTER]:
            names.insert(names.index(cls.LISTED_AFTER[name]) + 1, name)
        return names

    @classmethod
    def build(cls, yaml_path: str | Path | None = None, **cli):
        """Defaults, overridden by the YAML file, overridden by values that are not None."""
        values = load_yaml(yaml_path, cls.SECTION) if yaml_path else {}
        values.update({k: v for k, v in cli.items() if v is not None and v != {} and v != ()})
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"unknown {cls.SECTION} option(s) {unknown} in {yaml_path or 'arguments'}; valid: "
                              f"{', '.join(cls.fields())}")
        for k in ("minmax", "percentiles"):
            if values.get(k) is not None:
                values[k] = parse_numbers(k, values[k])
        if isinstance(values.get("bands"), (list, tuple)):
            values["bands"] = ",".join(str(b) for b in values["bands"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"invalid {cls.SECTION} options: {e}") from e

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
