"""Training labels aligned onto a cube's grid: a label raster, points or polygons with a class column
(GeoPackage, GeoParquet, shapefile, or a GeoDataFrame), or positive and negative points for one-class detection.

Whatever the source, the result is one :class:`LabelGrid`: class indices ``0..K-1`` on the cube's patch grid refined
``scale`` times (``scale`` label pixels per patch side; 1 = one label per patch; the grid is the cube's odc-geo
``GeoBox`` zoomed), ``-1`` where nothing is labelled. This is the one label path of geodino: every head trained on
a cube takes its labels from here.

* Rasters are warped by odc-geo's dask reprojection (``xr_reproject``, GDAL's warper underneath), read lazily with
  rioxarray in windows, so a label raster of any size costs memory for the cube's grid and a few windows only.
  It is nodata-aware: cells outside the raster's footprint and pixels under its nodata value, mask or alpha band
  are never a class (a raster that declares no nodata and covers half the cube labels that half only). A cell takes
  the majority of the labelled pixels in it.
* Vectors are reprojected with geopandas and burnt with ``rasterio.features.rasterize`` (polygons: cells whose
  centre they cover; points: the cell they fall in, drawn over polygons). Cells outside every geometry are
  unlabelled, unless a ``background`` class is asked for explicitly: then they take that class.

Labels that cannot train a head are refused with one line (:class:`geodino.errors.LabelError`): no CRS, no
overlap with the cube, a missing class column, geometry types that are not points or polygons, a single class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodino.errors import LabelError

__all__ = ["LabelGrid", "align_labels", "read_vector", "VECTOR_SUFFIXES"]

VECTOR_SUFFIXES = (".gpkg", ".parquet", ".geoparquet", ".shp", ".geojson", ".json", ".fgb")
_GEOMETRIES = {"Point", "MultiPoint", "Polygon", "MultiPolygon"}


@dataclass(frozen=True)
class LabelGrid:
    """Class indices on the cube's patch grid refined ``scale`` times (``-1``: unlabelled).

    ``classes``: the class names (index order); ``colours``: an RGB triple per class or None; ``kind``: ``raster``,
    ``vector`` or ``detection`` (positives and negatives: classes ``negative``, ``positive``); ``source``: where
    the labels came from (for the head's card).
    """

    labels: np.ndarray
    classes: tuple[str, ...]
    scale: int
    kind: str
    source: str
    colours: tuple[tuple[int, int, int], ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        """Labelled cells per class."""
        c = np.bincount(self.labels[self.labels >= 0].ravel(), minlength=self.n_classes)
        return {name: int(n) for name, n in zip(self.classes, c)}


def _label(obj) -> str:
    return str(obj) if isinstance(obj, (str, os.PathLike)) else f"a {type(obj).__name__}"


def read_vector(obj, layer: str | int | None = None):
    """A GeoDataFrame from a GeoDataFrame, a GeoPackage, GeoParquet, shapefile (or any file GDAL reads)."""
    import geopandas as gpd

    if isinstance(obj, gpd.GeoDataFrame):
        return obj
    if isinstance(obj, gpd.GeoSeries):
        return gpd.GeoDataFrame(geometry=obj)
    p = Path(obj)
    if not p.exists():
        raise LabelError(f"label file {p} does not exist")
    try:
        if p.suffix.lower() in (".parquet", ".geoparquet"):
            return gpd.read_parquet(p)
        return gpd.read_file(p, layer=layer)
    except Exception as e:  # pyogrio/pyarrow raise many types for a file that is not a vector layer
        raise LabelError(f"cannot read {p} as points or polygons ({type(e).__name__}: {str(e).splitlines()[0]}): "
                         "give a GeoPackage, GeoParquet or shapefile") from None


def _check_geometries(gdf, what: str) -> None:
    types = set(gdf.geometry.geom_type.dropna().unique())
    bad = sorted(types - _GEOMETRIES)
    if bad:
        raise LabelError(f"{what} holds {', '.join(bad)} geometries: labels must be points or polygons "
                         "(buffer lines into polygons first)")
    if gdf.geometry.isna().all() or len(gdf) == 0:
        raise LabelError(f"{what} holds no geometries")


def _to_cube_crs(gdf, ds, what: str):
    if ds.rio.crs is None:
        raise LabelError("the cube has no CRS: labels cannot be placed on it")
    if gdf.crs is None:
        raise LabelError(f"{what} has no CRS: set one (GeoDataFrame.set_crs, or save the file with its CRS)")
    from geodino.cube.reading import patch_grid

    out = gdf.to_crs(ds.rio.crs)
    if not out.geometry.intersects(patch_grid(ds).extent.geom).any():
        b = [round(v, 3) for v in gdf.total_bounds]
        raise LabelError(f"{what} ({gdf.crs.to_string()}, bounds {b}) does not overlap the cube "
                         f"({ds.rio.crs.to_string()}): give labels for the cube's area")
    return out


def _burn(gdf, values: np.ndarray, ds, scale: int) -> np.ndarray:
    """Burn polygons, then points over them, into an int32 grid (-1 elsewhere)."""
    from rasterio.features import rasterize

    from geodino.cube.reading import patch_grid

    grid = patch_grid(ds, scale)
    t, shape = grid.affine, grid.shape.yx
    out = np.full(shape, -1, np.int32)
    kinds = gdf.geometry.geom_type.to_numpy()
    for group in (("Polygon", "MultiPolygon"), ("Point", "MultiPoint")):
        sel = np.isin(kinds, group)
        if sel.any():
            shapes = [(g, int(v)) for g, v in zip(gdf.geometry[sel], values[sel]) if g is not None and not g.is_empty]
            if shapes:
                rasterize(shapes, out_shape=shape, transform=t, fill=-1, out=out, dtype=np.int32)
    return out


def _vector_labels(ds, labels, class_column: str | None, scale: int, layer, background: str | None) -> LabelGrid:
    what = f"label file {_label(labels)}"
    gdf = read_vector(labels, layer)
    _check_geometries(gdf, what)
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    if class_column is None:
        raise LabelError(f"{what} needs a class column: pass class_column= (--class-column) naming one of {columns}")
    if class_column not in gdf.columns:
        raise LabelError(f"{what} has no column {class_column!r}: its columns are {columns}")
    gdf = gdf[gdf[class_column].notna()]
    gdf = _to_cube_crs(gdf, ds, what)
    raw, codes = np.unique(gdf[class_column].to_numpy(), return_inverse=True)
    names = [str(n) for n in raw]
    grid = _burn(gdf, codes, ds, scale)
    if background is not None:  # asked for: cells outside every geometry are that class (a new one, or named)
        if background not in names:
            names.append(background)
        grid[grid < 0] = names.index(background)
    return _finish(grid, tuple(names), scale, "vector", _label(labels), None, what)


# Label pixels read per chunk and label cells warped per task: the warp runs chunk by chunk through dask, so a
# label raster of any size is read only where the cube's grid needs it, one window at a time.
_READ_CHUNK = 2048
_WARP_CHUNK = 512
# Labels are warped as uint16 codes with this value for "no label": GDAL's mode resampling counts 8- and 16-bit
# values with a histogram, but is quadratic in the pixels per cell for 32-bit and float data (measured: 1024^2 px
# onto 16 x 24 cells took 0.07 s as uint16, 11 s as int32 and 9.7 s as float32; 326 s for float32 at 3072^2).
_NO_LABEL = 65535


def _codes(lab, grid):
    """The masked label pixels (float, NaN where masked) as lazy uint16 codes, ``_NO_LABEL`` where masked, and the
    label value of each code: uint8 rasters keep their values; others are mapped through the distinct values found
    in the part of the raster that the cube's grid reads (one windowed pass)."""
    import dask.array as da
    from odc.geo.overlap import compute_reproject_roi

    src = lab.data
    if lab.encoding.get("rasterio_dtype", lab.encoding.get("dtype")) in ("uint8", np.uint8):  # the value is the code
        return lab.copy(data=da.where(da.isnan(src), _NO_LABEL, src).astype(np.uint16)), np.arange(256.0)
    roi = compute_reproject_roi(lab.odc.geobox, grid, padding=2).roi_src
    part = src[roi]
    values = np.unique(da.unique(part[~da.isnan(part)]).compute()) if part.size else np.zeros(0)
    if len(values) >= _NO_LABEL:
        raise LabelError(f"the label raster holds {len(values)} distinct values on the cube: a head takes at "
                         f"most {_NO_LABEL - 1} classes")

    def encode(block):
        out = np.full(block.shape, _NO_LABEL, np.uint16)
        ok = np.isfinite(block)
        out[ok] = np.searchsorted(values, block[ok])
        return out

    return lab.copy(data=src.map_blocks(encode, dtype=np.uint16)), values


def _raster_labels(ds, path, scale: int) -> LabelGrid:
    """A label raster warped onto the cube's grid by odc-geo's dask reprojection, nodata-aware: pixels under the
    raster's nodata, mask or alpha band are masked when read (rioxarray, ``masked=True``), cells outside its
    footprint are fill, and neither is ever a class. Each cell takes the majority (``mode``) of the label pixels
    that fall in it, nodata excluded (the nearest pixel where labels are coarser than the cell)."""
    import rasterio
    import rioxarray
    from odc.geo.xr import xr_reproject

    from geodino.cube.reading import patch_grid

    what = f"label raster {path}"
    if ds.rio.crs is None:
        raise LabelError(f"{what} and the cube both need a CRS to be aligned (the cube has none)")
    try:
        with rasterio.open(path) as src:
            crs, bounds = src.crs, src.bounds
            try:
                cmap = src.colormap(1)
            except ValueError:
                cmap = None
        lab = rioxarray.open_rasterio(path, masked=True, chunks={"band": 1, "y": _READ_CHUNK, "x": _READ_CHUNK})
    except rasterio.errors.RasterioIOError as e:
        raise LabelError(f"cannot read {what}: {str(e).splitlines()[0]}") from None
    if crs is None:
        raise LabelError(f"{what} has no CRS: it cannot be placed on the cube (set one, e.g. gdal_edit -a_srs)")
    lab = lab.isel(band=0, drop=True)
    grid = patch_grid(ds, scale)
    if not lab.odc.geobox.extent.to_crs(grid.crs).intersects(grid.extent):
        raise LabelError(f"{what} ({crs.to_string()}, bounds {[round(v, 3) for v in bounds]}) does not "
                         f"overlap the cube ({ds.rio.crs.to_string()}): give labels for the cube's area")
    codes, values = _codes(lab, grid)
    warped = xr_reproject(codes, grid, resampling="mode", src_nodata=_NO_LABEL, dst_nodata=_NO_LABEL,
                          chunks=(_WARP_CHUNK, _WARP_CHUNK))
    arr = np.asarray(warped.data.compute())
    known = arr != _NO_LABEL
    present, dense = np.unique(arr[known], return_inverse=True)
    out = np.full(arr.shape, -1, np.int32)
    out[known] = dense
    present_values = values[present]
    colours = (tuple(tuple(int(c) for c in cmap.get(int(v), (128, 128, 128, 255))[:3]) for v in present_values)
               if cmap else None)
    return _finish(out, tuple(str(int(v)) if float(v).is_integer() else str(v) for v in present_values), scale,
                   "raster", str(path), colours, what)


def _detection_labels(ds, positives, negatives, scale: int, layer) -> LabelGrid:
    import pandas as pd

    parts = []
    for value, obj, name in ((0, negatives, "negatives"), (1, positives, "positives")):
        if obj is None:
            raise LabelError("one-class detection needs both positives and negatives (--positives, --negatives)")
        what = f"{name} {_label(obj)}"
        gdf = read_vector(obj, layer)
        _check_geometries(gdf, what)
        gdf = _to_cube_crs(gdf, ds, what)[[gdf.geometry.name]].assign(_cls=value)
        parts.append(gdf)
    gdf = pd.concat(parts, ignore_index=True)
    grid = _burn(gdf, gdf["_cls"].to_numpy(), ds, scale)
    src = f"positives {_label(positives)}, negatives {_label(negatives)}"
    return _finish(grid, ("negative", "positive"), scale, "detection", src, ((90, 90, 90), (255, 200, 0)), src)


def _finish(grid, classes, scale, kind, source, colours, what) -> LabelGrid:
    present = np.unique(grid[grid >= 0])
    if len(present) == 0:
        raise LabelError(f"{what} labels no cell of the cube: give labels inside the cube's area")
    if len(present) < 2:
        raise LabelError(f"{what} holds a single class on the cube ({classes[int(present[0])]!r}): a head needs at "
                         "least 2 classes (for one class, give positives and negatives)")
    dtype = np.int16 if len(classes) < 32767 else np.int32
    return LabelGrid(grid.astype(dtype), tuple(classes), int(scale), kind, source, colours)


def align_labels(cube, labels=None, *, class_column: str | None = None, positives=None, negatives=None,
                 scale: int = 1, layer: str | int | None = None, background: str | None = None) -> LabelGrid:
    """Labels aligned onto ``cube``'s grid at ``scale`` label cells per patch side.

    ``labels``: a label raster (any CRS; classes are its distinct values; nodata, masked pixels and cells outside
    it unlabelled) or a vector file / GeoDataFrame of points or polygons with ``class_column`` (cells outside every
    geometry unlabelled, or of the class ``background`` when given); or ``positives`` and ``negatives`` (vector
    files or GeoDataFrames of points or polygons) for one-class detection.
    """
    from geodino.cube.reading import as_cubes, is_count

    [ds], _ = as_cubes(cube)
    if not is_count(scale) or scale > 16:
        raise LabelError(f"the label scale must be an integer from 1 to 16 label cells per patch side, got {scale!r}")
    if background is not None and (not isinstance(background, str) or not background.strip()):
        raise LabelError(f"the background class must be a class name, got {background!r}")
    if positives is not None or negatives is not None:
        if labels is not None:
            raise LabelError("give either labels or positives and negatives, not both")
        if background is not None:
            raise LabelError("a background class applies to labels with a class column: detection labels the rest "
                             "with --negatives")
        return _detection_labels(ds, positives, negatives, scale, layer)
    if labels is None:
        raise LabelError("no labels given: pass a label raster or vector file (--labels), or --positives and "
                         "--negatives")
    if isinstance(labels, (str, os.PathLike)) and Path(labels).suffix.lower() not in VECTOR_SUFFIXES:
        if not Path(labels).exists() and "://" not in str(labels):
            raise LabelError(f"label file {labels} does not exist")
        if background is not None:
            raise LabelError(f"a background class applies to points or polygons: in label raster {labels}, give the "
                             "background its own value")
        return _raster_labels(ds, labels, scale)
    return _vector_labels(ds, labels, class_column, scale, layer, background)
