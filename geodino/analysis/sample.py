"""Features at geometries: the nearest patch of each point (within a tolerance; NaN outside the cube or on
invalid patches) and the mean over the valid patches a polygon covers. Geometries come in any CRS and are
reprojected onto the cube's; a query without a CRS is refused (unless the cube itself has none)."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from geodino.cube.reading import NORMALISED, as_cubes
from geodino.cube.sampling import feature_blocks
from geodino.errors import ConfigError, EmptySampleError, GeometryOutsideError, MissingCRSError, QueryError
from geodino.grid import cell_index, cell_window, cube_geobox

__all__ = ["as_geoseries", "sample", "PartlyOutsideWarning"]


class PartlyOutsideWarning(UserWarning):
    """Some query geometries fall outside the cube or on invalid patches (their features are NaN)."""


def as_geoseries(geometries, crs=None):
    """Query geometries as a ``GeoSeries``: a GeoDataFrame/GeoSeries (its own CRS), shapely geometries, an
    ``(x, y)`` pair or a list/array of pairs (in ``crs``)."""
    import geopandas as gpd
    from shapely.geometry import Point
    from shapely.geometry.base import BaseGeometry

    if isinstance(geometries, gpd.GeoDataFrame):
        geometries = geometries.geometry
    if isinstance(geometries, gpd.GeoSeries):
        gs = geometries.reset_index(drop=True)
        if crs is not None:
            if gs.crs is None:
                gs = gs.set_crs(crs)
            elif gs.crs != gpd.GeoSeries([], crs=crs).crs:
                raise QueryError(f"the query geometries are in {gs.crs.to_string()} but crs={crs!r} was given: "
                                 "give one CRS (drop crs=, or reproject the geometries)")
        return gs
    if isinstance(geometries, BaseGeometry):
        items = [geometries]
    else:
        arr = np.asarray(geometries, dtype=object) if not isinstance(geometries, np.ndarray) else geometries
        if arr.ndim == 1 and arr.size == 2 and all(isinstance(v, (int, float, np.number)) for v in arr):
            items = [Point(float(arr[0]), float(arr[1]))]
        else:
            items = []
            for g in geometries:
                if isinstance(g, BaseGeometry):
                    items.append(g)
                elif len(g) == 2:
                    items.append(Point(float(g[0]), float(g[1])))
                else:
                    raise QueryError(f"cannot read {g!r} as a query geometry: give shapely geometries, (x, y) "
                                     "pairs or a GeoDataFrame")
    return gpd.GeoSeries(items, crs=crs)


def _in_cube_crs(gs, ds, what: str = "query geometries"):
    cube_crs = ds.rio.crs
    if cube_crs is None:
        if gs.crs is not None:
            raise QueryError(f"the cube has no CRS (pixel coordinates) but the {what} are in {gs.crs.to_string()}: "
                             "give them in the cube's pixel coordinates without a CRS")
        return gs
    if gs.crs is None:
        raise MissingCRSError(f"the {what} have no CRS: give one (crs='EPSG:4326', --crs, or "
                              "GeoDataFrame.set_crs) so they can be placed on the cube")
    return gs.to_crs(cube_crs)


def _point_index(gbox, x: np.ndarray, y: np.ndarray, tolerance: float | None):
    h, w = gbox.shape.yx
    row, col = cell_index(gbox, x, y)
    if tolerance is None:  # the point must lie in the patch's cell
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    else:  # the nearest patch centre within `tolerance` CRS units
        col, row = np.clip(col, 0, w - 1), np.clip(row, 0, h - 1)
        cx, cy = gbox.pix2wld(col + 0.5, row + 0.5)
        ok = np.hypot(x - cx, y - cy) <= tolerance
    return np.where(ok, row, 0), np.where(ok, col, 0), ok


def _sample_one(ds, gs, tolerance, normalize: bool):
    """Sums of features and patch counts for each geometry of ``gs`` (already in the cube's CRS)."""
    import dask
    import dask.array as da
    from rasterio.features import geometry_mask

    gbox = cube_geobox(ds)
    f, v = feature_blocks(ds)
    if normalize:
        f32 = f.astype(np.float32)
        f = f32 / da.maximum(da.sqrt((f32 ** 2).sum(axis=0, keepdims=True)), 1e-12)
    sums, counts = np.zeros((len(gs), f.shape[0]), np.float64), np.zeros(len(gs), np.int64)
    is_point = np.asarray(gs.geom_type == "Point")
    points, polygons = None, {}  # what one dask.compute reads: the points' patches, each polygon's sum and count
    if is_point.any():
        pts = gs[is_point]
        row, col, ok = _point_index(gbox, np.asarray(pts.x), np.asarray(pts.y), tolerance)
        points = (f.vindex[:, row, col], v.vindex[row, col])
    foot = gbox.extent.geom
    for i in np.flatnonzero(~is_point):
        g = gs.iloc[i]
        if g is None or g.is_empty or not g.intersects(foot):
            continue
        roi = cell_window(gbox, g.bounds)
        if roi is None:
            continue
        wbox = gbox[roi]  # the window's grid (its affine: the cube's shifted to the window's origin)
        mask = geometry_mask([g], out_shape=wbox.shape.yx, transform=wbox.affine, invert=True, all_touched=False)
        if not mask.any():  # a polygon smaller than a patch: the patches it touches
            mask = geometry_mask([g], out_shape=wbox.shape.yx, transform=wbox.affine, invert=True, all_touched=True)
        use = da.from_array(mask, chunks=v[roi].chunks) & v[roi]
        win = f[(slice(None), *roi)].astype(np.float32)
        polygons[int(i)] = (da.where(use[None], win, 0).sum(axis=(1, 2), dtype=np.float64), use.sum())
    points, polygons = dask.compute(points, polygons)
    if points is not None:
        idx, (pf, pv) = np.flatnonzero(is_point), points
        good = ok & np.asarray(pv, bool) & np.all(np.isfinite(pf), axis=1)
        sums[idx[good]] = pf[good]
        counts[idx[good]] = 1
    for i, (total, c) in polygons.items():
        sums[i], counts[i] = total, int(c)
    return sums, counts


def sample(cube, geometries, *, crs=None, tolerance: float | None = None, normalize: bool = False,
           strict: bool = False) -> xr.DataArray:
    """Features at ``geometries``: ``(sample, feature)`` float32 with a ``n_patches`` coordinate.

    Points take the patch whose cell holds them (or, with ``tolerance`` in CRS units, the nearest patch centre
    within it); other geometries the mean over the valid patches whose centres they cover (or that they touch,
    for ones smaller than a patch). Rows are NaN (``n_patches`` 0) outside the cube or on invalid patches; with
    several cubes the first that holds a geometry's patches is used. ``normalize`` unit-normalises each patch
    before pooling. Raises :class:`GeometryOutsideError` when no geometry falls inside a cube (``strict``: when
    any falls outside) and :class:`MissingCRSError` for geometries without a CRS.
    """
    cubes, _ = as_cubes(cube, relax=NORMALISED if normalize else ())
    gs = as_geoseries(geometries, crs)
    if len(gs) == 0:
        raise EmptySampleError("no query geometries given: pass at least one point or polygon")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a distance >= 0 in the cube's CRS units, got {tolerance!r}")
    d = cubes[0].sizes["feature"]
    sums = np.zeros((len(gs), d), np.float64)
    counts = np.zeros(len(gs), np.int64)
    inside = np.zeros(len(gs), bool)
    for ds in cubes:
        g = _in_cube_crs(gs, ds)
        foot = cube_geobox(ds).extent.geom
        buf = foot.buffer(tolerance) if tolerance else foot
        inside |= np.asarray(g.intersects(buf))
        todo = np.flatnonzero(counts == 0)
        if not len(todo):
            break
        s, c = _sample_one(ds, g.iloc[todo].reset_index(drop=True), tolerance, normalize)
        sums[todo], counts[todo] = s, c
    where = cubes[0].rio.crs.to_string() if cubes[0].rio.crs else "pixel coordinates"
    bounds = [round(b, 3) for b in cube_geobox(cubes[0]).boundingbox.bbox]
    if not inside.any() or (strict and not inside.all()):
        bad = np.flatnonzero(~inside)
        raise GeometryOutsideError(
            f"{'all ' if not inside.any() else ''}{len(bad)} of {len(gs)} query geometries (#"
            f"{', #'.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}) lie outside the cube (bounds "
            f"{bounds} in {where}): check their coordinates and CRS")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        warnings.warn(f"{len(missing)} of {len(gs)} query geometries fall outside the cube or on invalid patches "
                      f"(#{', #'.join(map(str, missing[:5]))}): their features are NaN", PartlyOutsideWarning,
                      stacklevel=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats = (sums / counts[:, None]).astype(np.float32)
    feats[counts == 0] = np.nan
    return xr.DataArray(feats, dims=("sample", "feature"),
                        coords={"sample": np.arange(len(gs)), "n_patches": ("sample", counts),
                                "geom_type": ("sample", np.asarray(gs.geom_type, dtype=str))},
                        name="features", attrs={"long_name": "features at query geometries"
                                                + (" (unit-normalised before pooling)" if normalize else "")})
