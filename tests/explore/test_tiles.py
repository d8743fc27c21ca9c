"""The tile lookup (the hand-kept approximate warp behind heat and PCA tiles) against an exact per-pixel
projection: pyproj on every pixel centre of the tile, then the cell under it from the grid's affine."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer

from geodino.explore.tiles import TILE, tile_bounds, tile_geobox, tile_lookup

GRIDS = {
    "utm": GeoBox((60, 80), Affine(160.0, 0, 500000.0, 0, -160.0, 4500000.0), "EPSG:32633"),
    "lonlat": GeoBox((40, 50), Affine(0.01, 0, 14.0, 0, -0.01, 45.0), "EPSG:4326"),
}


def exact_lookup(gbox: GeoBox, z: int, x: int, y: int):
    """(flat patch index or -1, distance of the pixel centre to the nearest cell edge in cells) per pixel."""
    minx, miny, maxx, maxy = tile_bounds(z, x, y)
    px = minx + (np.arange(TILE) + 0.5) * (maxx - minx) / TILE
    py = maxy - (np.arange(TILE) + 0.5) * (maxy - miny) / TILE
    gx, gy = np.meshgrid(px, py)
    wx, wy = Transformer.from_crs("EPSG:3857", gbox.crs.proj, always_xy=True).transform(gx.ravel(), gy.ravel())
    t = gbox.affine
    fc, fr = (wx - t.c) / t.a, (wy - t.f) / t.e
    col, row = np.floor(fc), np.floor(fr)
    h, w = gbox.shape.yx
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = np.where(inside, row * w + col, -1).astype(np.int64)
    edge = np.minimum.reduce([fc - col, col + 1 - fc, fr - row, row + 1 - fr])
    return flat, edge


def tile_at(gbox: GeoBox, fx: float, fy: float, z: int):
    """The XYZ tile at the grid's pixel position (fx, fy)."""
    lon, lat = Transformer.from_crs(gbox.crs.proj, "EPSG:4326", always_xy=True).transform(*gbox.pix2wld(fx, fy))
    n = 2 ** z
    return z, int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_tile_lookup_is_the_patch_under_each_pixel_centre(name):
    gbox = GRIDS[name]
    h, w = gbox.shape.yx
    checked = 0
    for z in (9, 11, 13, 15):
        for fx, fy in ((w / 2, h / 2), (0.2, 0.3), (w - 0.1, h - 0.2)):  # the middle and two corners
            z, x, y = tile_at(gbox, fx, fy, z)
            got = tile_lookup(gbox, z, x, y)
            want, edge = exact_lookup(gbox, z, x, y)
            assert got is not None and got.shape == (TILE * TILE,)
            diff = got != want
            # the lattice is linear over 16 px: it may only disagree for centres within 1e-3 cell of an edge
            assert not (diff & (edge > 1e-3)).any(), (z, x, y, int(diff.sum()))
            assert diff.mean() < 1e-3
            checked += int((want >= 0).sum())
    assert checked > 100_000
    # a tile far away (the other hemisphere) misses the grid: no lookup, nothing drawn
    assert tile_lookup(gbox, 9, 10, 400) is None


def test_tile_geobox_is_the_tiles_bounds():
    for z, x, y in ((0, 0, 0), (12, 2200, 1500), (19, 280000, 190000)):
        g = tile_geobox(z, x, y)
        minx, miny, maxx, maxy = tile_bounds(z, x, y)
        assert g.shape.yx == (TILE, TILE) and str(g.crs) == "EPSG:3857"
        assert g.affine.c == minx and g.affine.f == maxy
        assert g.boundingbox == pytest.approx((minx, miny, maxx, maxy), abs=1e-6)
