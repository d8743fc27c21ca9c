"""The one place that writes georeferencing: CF/rioxarray (``spatial_ref``) and GeoZarr attributes.

CF attributes are produced by rioxarray itself (``write_crs``/``write_transform``), so GDAL, rioxarray and
odc-geo read them back; GeoZarr's ``proj:*``/``spatial:*`` attributes describe the same grid.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from geodino.geobox import GeoGrid

__all__ = ["cf_grid_mapping", "geozarr_attrs", "grid_coords", "coord_attrs"]

GRID_MAPPING = "spatial_ref"


def grid_coords(grid: GeoGrid) -> dict[str, np.ndarray]:
    """Cell-centre ``y`` and ``x`` coordinates of ``grid`` (CRS units, or pixels without a CRS)."""
    y, x = grid.coords()
    return {"y": y, "x": x}


def coord_attrs(grid: GeoGrid) -> dict[str, dict]:
    """CF attributes of the ``y``/``x`` coordinates (standard_name, long_name, units from the CRS: "metre",
    "degrees_north"...), as rioxarray writes them; pixel coordinates without a CRS."""
    import rioxarray  # noqa: F401

    if not grid.crs:
        return {n: {"axis": n.upper(), "long_name": f"{n} of patch centres (pixels)", "units": "pixel"}
                for n in ("y", "x")}
    ds = xr.Dataset(coords={k: (k, v) for k, v in grid_coords(grid).items()}).rio.write_crs(grid.crs)
    ds = ds.rio.write_coordinate_system()
    return {n: {**dict(ds[n].attrs), "long_name": f"{ds[n].attrs.get('long_name', n)} of patch centres"}
            for n in ("y", "x")}


def cf_grid_mapping(grid: GeoGrid) -> dict:
    """Attributes of the CF ``spatial_ref`` variable (crs_wkt, GeoTransform, CF projection parameters)."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = xr.Dataset(coords={k: (k, v) for k, v in grid_coords(grid).items()})
    if grid.crs:
        ds = ds.rio.write_crs(grid.crs)
    ds = ds.rio.write_transform(grid.transform)
    return dict(ds[GRID_MAPPING].attrs)


def geozarr_attrs(grid: GeoGrid) -> dict:
    """GeoZarr (``proj:``/``spatial:`` conventions) attributes for a group whose arrays end in (y, x)."""
    t = grid.transform
    left, bottom, right, top = grid.bounds
    out = {
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "spatial:shape": list(grid.shape),
        "spatial:bbox": [left, bottom, right, top],
        "spatial:registration": "pixel",
        "zarr_conventions": [
            {"name": "spatial:", "description": "grid transform and shape of the (y, x) dimensions"},
            {"name": "proj:", "description": "coordinate reference system"},
        ],
    }
    if grid.crs:
        from pyproj import CRS

        epsg = grid.epsg()
        if epsg:
            out["proj:code"] = f"EPSG:{epsg}"
        out["proj:wkt2"] = CRS.from_wkt(grid.crs).to_wkt("WKT2_2019")
    return out
