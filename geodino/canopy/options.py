"""Options of a canopy job: one frozen, validated value built from defaults < YAML config < CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from geodino.errors import ConfigError
from geodino.job.options import JobOptions

__all__ = ["CanopyOptions", "DTYPES", "UINT16_SCALE", "UINT16_NODATA"]

DTYPES = ("float32", "uint16")
UINT16_SCALE = 0.01  # metres per step of a uint16 COG: 0..655.34 m in centimetres, far beyond CHMv2's 96 m
UINT16_NODATA = 65535


@dataclass(frozen=True)
class CanopyOptions(JobOptions):
    """Every option of ``geodino canopy`` (see ``geodino canopy --help`` for their meaning)."""

    SECTION: ClassVar[str] = "canopy"

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
