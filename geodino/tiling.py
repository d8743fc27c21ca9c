"""Stage 2: the tile grid. Tiles are counted in whole patches, aligned to the raster's origin: odc-geo's
:class:`~odc.geo.geobox.GeoboxTiles` over the patch grid (``gbox.zoom_out(patch)``) counts and slices them, one
tile core per chunk of the cube.

Each tile has a *core* (``tile`` px, the last row/column of tiles may be smaller) and a *halo* of real context
around it. The model always sees ``tile + 2 * halo`` px, so every batch has one fixed shape. Neighbouring cores
meet exactly, and each core patch has at least ``halo`` px of context on every side.

With ``blend`` (patches, at most ``halo / patch``) each window also yields the ``blend`` patches beyond its
core on every side, and features within ``blend`` patches of a core boundary are a weighted mean of the two
(or four) windows that computed them, with linear weights that cross 1/2 at the boundary
(:func:`blend_weights`): a partition of unity, so nothing changes where neighbours agree, and the step a
boundary would show is spread over ``2 * blend`` patches. The seam ratio this gives is measured in
``pipelines/bench_seams.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from odc.geo.geobox import GeoBox, GeoboxTiles

from geodino.errors import GridError
from geodino.grid import grid_key

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
    blend: int = 0  # patches beyond the core that the window contributes to its neighbours

    @property
    def key(self) -> str:
        return f"{self.ty}-{self.tx}"

    @property
    def extended(self) -> tuple[slice, slice]:
        """The core grown by ``blend`` patches on every side, in the cube's (y, x) patch grid (may reach past the
        grid at its edges)."""
        (r, c), b = self.patch_slice, self.blend
        return slice(r.start - b, r.stop + b), slice(c.start - b, c.stop + b)

    @property
    def extended_in_window(self) -> tuple[slice, slice]:
        """The extended core inside the model's output patch grid (a full-size tile's, for every tile: the
        engine crops all windows of a batch alike)."""
        start = self.halo // self.patch - self.blend
        n = (self.window - 2 * self.halo) // self.patch  # the full tile's core, whatever this tile's own size
        return slice(start, start + n + 2 * self.blend), slice(start, start + n + 2 * self.blend)

    @property
    def patch_slice(self) -> tuple[slice, slice]:
        """Where the core's patches go in the cube's (y, x) patch grid."""
        p = self.patch
        return (slice(self.row // p, (self.row + self.height) // p), slice(self.col // p, (self.col + self.width) // p))

    @property
    def read_origin(self) -> tuple[int, int]:
        """Top-left pixel of the model's input window (may be negative: reflect-padded)."""
        return self.row - self.halo, self.col - self.halo


@dataclass(frozen=True)
class TileGrid:
    """Tiles over ``grid`` (the pixel grid of the source after any resampling). The halo, the blend and its ramps
    and :meth:`fit` are geodino's; counting and slicing the tiles is odc-geo's (:attr:`cores`)."""

    grid: GeoBox
    tile: int = 512
    halo: int = 64
    patch: int = 16
    blend: int = 0

    def __post_init__(self) -> None:
        p = self.patch
        if self.tile <= 0 or self.tile % p:
            raise GridError(f"--tile {self.tile} must be a positive multiple of the patch size {p}")
        if self.halo < 0 or self.halo % p:
            raise GridError(f"--halo {self.halo} must be a non-negative multiple of the patch size {p}")
        if self.blend < 0 or self.blend * p > self.halo:
            raise GridError(f"--blend {self.blend} patches needs a halo of at least {self.blend * p} px (the halo is "
                            f"{self.halo} px): raise --halo or lower --blend")
        if 2 * self.blend > self.tile // p:
            raise GridError(f"--blend {self.blend} is more than half the tile core ({self.tile // p} patches)")

    @classmethod
    def fit(cls, grid: GeoBox, tile: int = 512, halo: int = 64, patch: int = 16, blend: int = 0) -> "TileGrid":
        """A tile grid whose tile shrinks to the raster (rounded up to whole patches) when the raster is smaller
        than one tile in both directions, so small rasters are not padded to a full tile."""
        cls(grid, tile, halo, patch, blend)  # validate the requested values
        side = max(grid.height, grid.width)
        small = min(tile, math.ceil(side / patch) * patch)
        return cls(grid, small, halo, patch, min(blend, small // patch // 2))

    @cached_property
    def patch_grid(self) -> GeoBox:
        """The cube's grid: one cell per patch (partial patches at the far edges count)."""
        return self.grid.zoom_out(self.patch)

    @cached_property
    def cores(self) -> GeoboxTiles:
        """The tile cores on the patch grid: one chunk of the cube each (the last row and column may be smaller)."""
        return GeoboxTiles(self.patch_grid, (self.tile_patches, self.tile_patches))

    @cached_property
    def _edges(self) -> tuple[list[int], list[int]]:
        """The chunks' edges on the patch grid, per axis (row edges, column edges): what :meth:`tile_at` indexes.
        (Looking up ``cores.roi[ty, tx]`` per tile is 2.5x slower over 24,649 tiles, and the blend asks a tile for
        its 8 neighbours.)"""
        return tuple([0, *np.cumsum(c).tolist()] for c in self.cores.chunks)

    @property
    def tile_patches(self) -> int:
        return self.tile // self.patch

    @property
    def window(self) -> int:
        return self.tile + 2 * self.halo

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles (rows, cols)."""
        return tuple(self.cores.shape.yx)

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def tile_at(self, ty: int, tx: int) -> Tile:
        nty, ntx = self.shape
        if not (0 <= ty < nty and 0 <= tx < ntx):
            raise IndexError(f"tile ({ty}, {tx}) outside a {nty}x{ntx} tile grid")
        (ey, ex), p = self._edges, self.patch
        return Tile(ty, tx, ey[ty] * p, ex[tx] * p, (ey[ty + 1] - ey[ty]) * p, (ex[tx + 1] - ex[tx]) * p, p, self.halo,
                    self.window, self.blend)

    def tiles(self) -> list[Tile]:
        """All tiles in row-major order (the order that fixes batch composition)."""
        return [self.tile_at(ty, tx) for ty, tx in np.ndindex(*self.shape)]

    def neighbours(self, t: Tile) -> list[Tile]:
        """The tiles whose extended cores overlap ``t``'s core: ``t`` itself and, with blending, its up to 8
        neighbours (row-major order)."""
        if not self.blend:
            return [t]
        nty, ntx = self.shape
        return [self.tile_at(y, x) for y in range(max(0, t.ty - 1), min(nty, t.ty + 2))
                for x in range(max(0, t.tx - 1), min(ntx, t.tx + 2))]

    def blend_weights(self, src: Tile, rows: slice, cols: slice) -> np.ndarray:
        """Weights [len(rows), len(cols)] of window ``src`` at patch rows/cols of the cube's grid (inside its
        extended core). Across a boundary shared with a neighbour they fall linearly from 1 to 0 over
        ``2 * blend`` patches, crossing 1/2 at the boundary; at the grid's outer edges they stay 1. They are
        separable: the outer product of :meth:`blend_ramps`."""
        wy, wx = self.blend_ramps(src, rows, cols)
        return wy[:, None] * wx[None, :]

    def blend_ramps(self, src: Tile, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """The row and column factors [len(rows)], [len(cols)] of :meth:`blend_weights` (what a piece keeps
        while it waits for its write: two vectors rather than a plane)."""
        ph, pw = self.patch_grid.shape.yx

        def ramp(idx: np.ndarray, lo: int, hi: int, n: int) -> np.ndarray:
            t = idx + 0.5
            if not self.blend:
                return ((t > lo) & (t < hi)).astype(np.float32)
            b = 2.0 * self.blend
            left = np.clip((t - lo) / b + 0.5, 0, 1) if lo > 0 else np.ones_like(t)
            right = np.clip((hi - t) / b + 0.5, 0, 1) if hi < n else np.ones_like(t)
            return np.minimum(left, right).astype(np.float32)

        (r, c) = src.patch_slice
        return (ramp(np.arange(rows.start, rows.stop), r.start, r.stop, ph),
                ramp(np.arange(cols.start, cols.stop), c.start, c.stop, pw))

    def tile_bounds(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """CRS bounds of tile cores: per tile row (y_top, y_bottom) and per tile column (x_left, x_right),
        clipped to the patch grid. (From the patch grid's affine at the chunk edges: each chunk's own GeoBox,
        ``cores[ty, tx].boundingbox``, rounds its origin once more and differs in the last bit for 620 of 2767 tile
        rows of 500 random grids; these bounds are the ones cubes were written with.)"""
        t, (ey, ex) = self.patch_grid.affine, self._edges
        ys = [((t * (0, r0))[1], (t * (0, r1))[1]) for r0, r1 in zip(ey[:-1], ey[1:])]
        xs = [((t * (c0, 0))[0], (t * (c1, 0))[0]) for c0, c1 in zip(ex[:-1], ex[1:])]
        return ys, xs

    def to_dict(self) -> dict:
        return {"tile": self.tile, "halo": self.halo, "patch": self.patch, "window": self.window,
                "blend": self.blend, "tiles": list(self.shape)}

    def __dask_tokenize__(self):
        return ("TileGrid", grid_key(self.grid), self.tile, self.halo, self.patch, self.blend)
