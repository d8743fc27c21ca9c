"""Options of an embed job: one frozen, validated value built from defaults < YAML config < CLI flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from geodino.errors import ConfigError
from geodino.job.options import JobOptions

__all__ = ["EmbedConfig"]

_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class EmbedConfig(JobOptions):
    """Every option of ``geodino embed`` (see ``geodino embed --help`` for their meaning)."""

    SECTION: ClassVar[str] = "embed"
    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "bf16", "fp8")
    LISTED_AFTER: ClassVar[dict[str, str]] = {"radiometry_like": "radiometry", "scale": "percentiles",
                                              "min_valid": "dtype", "compile": "resource", "quantize": "compile"}

    model: str = "dinov3-vitl16-sat493m"
    blend: int = 1  # with halo 32: seam ratio 0.89 on a context-mixing ViT-L (docs/benchmarks.md), 1.3x compute
    dtype: str = "float16"
    radiometry_like: str | None = None
    scale: float = 1.0
    min_valid: float = 0.5
    compile: bool | str = "auto"  # True, False or "auto" (see geodino.engine.compile_pays_back)
    quantize: str | None = None
    on_read_error: str = "fail"  # fail | skip (mark the tile failed, go on); not part of the fingerprint
    mosaic: bool = False  # one cube per CRS on a common grid (geodino.embed.mosaic)

    def __post_init__(self) -> None:
        self.check_common()
        if self.radiometry and self.radiometry_like:
            raise ConfigError("give either --radiometry or --radiometry-like, not both")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose float16 or float32")
        if not isinstance(self.blend, int) or isinstance(self.blend, bool) or self.blend < 0:
            raise ConfigError(f"--blend must be a non-negative integer, got {self.blend!r}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise ConfigError(f"--scale must be a number > 0, got {self.scale!r}")
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise ConfigError(f"--min-valid must lie in [0, 1], got {self.min_valid}")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be true, false or auto, got {self.compile!r}")
        if self.quantize not in (None, "int8", "int4"):
            raise ConfigError(f"--quantize {self.quantize!r}: choose int8 or int4 (weight-only)")
        if self.on_read_error not in ("fail", "skip"):
            raise ConfigError(f"--on-read-error {self.on_read_error!r}: choose fail or skip")
