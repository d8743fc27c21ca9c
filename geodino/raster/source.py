"""Windowed reads of any GDAL raster (GeoTIFF, COG, VRT) with band selection, masks and resampling.

A :class:`RasterSource` never reads the whole raster: every read is a window of the output grid. Windows
that extend past the raster are reflect-padded, and the padding is marked invalid. Dataset handles are opened
lazily per thread (GDAL handles are not thread-safe) and are not pickled, so a source can travel to dask
workers.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodino.errors import BandError, RasterError, RasterNotFoundError
from geodino.geobox import GeoGrid

__all__ = ["RasterSource", "SourceIdentity", "parse_bands"]

_SUPPORTED = {"uint8", "uint16", "int16", "float32", "int32", "uint32", "float64"}
_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class SourceIdentity:
    """What identifies an input file for provenance and resume checks."""

    path: str
    size: int
    mtime: float

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime": self.mtime}


def _band_labels(ds) -> list[list[str]]:
    labels = []
    for i in range(ds.count):
        names = []
        if ds.descriptions[i]:
            names.append(ds.descriptions[i].strip().lower())
        ci = ds.colorinterp[i].name.lower()
        if ci in _RGB:
            names.append(ci)
        labels.append(names)
    return labels


def parse_bands(spec: str | list | tuple | None, ds, n: int = 3) -> list[int]:
    """1-based band indexes for ``spec`` ("4,3,2", "red,green,blue", "B04,B03,B02" or None for the default)."""
    labels = _band_labels(ds)
    listing = ", ".join(f"{i + 1}{' ' + repr(ds.descriptions[i]) if ds.descriptions[i] else ''}"
                        f"{' (' + ds.colorinterp[i].name + ')' if ds.colorinterp[i].name in _RGB else ''}"
                        for i in range(ds.count))
    if spec is None or spec == "" or spec == []:
        by_name = [next((i + 1 for i, names in enumerate(labels) if want in names), None) for want in _RGB]
        s2 = [next((i + 1 for i, names in enumerate(labels) if want in names), None) for want in ("b04", "b03", "b02")]
        if all(by_name):
            return by_name
        if all(s2):
            return s2
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


def _is_local(path: str) -> bool:
    """Whether a GDAL dataset name is a local file (not a URL, a /vsi... path or VRT XML text)."""
    return "://" not in path and not path.startswith("/vsi") and not path.lstrip().startswith("<")


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Source index of each (possibly out-of-range) index under reflection about the edges (numpy 'reflect')."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


class RasterSource:
    """A raster opened for windowed reads on an output grid (the native grid, optionally rescaled)."""

    def __init__(self, path: str | os.PathLike, bands=None, nodata: float | None = None, scale: float = 1.0,
                 resampling: str = "bilinear", allow_no_crs: bool = True, identity: SourceIdentity | None = None):
        """``path`` is any GDAL dataset name (a file, a ``/vsi...`` path, VRT XML text); ``identity`` says what
        identifies the input when it is not a local file (e.g. a STAC item), for provenance and resume."""
        import rasterio
        from rasterio.errors import RasterioIOError
        from rasterio.enums import Resampling

        self.path = str(path)
        local = _is_local(self.path)
        p = Path(self.path) if local else None
        if local and not p.exists():
            raise RasterNotFoundError(f"input raster {self.path} does not exist")
        if local and p.is_dir():
            raise RasterError(f"{self.path} is a directory, not a raster")
        try:
            with rasterio.open(self.path) as ds:
                self._init_from(ds, bands, nodata, scale, identity)
        except RasterioIOError as e:
            raise RasterError(f"{self.path} is not a raster GDAL can read ({str(e).splitlines()[0][:160]})") from e
        try:
            self.resampling = Resampling[resampling]
        except KeyError:
            raise RasterError(f"unknown resampling {resampling!r}; use nearest, bilinear, cubic or average") from None
        self.resampling_name = resampling
        self._local = threading.local()
        self._handles: list = []  # every handle opened by any thread, so close() can close them all
        self._handles_lock = threading.Lock()

    def _init_from(self, ds, bands, nodata, scale, identity: SourceIdentity | None = None) -> None:
        self.count = ds.count
        self.dtype = np.dtype(ds.dtypes[0])
        if len(set(ds.dtypes)) > 1:
            raise RasterError(f"{self.path} mixes band dtypes {set(ds.dtypes)}; convert it to one dtype first")
        if self.dtype.name not in _SUPPORTED:
            raise RasterError(f"{self.path} has dtype {self.dtype}, which geodino does not read "
                              f"(supported: {', '.join(sorted(_SUPPORTED))})")
        self.bands = parse_bands(bands, ds)
        self.band_names = [ds.descriptions[b - 1] or ds.colorinterp[b - 1].name for b in self.bands]
        self.file_nodata = ds.nodata
        self.nodata = nodata if nodata is not None else ds.nodata
        self.user_nodata = nodata
        crs = ds.crs.to_wkt() if ds.crs else None
        self.has_crs = crs is not None
        native = GeoGrid((ds.height, ds.width), ds.transform, crs)
        native.require_north_up(self.path)
        self.native_grid = native
        self.scale = float(scale)
        self.grid = native if self.scale == 1.0 else native.rescale(self.scale)
        self.tags = dict(ds.tags())
        self.band_offsets = [ds.offsets[b - 1] for b in self.bands]
        self.band_scales = [ds.scales[b - 1] for b in self.bands]
        self.band_tags = [dict(ds.tags(b)) for b in self.bands]
        if identity is not None:
            self.identity = identity
            return
        local = _is_local(self.path)
        st = Path(self.path).stat() if local and Path(self.path).exists() else None
        self.identity = SourceIdentity(str(Path(self.path).resolve()) if st else self.path,
                                       st.st_size if st else 0, st.st_mtime if st else 0.0)

    # -- pickling: never ship GDAL handles ------------------------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_local", "_handles", "_handles_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()
        self._handles = []
        self._handles_lock = threading.Lock()

    def __dask_tokenize__(self):
        return ("RasterSource", self.identity, tuple(self.bands), self.nodata, self.scale, self.resampling_name)

    def _dataset(self):
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            import rasterio
            from rasterio.vrt import WarpedVRT

            base = rasterio.open(self.path)
            opened = [base]
            if self.scale != 1.0:
                g = self.grid
                kw = {"src_nodata": self.file_nodata} if self.file_nodata is not None else {}
                ds = WarpedVRT(base, crs=base.crs, transform=g.transform, width=g.width, height=g.height,
                               resampling=self.resampling, **kw)
                opened.insert(0, ds)
            else:
                ds = base
            self._local.ds = ds
            with self._handles_lock:
                self._handles.extend(opened)
        return ds

    def close(self) -> None:
        """Close the dataset handles of every thread (a closed source reopens on the next read)."""
        with self._handles_lock:
            handles, self._handles = self._handles, []
        for h in handles:
            if not h.closed:
                h.close()

    # -- reads ----------------------------------------------------------------------------------------
    def _read_inside(self, r0: int, c0: int, r1: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        ds = self._dataset()
        win = Window(c0, r0, c1 - c0, r1 - r0)
        data = ds.read(self.bands, window=win)
        masks = ds.read_masks(self.bands, window=win) if self.user_nodata is None else None
        return data, self._validity(data, masks)

    def _validity(self, data: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """Valid pixels: every selected band passes GDAL's mask (nodata, dataset mask, alpha), differs from a
        user --nodata, and is finite."""
        valid = np.ones(data.shape[1:], dtype=bool)
        if masks is not None:
            valid &= np.all(masks > 0, axis=0)
        if self.nodata is not None and not np.isnan(self.nodata):
            valid &= ~np.any(data == np.asarray(self.nodata, dtype=data.dtype), axis=0)
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        return valid

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Bands ``[C, height, width]`` (source dtype) and a validity mask of a window of :attr:`grid`.

        The window may extend past the raster: outside pixels mirror inside ones about the raster's edge
        (numpy's ``reflect``, as if the whole raster were padded) and are marked invalid. Only the rows and
        columns the window needs are read.
        """
        H, W = self.grid.shape
        rows = _reflect_index(np.arange(row, row + height), H)
        cols = _reflect_index(np.arange(col, col + width), W)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        data, valid = self._read_inside(r0, c0, r1, c1)
        inside_r = (np.arange(row, row + height) >= 0) & (np.arange(row, row + height) < H)
        inside_c = (np.arange(col, col + width) >= 0) & (np.arange(col, col + width) < W)
        if inside_r.all() and inside_c.all():
            return data, valid
        data = data[:, rows - r0][:, :, cols - c0]
        valid = valid[rows - r0][:, cols - c0] & inside_r[:, None] & inside_c[None, :]
        return data, valid

    def read_decimated(self, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """A whole-scene preview at most ``max_side`` px per side (GDAL picks overviews when present)."""
        from rasterio.enums import Resampling

        ds = self._dataset()
        f = max(1, int(np.ceil(max(ds.height, ds.width) / max_side)))
        shape = (max(1, ds.height // f), max(1, ds.width // f))
        out_shape = (len(self.bands), *shape)
        data = ds.read(self.bands, out_shape=out_shape, resampling=Resampling.nearest)
        masks = None
        if self.user_nodata is None:
            masks = ds.read_masks(self.bands, out_shape=out_shape, resampling=Resampling.nearest)
        return data, self._validity(data, masks)

    def describe(self) -> dict:
        return {"path": self.identity.path, "size_bytes": self.identity.size, "mtime": self.identity.mtime,
                "bands": self.bands, "band_names": self.band_names, "dtype": self.dtype.name,
                "nodata": None if self.nodata is None else float(self.nodata), "scale": self.scale,
                "resampling": self.resampling_name, "native_shape": list(self.native_grid.shape),
                "has_crs": self.has_crs}
