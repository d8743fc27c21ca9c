"""Training labels aligned onto a cube's grid: a label raster, points or polygons with a class column
(GeoPackage, GeoParquet, shapefile, or a GeoDataFrame), or positive and negative points for one-class detection.

Whatever the source, the result is one :class:`LabelGrid`: class indices ``0..K-1`` on the cube's patch grid refined
``scale`` times (``scale`` label pixels per patch side; 1 = one label per patch), ``-1`` where nothing is labelled.
Rasters are warped with rasterio (majority of the label pixels in each cell, through a ``WarpedVRT`` that reads only
what the grid needs); vectors are reprojected with geopandas and burnt with ``rasterio.features.rasterize``
(polygons: cells whose centre they cover; points: the cell they fall in, drawn over polygons).

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


def _grid(ds, scale: int):
    from affine import Affine

    t = ds.rio.transform() * Affine.scale(1 / scale)
    return t, (int(ds.sizes["y"]) * scale, int(ds.sizes["x"]) * scale)


def _footprint(ds):
    from shapely.geometry import box

    t = ds.rio.transform()
    h, w = ds.sizes["y"], ds.sizes["x"]
    xs, ys = [t.c, t.c + w * t.a], [t.f, t.f + h * t.e]
    return box(min(xs), min(ys), max(xs), max(ys))


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
    out = gdf.to_crs(ds.rio.crs)
    fp = _footprint(ds)
    if not out.geometry.intersects(fp).any():
        b = [round(v, 3) for v in gdf.total_bounds]
        raise LabelError(f"{what} ({gdf.crs.to_string()}, bounds {b}) does not overlap the cube "
                         f"({ds.rio.crs.to_string()}): give labels for the cube's area")
    return out


def _burn(gdf, values: np.ndarray, ds, scale: int) -> np.ndarray:
    """Burn polygons, then points over them, into an int32 grid (-1 elsewhere)."""
    from rasterio.features import rasterize

    t, shape = _grid(ds, scale)
    out = np.full(shape, -1, np.int32)
    kinds = gdf.geometry.geom_type.to_numpy()
    for group in (("Polygon", "MultiPolygon"), ("Point", "MultiPoint")):
        sel = np.isin(kinds, group)
        if sel.any():
            shapes = [(g, int(v)) for g, v in zip(gdf.geometry[sel], values[sel]) if g is not None and not g.is_empty]
            if shapes:
                rasterize(shapes, out_shape=shape, transform=t, fill=-1, out=out, dtype=np.int32)
    return out


def _vector_labels(ds, labels, class_column: str | None, scale: int, layer) -> LabelGrid:
    what = f"label file {_label(labels)}"
    gdf = read_vector(labels, layer)
    _check_geometries(gdf, what)
    if class_column is None:
        raise LabelError(f"{what} needs a class column: pass class_column= (--class-column) naming one of "
                         f"{[c for c in gdf.columns if c != gdf.geometry.name]}")
    if class_column not in gdf.columns:
        raise LabelError(f"{what} has no column {class_column!r}: its columns are "
                         f"{[c for c in gdf.columns if c != gdf.geometry.name]}")
    gdf = gdf[gdf[class_column].notna()]
    gdf = _to_cube_crs(gdf, ds, what)
    names, codes = np.unique(gdf[class_column].to_numpy(), return_inverse=True)
    grid = _burn(gdf, codes, ds, scale)
    return _finish(grid, tuple(str(n) for n in names), scale, "vector", _label(labels), None, what)


def _raster_labels(ds, path, scale: int) -> LabelGrid:
    import rasterio
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import Resampling, transform_bounds
    from shapely.geometry import box

    what = f"label raster {path}"
    t, (h, w) = _grid(ds, scale)
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise LabelError(f"cannot read {what}: {str(e).splitlines()[0]}") from None
    with src:
        if src.crs is None or ds.rio.crs is None:
            raise LabelError(f"{what} and the cube both need a CRS to be aligned")
        if not box(*transform_bounds(src.crs, ds.rio.crs, *src.bounds)).intersects(_footprint(ds)):
            raise LabelError(f"{what} ({src.crs.to_string()}, bounds {[round(v, 3) for v in src.bounds]}) does not "
                             f"overlap the cube ({ds.rio.crs.to_string()}): give labels for the cube's area")
        nodata = src.nodata
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = None
        # mode: the majority of the label pixels in each cell (nearest where labels are coarser than the cell)
        with WarpedVRT(src, crs=ds.rio.crs, transform=t, width=w, height=h, resampling=Resampling.mode,
                       src_nodata=nodata, nodata=nodata) as vrt:
            data = vrt.read(1, masked=True)
    arr = np.asarray(data.filled(0) if np.ma.is_masked(data) else data)
    known = ~np.ma.getmaskarray(data)
    if nodata is not None:
        known &= arr != nodata
    values, codes = np.unique(arr[known], return_inverse=True)
    grid = np.full((h, w), -1, np.int32)
    grid[known] = codes
    colours = None
    if cmap:
        colours = tuple(tuple(int(c) for c in cmap.get(int(v), (128, 128, 128, 255))[:3]) for v in values)
    return _finish(grid, tuple(str(int(v)) if float(v).is_integer() else str(v) for v in values), scale, "raster",
                   str(path), colours, what)


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
                 scale: int = 1, layer: str | int | None = None) -> LabelGrid:
    """Labels aligned onto ``cube``'s grid at ``scale`` label cells per patch side.

    ``labels``: a label raster (any CRS; classes are its distinct values, nodata unlabelled) or a vector file /
    GeoDataFrame of points or polygons with ``class_column``; or ``positives`` and ``negatives`` (vector files or
    GeoDataFrames of points or polygons) for one-class detection.
    """
    from geodino.analysis._cube import as_cubes

    [ds], _ = as_cubes(cube)
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1 or scale > 16:
        raise LabelError(f"the label scale must be an integer from 1 to 16 label cells per patch side, got {scale!r}")
    if positives is not None or negatives is not None:
        if labels is not None:
            raise LabelError("give either labels or positives and negatives, not both")
        return _detection_labels(ds, positives, negatives, scale, layer)
    if labels is None:
        raise LabelError("no labels given: pass a label raster or vector file (--labels), or --positives and "
                         "--negatives")
    if isinstance(labels, (str, os.PathLike)) and Path(labels).suffix.lower() not in VECTOR_SUFFIXES:
        if not Path(labels).exists() and "://" not in str(labels):
            raise LabelError(f"label file {labels} does not exist")
        return _raster_labels(ds, labels, scale)
    return _vector_labels(ds, labels, class_column, scale, layer)
