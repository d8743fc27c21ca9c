"""The grid value: odc-geo's :class:`~odc.geo.geobox.GeoBox` (shape, affine, CRS) carries a raster's grid from the
reader through the tiler to the cube. A ViT's patch grid is ``gbox.zoom_out(16)``; a tile is ``gbox[rows, cols]``.

What odc-geo does not say geodino's way lives here, as functions of a GeoBox:

* :func:`require_north_up`: the one-line refusal of rotated, sheared and south-up grids;
* :func:`rescale`: ``--scale`` and canopy's resampling, ``round``-ed (odc-geo's ``zoom_to(resolution=...)`` takes
  the ceiling and gives other shapes, e.g. 217 -> 218 rows at 0.6/0.47, so cubes begun before would change);
* :func:`crs_wkt` / :func:`grid_dict`: the CRS's identity text, the WKT that rasterio gave (odc-geo's own
  ``crs.wkt`` is another WKT flavour on every real raster: fingerprints, which hash ``grid_dict``, and the names of
  cubes in CRSs without an EPSG code, which hash the WKT, would change).
"""

from __future__ import annotations

from affine import Affine
from odc.geo.geobox import GeoBox

from geodino.errors import GridError

__all__ = ["GeoBox", "require_north_up", "rescale", "crs_wkt", "grid_dict", "grid_key"]


def require_north_up(gbox: GeoBox, what: str = "raster") -> GeoBox:
    """``gbox`` if it is north-up; refuses rotated, sheared and flipped grids. A grid without a CRS may be the plain
    pixel grid (identity transform, rows downwards), whose coordinates are pixel positions."""
    t = gbox.affine
    north_up = t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0
    pixel_grid = gbox.crs is None and t.b == 0 and t.d == 0 and t.a > 0 and t.e > 0
    if not (north_up or pixel_grid):
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
