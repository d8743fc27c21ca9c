"""Ground resolution in metres, measured against independent truths (Web Mercator's 1/cos(latitude), feet)."""

from __future__ import annotations

import math

import pytest
from affine import Affine
from pyproj import CRS, Transformer
from odc.geo.geobox import GeoBox

from geodino.canopy.resolution import ground_resolution
from geodino.errors import ResolutionError


def _grid(crs: str, res: float, x0: float, y0: float, n: int = 1000) -> GeoBox:
    return GeoBox((n, n), Affine(res, 0, x0 - res * n / 2, 0, -res, y0 + res * n / 2), CRS.from_user_input(crs).to_wkt())


def test_web_mercator_metres_are_shrunk_by_cos_latitude():
    lat = 60.0
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, lat)
    r = ground_resolution(_grid("EPSG:3857", 1.0, x, y), 0.6)
    # Web Mercator is conformal on a sphere; WGS84 ground distances differ from cos(lat) by < 0.5 %
    assert r.x_m == pytest.approx(math.cos(math.radians(lat)), rel=5e-3)
    assert r.y_m == pytest.approx(r.x_m, rel=5e-3)


def test_us_survey_feet_and_tolerance():
    # EPSG:2263 (NY Long Island, US feet): 2 ft = 0.6096 m, within 10 % of 0.6 m: read as it is
    r = ground_resolution(_grid("EPSG:2263", 2.0, 1_000_000, 200_000), 0.6)
    assert r.gsd_m == pytest.approx(2 * 1200 / 3937, rel=2e-3) and r.scale == 1.0
    r = ground_resolution(_grid("EPSG:2263", 3.0, 1_000_000, 200_000), 0.6)
    assert r.scale == pytest.approx(3 * 1200 / 3937 / 0.6, rel=2e-3)


def test_geographic_near_the_equator_is_measured_and_far_from_it_refused():
    r = ground_resolution(_grid("EPSG:4326", 5e-6, 10.0, 1.0), 0.6)
    assert r.x_m == pytest.approx(0.5566, rel=2e-3) and r.y_m == pytest.approx(0.5529, rel=2e-3)
    with pytest.raises(ResolutionError, match="square pixels"):
        ground_resolution(_grid("EPSG:4326", 5e-6, 10.0, 60.0), 0.6)


def test_no_crs_or_no_geotransform():
    with pytest.raises(ResolutionError, match="no CRS"):
        ground_resolution(GeoBox((10, 10), Affine(1, 0, 0, 0, -1, 10), None), 0.6)
    with pytest.raises(ResolutionError, match="no geotransform"):
        ground_resolution(GeoBox((10, 10), Affine.identity(), CRS.from_epsg(32633).to_wkt()), 0.6)
