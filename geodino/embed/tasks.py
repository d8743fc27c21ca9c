"""The features product (:class:`Features`): what the backbone gives per window (patch features of its extended
core, and its cls token) and how a shard of blended tile cores is written into a feature cube. Everything else a
task runs is the job's (:mod:`geodino.job.tasks`).

The module-level functions are what the product's methods call, looked up at call time (tests replace them).
"""

from __future__ import annotations

from typing import ClassVar

from geodino.cube.store import CubeWriter, create_cube, cube_shard
from geodino.engine import EngineSpec, get_engine
from geodino.job.product import TaskOptions
from geodino.job.tasks import Piece, TileData, TileOut, infer_windows, write_blended
from geodino.tiling import Tile

__all__ = ["Features", "FEATURES", "infer_batch", "write_shard"]


def infer_batch(spec: EngineSpec, radiometry: tuple, batch: list[TileData], dtype: str) -> dict[str, TileOut]:
    """Embed the non-empty tiles of a batch; the device crops each window to its extended core and casts to the
    cube's ``dtype``, so only stored bytes come back."""
    def run(raw, valid, tile: Tile):
        res = get_engine(spec).run(raw, valid, radiometry, crop=tile.extended_in_window, out_dtype=dtype)
        return res["patches"], res["cls"]

    return infer_windows(batch, run)


def write_shard(cube_path: str, cube_id: str, dests: list[Tile], counts: list[int],
                *piece_lists: list[Piece]) -> list[tuple[str, int, str | None]]:
    """Blend the pending tile cores ``dests`` of one shard and write that shard into the feature cube
    (:func:`geodino.job.tasks.write_blended`)."""
    return write_blended(CubeWriter, cube_path, cube_id, dests, counts, piece_lists)


class Features:
    """Patch features [h, w, D] (and cls [D]) per tile core, in a feature cube (:mod:`geodino.cube.store`)."""

    kind: ClassVar[str] = "features"  # feature cubes carry no geodino_product attribute (cube.store)

    def create(self, plan, provenance: dict) -> None:
        create_cube(plan.output, plan.layout, plan.embed_dim, plan.options.dtype, provenance)

    def task_options(self, plan) -> TaskOptions:
        o = plan.options
        return TaskOptions(o.dtype, o.min_valid, o.on_read_error, cube_shard(plan.output))

    def infer_batch(self, spec, radiometry, batch, dtype):
        return infer_batch(spec, radiometry, batch, dtype)

    def write_shard(self, url, cube_id, dests, counts, *piece_lists):
        return write_shard(url, cube_id, dests, counts, *piece_lists)


FEATURES = Features()
