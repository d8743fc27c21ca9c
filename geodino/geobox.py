"""``GeoGrid``: the one value that carries a raster grid (CRS, affine transform, shape) from reader to cube.

Modelled on odc-geo's GeoBox: immutable, every operation returns a new grid. A ViT's patch grid is
``grid.zoom_out(16)``; a tile is ``grid.window(row, col, height, width)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

from geodino.errors import GridError

__all__ = ["GeoGrid"]


@dataclass(frozen=True)
class GeoGrid:
    """A north-up raster grid: ``shape`` (rows, cols), pixel-corner ``transform`` and ``crs`` (WKT or None).

    ``crs`` is stored as WKT text so the value is hashable, picklable and free of GDAL handles; None means the
    source had no CRS and coordinates are pixel coordinates.
    """

    shape: tuple[int, int]
    transform: Affine
    crs: str | None = None

    def __post_init__(self) -> None:
        h, w = self.shape
        if h <= 0 or w <= 0:
            raise GridError(f"grid shape must be positive, got {self.shape}")
        object.__setattr__(self, "shape", (int(h), int(w)))
        t = self.transform
        if not isinstance(t, Affine):
            object.__setattr__(self, "transform", Affine(*t[:6]))

    # -- properties -----------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def is_north_up(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    @property
    def resolution(self) -> tuple[float, float]:
        """(x, y) pixel size; y is negative for north-up grids."""
        return self.transform.a, self.transform.e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        t = self.transform
        x0, y0 = t.c, t.f
        x1, y1 = t @ (self.width, self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def require_north_up(self, what: str = "raster") -> "GeoGrid":
        """Refuse rotated, sheared and flipped grids. A grid without a CRS may be the plain pixel grid
        (identity transform, rows downwards), whose coordinates are pixel positions."""
        t = self.transform
        pixel_grid = self.crs is None and t.b == 0 and t.d == 0 and t.a > 0 and t.e > 0
        if not (self.is_north_up or pixel_grid):
            raise GridError(f"{what} has a rotated, sheared or south-up transform {tuple(self.transform)[:6]}: "
                            "geodino needs north-up grids; warp it first (gdalwarp -t_srs ... in.tif out.tif)")
        return self

    # -- derived grids --------------------------------------------------------------------------------
    def window(self, row: int, col: int, height: int, width: int) -> "GeoGrid":
        """The grid of a window (may extend beyond this grid: it is just a shifted grid)."""
        return GeoGrid((height, width), self.transform @ Affine.translation(col, row), self.crs)

    def zoom_out(self, factor: int) -> "GeoGrid":
        """Coarser grid of ``factor``-px cells covering this one (partial cells at the far edges count)."""
        return GeoGrid((math.ceil(self.height / factor), math.ceil(self.width / factor)),
                       self.transform @ Affine.scale(factor), self.crs)

    def rescale(self, scale: float) -> "GeoGrid":
        """Resampled grid with ``scale`` times as many pixels per axis over the same extent."""
        if scale <= 0:
            raise GridError(f"scale must be > 0, got {scale}")
        return GeoGrid((max(1, round(self.height * scale)), max(1, round(self.width * scale))),
                       self.transform @ Affine.scale(1 / scale), self.crs)

    # -- coordinates ----------------------------------------------------------------------------------
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates ``(y, x)`` (north-up grids)."""
        t = self.transform
        x = t.c + (np.arange(self.width) + 0.5) * t.a
        y = t.f + (np.arange(self.height) + 0.5) * t.e
        return y, x

    def xy(self, row: float, col: float) -> tuple[float, float]:
        """CRS coordinates of fractional pixel position (row, col) (0.5, 0.5 is the first centre)."""
        x, y = self.transform @ (col, row)
        return x, y

    # -- serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "transform": list(self.transform)[:6], "crs": self.crs}

    @classmethod
    def from_dict(cls, d: dict) -> "GeoGrid":
        return cls(tuple(d["shape"]), Affine(*d["transform"]), d.get("crs"))

    def __dask_tokenize__(self):
        return ("GeoGrid", self.shape, tuple(self.transform)[:6], self.crs)

    def epsg(self) -> int | None:
        if not self.crs:
            return None
        from pyproj import CRS

        return CRS.from_wkt(self.crs).to_epsg()
