"""The heights product (:class:`Heights`): what CHMv2 gives per window (heights of its extended core at pixel
resolution, float32 metres) and how blended tile cores are written into a height cube (NaN outside valid pixels).
Everything else a task runs is the job's (:mod:`geodino.job.tasks`).

The tile grid of a canopy job counts in pixels (``patch = 1``): a window's *extended core* is its core grown by
``blend`` px on every side.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from geodino.canopy.store import PRODUCT, create_height_cube, height_writer
from geodino.engine import get_engine
from geodino.job.product import TaskOptions
from geodino.job.tasks import Piece, TileData, TileOut, blend_shard, infer_windows, tile_state
from geodino.tiling import Tile

__all__ = ["Heights", "HEIGHTS", "infer_batch", "write_shard", "window_crop"]


def window_crop(tile: Tile, tile_px: int) -> tuple[slice, slice]:
    """The extended core of a full-size tile inside its window (the same crop for every window of a batch)."""
    start = tile.halo - tile.blend
    return slice(start, start + tile_px + 2 * tile.blend), slice(start, start + tile_px + 2 * tile.blend)


def infer_batch(spec, radiometry: tuple, batch: list[TileData], dtype: str = "float32") -> dict[str, TileOut]:
    """Heights [h + 2b, w + 2b] of the extended cores of a batch's non-empty windows (``dtype`` is unused:
    heights are float32 metres)."""
    def run(raw, valid, tile: Tile):
        res = get_engine(spec).run(raw, valid, radiometry, crop=window_crop(tile, tile.window - 2 * tile.halo))
        return res["heights"], None

    return infer_windows(batch, run)


def write_shard(cube_path: str, cube_id: str, dests: list[Tile], counts: list[int],
                *piece_lists: list[Piece]) -> list[tuple[str, int, None]]:
    """Blend each of ``dests`` (a height cube is never sharded: one tile per chunk), set invalid pixels to NaN and
    write its chunk; the status is written last. Returns [(tile key, status, None)]."""
    w = height_writer(cube_path, cube_id)
    out = []
    for dest, t in zip(dests, blend_shard(dests, counts, piece_lists)):
        if t.patches is None:
            w.skip_tile(dest.ty, dest.tx)
        else:
            heights = t.patches
            heights[~t.valid] = np.nan
            w.write_tile(dest.ty, dest.tx, t.rows, t.cols, heights)
        out.append((dest.key, tile_state(t), None))
    return out


class Heights:
    """Canopy heights [h, w] per tile core (pixels), in a height cube (:mod:`geodino.canopy.store`)."""

    kind: ClassVar[str] = PRODUCT

    def create(self, plan, provenance: dict) -> None:
        create_height_cube(plan.output, plan.tiles.grid, plan.tiles.tile, plan.tiles.shape, provenance)

    def task_options(self, plan) -> TaskOptions:
        return TaskOptions("float32", 0.5, "fail", (1, 1))

    def infer_batch(self, spec, radiometry, batch, dtype):
        return infer_batch(spec, radiometry, batch, dtype)

    def write_shard(self, url, cube_id, dests, counts, *piece_lists):
        return write_shard(url, cube_id, dests, counts, *piece_lists)


HEIGHTS = Heights()
