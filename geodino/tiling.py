"""Stage 2: the tile grid. Tiles are counted in whole patches, aligned to the raster's origin.

Each tile has a *core* (``tile`` px, the last row/column of tiles may be smaller) and a *halo* of real context
around it. The model always sees ``tile + 2 * halo`` px, so every batch has one fixed shape; only the core's
patches are kept. Neighbouring cores meet exactly, and each core patch has at least ``halo`` px of context on
every side, so there are no seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from geodino.errors import GridError
from geodino.geobox import GeoGrid

__all__ = ["Tile", "TileGrid"]


@dataclass(frozen=True)
class Tile:
    """One tile: its index, its core in pixels and in patches, and the window the model reads."""

    ty: int
    tx: int
    row: int  # core origin, pixels
    col: int
    height: int  # core size, pixels (multiple of the patch size)
    width: int
    patch: int
    halo: int
    window: int  # side of the square read window, pixels

    @property
    def key(self) -> str:
        return f"{self.ty}-{self.tx}"

    @property
    def patch_slice(self) -> tuple[slice, slice]:
        """Where the core's patches go in the cube's (y, x) patch grid."""
        p = self.patch
        return (slice(self.row // p, (self.row + self.height) // p), slice(self.col // p, (self.col + self.width) // p))

    @property
    def read_origin(self) -> tuple[int, int]:
        """Top-left pixel of the model's input window (may be negative: reflect-padded)."""
        return self.row - self.halo, self.col - self.halo

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """The core's patches inside the model's output patch grid."""
        p, h = self.patch, self.halo // self.patch
        return slice(h, h + self.height // p), slice(h, h + self.width // p)


@dataclass(frozen=True)
class TileGrid:
    """Tiles over ``grid`` (the pixel grid of the source after any resampling)."""

    grid: GeoGrid
    tile: int = 512
    halo: int = 64
    patch: int = 16

    def __post_init__(self) -> None:
        p = self.patch
        if self.tile <= 0 or self.tile % p:
            raise GridError(f"--tile {self.tile} must be a positive multiple of the patch size {p}")
        if self.halo < 0 or self.halo % p:
            raise GridError(f"--halo {self.halo} must be a non-negative multiple of the patch size {p}")

    @classmethod
    def fit(cls, grid: GeoGrid, tile: int = 512, halo: int = 64, patch: int = 16) -> "TileGrid":
        """A tile grid whose tile shrinks to the raster (rounded up to whole patches) when the raster is smaller
        than one tile in both directions, so small rasters are not padded to a full tile."""
        cls(grid, tile, halo, patch)  # validate the requested values
        side = max(grid.height, grid.width)
        return cls(grid, min(tile, math.ceil(side / patch) * patch), halo, patch)

    @cached_property
    def patch_grid(self) -> GeoGrid:
        """The cube's grid: one cell per patch (partial patches at the far edges count)."""
        return self.grid.zoom_out(self.patch)

    @property
    def tile_patches(self) -> int:
        return self.tile // self.patch

    @property
    def window(self) -> int:
        return self.tile + 2 * self.halo

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles (rows, cols)."""
        ph, pw = self.patch_grid.shape
        n = self.tile_patches
        return math.ceil(ph / n), math.ceil(pw / n)

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def tile_at(self, ty: int, tx: int) -> Tile:
        nty, ntx = self.shape
        if not (0 <= ty < nty and 0 <= tx < ntx):
            raise IndexError(f"tile ({ty}, {tx}) outside a {nty}x{ntx} tile grid")
        ph, pw = self.patch_grid.shape
        n, p = self.tile_patches, self.patch
        h = (min((ty + 1) * n, ph) - ty * n) * p
        w = (min((tx + 1) * n, pw) - tx * n) * p
        return Tile(ty, tx, ty * self.tile, tx * self.tile, h, w, p, self.halo, self.window)

    def tiles(self) -> list[Tile]:
        """All tiles in row-major order (the order that fixes batch composition)."""
        nty, ntx = self.shape
        return [self.tile_at(ty, tx) for ty in range(nty) for tx in range(ntx)]

    def tile_bounds(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """CRS bounds of tile cores: per tile row (y_top, y_bottom) and per tile column (x_left, x_right),
        clipped to the patch grid."""
        nty, ntx = self.shape
        ph, pw = self.patch_grid.shape
        n = self.tile_patches
        t = self.patch_grid.transform
        ys = [(t.f + ty * n * t.e, t.f + min((ty + 1) * n, ph) * t.e) for ty in range(nty)]
        xs = [(t.c + tx * n * t.a, t.c + min((tx + 1) * n, pw) * t.a) for tx in range(ntx)]
        return ys, xs

    def to_dict(self) -> dict:
        return {"tile": self.tile, "halo": self.halo, "patch": self.patch, "window": self.window,
                "tiles": list(self.shape)}

    def __dask_tokenize__(self):
        return ("TileGrid", self.grid.__dask_tokenize__(), self.tile, self.halo, self.patch)
