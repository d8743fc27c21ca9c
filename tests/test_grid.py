"""The grid value (odc-geo's GeoBox) with geodino's few helpers on it (geodino.grid), and the tile grid over it."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS

from geodino.errors import GridError
from geodino.grid import cell_boxes, cell_index, cell_window, crs_wkt, grid_dict, require_north_up, rescale
from geodino.raster import RasterSource
from geodino.tiling import TileGrid
from tests.rasters import texture, write_raster

ALBERS = "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23 +lon_0=-96 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


@pytest.mark.parametrize("shape,scale", [((217, 60), 0.6 / 0.47), ((217, 60), 0.3), ((513, 100), 0.7),
                                         ((1098, 1098), 0.7871442315402621), ((3, 7), 1.5), ((5, 5), 0.01)])
def test_rescale_rounds_the_pixel_count_over_the_same_extent(shape, scale):
    """--scale and canopy's resampling: round(n * scale) pixels (the shapes cubes were always made with; odc-geo's
    zoom_to(resolution=...) takes the ceiling), over the same extent, in the same CRS."""
    g = GeoBox(shape, Affine(10.0, 0, 300000.0, 0, -10.0, 5000000.0), CRS.from_epsg(32633).to_wkt())
    r = rescale(g, scale)
    assert r.shape.yx == (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    assert r.affine.c == g.affine.c and r.affine.f == g.affine.f
    assert r.affine.a == pytest.approx(10.0 / scale, rel=1e-15) and r.affine.e == pytest.approx(-10.0 / scale, rel=1e-15)
    assert crs_wkt(r) == crs_wkt(g)
    with pytest.raises(GridError, match="scale must be > 0"):
        rescale(g, 0)


def test_only_north_up_grids_and_the_plain_pixel_grid_pass():
    crs = "EPSG:32633"
    assert require_north_up(GeoBox((4, 4), Affine(10, 0, 0, 0, -10, 40), crs)).shape.yx == (4, 4)
    assert require_north_up(GeoBox((4, 4), Affine.identity(), None))  # no CRS: pixel coordinates, rows downwards
    for t, c in [(Affine(1, 0.5, 0, 0, -1, 0), crs), (Affine(1, 0, 0, 0.2, -1, 0), crs),
                 (Affine(1, 0, 0, 0, 1, 0), crs), (Affine(-1, 0, 0, 0, -1, 0), None)]:
        with pytest.raises(GridError, match="rotated, sheared or south-up.*gdalwarp"):
            require_north_up(GeoBox((4, 4), t, c), "scene.tif")


def _identity_kept(src: RasterSource, path) -> None:
    with rasterio.open(path) as ds:
        wkt, shape, transform = ds.crs.to_wkt(), [ds.height, ds.width], list(ds.transform)[:6]
    g = src.grid
    derived = [g, g.zoom_out(16), rescale(g, 0.7), g[1:5, 2:9], g.pad(3), pickle.loads(pickle.dumps(g)),
               TileGrid(g, 64, 16).patch_grid]
    for d in derived:
        assert crs_wkt(d) == wkt and grid_dict(d)["crs"] == wkt
    assert grid_dict(g) == {"shape": shape, "transform": transform, "crs": wkt}


def test_a_grids_crs_keeps_rasterios_wkt_as_its_identity(tmp_path):
    """Mosaic fingerprints hash grid_dict and cubes in CRSs without an EPSG code are named by a hash of the WKT:
    the text must stay rasterio's (odc-geo's own crs.wkt is another flavour) through every derived grid."""
    for crs in ("EPSG:32633", ALBERS):
        p = write_raster(tmp_path / "s.tif", texture((40, 50), bands=3), crs=crs,
                         transform=Affine(0.6, 0, -1234567.3, 0, -0.6, 2345678.9))
        _identity_kept(RasterSource(p), p)


def test_the_real_rasters_keep_rasterios_wkt(shared_data):
    for p in sorted(shared_data.glob("*.tif")):
        _identity_kept(RasterSource(p, bands="1,1,1"), p)


def test_tiles_count_slice_and_bound_as_by_hand():
    """The tile grid (odc-geo's GeoboxTiles over the patch grid) against hand counting: ceil(ceil(h/p)/n) tiles per
    axis, cores of n patches (shorter at the far edges) partitioning the patch grid, and core bounds at
    origin + k * patch size."""
    rng = random.Random(5)
    for _ in range(200):
        h, w = rng.randint(1, 3000), rng.randint(1, 3000)
        a = rng.choice([10.0, 0.6, 1 / 3, 30.0])
        t = Affine(a, 0, rng.uniform(-1e6, 1e6), 0, -a, rng.uniform(-1e7, 1e7))
        p = rng.choice([16, 1])
        tile = p * rng.choice([2, 4, 32])
        tg = TileGrid(GeoBox((h, w), t, "EPSG:32633"), tile, 0, p)
        ph, pw, n = math.ceil(h / p), math.ceil(w / p), tile // p
        assert tg.patch_grid.shape.yx == (ph, pw) and tg.patch_grid.affine == t * Affine.scale(p)
        assert tg.shape == (math.ceil(ph / n), math.ceil(pw / n))
        pt = tg.patch_grid.affine
        ys, xs = tg.tile_bounds()
        assert ys == [(pt.f + r * n * pt.e, pt.f + min((r + 1) * n, ph) * pt.e) for r in range(tg.shape[0])]
        assert xs == [(pt.c + c * n * pt.a, pt.c + min((c + 1) * n, pw) * pt.a) for c in range(tg.shape[1])]
        for tl in (tg.tile_at(0, 0), tg.tile_at(tg.shape[0] - 1, tg.shape[1] - 1)):
            rows, cols = tl.patch_slice
            assert (rows.start, cols.start) == (tl.ty * n, tl.tx * n)
            assert (rows.stop, cols.stop) == (min((tl.ty + 1) * n, ph), min((tl.tx + 1) * n, pw))
    with pytest.raises(IndexError):
        tg.tile_at(*tg.shape)


def test_cells_under_points_bounds_and_footprints_by_hand():
    """The readers' cell arithmetic against hand truth: a point inside cell (r, c) and a point exactly on the
    cell's top-left corner both fall in (r, c) (odc-geo's wld2pix, x / a - c / a, puts some corners in the cell
    before); a window covers a box's cells with one to spare; footprints are the
    cells' corners."""
    rng = random.Random(3)
    for _ in range(2000):
        a = rng.choice([160.0, 10.0, 0.5])  # with an integer origin: corners are exact, so the edge case is real
        t = Affine(a, 0, rng.randint(-10**6, 10**6), 0, -a, rng.randint(-10**6, 10**7))
        g = GeoBox((50, 60), t, "EPSG:32633")
        r, c = rng.randrange(50), rng.randrange(60)
        rows, cols = cell_index(g, [t.c + (c + 0.5) * a, t.c + c * a], [t.f - (r + 0.5) * a, t.f - r * a])
        assert rows.tolist() == [r, r] and cols.tolist() == [c, c]
        ys, xs = cell_window(g, (t.c + (c + 0.2) * a, t.f - (r + 1.7) * a, t.c + (c + 2.5) * a, t.f - (r + 0.3) * a))
        assert (ys.start, xs.start) == (r, c) and (ys.stop, xs.stop) == (min(50, r + 3), min(60, c + 4))
        box = cell_boxes(g, np.array([r]), np.array([c]))[0]
        assert box.bounds == (t.c + c * a, t.f + r * -a + -a, t.c + c * a + a, t.f + r * -a)
    assert cell_window(g, (t.c - 10 * a, t.f + a, t.c - 5 * a, t.f + 3 * a)) is None  # off the grid
