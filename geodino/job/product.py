"""The typed protocol a dense product implements to run as a streaming job (:mod:`geodino.job.run`).

The job does everything else: planning's fingerprint, create/resume/refuse/overwrite of the output, reading the
windows (core + halo), the dask graph with back-pressure and retries, cutting the pieces each tile core needs and
blending them with linear ramps, tile status, the summary and the mapping of faults to exit codes. A product says
only what the engine gives per window and how a shard of blended tile cores is written:

- ``infer_batch(spec, radiometry, batch, dtype)``: per window, the output of its *extended core* (its core grown by
  ``blend`` cells on each side) as ``[h + 2b, w + 2b, ...]`` in cells of the tile grid (a patch, or a pixel),
  built with :func:`geodino.job.tasks.infer_windows` from one engine call on the stacked windows;
- ``write_shard(url, cube_id, dests, counts, *piece_lists)``: blend and write, returning ``[(tile key, status, why
  it failed or None)]``: :func:`geodino.job.tasks.write_blended` with the product's
  :class:`~geodino.cube.store.StoreWriter`, which says only how a blended tile's values go into its arrays;
- ``create(plan, provenance)``: the empty output store at ``plan.output``
  (:func:`geodino.cube.store.create_store` with the product's arrays);
- ``task_options(plan)``: the cube's dtype, the minimum valid fraction of a cell, what a failed read does, and
  the tiles per shard.

A product instance travels with the tasks (pickled by reference to its class), so it holds no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from geodino.job.tasks import Piece, TileData, TileOut
    from geodino.tiling import Tile

__all__ = ["Product", "TaskOptions"]


@dataclass(frozen=True)
class TaskOptions:
    dtype: str = "float32"  # what infer_batch casts to (the stored dtype)
    min_valid: float = 0.5  # a cell is valid when at least this fraction of its pixels is
    on_read_error: str = "fail"  # "skip": a window that cannot be read marks its tiles FAILED, the run goes on
    shard: tuple[int, int] = (1, 1)  # tiles per shard object (rows, cols): one write task per shard


@runtime_checkable
class Product(Protocol):
    kind: ClassVar[str]  # written as the store's geodino_product

    def create(self, plan: Any, provenance: dict) -> None: ...

    def task_options(self, plan: Any) -> TaskOptions: ...

    def infer_batch(self, spec: Any, radiometry: tuple, batch: list[TileData], dtype: str) -> dict[str, TileOut]: ...

    def write_shard(self, url: str, cube_id: str, dests: list[Tile], counts: list[int],
                    *piece_lists: list[Piece]) -> list[tuple[str, int, str | None]]: ...
