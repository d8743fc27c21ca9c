"""The common grid of a mosaic's scenes in one CRS, and the names of its cubes: what a resume of a mosaic that was
begun before depends on (the grid is part of the fingerprint; the cube's name comes from the CRS)."""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS

from geodino.embed.mosaic import _common_grid, _crs_key
from geodino.errors import GridError
from geodino.grid import grid_dict
from geodino.raster import RasterSource
from tests.rasters import texture, write_raster

ALBERS = "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23 +lon_0=-96 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
UTM33 = CRS.from_epsg(32633).to_wkt()


def _plans(grids):
    return [SimpleNamespace(source=SimpleNamespace(grid=g)) for g in grids]


def _lattice_cover(grids, tile):
    """The rule by hand: the finest scene's pixel lattice, tiles of ``tile`` px at multiples of tile x resolution
    from the CRS origin shifted by its phase, covering the scenes' union (1e-6 of a tile cell of slack)."""
    ref = min(grids, key=lambda g: abs(g.affine.a) * abs(g.affine.e))
    t = ref.affine
    rx, ry = abs(t.a), abs(t.e)
    sx, sy = tile * rx, tile * ry
    px, py = t.c % rx, t.f % ry
    b = np.array([g.boundingbox.bbox for g in grids])
    x0 = px + math.floor((b[:, 0].min() - px) / sx + 1e-6) * sx
    x1 = px + math.ceil((b[:, 2].max() - px) / sx - 1e-6) * sx
    y1 = py + math.ceil((b[:, 3].max() - py) / sy - 1e-6) * sy
    y0 = py + math.floor((b[:, 1].min() - py) / sy + 1e-6) * sy
    return (round((y1 - y0) / ry), round((x1 - x0) / rx)), Affine(rx, 0, x0, 0, -ry, y1)


def test_the_common_grid_is_the_lattice_cover_bit_for_bit_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        tile = int(rng.choice([64, 128, 512]))
        res = float(rng.choice([10, 0.6, 0.3, 30, 1 / 3]))
        resy = res * float(rng.choice([1, 1, 1.5]))
        grids = []
        for _ in range(int(rng.integers(1, 4))):
            f = float(rng.choice([1, 1, 2]))
            x0 = 300000 + int(rng.integers(0, 5000)) * res + (float(rng.random()) * res if rng.random() < 0.3 else 0)
            y0 = 5000000 - int(rng.integers(0, 5000)) * resy
            grids.append(GeoBox((int(rng.integers(1, 2000)), int(rng.integers(1, 2000))),
                                Affine(res * f, 0, x0, 0, -resy * f, y0), UTM33))
        g = _common_grid(_plans(grids), tile)
        shape, affine = _lattice_cover(grids, tile)
        assert g.shape.yx == shape and tuple(g.affine) == tuple(affine)  # the last bit too: it is fingerprinted
        assert g.shape.y % tile == 0 and g.shape.x % tile == 0


def test_scenes_too_far_apart_for_one_cube_are_refused():
    far = [GeoBox((10, 10), Affine(0.3, 0, 0, 0, -0.3, 0), UTM33),
           GeoBox((10, 10), Affine(0.3, 0, 900000, 0, -0.3, 9000000), UTM33)]
    with pytest.raises(GridError, match="too far apart for one cube"):
        _common_grid(_plans(far), 512)


LAYOUT = [  # crs, transform, shape: two CRSs (one without an EPSG code), scenes on and off each other's lattice
    ("EPSG:32633", Affine(10.0, 0, 500003.0, 0, -10.0, 4500007.0), (300, 260)),
    ("EPSG:32633", Affine(10.0, 0, 502573.0, 0, -10.0, 4498777.0), (200, 310)),
    ("EPSG:32633", Affine(20.0, 0, 499000.5, 0, -20.0, 4501000.25), (100, 90)),
    (ALBERS, Affine(0.6, 0, -1234567.3, 0, -0.6, 2345678.9), (150, 170)),
    (ALBERS, Affine(0.6, 0, -1234467.9, 0, -0.6, 2345600.3), (120, 100)),
]


def test_a_fixed_mosaic_keeps_the_grids_and_cube_names_it_was_begun_with(tmp_path):
    """Frozen from geodino before its grid was odc-geo's GeoBox (commit 9293596, GeoGrid): the grid recorded in
    the settings (shape, transform, rasterio's WKT) and the cube names, so that a mosaic a user began then resumes."""
    srcs = [RasterSource(write_raster(tmp_path / f"s{i}.tif", texture(shape, bands=3, seed=i), crs=crs,
                                      transform=t)) for i, (crs, t, shape) in enumerate(LAYOUT)]
    utm = _common_grid(_plans([s.grid for s in srcs[:3]]), 64)
    assert grid_dict(utm) == {"shape": [448, 768], "transform": [10.0, 0.0, 498563.0, 0.0, -10.0, 4501127.0],
                              "crs": rasterio.open(tmp_path / "s0.tif").crs.to_wkt()}
    assert _crs_key(utm) == ("epsg32633", "EPSG:32633")
    albers = _common_grid(_plans([s.grid for s in srcs[3:]]), 128)
    wkt = rasterio.open(tmp_path / "s3.tif").crs.to_wkt()
    assert grid_dict(albers) == {"shape": [384, 384], "transform": [0.6, 0.0, -1234636.3, 0.0, -0.6, 2345702.9],
                                 "crs": wkt}
    h = hashlib.sha256(wkt.encode()).hexdigest()[:8]
    assert _crs_key(albers) == (f"crs-{h}", f"CRS {h}")
