"""The zarr v3 height cube: a canopy job's resumable intermediate, one tile core per chunk, at a local path or a URL
(``s3://...``, through :func:`geodino.cube.storage.zarr_store` as feature cubes).

Layout (a geodino cube in the sense of :mod:`geodino.cube.store`: the same status array, lock, completion flag,
partial-write cleanup and ``--overwrite`` safety, whose helpers it uses)::

    heights     (y, x)              float32 metres, NaN outside valid pixels, chunks (tile, tile), blosc-zstd
    tile_status (tile_y, tile_x)    uint8: 0 pending, 1 written, 2 skipped (core all nodata)
    x, y                            pixel-centre coordinates in the raster's CRS (after any resampling)
    spatial_ref                     CF grid mapping (crs_wkt, GeoTransform)

Root attributes: GeoZarr ``proj:``/``spatial:``, the provenance under ``geodino``, ``geodino_status`` and
``geodino_product: canopy-heights`` (what tells a height cube from a feature cube).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import numpy as np

from geodino.cube.georef import GRID_MAPPING, cf_grid_mapping, coord_attrs, geozarr_attrs, grid_coords
from geodino.cube.storage import cube_url, exists, is_local, zarr_store
from geodino.cube.store import (HEIGHTS_PRODUCT, PENDING, PRODUCT_ATTR, SKIPPED, STATUS_ATTR, WRITTEN, _codecs,
                                _consolidate, read_attrs)
from geodino.errors import CubeError, CubeExistsError
from geodino.grid import GeoBox

__all__ = ["PRODUCT", "create_height_cube", "HeightWriter", "height_writer", "open_heights", "is_height_cube"]

PRODUCT = HEIGHTS_PRODUCT


def is_height_cube(path: str | os.PathLike) -> bool:
    try:
        return read_attrs(path).get(PRODUCT_ATTR) == PRODUCT
    except CubeError:
        return False


def create_height_cube(path: str | os.PathLike, grid: GeoBox, tile: int, n_tiles: tuple[int, int],
                       attrs: dict) -> str:
    """Create an empty height cube (metadata, coordinates) at ``path`` (a path or URL); returns its ``cube_id``."""
    import zarr

    path = Path(path) if is_local(path) else cube_url(path)
    if exists(path, "zarr.json"):
        raise CubeExistsError(f"{path} already holds a zarr store")
    h, w = grid.shape.yx
    root = zarr.open_group(zarr_store(path, read_only=False), mode="a", zarr_format=3)  # it may hold the lease
    cube_id = uuid.uuid4().hex
    root.attrs.update({"Conventions": "CF-1.8", "title": "geodino canopy height cube (CHMv2)",
                       **geozarr_attrs(grid), "geodino": {**attrs, "cube_id": cube_id}, STATUS_ATTR: "incomplete",
                       PRODUCT_ATTR: PRODUCT})
    root.create_array("heights", shape=(h, w), chunks=(tile, tile), dtype="float32", fill_value=np.nan,
                      compressors=_codecs("float32"), dimension_names=["y", "x"],
                      attributes={"long_name": "canopy height", "standard_name": "canopy_height", "units": "m",
                                  "grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING})
    nty, ntx = n_tiles
    root.create_array("tile_status", shape=(nty, ntx), chunks=(1, 1), dtype="uint8", fill_value=PENDING,
                      dimension_names=["tile_y", "tile_x"],
                      attributes={"long_name": "tile state", "flag_values": [PENDING, WRITTEN, SKIPPED],
                                  "flag_meanings": "pending written skipped_nodata"})
    cattrs = coord_attrs(grid)
    for name, values in grid_coords(grid).items():
        a = root.create_array(name, shape=values.shape, dtype="float64", fill_value=0.0, dimension_names=[name],
                              attributes={**cattrs[name],
                                          "long_name": cattrs[name]["long_name"].replace("patch", "pixel")})
        a[:] = values
    sr = root.create_array(GRID_MAPPING, shape=(), dtype="int64", fill_value=0, dimension_names=[],
                           attributes=cf_grid_mapping(grid))
    sr[...] = 0
    _consolidate(path)
    return cube_id


class HeightWriter:
    """Writes tile cores into a height cube; each call touches that tile's chunk and status only."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        root = zarr.open_group(zarr_store(path, read_only=False), mode="r+", zarr_format=3)
        self.path = str(path)
        self.heights = root["heights"]
        self.status = root["tile_status"]

    def write_tile(self, ty: int, tx: int, rows: slice, cols: slice, heights: np.ndarray) -> None:
        """``heights`` [h, w] (NaN where invalid) into its chunk; the status is written last."""
        from geodino.cube.storage import check_lease

        check_lease(self.path)  # never under a lease that another writer may hold by now
        self.heights[rows, cols] = heights.astype(np.float32, copy=False)
        self.status[ty, tx] = WRITTEN

    def skip_tile(self, ty: int, tx: int) -> None:
        self.status[ty, tx] = SKIPPED


_WRITERS: dict[tuple[str, str], HeightWriter] = {}
_LOCK = threading.Lock()


def height_writer(path: str | os.PathLike, cube_id: str) -> HeightWriter:
    """A per-process cached writer, keyed by the cube's id (a replaced cube gets a new writer)."""
    key = (str(Path(path).resolve()) if is_local(path) else cube_url(path), cube_id)
    with _LOCK:
        w = _WRITERS.get(key)
        if w is None:
            for k in [k for k in _WRITERS if k[0] == key[0]]:
                _WRITERS.pop(k)
            w = _WRITERS[key] = HeightWriter(key[0])
        return w


def open_heights(path: str | os.PathLike, *, require_complete: bool = False):
    """The heights of a height cube as a lazy ``xarray.DataArray`` (y, x) in metres, with ``.rio.crs``."""
    import rioxarray  # noqa: F401
    import xarray as xr

    p = Path(path) if is_local(path) else cube_url(path)
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
