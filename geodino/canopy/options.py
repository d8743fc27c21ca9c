"""Options of a canopy job: one frozen, validated value built from defaults < YAML config < CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from geodino.errors import ConfigError
from geodino.job.options import JobOptions

__all__ = ["CanopyOptions", "DTYPES", "UINT16_SCALE", "UINT16_NODATA", "cog_encoding"]

DTYPES = ("float32", "uint16")
UINT16_SCALE = 0.01  # metres per step of a uint16 COG: 0..655.34 m in centimetres, far beyond CHMv2's 96 m
UINT16_NODATA = 65535


def cog_encoding(dtype: str) -> dict:
    """How heights are stored in a COG of ``dtype`` (see docs: float32 metres, or uint16 centimetres)."""
    if dtype == "uint16":
        return {"dtype": "uint16", "scale": UINT16_SCALE, "offset": 0.0, "nodata": UINT16_NODATA,
                "units": "m (value x scale)"}
    return {"dtype": "float32", "scale": 1.0, "offset": 0.0, "nodata": "nan", "units": "m"}


@dataclass(frozen=True)
class CanopyOptions(JobOptions):
    """Every option of ``geodino canopy`` (see ``geodino canopy --help`` for their meaning)."""

    SECTION: ClassVar[str] = "canopy"
    LISTED_AFTER: ClassVar[dict[str, str]] = {"cube": "output", "backbone": "model", "backbone_weights": "weights",
                                              "gsd": "percentiles", "head_arch": "arch"}

    output: str | None = None  # the COG
    model: str = "chmv2-vitl16-sat493m"  # registered canopy model
    batch_size: int = 4
    blend: int | None = None  # px of linear ramp each side of a core boundary; default = halo (the whole overlap)
    dtype: str = "float32"  # of the COG; the cube is float32 metres either way
    cube: str | None = None  # the zarr height cube (default: beside the COG, <name>.heights.zarr)
    backbone: str | None = None  # default: the canopy model's
    backbone_weights: str | None = None  # for the head-only official .pth
    gsd: float | None = None  # target ground resolution, m; default: the model's (0.6 m for CHMv2)
    head_arch: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_common()
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
        if self.gsd is not None and not (isinstance(self.gsd, (int, float)) and self.gsd > 0):
            raise ConfigError(f"--gsd must be a ground resolution in metres > 0, got {self.gsd!r}")

    @property
    def blend_px(self) -> int:
        return self.halo if self.blend is None else self.blend
