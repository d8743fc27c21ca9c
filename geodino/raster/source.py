"""Windowed reads of any GDAL raster (GeoTIFF, COG, VRT) with band selection, masks and resampling.

A :class:`RasterSource` never reads the whole raster: every read is a window of the output grid. Windows
that extend past the raster are reflect-padded: the model sees the mirrored pixels, and callers that count valid
pixels combine the read's validity with :func:`inside_mask`. Dataset handles are opened lazily per thread (GDAL
handles are not thread-safe) and are not pickled, so a source can travel to dask workers.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from pyproj.exceptions import CRSError
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geodino.checks import require_raster
from geodino.errors import BandError, RasterError, RasterReadError
from geodino.grid import GeoBox, require_north_up, rescale
from geodino.raster.remote import forget_cached, is_remote, object_url, remote_identity

__all__ = ["RasterSource", "SourceIdentity", "refresh_identity", "source_change", "parse_bands", "inside_mask"]

_SUPPORTED = {"uint8", "uint16", "int16", "float32", "int32", "uint32", "float64"}
_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class SourceIdentity:
    """What identifies an input for provenance and resume checks: a local file's path, size and mtime; a remote
    object's URL with, in ``objects``, its ETag, Last-Modified and size (one per object: a STAC item's assets),
    so that an object replaced at the same URL is not taken for the one a cube was begun with."""

    path: str
    size: int
    mtime: float
    objects: tuple = ()  # ((url, etag, last_modified, size), ...) of the remote objects (or local files) read

    def to_dict(self) -> dict:
        d = {"path": self.path, "size": self.size, "mtime": self.mtime}
        if self.objects:
            d["objects"] = [dict(zip(("url", "etag", "last_modified", "size"), o)) for o in self.objects]
        return d


def refresh_identity(path: str) -> tuple[tuple, bool]:
    """``(url, etag, last_modified, size)`` of the object a GDAL path reads (a remote object's from a HEAD request,
    :func:`geodino.raster.remote.remote_identity`; a local file's from its size and mtime), and whether the remote
    object changed since this process last asked: GDAL's cache then held the old object's bytes, which are dropped
    (reopen what was opened before)."""
    if object_url(path) is not None:
        r = remote_identity(path)
        ident = (r["url"], r["etag"], r["last_modified"], r["size"])
        with _HANDLES_LOCK:
            before, _SEEN[path] = _SEEN.get(path), ident
        changed = before is not None and before != ident
        if changed:
            forget_cached(path)
        return ident, changed
    st = Path(path).stat()
    return (str(Path(path).resolve()), None, float(st.st_mtime), int(st.st_size)), False


def _band_labels(ds) -> list[list[str]]:
    """The names each band answers to: its description and its colour interpretation if red, green or blue."""
    return [([d.strip().lower()] if d else []) + ([c.name.lower()] if c.name.lower() in _RGB else [])
            for d, c in zip(ds.descriptions, ds.colorinterp)]


def parse_bands(spec: str | list | tuple | None, ds, n: int = 3) -> list[int]:
    """1-based band indexes for ``spec`` ("4,3,2", "red,green,blue", "B04,B03,B02" or None for the default)."""
    labels = _band_labels(ds)
    listing = ", ".join(f"{i + 1}{' ' + repr(ds.descriptions[i]) if ds.descriptions[i] else ''}"
                        f"{' (' + ds.colorinterp[i].name + ')' if ds.colorinterp[i].name in _RGB else ''}"
                        for i in range(ds.count))
    if spec is None or spec == "" or spec == []:
        for wanted in (_RGB, ("b04", "b03", "b02")):  # colour names, else Sentinel-2's band names
            found = [next((i + 1 for i, names in enumerate(labels) if want in names), None) for want in wanted]
            if all(found):
                return found
        if ds.count == n:
            return list(range(1, n + 1))
        if ds.count < n:
            raise BandError(f"{ds.name} has {ds.count} band(s) but the model needs {n} (RGB): repeat one with "
                            f"--bands {','.join(['1'] * n)} or give a {n}-band raster")
        raise BandError(f"{ds.name} has {ds.count} bands and none is labelled red/green/blue: choose {n} with "
                        f"--bands (bands: {listing})")
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if len(items) != n:
        raise BandError(f"--bands needs exactly {n} bands (R,G,B), got {len(items)}: {','.join(items)}")
    out = []
    for item in items:
        if item.isdigit():
            idx = int(item)
            if not 1 <= idx <= ds.count:
                raise BandError(f"band {idx} requested but {ds.name} has only {ds.count} band(s): too few bands "
                                f"(bands: {listing})")
            out.append(idx)
            continue
        hits = [i + 1 for i, names in enumerate(labels) if item.lower() in names]
        if not hits:
            raise BandError(f"band {item!r} not found in {ds.name} (bands: {listing}); use 1-based indexes or "
                            "band descriptions")
        out.append(hits[0])
    return out


def inside_mask(row: int, col: int, height: int, width: int, shape: tuple[int, int]) -> np.ndarray:
    """Which pixels of the window (row, col, height, width) lie inside a raster of ``shape`` (rows, cols)."""
    r = np.arange(row, row + height)
    c = np.arange(col, col + width)
    return ((r >= 0) & (r < shape[0]))[:, None] & ((c >= 0) & (c < shape[1]))[None, :]


def _check_nodata(value: float, dtype: np.dtype, path: str) -> float:
    """A user ``--nodata`` must be representable in the data's dtype, or it could never match a pixel."""
    v = float(value)
    if np.isnan(v):
        if dtype.kind != "f":
            raise RasterError(f"--nodata nan given, but {path} holds {dtype} integers: give an integer value")
        return v
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not v.is_integer():
            raise RasterError(f"--nodata {value:g} is fractional, but {path} holds {dtype} integers: give an "
                              f"integer value in {info.min}..{info.max}")
        if not info.min <= v <= info.max:
            raise RasterError(f"--nodata {value:g} is outside the range of {path}'s {dtype} data "
                              f"({info.min}..{info.max}): no pixel can have it; give a value in that range")
    elif dtype.kind == "f" and abs(v) > np.finfo(dtype).max:
        raise RasterError(f"--nodata {value:g} is outside the range of {path}'s {dtype} data")
    return v


def source_change(old: dict, new: dict) -> str | None:
    """How the input of a cube changed since the cube was begun, from the settings the cube recorded (``old``)
    and this run's (``new``): the same path (or URL, or STAC item) now holding another object (another ETag,
    Last-Modified or size; a local file's size or mtime). None when no source changed that way. Mosaics compare
    each scene's."""
    pairs = [(old.get("source"), new.get("source"))]
    pairs += list(zip([s.get("source") for s in old.get("scenes") or []],
                      [s.get("source") for s in new.get("scenes") or []]))
    for a, b in pairs:
        if not isinstance(a, dict) or not isinstance(b, dict) or a == b or a.get("path") != b.get("path"):
            continue
        was = {o.get("url"): o for o in a.get("objects") or []}
        diffs = []
        for o in b.get("objects") or []:
            w = was.get(o.get("url"))
            if w is None:
                continue
            changed = [f"{k} {w.get(k)} -> {o.get(k)}" for k in ("etag", "last_modified", "size")
                       if w.get(k) != o.get(k)]
            if changed:
                diffs.append(f"{o.get('url')}: {', '.join(changed)}")
        if not diffs:
            diffs = [f"{k} {a.get(k)} -> {b.get(k)}" for k in ("size", "mtime") if a.get(k) != b.get(k)]
        if diffs:
            return f"{b.get('path')} changed since the cube was begun ({'; '.join(diffs)})"
    return None


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Source index of each (possibly out-of-range) index under reflection about the edges (numpy 'reflect')."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


class _Handle:
    """One thread's open dataset (and the files under it), with the state that decides who may close it.

    Handles are closed by :meth:`RasterSource.close`, which any thread may call, but a GDAL dataset must never be
    closed while another thread reads it: that frees libtiff's buffers under the reader (the crashes of issue 17:
    SIGSEGV in the read, SIGABRT from libtiff's ``_TIFFfreeExt``). A run stopped by a failing read ends while
    reads of other tiles are still running on their threads (dask cannot stop a running task), so ``close()``
    only retires a busy handle, and its own thread closes it when its read returns.
    """

    __slots__ = ("ds", "opened", "lock", "busy", "retired")

    def __init__(self, ds, opened: list):
        self.ds, self.opened, self.lock = ds, opened, threading.Lock()
        self.busy = self.retired = False

    def _set(self, **state) -> None:
        """Update the state; the files are closed once the handle is retired and no read runs on it."""
        with self.lock:
            for k, v in state.items():
                setattr(self, k, v)
            close = self.retired and not self.busy
        if close:
            for h in self.opened:
                if not h.closed:
                    h.close()

    def retire(self) -> None:
        """Close now if no read is running on it, else when that read returns."""
        self._set(retired=True)

    def enter(self) -> bool:
        """Mark a read starting on the owning thread; False if the handle was retired (open a new one)."""
        with self.lock:
            self.busy = not self.retired
            return self.busy

    def leave(self) -> None:
        self._set(busy=False)


_THREAD_HANDLES: dict[tuple, _Handle] = {}  # (source key, thread id) -> that thread's open dataset
_SEEN: dict[str, tuple] = {}  # remote GDAL path -> the identity of the object this process last saw there
_HANDLES_LOCK = threading.Lock()


def _gdal_message(e: BaseException) -> str:
    """GDAL's own words for a failed read: rasterio's "Read failed. See previous exception" chains them."""
    msgs = []
    cur: BaseException | None = e
    while cur is not None and len(msgs) < 4:
        text = str(cur.args[-1] if type(cur).__name__.startswith("CPLE_") and cur.args else cur).strip()
        if text and "See previous exception" not in text and not any(text in m for m in msgs):
            msgs.append(text.splitlines()[0][:240])
        cur = cur.__cause__ or cur.__context__
    return "; ".join(msgs) or type(e).__name__


class RasterSource:
    """A raster opened for windowed reads on an output grid (the native grid, optionally rescaled)."""

    def __init__(self, path: str | os.PathLike, bands=None, nodata: float | None = None, scale: float = 1.0,
                 resampling: str = "bilinear", allow_no_crs: bool = True, identity: SourceIdentity | None = None):
        """``path`` is any GDAL dataset name (a file, a ``/vsi...`` path, VRT XML text); ``identity`` says what
        identifies the input when it is not a local file (e.g. a STAC item), for provenance and resume."""
        self.path = str(path)
        # what messages call the input: its path, or what identifies it when the path is VRT XML text
        self.name = identity.path if identity is not None and self.path.lstrip().startswith("<") else self.path
        require_raster(self.path)  # a local file that does not exist, or a folder: one line (geodino.checks)
        for _ in range(2):
            try:
                with rasterio.open(self.path) as ds:
                    self._init_from(ds, bands, nodata, scale, identity)
            except RasterioIOError as e:
                raise RasterError(f"{self.name} is not a raster GDAL can read ({str(e).splitlines()[0][:160]})") \
                    from e
            if identity is not None or object_url(self.path) is None:
                break
            # a URL: its ETag, Last-Modified and size (a HEAD request); if the object changed since this process
            # last read it, GDAL's cache is dropped and the header read again (once: identity is now set)
            obj, changed = refresh_identity(self.path)
            self.identity = identity = SourceIdentity(self.path, int(obj[3] or 0), 0.0, (obj,))
            if not changed:
                break
        try:
            self.resampling = Resampling[resampling]
        except KeyError:
            raise RasterError(f"unknown resampling {resampling!r}; use nearest, bilinear, cubic or average") from None
        self.resampling_name = resampling

    def _init_from(self, ds, bands, nodata, scale, identity: SourceIdentity | None = None) -> None:
        self.count = ds.count
        self.dtype = np.dtype(ds.dtypes[0])
        if len(set(ds.dtypes)) > 1:
            raise RasterError(f"{self.name} mixes band dtypes {set(ds.dtypes)}; convert it to one dtype first")
        if self.dtype.name not in _SUPPORTED:
            raise RasterError(f"{self.name} has dtype {self.dtype}, which geodino does not read "
                              f"(supported: {', '.join(sorted(_SUPPORTED))})")
        self.bands = parse_bands(bands, ds)
        self.file_band_names = [ds.descriptions[i] or ds.colorinterp[i].name for i in range(ds.count)]
        self.band_names = [self.file_band_names[b - 1] for b in self.bands]
        if nodata is not None:
            nodata = _check_nodata(nodata, self.dtype, self.name)
        self.file_nodata = ds.nodata
        self.nodata = nodata if nodata is not None else ds.nodata
        self.user_nodata = nodata
        if ds.transform.is_identity and (ds.gcps[0] or ds.rpcs):
            how = "ground control points" if ds.gcps[0] else "RPCs"
            raise RasterError(f"{self.name} is georeferenced only by {how}, not by a grid: warp it onto a map grid "
                              f"first (gdalwarp {'-rpc ' if how == 'RPCs' else ''}-t_srs EPSG:<code> in.tif out.tif)")
        crs = ds.crs.to_wkt() if ds.crs else None  # rasterio's WKT: the CRS's identity text (geodino.grid)
        self.has_crs = crs is not None
        try:
            native = GeoBox((ds.height, ds.width), ds.transform, crs)
        except CRSError as e:  # a CRS that GDAL reads but PROJ does not
            raise RasterError(f"{self.name} has a CRS that PROJ cannot read ({str(e).splitlines()[0][:160]}): "
                              "warp it to a standard one (gdalwarp -t_srs EPSG:<code> in.tif out.tif)") from e
        self.native_grid = require_north_up(native, self.path)
        self.scale = float(scale)
        self.grid = native if self.scale == 1.0 else rescale(native, self.scale)
        self.tags = dict(ds.tags())
        self.band_offsets = [ds.offsets[b - 1] for b in self.bands]
        self.band_scales = [ds.scales[b - 1] for b in self.bands]
        self.band_tags = [dict(ds.tags(b)) for b in self.bands]
        local = not is_remote(self.path) and not self.path.lstrip().startswith("<")  # not a URL, /vsi... or VRT XML
        st = Path(self.path).stat() if identity is None and local and Path(self.path).exists() else None
        self.identity = identity or SourceIdentity(str(Path(self.path).resolve()) if st else self.path,
                                                   st.st_size if st else 0, st.st_mtime if st else 0.0)

    # -- GDAL handles: per thread, shared by every copy of this source in the process -----------------------
    # A source travels to dask tasks by pickling, so one process holds many copies of it; handles are
    # therefore cached per process (keyed by what the source reads, and the thread), not per object: each
    # thread opens a file once, however many tasks read it, and close() closes every thread's handle.
    @property
    def _handle_key(self) -> tuple:
        return (self.path, self.identity.size, self.identity.mtime, self.identity.objects, self.scale,
                self.resampling_name, self.file_nodata, self.nodata)

    def __dask_tokenize__(self):
        return ("RasterSource", self.identity, tuple(self.bands), self.nodata, self.scale, self.resampling_name)

    @contextlib.contextmanager
    def _dataset(self):
        """This thread's open dataset, held for the duration of one read (see :class:`_Handle`)."""
        key = (self._handle_key, threading.get_ident())
        h = _THREAD_HANDLES.get(key)
        if h is None or not h.enter():
            h = self._open()
            h.enter()
            with _HANDLES_LOCK:
                _THREAD_HANDLES[key] = h
        try:
            yield h.ds
        finally:
            h.leave()

    def _open(self) -> _Handle:
        base = rasterio.open(self.path)
        return _Handle(base, [base]) if self.scale == 1.0 else self._warp(base, base.crs)

    def _warp(self, base, crs) -> _Handle:
        """``base`` warped onto :attr:`grid` in ``crs`` (``--scale``, a mosaic's grid) by a GDAL WarpedVRT, which
        keeps the masks: the nodata in force (the user's ``--nodata``, else the file's) is the warp's source and
        destination nodata, so GDAL's resampling never mixes nodata values into valid pixels and fills what it
        cannot compute with it; without one, an alpha band marks the fill (the file's own alpha band where it has
        one, warped with the data: GDAL refuses a second)."""
        if self.nodata is not None:
            masks = {"src_nodata": self.nodata, "nodata": self.nodata}
        else:
            masks = {} if ColorInterp.alpha in base.colorinterp else {"add_alpha": True}
        g = self.grid
        ds = WarpedVRT(base, crs=crs, transform=g.affine, width=g.width, height=g.height, resampling=self.resampling,
                       **masks)
        return _Handle(ds, [ds, base])

    def _masks_apply(self, ds) -> bool:
        """Whether GDAL's masks of ``ds`` (the dataset a read goes through) say which pixels are valid: always for a
        warp (its masks carry the fill and the nodata in force) and without ``--nodata``; with ``--nodata`` on the
        file itself, unless they are only the file's nodata value, which the user's overrides (alpha bands and
        mask bands still count)."""
        if self.user_nodata is None or getattr(ds, "src_dataset", None) is not None:  # a WarpedVRT: a warp
            return True
        flags = [ds.mask_flag_enums[b - 1] for b in self.bands]
        return not all(MaskFlags.nodata in f or MaskFlags.all_valid in f for f in flags)

    def close(self) -> None:
        """Close the dataset handles of every thread (a closed source reopens on the next read). A handle that a
        thread is reading from right now is closed by that thread when its read returns."""
        with _HANDLES_LOCK:
            keys = [k for k in _THREAD_HANDLES if k[0] == self._handle_key]
            handles = [_THREAD_HANDLES.pop(k) for k in keys]
        for h in handles:
            h.retire()

    @property
    def _handles(self) -> list:
        """Every dataset this source's threads have open (for tests)."""
        with _HANDLES_LOCK:
            return [d for k, h in _THREAD_HANDLES.items() if k[0] == self._handle_key for d in h.opened
                    if not d.closed]

    # -- reads ----------------------------------------------------------------------------------------
    def _read(self, where: tuple[int, int, int, int], **read) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands and the validity of each pixel for one rasterio read (``read``: its window, or its
        out_shape); a failure names the pixels ``where`` (row, col, height, width). Valid pixels: every selected
        band passes GDAL's mask (nodata, dataset mask, alpha; a warp's fill), differs from the nodata in force (the
        user's --nodata, else the file's), and is finite."""
        failed = None
        try:
            with self._dataset() as ds:
                data = ds.read(self.bands, **read)
                masks = self._masks(ds, **read)
        except RasterioError as e:
            failed = RasterReadError(self.name, where, _gdal_message(e))
        if failed is not None:  # raised outside the handler: GDAL's exceptions do not pickle, and neither would
            raise failed        # this one (it travels from dask workers) with them as its context
        valid = np.ones(data.shape[1:], dtype=bool)
        if masks is not None:
            valid &= np.all(masks > 0, axis=0)
        if self.nodata is not None and not np.isnan(self.nodata):
            valid &= ~np.any(data == np.asarray(self.nodata, dtype=data.dtype), axis=0)
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        return data, valid

    def _masks(self, ds, **read) -> np.ndarray | None:
        """GDAL's masks of the selected bands where they apply (:meth:`_masks_apply`), and an alpha band's: GDAL
        takes an alpha band for the mask only of 2- and 4-band datasets, so a 4-band scene warped with an added
        alpha (5 bands: NAIP's RGBN on a mosaic grid) would otherwise count the warp's fill as valid."""
        masks = ds.read_masks(self.bands, **read) if self._masks_apply(ds) else None
        alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
        if alpha:
            a = ds.read(alpha[-1:], **read)
            masks = a if masks is None else np.concatenate([masks, a])
        return masks

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Bands ``[C, height, width]`` (source dtype) and the validity of each pixel of a window of :attr:`grid`.

        The window may extend past the raster: outside pixels mirror inside ones about the raster's edge
        (numpy's ``reflect``, as if the whole raster were padded), and so does their validity: a mirrored pixel
        is as valid as the pixel it mirrors, so the model sees real (mirrored) context at raster edges.
        Combine with :func:`inside_mask` to count only pixels of the raster itself. Only the rows and columns
        the window needs are read.
        """
        H, W = self.grid.shape.yx
        rows = _reflect_index(np.arange(row, row + height), H)
        cols = _reflect_index(np.arange(col, col + width), W)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        data, valid = self._read((r0, c0, r1 - r0, c1 - c0), window=Window(c0, r0, c1 - c0, r1 - r0))
        if r0 == row and c0 == col and r1 - r0 == height and c1 - c0 == width:
            return data, valid
        return data[:, rows - r0][:, :, cols - c0], valid[rows - r0][:, cols - c0]

    def read_decimated(self, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """A whole-scene preview at most ``max_side`` px per side (GDAL picks overviews when present)."""
        H, W = self.grid.shape.yx
        f = max(1, int(np.ceil(max(H, W) / max_side)))
        return self._read((0, 0, H, W), out_shape=(len(self.bands), max(1, H // f), max(1, W // f)),
                          resampling=Resampling.nearest)

    @property
    def metadata(self) -> dict[str, str]:
        """Dataset tags and the selected bands' tags, upper-cased keys (what sensor presets look at)."""
        out = {}
        for tags in (*self.band_tags, self.tags):
            out.update({str(k).upper(): str(v) for k, v in tags.items()})
        return out

    def describe(self) -> dict:
        extra = {"objects": self.identity.to_dict()["objects"]} if self.identity.objects else {}
        return {"path": self.identity.path, "size_bytes": self.identity.size, "mtime": self.identity.mtime, **extra,
                "bands": self.bands, "band_names": self.band_names, "dtype": self.dtype.name,
                "nodata": None if self.nodata is None else float(self.nodata), "scale": self.scale,
                "resampling": self.resampling_name, "native_shape": list(self.native_grid.shape.yx),
                "has_crs": self.has_crs}
