"""Stage 4: zarr v3 feature cubes.

Layout of a cube (dims in brackets; one tile core per chunk, so one writer per chunk)::

    features   (feature, y, x)      float16|float32, chunks (D, tile/16, tile/16), blosc-zstd
    valid      (y, x)               bool, same spatial chunks
    cls        (tile_y, tile_x, feature)   CLS token of each tile's window
    tile_status(tile_y, tile_x)     uint8: 0 pending, 1 written, 2 skipped (core all nodata), 3 failed (its
                                    source could not be read; retried by the next run)
    x, y                            patch-centre coordinates in the raster's CRS
    tile_x, tile_y (+ *_bounds)     tile-core centres and footprints
    spatial_ref                     CF grid mapping (crs_wkt, GeoTransform)

Root attributes hold the GeoZarr ``proj:``/``spatial:`` description, the provenance under ``geodino`` and
``geodino_status`` ("incomplete" until every tile is written or skipped; the reasons of failed tiles are under
``geodino.failed_tiles``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodino.cube.georef import GRID_MAPPING, cf_grid_mapping, coord_attrs, geozarr_attrs, grid_coords
from geodino.errors import CubeError, CubeExistsError, CubeLockedError
from geodino.geobox import GeoGrid

__all__ = ["CubeLayout", "create_cube", "CubeWriter", "finalize_cube", "open_cube", "read_attrs", "is_cube", "CubeLock",
           "PENDING", "WRITTEN", "SKIPPED", "FAILED", "tile_status", "remove_cube"]

PENDING, WRITTEN, SKIPPED, FAILED = 0, 1, 2, 3
DONE = (WRITTEN, SKIPPED)  # the states of a finished tile; PENDING and FAILED tiles are (re)done by a run
STATUS_ATTR = "geodino_status"
LOCK_NAME = ".geodino.lock"


def _zarr():
    import zarr

    return zarr


def is_cube(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group written by geodino."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (ValueError, OSError):
        return False
    return "geodino" in attrs and STATUS_ATTR in attrs


def read_attrs(path: str | os.PathLike) -> dict:
    """Root attributes of a cube (without opening any array)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        raise CubeError(f"{path} is not a zarr v3 store (no zarr.json): give the path of a geodino cube")
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except ValueError as e:
        raise CubeError(f"{meta} is not valid JSON ({e}): the cube's metadata is damaged") from e


def clean_partial_writes(path: str | os.PathLike) -> int:
    """Remove the temporary files of chunk writes a killed run left behind (zarr's local store writes each chunk to
    ``<chunk>.<uuid>.partial`` and renames it into place, so a chunk is either whole or absent). Returns how many."""
    n = 0
    for f in Path(path).rglob("*.partial"):
        if f.is_file():
            f.unlink()
            n += 1
    return n


def remove_cube(path: str | os.PathLike) -> None:
    """Empty a geodino cube (keeping its lock file); refuses anything that is not one, so that a wrong
    ``-o`` with ``--overwrite`` can never delete a user's data."""
    p = Path(path)
    if not p.exists():
        return
    if not is_cube(p):
        raise CubeExistsError(f"{p} exists and is not a geodino cube: refusing to delete it even with "
                              "--overwrite; choose another output path")
    forget_writer(p)
    for child in p.iterdir():
        if child.name == LOCK_NAME:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _consolidate(path: str | os.PathLike) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _zarr().consolidate_metadata(str(path))


def _codecs(dtype):
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle")]


@dataclass(frozen=True)
class CubeLayout:
    """The shape of a cube: its patch grid, the chunk side (patches per tile core) and the tile cores' bounds
    (per tile row: (top, bottom); per tile column: (left, right), in CRS units)."""

    patch_grid: GeoGrid
    chunk: int
    tile_y_bounds: tuple[tuple[float, float], ...]
    tile_x_bounds: tuple[tuple[float, float], ...]

    @property
    def tiles(self) -> tuple[int, int]:
        return len(self.tile_y_bounds), len(self.tile_x_bounds)


def create_cube(path: str | os.PathLike, layout: CubeLayout, dim: int, dtype: str, attrs: dict) -> None:
    """Create an empty cube (metadata and coordinates only) at ``path``, which must hold no zarr store."""
    zarr = _zarr()
    path = Path(path)
    if (path / "zarr.json").exists():
        raise CubeExistsError(f"{path} already holds a zarr store")
    pg = layout.patch_grid
    ph, pw = pg.shape
    nty, ntx = layout.tiles
    n = layout.chunk
    root = zarr.open_group(str(path), mode="a", zarr_format=3)  # the dir may hold our lock file
    attrs = {**attrs, "cube_id": uuid.uuid4().hex}
    root.attrs.update({"Conventions": "CF-1.8", "title": "geodino DINOv3 patch-feature cube",
                       **geozarr_attrs(pg), "geodino": attrs, STATUS_ATTR: "incomplete"})
    gm = {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}
    root.create_array("features", shape=(dim, ph, pw), chunks=(dim, n, n), dtype=dtype, fill_value=np.nan,
                      compressors=_codecs(dtype), dimension_names=["feature", "y", "x"],
                      attributes={"long_name": "DINOv3 patch features (after the final norm)", **gm})
    root.create_array("valid", shape=(ph, pw), chunks=(n, n), dtype="bool", fill_value=False,
                      compressors=_codecs("bool"), dimension_names=["y", "x"],
                      attributes={"long_name": "patch holds enough valid pixels", **gm})
    root.create_array("cls", shape=(nty, ntx, dim), chunks=(1, 1, dim), dtype=dtype, fill_value=np.nan,
                      compressors=_codecs(dtype), dimension_names=["tile_y", "tile_x", "feature"],
                      attributes={"long_name": "CLS token of each tile's model window",
                                  "coordinates": "tile_y_bounds tile_x_bounds"})
    root.create_array("tile_status", shape=(nty, ntx), chunks=(1, 1), dtype="uint8", fill_value=PENDING,
                      dimension_names=["tile_y", "tile_x"],
                      attributes={"long_name": "tile state", "flag_values": [PENDING, WRITTEN, SKIPPED, FAILED],
                                  "flag_meanings": "pending written skipped_nodata failed_read"})
    cattrs = coord_attrs(pg)
    for name, values in grid_coords(pg).items():
        a = root.create_array(name, shape=values.shape, dtype="float64", fill_value=0.0, dimension_names=[name],
                              attributes=cattrs[name])
        a[:] = values
    for name, bounds in (("tile_y", layout.tile_y_bounds), ("tile_x", layout.tile_x_bounds)):
        b = np.asarray(bounds, dtype="float64")
        c = root.create_array(name, shape=(len(b),), dtype="float64", fill_value=0.0, dimension_names=[name],
                              attributes={"long_name": f"centre of tile cores ({name[-1]})",
                                          "bounds": f"{name}_bounds"})
        c[:] = b.mean(axis=1)
        bb = root.create_array(f"{name}_bounds", shape=b.shape, dtype="float64", fill_value=0.0,
                               dimension_names=[name, "bnd"])
        bb[:] = b
    sr = root.create_array(GRID_MAPPING, shape=(), dtype="int64", fill_value=0, dimension_names=[],
                           attributes=cf_grid_mapping(pg))
    sr[...] = 0
    _consolidate(path)


class CubeWriter:
    """Writes tile cores into an existing cube; each call touches only that tile's chunks."""

    def __init__(self, path: str | os.PathLike):
        zarr = _zarr()
        self.path = str(path)
        root = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self.features = root["features"]
        self.valid = root["valid"]
        self.cls = root["cls"]
        self.status = root["tile_status"]
        self.dtype = self.features.dtype

    def write_tile(self, ty: int, tx: int, rows: slice, cols: slice, patches: np.ndarray, valid: np.ndarray,
                   cls: np.ndarray) -> None:
        """Tile (ty, tx)'s core: ``patches`` [h, w, D] and ``valid`` [h, w] go to ``rows``/``cols`` of the patch
        grid (exactly its own chunk); its status is written last."""
        self.features[:, rows, cols] = np.ascontiguousarray(np.moveaxis(patches, -1, 0)).astype(self.dtype)
        self.valid[rows, cols] = valid
        self.cls[ty, tx, :] = cls.astype(self.dtype)
        self.status[ty, tx] = WRITTEN

    def skip_tile(self, ty: int, tx: int) -> None:
        """A tile whose core is all nodata: features stay NaN, valid stays False."""
        self.status[ty, tx] = SKIPPED

    def fail_tile(self, ty: int, tx: int) -> None:
        """A tile whose window (or a neighbour's window its blend needs) could not be read: nothing else of it
        is written, and the next run retries it."""
        self.status[ty, tx] = FAILED


_WRITERS: dict[tuple[str, str], CubeWriter] = {}
_WRITERS_LOCK = threading.Lock()


def cube_writer(path: str | os.PathLike, cube_id: str) -> CubeWriter:
    """A per-process cached writer (dask tasks on one worker share it). ``cube_id`` (made at creation) keeps a
    worker from writing through stale metadata into a cube that was replaced with ``--overwrite``."""
    key = (str(Path(path).resolve()), cube_id)
    with _WRITERS_LOCK:
        w = _WRITERS.get(key)
        if w is None:
            w = _WRITERS[key] = CubeWriter(key[0])
        return w


def forget_writer(path: str | os.PathLike) -> None:
    p = str(Path(path).resolve())
    with _WRITERS_LOCK:
        for key in [k for k in _WRITERS if k[0] == p]:
            _WRITERS.pop(key)


def tile_status(path: str | os.PathLike) -> np.ndarray:
    """The (tile_y, tile_x) status array of a cube."""
    return _zarr().open_array(str(Path(path) / "tile_status"), mode="r")[...]


def finalize_cube(path: str | os.PathLike, extra: dict | None = None) -> bool:
    """Mark the cube complete if, and only if, every tile is written or skipped. Returns completeness."""
    zarr = _zarr()
    status = tile_status(path)
    complete = bool(np.all(np.isin(status, DONE)))
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    prov = dict(root.attrs["geodino"])
    prov.update(extra or {})
    prov["tiles_written"] = int(np.sum(status == WRITTEN))
    prov["tiles_skipped"] = int(np.sum(status == SKIPPED))
    prov["tiles_pending"] = int(np.sum(status == PENDING))
    prov["tiles_failed"] = int(np.sum(status == FAILED))
    root.attrs.update({"geodino": prov, STATUS_ATTR: "complete" if complete else "incomplete"})
    _consolidate(path)
    forget_writer(path)
    return complete


def open_cube(path: str | os.PathLike, *, require_complete: bool = False):
    """Open a feature cube as a lazy, dask-backed ``xarray.Dataset`` with ``.rio.crs``/``.rio.transform()``."""
    import rioxarray  # noqa: F401
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise CubeError(f"cube {p} does not exist")
    attrs = read_attrs(p)
    if "geodino" not in attrs:
        raise CubeError(f"{p} is a zarr store but not a geodino cube")
    if require_complete and attrs.get(STATUS_ATTR) != "complete":
        raise CubeError(f"cube {p} is incomplete: rerun the same `geodino embed` command to finish it")
    ds = xr.open_zarr(str(p), consolidated=True, decode_coords="all", chunks={})
    if "geodino_compact" in attrs:  # the compact int8 product: features decoded lazily on read
        from geodino.cube.compact import decode_compact

        ds = decode_compact(ds)
    return ds


class CubeLock:
    """An exclusive advisory lock on a cube (released by the OS if the process dies, even by kill -9)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lockfile = self.path / LOCK_NAME
        self._fh = None

    def acquire(self) -> "CubeLock":
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.lockfile, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise CubeLockedError(f"{self.path} is being written by {owner}: wait for it to finish, or stop it "
                                  "(a killed writer releases the lock)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
