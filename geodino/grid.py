"""The grid value: odc-geo's :class:`~odc.geo.geobox.GeoBox` (shape, affine, CRS) carries a raster's grid from the
reader through the tiler to the cube. A ViT's patch grid is ``gbox.zoom_out(16)``; a tile is ``gbox[rows, cols]``.

What odc-geo does not say geodino's way lives here, as functions of a GeoBox:

* :func:`require_north_up`: the one-line refusal of rotated, sheared and south-up grids;
* :func:`rescale`: ``--scale`` and canopy's resampling, ``round``-ed (odc-geo's ``zoom_to(resolution=...)`` takes
  the ceiling and gives other shapes, e.g. 217 -> 218 rows at 0.6/0.47, so cubes begun before would change);
* :func:`cell_index`, :func:`cell_window`, :func:`cell_boxes`: the cells under world points, bounds and the cells'
  footprints, for the readers of cubes (``ds.odc.geobox``), with the arithmetic cubes were always read with;
* :func:`crs_wkt` / :func:`grid_dict`: the CRS's identity text, the WKT that rasterio gave (odc-geo's own
  ``crs.wkt`` is another WKT flavour on every real raster: fingerprints, which hash ``grid_dict``, and the names of
  cubes in CRSs without an EPSG code, which hash the WKT, would change).
"""

from __future__ import annotations

import math

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox

from geodino.errors import GridError

__all__ = ["GeoBox", "require_north_up", "rescale", "crs_wkt", "grid_dict", "grid_key", "cell_index", "cell_window",
           "cell_boxes", "cube_geobox"]


def require_north_up(gbox: GeoBox, what: str = "raster") -> GeoBox:
    """``gbox`` if it is north-up; refuses rotated, sheared and flipped grids. A grid without a CRS may be the plain
    pixel grid (identity transform, rows downwards), whose coordinates are pixel positions."""
    t = gbox.affine
    if not (t.b == 0 and t.d == 0 and t.a > 0 and (t.e < 0 or (gbox.crs is None and t.e > 0))):
        raise GridError(f"{what} has a rotated, sheared or south-up transform {tuple(t)[:6]}: geodino needs north-up "
                        "grids; warp it first (gdalwarp -t_srs ... in.tif out.tif)")
    return gbox


def rescale(gbox: GeoBox, scale: float) -> GeoBox:
    """The grid with ``scale`` times as many pixels per axis over the same extent (the count rounded)."""
    if scale <= 0:
        raise GridError(f"scale must be > 0, got {scale}")
    h, w = gbox.shape.yx
    return GeoBox((max(1, round(h * scale)), max(1, round(w * scale))), gbox.affine * Affine.scale(1 / scale),
                  gbox.crs)


def crs_wkt(gbox: GeoBox) -> str | None:
    """The WKT a grid's CRS was given as (rasterio's, for grids read from rasters), or None without a CRS."""
    return None if gbox.crs is None else str(gbox.crs)


def grid_dict(gbox: GeoBox) -> dict:
    """``{"shape", "transform", "crs"}`` of a grid, as settings and provenance record it."""
    return {"shape": list(gbox.shape.yx), "transform": list(gbox.affine)[:6], "crs": crs_wkt(gbox)}


def grid_key(gbox: GeoBox) -> tuple:
    """A grid as a plain tuple: for dask tokens and cache keys (the same in every process)."""
    return tuple(gbox.shape.yx), tuple(gbox.affine)[:6], crs_wkt(gbox)


# -- cells of a grid under world coordinates (the readers of cubes: sampling, TorchGeo, the index) -----------------
# These divide by the pixel size, ``(x - c) / a``, where odc-geo's ``wld2pix`` multiplies by the inverse affine
# (``x / a - c / a``): floored, the two give another cell for 17,397 of 240,000 points checked (random grids,
# half of the points on cell edges), and a point on a patch's edge must keep the patch it always fell in.

def _pixel_xy(gbox: GeoBox, x, y):
    t = gbox.affine
    return (np.asarray(x, np.float64) - t.c) / t.a, (np.asarray(y, np.float64) - t.f) / t.e


def cell_index(gbox: GeoBox, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the cells of a north-up ``gbox`` under world points ``x``, ``y`` (int64; may lie outside)."""
    col, row = _pixel_xy(gbox, x, y)
    return np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)


def cell_window(gbox: GeoBox, bounds) -> tuple[slice, slice] | None:
    """(rows, cols) slices of ``gbox`` covering world ``bounds`` (minx, miny, maxx, maxy) with a cell to spare on
    the far sides, clipped to the grid; None when nothing of the grid is left."""
    minx, miny, maxx, maxy = bounds
    (ca, cb), (ra, rb) = _pixel_xy(gbox, [minx, maxx], [miny, maxy])
    c0, c1 = sorted((float(ca), float(cb)))
    r0, r1 = sorted((float(ra), float(rb)))
    h, w = gbox.shape.yx
    c0, r0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    c1, r1 = min(w, math.ceil(c1) + 1), min(h, math.ceil(r1) + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def cell_boxes(gbox: GeoBox, rows, cols):
    """The footprints of cells ``(rows, cols)`` of a north-up ``gbox`` as shapely polygons (in its CRS). Corners:
    ``gbox.pix2wld`` of the cell's origin, plus one pixel size (the bits the index always stored)."""
    import shapely

    x0, y0 = gbox.pix2wld(np.asarray(cols, np.float64), np.asarray(rows, np.float64))
    a, e = gbox.affine.a, gbox.affine.e
    return shapely.box(x0, y0 + e, x0 + a, y0)


def cube_geobox(ds) -> GeoBox:
    """The grid of an opened cube (or any georeferenced xarray object): odc-geo's ``ds.odc.geobox``."""
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)

    return ds.odc.geobox
