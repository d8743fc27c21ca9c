"""A raster source read on another grid of its CRS: what a mosaic reads each of its scenes through.

:func:`on_grid` wraps a :class:`~geodino.raster.RasterSource` so that its windows are windows of a target grid (a
mosaic's common grid), read through a GDAL WarpedVRT (rasterio). Pixels outside the scene are invalid (the nodata
in force, the user's ``--nodata`` or the file's, or else an alpha band marks them, with or without ``--nodata``),
so the mosaic sees the scene's own footprint, and nodata pixels are kept out of the resampling. A scene whose
pixel grid is an integer shift of the target grid (same resolution, origin on the target's pixel lattice) is read with
nearest-neighbour resampling, which copies its pixels exactly; any other scene is resampled (``resampling``,
bilinear by default), and the mosaic records it.
"""

from __future__ import annotations

import math

import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling

from geodino.errors import GridError
from geodino.grid import GeoBox, crs_wkt, grid_key
from geodino.raster.source import RasterSource, _Handle

__all__ = ["WarpedSource", "on_grid", "grid_offset"]


def grid_offset(grid: GeoBox, target: GeoBox, tol: float = 1e-6) -> tuple[int, int] | None:
    """(row, col) of ``grid``'s origin in ``target``'s pixels if ``grid`` is an integer shift of ``target`` (same
    resolution, origin on its pixel lattice, within ``tol`` px), else None. (odc-geo's ``snap_to`` would move a
    grid onto the lattice silently, whatever the offset: whether a scene is copied exactly or resampled is decided
    here, and recorded.)"""
    g, t = grid.affine, target.affine
    if not (math.isclose(g.a, t.a, rel_tol=1e-9) and math.isclose(g.e, t.e, rel_tol=1e-9)):
        return None
    col = (g.c - t.c) / t.a
    row = (g.f - t.f) / t.e
    if abs(col - round(col)) > tol or abs(row - round(row)) > tol:
        return None
    return round(row), round(col)


class WarpedSource(RasterSource):
    """A source whose :attr:`grid` is another grid than its file's; made by :func:`on_grid` (which copies an opened
    source, so that the file is validated once)."""

    @property
    def _handle_key(self) -> tuple:
        return (*super()._handle_key, "on", grid_key(self.grid))

    def __dask_tokenize__(self):
        return ("WarpedSource", super().__dask_tokenize__(), grid_key(self.grid))

    def _open(self) -> _Handle:
        """This thread's warp of the file onto :attr:`grid` (cached and closed as any source's handles); the nodata
        in force, else an alpha band, marks the pixels outside the scene (:meth:`RasterSource._warp`)."""
        return self._warp(rasterio.open(self.path), CRS.from_wkt(crs_wkt(self.grid)))


def on_grid(source: RasterSource, target: GeoBox, resampling: str = "bilinear") -> tuple[WarpedSource, str]:
    """``source`` read on ``target`` and how: ``"exact"`` (the file's pixel grid is an integer shift of ``target``:
    nearest-neighbour copies its pixels) or ``"resampled (<resampling>)"``. A mosaic gives a target in the source's
    own CRS; another CRS would be reprojected by the same warp."""
    if source.grid.crs is None or target.crs is None:
        raise GridError(f"{source.name} or the target grid has no CRS: a source can be warped only between CRSs")
    same_crs = source.grid.crs == target.crs  # odc-geo's CRS equality: the EPSG code, else the WKT, else PROJ's
    # exact: the file's own pixels (not a --scale grid) on the target's lattice
    exact = same_crs and grid_offset(source.native_grid, target) is not None
    how = "exact" if exact else f"resampled ({resampling})"
    ws = object.__new__(WarpedSource)
    ws.__dict__.update(source.__dict__)
    ws.grid = target
    ws.resampling = Resampling["nearest" if exact else resampling]
    ws.resampling_name = "nearest" if exact else resampling
    return ws, how
