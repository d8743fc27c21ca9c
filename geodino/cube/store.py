"""Stage 4: zarr v3 feature cubes, on any store (a local path, ``s3://...``, any fsspec URL).

Layout of a cube (dims in brackets; one tile core per chunk, tile cores grouped into shards)::

    features   (feature, y, x)      float16|float32, chunks (D, tile/16, tile/16), blosc-zstd
    valid      (y, x)               bool, same spatial chunks
    cls        (tile_y, tile_x, feature)   CLS token of each tile's window
    tile_status(tile_y, tile_x)     uint8: 0 pending, 1 written, 2 skipped (core all nodata), 3 failed (its
                                    source could not be read; retried by the next run)
    x, y                            patch-centre coordinates in the raster's CRS
    tile_x, tile_y (+ *_bounds)     tile-core centres and footprints
    spatial_ref                     CF grid mapping (crs_wkt, GeoTransform)

Sharding: ``features``, ``valid``, ``cls`` and ``tile_status`` store ``shard = (sy, sx)`` tiles per object
(zarr's sharding codec; the inner chunk stays one tile core, so a reader still fetches one tile core by a byte
range). Shards are bands of one tile row (``sy = 1``) by up to 16 tiles: a 10980 px Sentinel-2 scene in 512-px
tiles is 4 x 44 shard objects instead of 4 x 484 chunk objects, and the writer holds no more than one tile row
plus one shard of pieces in memory (the next row's windows are what a row's blending waits for anyway).
One task writes one shard, all its pending tiles at once (:meth:`CubeWriter.write_shard`): every array's shard
is one whole-object PUT, ``tile_status`` last, so a killed write leaves the shard's tiles pending and a resume
rewrites them. Should a shard hold tiles already written (e.g. a tile that failed in an earlier run), its new
tiles are written one by one through zarr's read-modify-write of the shard, in the same single task: the already
written inner chunks are carried over byte for byte and each PUT replaces the whole object, so a kill never
loses or tears them.

Root attributes hold the GeoZarr ``proj:``/``spatial:`` description, the provenance under ``geodino`` and
``geodino_status`` ("incomplete" until every tile is written or skipped; the reasons of failed tiles are under
``geodino.failed_tiles``).
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from geodino.cube.georef import GRID_MAPPING, cf_grid_mapping, coord_attrs, geozarr_attrs, grid_coords
from geodino.cube.storage import (LEASE_KEY, CubeLease, check_lease, cube_url, delete_keys, is_local, list_keys,
                                  store_errors, zarr_store)
from geodino.checks import require_cube
from geodino.errors import CubeError, CubeExistsError, GeodinoError
from geodino.grid import GeoBox

__all__ = ["CubeLayout", "create_store", "store_attrs", "blosc_zstd", "status_array", "grid_arrays",
           "grid_mapping_array", "create_cube", "StoreWriter", "CubeWriter", "cube_writer", "finalize_cube",
           "open_cube", "read_attrs", "is_cube", "CubeLock", "CubeLease", "PENDING", "WRITTEN", "SKIPPED", "FAILED",
           "tile_status", "remove_cube", "cube_shard", "default_shard", "stray_keys"]

PENDING, WRITTEN, SKIPPED, FAILED = 0, 1, 2, 3
DONE = (WRITTEN, SKIPPED)  # the states of a finished tile; PENDING and FAILED tiles are (re)done by a run
STATUS_ATTR = "geodino_status"
LOCK_NAME = ".geodino.lock"  # the flock file of geodino before leases: tolerated in a cube's folder
MAX_SHARD_TILES = 16
CubeLock = CubeLease  # the former name
PRODUCT_ATTR = "geodino_product"  # absent on feature cubes
HEIGHTS_PRODUCT = "canopy-heights"  # the height cubes of geodino.canopy


def _zarr():
    import zarr

    return zarr


def _open_root(path, mode: str = "r", storage_options: dict | None = None):
    zarr = _zarr()
    store = zarr_store(path, read_only=mode == "r", storage_options=storage_options)
    return zarr.open_group(store, mode=mode, zarr_format=3)


def _root_attrs(path, storage_options: dict | None = None) -> dict | None:
    """The root attributes, or None where there is no zarr v3 group."""
    from zarr.errors import GroupNotFoundError

    try:
        with store_errors(cube_url(path)):
            return dict(_open_root(path, "r", storage_options).attrs)
    except (GroupNotFoundError, FileNotFoundError, NotADirectoryError):
        return None


def check_feature_cube(path, attrs: dict) -> None:
    """Refuse a zarr store that is no geodino cube, and a height cube where features are read, in one line."""
    if "geodino" not in attrs or not isinstance(attrs["geodino"], dict):
        raise CubeError(f"{path} is a zarr store but not a geodino cube")
    if attrs.get(PRODUCT_ATTR) == HEIGHTS_PRODUCT:
        raise CubeError(f"{path} is a canopy height cube (geodino canopy), not a feature cube: read it with "
                        "geodino.canopy.open_heights, or use the height COG beside it")


def is_cube(path: str | os.PathLike, *, storage_options: dict | None = None) -> bool:
    """Whether ``path`` (a path or URL) is a zarr group written by geodino."""
    try:
        attrs = _root_attrs(path, storage_options)
    except GeodinoError:  # credentials refused, no such bucket...: say so
        raise
    except (ValueError, OSError):
        return False
    return attrs is not None and "geodino" in attrs and STATUS_ATTR in attrs


def read_attrs(path: str | os.PathLike, *, storage_options: dict | None = None) -> dict:
    """Root attributes of a cube (reading only its root ``zarr.json``)."""
    require_cube(path)  # a local path: one line for a missing folder or a folder that is no zarr store
    try:
        attrs = _root_attrs(path, storage_options)
    except ValueError as e:
        raise CubeError(f"{path}/zarr.json is not valid zarr v3 metadata ({e}): the cube's metadata is damaged") \
            from e
    if attrs is None:
        raise CubeError(f"{path} is not a zarr v3 store (no zarr.json): give the path of a geodino cube")
    return attrs


def stray_keys(path: str | os.PathLike, *, storage_options: dict | None = None) -> list[str]:
    """Objects at ``path`` other than geodino's lease (and former lock) file."""
    return [k for k in list_keys(path, storage_options=storage_options)
            if not (k.startswith(LEASE_KEY) or k == LOCK_NAME)]


def clean_partial_writes(path: str | os.PathLike) -> int:
    """Remove the temporary files of chunk writes a killed run left behind (zarr's local store writes each chunk to
    ``<chunk>.<uuid>.partial`` and renames it into place, so a chunk is either whole or absent; an object store's
    PUT is atomic and leaves nothing). Returns how many."""
    if not is_local(path):
        return 0
    partial = [k for k in list_keys(path) if k.endswith(".partial")]
    delete_keys(path, partial)
    return len(partial)


def remove_cube(path: str | os.PathLike, *, storage_options: dict | None = None) -> None:
    """Empty a geodino cube (keeping its lease); refuses anything that is not one, so that a wrong
    ``-o`` with ``--overwrite`` can never delete a user's data."""
    keys = list_keys(path, storage_options=storage_options)
    if not keys:
        return
    if not is_cube(path, storage_options=storage_options):
        raise CubeExistsError(f"{path} exists and is not a geodino cube: refusing to delete it even with "
                              "--overwrite; choose another output path")
    forget_writer(path)
    delete_keys(path, [k for k in keys if not (k.startswith(LEASE_KEY) or k == LOCK_NAME)],
                storage_options=storage_options)
    if is_local(path):  # the emptied folders of the local store
        root = cube_url(path)
        for d, _, _ in os.walk(root, topdown=False):
            if d != root and not os.listdir(d):
                os.rmdir(d)


def default_shard(tiles: tuple[int, int]) -> tuple[int, int]:
    """Tiles per shard for a grid of ``tiles`` (rows, cols): one tile row by at most 16 tiles, the row split into
    equal parts (22 columns -> shards of 11)."""
    ntx = max(1, tiles[1])
    parts = math.ceil(ntx / MAX_SHARD_TILES)
    return 1, math.ceil(ntx / parts)


def _consolidate(path: str | os.PathLike, storage_options: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _zarr().consolidate_metadata(zarr_store(path, read_only=False, storage_options=storage_options))


def blosc_zstd(dtype) -> list:
    """The compressors of geodino's data arrays (blosc-zstd level 3, byte shuffle for multi-byte types)."""
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle")]


@dataclass(frozen=True)
class CubeLayout:
    """The shape of a cube: its patch grid, the chunk side (patches per tile core), the tile cores' bounds
    (per tile row: (top, bottom); per tile column: (left, right), in CRS units) and the tiles per shard
    ((1, 1): no sharding, one object per tile core and array)."""

    patch_grid: GeoBox
    chunk: int
    tile_y_bounds: tuple[tuple[float, float], ...]
    tile_x_bounds: tuple[tuple[float, float], ...]
    shard: tuple[int, int] = (1, 1)

    @property
    def tiles(self) -> tuple[int, int]:
        return len(self.tile_y_bounds), len(self.tile_x_bounds)


def store_attrs(title: str, grid: GeoBox, attrs: dict, **more) -> dict:
    """The root attributes of a new geodino store: CF, ``title``, GeoZarr of ``grid``, the provenance ``attrs``
    (with a new ``cube_id``) under ``geodino``, the status "incomplete", then ``more`` (a product's marks)."""
    return {"Conventions": "CF-1.8", "title": title, **geozarr_attrs(grid),
            "geodino": {**attrs, "cube_id": uuid.uuid4().hex}, STATUS_ATTR: "incomplete", **more}


def status_array(tiles: tuple[int, int], shards: tuple[int, int] | None = None, failed: bool = True) -> dict:
    """The ``tile_status`` array (see the module docstring); ``failed``: whether the product records FAILED."""
    states = [PENDING, WRITTEN, SKIPPED] + ([FAILED] if failed else [])
    return dict(name="tile_status", shape=tiles, chunks=(1, 1), shards=shards, dtype="uint8", fill_value=PENDING,
                dimension_names=["tile_y", "tile_x"],
                attributes={"long_name": "tile state", "flag_values": states,
                            "flag_meanings": "pending written skipped_nodata" + (" failed_read" if failed else "")})


def grid_arrays(grid: GeoBox, cell: str = "patch") -> list[dict]:
    """The ``y``/``x`` cell-centre coordinates of ``grid`` (cells are ``cell``s: patches, or pixels)."""
    cattrs = coord_attrs(grid)
    return [dict(name=name, shape=values.shape, dtype="float64", fill_value=0.0, dimension_names=[name],
                 attributes={**cattrs[name], "long_name": cattrs[name]["long_name"].replace("patch", cell)},
                 values=values) for name, values in grid_coords(grid).items()]


def grid_mapping_array(grid: GeoBox) -> dict:
    """The CF grid mapping variable (``spatial_ref``) of ``grid``."""
    return dict(name=GRID_MAPPING, shape=(), dtype="int64", fill_value=0, dimension_names=[],
                attributes=cf_grid_mapping(grid), values=0)


def create_store(path: str | os.PathLike, root_attrs: dict, arrays: list[dict], *,
                 storage_options: dict | None = None) -> str:
    """Create an empty geodino store at ``path`` (a path or URL), which must hold no zarr store: ``root_attrs``
    (:func:`store_attrs`), then ``arrays`` in order (the keywords of ``zarr.Group.create_array``; ``values``, if
    given, written at once), consolidated. Returns the store's ``cube_id``."""
    if _root_attrs(path, storage_options) is not None:
        raise CubeExistsError(f"{path} already holds a zarr store")
    root = _zarr().open_group(zarr_store(path, read_only=False, storage_options=storage_options), mode="a",
                              zarr_format=3)  # the location may hold our lease
    root.attrs.update(root_attrs)
    for spec in arrays:
        spec = dict(spec)
        values = spec.pop("values", None)
        a = root.create_array(**spec)
        if values is not None:
            a[...] = values
    _consolidate(path, storage_options)
    return root_attrs["geodino"]["cube_id"]


def create_cube(path: str | os.PathLike, layout: CubeLayout, dim: int, dtype: str, attrs: dict, *,
                storage_options: dict | None = None) -> None:
    """Create an empty feature cube (metadata and coordinates only) at ``path`` (a path or URL), which must hold
    no zarr store."""
    pg = layout.patch_grid
    ph, pw = pg.shape.yx
    nty, ntx = layout.tiles
    n = layout.chunk
    sy, sx = layout.shard
    sharded = (sy, sx) != (1, 1)

    def shards(*s):
        return tuple(s) if sharded else None

    gm = {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}
    arrays = [
        dict(name="features", shape=(dim, ph, pw), chunks=(dim, n, n), shards=shards(dim, sy * n, sx * n),
             dtype=dtype, fill_value=np.nan, compressors=blosc_zstd(dtype), dimension_names=["feature", "y", "x"],
             attributes={"long_name": "DINOv3 patch features (after the final norm)", **gm}),
        dict(name="valid", shape=(ph, pw), chunks=(n, n), shards=shards(sy * n, sx * n), dtype="bool",
             fill_value=False, compressors=blosc_zstd("bool"), dimension_names=["y", "x"],
             attributes={"long_name": "patch holds enough valid pixels", **gm}),
        dict(name="cls", shape=(nty, ntx, dim), chunks=(1, 1, dim), shards=shards(sy, sx, dim), dtype=dtype,
             fill_value=np.nan, compressors=blosc_zstd(dtype), dimension_names=["tile_y", "tile_x", "feature"],
             attributes={"long_name": "CLS token of each tile's model window",
                         "coordinates": "tile_y_bounds tile_x_bounds"}),
        status_array((nty, ntx), shards(sy, sx)),
        *grid_arrays(pg),
    ]
    for name, bounds in (("tile_y", layout.tile_y_bounds), ("tile_x", layout.tile_x_bounds)):
        b = np.asarray(bounds, dtype="float64")
        arrays += [dict(name=name, shape=(len(b),), dtype="float64", fill_value=0.0, dimension_names=[name],
                        attributes={"long_name": f"centre of tile cores ({name[-1]})", "bounds": f"{name}_bounds"},
                        values=b.mean(axis=1)),
                   dict(name=f"{name}_bounds", shape=b.shape, dtype="float64", fill_value=0.0,
                        dimension_names=[name, "bnd"], values=b)]
    create_store(path, store_attrs("geodino DINOv3 patch-feature cube", pg, attrs),
                 [*arrays, grid_mapping_array(pg)], storage_options=storage_options)


@dataclass(frozen=True)
class TileResult:
    """What a write puts into one tile core: ``patches`` [h, w, ...] and ``valid`` [h, w] at ``rows``/``cols`` of
    the cell grid (exactly its own chunk) and, for features, its ``cls`` [D]; ``patches is None`` for a tile whose
    core is all nodata (skipped: its arrays keep their fill values)."""

    ty: int
    tx: int
    rows: slice
    cols: slice
    patches: np.ndarray | None = None
    valid: np.ndarray | None = None
    cls: np.ndarray | None = None
    failed: str | None = None  # why its source window could not be read (state FAILED, nothing else written)


def _region(dims, rows, cols, ty, tx) -> tuple:
    """The index of a tile's part of an array with dimensions ``dims``: its cells (``y``, ``x``), its tile
    (``tile_y``, ``tile_x``), every other axis whole."""
    where = {"y": rows, "x": cols, "tile_y": ty, "tile_x": tx}
    return tuple(where.get(d, slice(None)) for d in dims)


class StoreWriter:
    """Writes tile cores into an existing store's arrays ``ARRAYS`` and ``tile_status``; each call touches only
    its own tiles' chunks (or shard). A product's writer says how a tile's values go into its arrays
    (:meth:`encode`); the arrays' dimension names say where (cells ``y``/``x``, tiles ``tile_y``/``tile_x``)."""

    ARRAYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | os.PathLike, storage_options: dict | None = None):
        self.path = cube_url(path)
        root = _open_root(self.path, "r+", storage_options)
        self.arrays = {name: root[name] for name in self.ARRAYS}
        self.status = root["tile_status"]
        self.shard = _shard_of(self.status)

    def encode(self, t: TileResult) -> dict[str, np.ndarray]:
        """A written tile's values per array, axes in the array's order (cells in ``t.rows``/``t.cols``)."""
        raise NotImplementedError

    def put_tile(self, t: TileResult) -> None:
        """Tile ``t``'s core into its own chunks; its status is written last. In a sharded store this rewrites the
        tile's shard (zarr reads it, replaces the tile's inner chunks and puts the whole shard back)."""
        check_lease(self.path)  # never under a lease that another writer may hold by now
        for name, v in self.encode(t).items():
            a = self.arrays[name]
            a[_region(a.metadata.dimension_names, t.rows, t.cols, t.ty, t.tx)] = np.asarray(v).astype(a.dtype)
        self.status[t.ty, t.tx] = WRITTEN

    def skip_tile(self, ty: int, tx: int) -> None:
        """A tile whose core is all nodata: its arrays keep their fill values."""
        self.status[ty, tx] = SKIPPED

    def fail_tile(self, ty: int, tx: int) -> None:
        """A tile whose window (or a neighbour's window its blend needs) could not be read: nothing else of it
        is written, and the next run retries it."""
        self.status[ty, tx] = FAILED

    def write_shard(self, tiles: Sequence[TileResult]) -> None:
        """Write tiles that all lie in one shard. When they are every tile of the shard, each array's shard is
        encoded once and put as one object, ``tile_status`` last; otherwise (the shard holds tiles of an earlier
        run) tile by tile, each a read-modify-write of the shard that keeps the other tiles' bytes."""
        if not tiles:
            return
        check_lease(self.path)  # never under a lease that another writer may hold by now
        with store_errors(self.path, "write"):
            sy, sx = self.shard
            nty, ntx = self.status.shape
            sr, sc = tiles[0].ty // sy, tiles[0].tx // sx
            if any((t.ty // sy, t.tx // sx) != (sr, sc) for t in tiles):
                raise ValueError("write_shard: the tiles are not all in one shard")
            ty0, ty1 = sr * sy, min((sr + 1) * sy, nty)
            tx0, tx1 = sc * sx, min((sc + 1) * sx, ntx)
            whole = {(t.ty, t.tx) for t in tiles} == {(y, x) for y in range(ty0, ty1) for x in range(tx0, tx1)}
            if not whole:
                for t in sorted(tiles, key=lambda t: (t.ty, t.tx)):
                    if t.failed is not None:
                        self.fail_tile(t.ty, t.tx)
                    elif t.patches is None:
                        self.skip_tile(t.ty, t.tx)
                    else:
                        self.put_tile(t)
                return
            r0, r1 = min(t.rows.start for t in tiles), max(t.rows.stop for t in tiles)
            c0, c1 = min(t.cols.start for t in tiles), max(t.cols.stop for t in tiles)
            extent = {"y": r1 - r0, "x": c1 - c0, "tile_y": ty1 - ty0, "tile_x": tx1 - tx0}
            bufs = {}
            for name, a in self.arrays.items():
                dims = a.metadata.dimension_names
                bufs[name] = np.full(tuple(extent.get(d, n) for d, n in zip(dims, a.shape)), a.fill_value, a.dtype)
            status = np.full((ty1 - ty0, tx1 - tx0), SKIPPED, dtype="uint8")
            for t in tiles:
                if t.failed is not None:
                    status[t.ty - ty0, t.tx - tx0] = FAILED
                elif t.patches is not None:
                    rr, cc = slice(t.rows.start - r0, t.rows.stop - r0), slice(t.cols.start - c0, t.cols.stop - c0)
                    for name, v in self.encode(t).items():
                        dims = self.arrays[name].metadata.dimension_names
                        bufs[name][_region(dims, rr, cc, t.ty - ty0, t.tx - tx0)] = v
                    status[t.ty - ty0, t.tx - tx0] = WRITTEN
            for name, a in self.arrays.items():
                a[_region(a.metadata.dimension_names, slice(r0, r1), slice(c0, c1), slice(ty0, ty1),
                          slice(tx0, tx1))] = bufs[name]
            self.status[ty0:ty1, tx0:tx1] = status


class CubeWriter(StoreWriter):
    """Writes tile cores into an existing feature cube: patches [h, w, D] as ``features`` (D, y, x), ``valid``
    and ``cls``."""

    ARRAYS = ("features", "valid", "cls")

    def encode(self, t: TileResult) -> dict[str, np.ndarray]:
        return {"features": np.ascontiguousarray(np.moveaxis(t.patches, -1, 0)), "valid": t.valid, "cls": t.cls}

    def write_tile(self, ty: int, tx: int, rows: slice, cols: slice, patches: np.ndarray, valid: np.ndarray,
                   cls: np.ndarray) -> None:
        """Tile (ty, tx)'s core: ``patches`` [h, w, D] and ``valid`` [h, w] go to ``rows``/``cols`` of the patch
        grid (exactly its own chunk); its status is written last (:meth:`StoreWriter.put_tile`)."""
        self.put_tile(TileResult(ty, tx, rows, cols, patches, valid, cls))


def _shard_of(status_array) -> tuple[int, int]:
    shards = getattr(status_array, "shards", None)
    return (int(shards[0]), int(shards[1])) if shards else (1, 1)


def cube_shard(path: str | os.PathLike, *, storage_options: dict | None = None) -> tuple[int, int]:
    """Tiles per shard (rows, cols) of an existing cube; (1, 1) when it is not sharded."""
    return _shard_of(_open_root(path, "r", storage_options)["tile_status"])


_WRITERS: dict[tuple[str, str, type], StoreWriter] = {}
_WRITERS_LOCK = threading.Lock()


def cube_writer(path: str | os.PathLike, cube_id: str, cls: type[StoreWriter] = CubeWriter) -> StoreWriter:
    """A per-process cached writer of class ``cls`` (dask tasks on one worker share it). ``cube_id`` (made at
    creation) keeps a worker from writing through stale metadata into a store that was replaced with
    ``--overwrite``."""
    key = (cube_url(path), cube_id, cls)
    with _WRITERS_LOCK:
        w = _WRITERS.get(key)
        if w is None:
            for stale in [k for k in _WRITERS if k[0] == key[0] and k[1] != cube_id]:
                del _WRITERS[stale]  # the writers of a store this one replaced (--overwrite)
            w = _WRITERS[key] = cls(key[0])
        return w


def forget_writer(path: str | os.PathLike) -> None:
    p = cube_url(path)
    with _WRITERS_LOCK:
        for key in [k for k in _WRITERS if k[0] == p]:
            _WRITERS.pop(key)


def tile_status(path: str | os.PathLike, *, storage_options: dict | None = None) -> np.ndarray:
    """The (tile_y, tile_x) status array of a cube."""
    return _open_root(path, "r", storage_options)["tile_status"][...]


def finalize_cube(path: str | os.PathLike, extra: dict | None = None, *,
                  storage_options: dict | None = None) -> bool:
    """Mark the cube complete if, and only if, every tile is written or skipped. Returns completeness."""
    status = tile_status(path, storage_options=storage_options)
    complete = bool(np.all(np.isin(status, DONE)))
    root = _open_root(path, "r+", storage_options)
    prov = dict(root.attrs["geodino"])
    prov.update(extra or {})
    for name, state in (("written", WRITTEN), ("skipped", SKIPPED), ("pending", PENDING), ("failed", FAILED)):
        prov[f"tiles_{name}"] = int(np.sum(status == state))
    root.attrs.update({"geodino": prov, STATUS_ATTR: "complete" if complete else "incomplete"})
    _consolidate(path, storage_options)
    forget_writer(path)
    return complete


def open_cube(path: str | os.PathLike, *, require_complete: bool = False, storage_options: dict | None = None,
              chunks: dict | str | None = None):
    """Open a feature cube (a path or URL) as a lazy, dask-backed ``xarray.Dataset`` with
    ``.rio.crs``/``.rio.transform()``. ``storage_options`` configure a remote store (obstore's keys for s3/gs/az,
    fsspec's for other URLs); without them credentials come from the environment. ``chunks``: dask chunks as
    :func:`xarray.open_zarr` takes them (``{"y": 512, "x": 512}``, ``"auto"``); None (the default) keeps the
    cube's own chunks (one dask chunk per stored chunk)."""
    import rioxarray  # noqa: F401
    import xarray as xr

    require_cube(path)
    try:
        attrs = _root_attrs(path, storage_options)
    except ValueError as e:
        raise CubeError(f"{path}/zarr.json is not valid zarr v3 metadata ({str(e).splitlines()[0][:160]}): the "
                        "cube's metadata is damaged; re-create the cube or restore it from a copy") from None
    if attrs is None:
        if is_local(path) and os.path.isfile(cube_url(path)):
            raise CubeError(f"{path} is a file, not a cube (a zarr folder): give the path of a geodino cube")
        raise CubeError(f"cube {path} does not exist (no zarr.json there)")
    check_feature_cube(path, attrs)
    if require_complete and attrs.get(STATUS_ATTR) != "complete":
        raise CubeError(f"cube {path} is incomplete: rerun the same `geodino embed` command to finish it")
    store = cube_url(path) if is_local(path) else zarr_store(path, storage_options=storage_options)
    try:
        ds = xr.open_zarr(store, consolidated=True, decode_coords="all", chunks={} if chunks is None else chunks)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # an array's metadata missing or damaged
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CubeError(f"cube {path} is damaged: its arrays cannot be opened ({type(e).__name__}: {first}); "
                        "re-create the cube or restore it from a copy") from None
    missing = [n for n in ("valid",) if n not in ds]
    if missing or ("features" not in ds and "geodino_compact" not in attrs):
        raise CubeError(f"cube {path} is damaged: it lacks {', '.join(missing or ['features'])}; re-create it or "
                        "restore it from a copy")
    ds.encoding.setdefault("source", cube_url(path))
    if "geodino_compact" in attrs:  # the compact int8 product: features decoded lazily on read
        from geodino.cube.compact import decode_compact

        ds = decode_compact(ds)
    return ds
