"""The functions a canopy graph's tasks run, in the embed graph's shape (:mod:`geodino.embed.schedule` runs
them through ``SceneWork.ops``): reads and the cutting of pieces are embed's own; inference returns heights of
each window's extended core at pixel resolution, and a write blends its pieces into one chunk of the height cube.

The tile grid of a canopy job counts in pixels (``patch = 1``): a window's *extended core* is its core grown by
``blend`` px on every side, and :meth:`geodino.tiling.TileGrid.blend_weights` gives linear ramps that fall from 1
to 0 over ``2 * blend`` px, crossing 1/2 at each core boundary (a partition of unity).
"""

from __future__ import annotations

import numpy as np

from geodino.canopy.store import height_writer
from geodino.cube.store import SKIPPED, WRITTEN
from geodino.embed.tasks import Piece, TileData, TileOut, pieces_for, read_tile
from geodino.engine import get_engine
from geodino.tiling import Tile

__all__ = ["read_tile", "infer_batch", "pieces_for", "write_tile", "write_shard", "window_crop"]


def window_crop(tile: Tile, tile_px: int) -> tuple[slice, slice]:
    """The extended core of a full-size tile inside its window (the same crop for every window of a batch)."""
    start = tile.halo - tile.blend
    return slice(start, start + tile_px + 2 * tile.blend), slice(start, start + tile_px + 2 * tile.blend)


def infer_batch(spec, radiometry: tuple, batch: list[TileData], dtype: str = "float32") -> dict[str, TileOut]:
    """Heights [h + 2b, w + 2b] of the extended cores of a batch's non-empty windows (``dtype`` is unused:
    heights are float32 metres)."""
    live = [t for t in batch if t.raw is not None]
    out = {t.tile.key: TileOut(t.tile, None, None, t.patch_valid) for t in batch}
    if live:
        t0 = live[0].tile
        tile_px = t0.window - 2 * t0.halo
        res = get_engine(spec).run(np.stack([t.raw for t in live]), np.stack([t.pixel_valid for t in live]),
                                   radiometry, crop=window_crop(t0, tile_px))
        b = t0.blend
        for i, t in enumerate(live):
            h, w = t.tile.height + 2 * b, t.tile.width + 2 * b
            out[t.tile.key] = TileOut(t.tile, res["heights"][i, :h, :w], None, t.patch_valid)
    return out


def write_tile(cube_path: str, cube_id: str, dest: Tile, *piece_lists: list[Piece]) -> tuple[str, int]:
    """Blend the pieces of ``dest``'s core (sum of weighted heights / sum of weights, in a fixed order), set
    invalid pixels to NaN and write the core's chunk. Returns (tile key, status)."""
    pieces = sorted((p for lst in piece_lists for p in lst), key=lambda p: p.src)
    own = next(p.own for p in pieces if p.own is not None)
    w = height_writer(cube_path, cube_id)
    if own.extended is None:
        w.skip_tile(dest.ty, dest.tx)
        return dest.key, SKIPPED
    acc = np.zeros((dest.height, dest.width), np.float32)
    wsum = np.zeros((dest.height, dest.width), np.float32)
    for p in pieces:
        if p.features is None:
            continue
        pw = p.weights
        acc[p.rows, p.cols] += p.features * pw
        wsum[p.rows, p.cols] += pw
    heights = acc / wsum
    heights[~own.patch_valid] = np.nan
    w.write_tile(dest.ty, dest.tx, *dest.patch_slice, heights)
    return dest.key, WRITTEN


def write_shard(cube_path: str, cube_id: str, dests: list[Tile], counts: list[int],
                *piece_lists: list[Piece]) -> list[tuple[str, int, None]]:
    """The embed graph's per-shard write for a height cube (one tile per chunk, never sharded): each of ``dests``
    (``counts[i]`` piece lists each, in order) through :func:`write_tile`. Returns [(tile key, status, None)]."""
    out, i = [], 0
    for dest, n in zip(dests, counts):
        out.append((*write_tile(cube_path, cube_id, dest, *piece_lists[i:i + n]), None))
        i += n
    return out
