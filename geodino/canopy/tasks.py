"""The heights product (:class:`Heights`): what CHMv2 gives per window (heights of its extended core at pixel
resolution, float32 metres) and its store, the zarr v3 height cube: a canopy job's resumable intermediate, one tile
core per chunk, at a local path or a URL (``s3://...``). Everything else is the job's (:mod:`geodino.job`) and the
store's (:mod:`geodino.cube.store`: the status array, lease, completion flag, partial-write cleanup, ``--overwrite``
safety, the generic create and shard writer).

The tile grid of a canopy job counts in pixels (``patch = 1``): a window's *extended core* is its core grown by
``blend`` px on every side. Layout of a height cube::

    heights     (y, x)              float32 metres, NaN outside valid pixels, chunks (tile, tile), blosc-zstd
    tile_status (tile_y, tile_x)    uint8: 0 pending, 1 written, 2 skipped (core all nodata)
    x, y                            pixel-centre coordinates in the raster's CRS (after any resampling)
    spatial_ref                     CF grid mapping (crs_wkt, GeoTransform)

Root attributes: GeoZarr ``proj:``/``spatial:``, the provenance under ``geodino``, ``geodino_status`` and
``geodino_product: canopy-heights`` (what tells a height cube from a feature cube).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from geodino.cube.georef import GRID_MAPPING
from geodino.cube.storage import location, zarr_store
from geodino.cube.store import (HEIGHTS_PRODUCT, PRODUCT_ATTR, STATUS_ATTR, StoreWriter, TileResult, blosc_zstd,
                                create_store, grid_arrays, grid_mapping_array, read_attrs,
                                status_array, store_attrs)
from geodino.engine import get_engine
from geodino.errors import CubeError
from geodino.job.product import TaskOptions
from geodino.job.tasks import Piece, TileData, TileOut, infer_windows, write_blended
from geodino.tiling import Tile

__all__ = ["Heights", "HEIGHTS", "infer_batch", "write_shard", "HeightWriter", "open_heights", "is_height_cube"]


def is_height_cube(path: str | os.PathLike) -> bool:
    try:
        return read_attrs(path).get(PRODUCT_ATTR) == HEIGHTS_PRODUCT
    except CubeError:
        return False


class HeightWriter(StoreWriter):
    """Writes blended tile cores into a height cube: heights in metres, NaN outside valid pixels."""

    ARRAYS = ("heights",)

    def encode(self, t: TileResult) -> dict[str, np.ndarray]:
        heights = t.patches
        heights[~t.valid] = np.nan
        return {"heights": heights}


def open_heights(path: str | os.PathLike, *, require_complete: bool = False):
    """The heights of a height cube as a lazy ``xarray.DataArray`` (y, x) in metres, with ``.rio.crs``."""
    import rioxarray  # noqa: F401
    import xarray as xr

    p = location(path)
    if not is_height_cube(p):
        raise CubeError(f"{p} is not a geodino canopy height cube")
    attrs = read_attrs(p)
    if require_complete and attrs.get(STATUS_ATTR) != "complete":
        raise CubeError(f"height cube {p} is incomplete: rerun the same `geodino canopy` command to finish it")
    store = str(p) if isinstance(p, Path) else zarr_store(p)
    ds = xr.open_zarr(store, consolidated=True, decode_coords="all", chunks={})
    da = ds["heights"]
    da.attrs["geodino"] = attrs.get("geodino", {})
    return da


def infer_batch(spec, radiometry: tuple, batch: list[TileData], dtype: str = "float32") -> dict[str, TileOut]:
    """Heights [h + 2b, w + 2b] of the extended cores of a batch's non-empty windows (``dtype`` is unused:
    heights are float32 metres)."""
    def run(raw, valid, tile: Tile):
        res = get_engine(spec).run(raw, valid, radiometry, crop=tile.extended_in_window)  # pixels: patch = 1
        return res["heights"], None

    return infer_windows(batch, run)


def write_shard(cube_path: str, cube_id: str, dests: list[Tile], counts: list[int],
                *piece_lists: list[Piece]) -> list[tuple[str, int, str | None]]:
    """Blend each of ``dests`` (a height cube is never sharded: one tile per chunk) and write its chunk
    (:func:`geodino.job.tasks.write_blended`)."""
    return write_blended(HeightWriter, cube_path, cube_id, dests, counts, piece_lists)


class Heights:
    """Canopy heights [h, w] per tile core (pixels), in a height cube."""

    kind: ClassVar[str] = HEIGHTS_PRODUCT

    def create(self, plan, provenance: dict) -> None:
        """The empty height cube (metadata, coordinates) at ``plan.output`` (a path or URL)."""
        grid, tile = plan.tiles.grid, plan.tiles.tile
        heights = dict(name="heights", shape=grid.shape.yx, chunks=(tile, tile), dtype="float32", fill_value=np.nan,
                       compressors=blosc_zstd("float32"), dimension_names=["y", "x"],
                       attributes={"long_name": "canopy height", "standard_name": "canopy_height", "units": "m",
                                   "grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING})
        root = store_attrs("geodino canopy height cube (CHMv2)", grid, provenance, **{PRODUCT_ATTR: HEIGHTS_PRODUCT})
        create_store(plan.output, root, [heights, status_array(plan.tiles.shape, failed=False),
                                         *grid_arrays(grid, "pixel"), grid_mapping_array(grid)])

    def task_options(self, plan) -> TaskOptions:
        return TaskOptions("float32", 0.5, "fail", (1, 1))

    def infer_batch(self, spec, radiometry, batch, dtype):
        return infer_batch(spec, radiometry, batch, dtype)

    def write_shard(self, url, cube_id, dests, counts, *piece_lists):
        return write_shard(url, cube_id, dests, counts, *piece_lists)


HEIGHTS = Heights()
