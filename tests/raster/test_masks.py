"""Masks survive every read path (issue 21, point 3): the file's own masks count with or without `--nodata`, a
warp's fill (a mosaic's grid, `--scale`) is never valid, and resampling keeps nodata values out of valid pixels.
Each case is checked against an independent truth: the same pixels read from a file that declares the nodata."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from geodino.raster import RasterSource
from geodino.raster.warped import on_grid
from tests.rasters import texture, write_raster

T = Affine(10.0, 0, 500000.0, 0, -10.0, 4500000.0)


def _scene(tmp_path, name="s.tif", nodata=None, hole=0, **kw):
    data = texture((64, 80), seed=2)
    data[:, 16:40, 24:48] = hole  # a hole of nodata values, not declared unless ``nodata``
    return write_raster(tmp_path / name, data, nodata=nodata, transform=T, **kw), data


def test_user_nodata_keeps_the_files_mask_band(tmp_path):
    """--nodata on a file with a mask band: both count (before, --nodata switched the mask off)."""
    data = texture((40, 40), seed=5)
    data[:, 10, :] = 7
    mask = np.ones((40, 40), bool)
    mask[:, 30:] = False
    src = RasterSource(write_raster(tmp_path / "m.tif", data, mask=mask), nodata=7)
    v = src.read(0, 0, 40, 40)[1]
    expected = mask.copy()
    expected[10] = False
    np.testing.assert_array_equal(v, expected)


def test_user_nodata_still_overrides_the_files_nodata_value(tmp_path):
    """The file says 0 is nodata, the user says 7: 0 is data, 7 is not (README: --nodata overrides the file's)."""
    data = texture((40, 40), seed=5)
    data[:, :5] = 0
    data[:, 10, :] = 7
    v = RasterSource(write_raster(tmp_path / "n.tif", data, nodata=0), nodata=7).read(0, 0, 40, 40)[1]
    assert v[:5].all() and not v[10].any()


@pytest.mark.parametrize("resampling", ["bilinear", "cubic"])
def test_scale_with_user_nodata_equals_the_file_declaring_it(tmp_path, resampling):
    """`--scale 2 --nodata 0` on a file that declares no nodata reads the very pixels and validity of the same file
    declaring nodata 0: resampling never mixes the hole's zeros into valid pixels. Before, the user's nodata was
    unknown to the warp: edge pixels of the hole held smeared values (between 0 and the data) and counted as
    valid."""
    plain, _ = _scene(tmp_path, "plain.tif")
    declared, _ = _scene(tmp_path, "declared.tif", nodata=0)
    a = RasterSource(plain, nodata=0, scale=2, resampling=resampling)
    b = RasterSource(declared, scale=2, resampling=resampling)
    da, va = a.read(0, 0, 128, 160)
    db, vb = b.read(0, 0, 128, 160)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(np.where(va, da, 0), np.where(vb, db, 0))
    hole = np.zeros((128, 160), bool)
    hole[32:80, 48:96] = True
    assert not va[hole].any()  # the hole itself (2 x its source pixels)
    core = np.ones_like(hole)
    core[28:84, 44:100] = False  # away from the hole's edge (and its bilinear reach)
    assert va[core].all()


def test_scale_without_any_nodata_is_all_valid(tmp_path):
    src = RasterSource(write_raster(tmp_path / "a.tif", texture((32, 32), seed=1), transform=T), scale=2)
    assert src.read(0, 0, 64, 64)[1].all()


@pytest.mark.parametrize("nodata", [None, 255])
@pytest.mark.parametrize("file_nodata", [None, 0])
def test_a_warps_fill_is_never_valid_with_or_without_user_nodata(tmp_path, nodata, file_nodata):
    """A scene read onto a larger grid (a mosaic's): pixels outside its footprint are invalid whatever --nodata
    says. Before, --nodata switched GDAL's masks off and the warp's zero fill counted as valid."""
    data = texture((40, 40), seed=3, dtype="uint8", scale=200)
    path = write_raster(tmp_path / "s.tif", data, nodata=file_nodata, transform=T)
    src = RasterSource(path, nodata=nodata)
    target = GeoBox((80, 90), Affine(10.0, 0, 500000.0 - 200, 0, -10.0, 4500000.0 + 150), src.grid.crs)
    ws, how = on_grid(src, target)
    assert how == "exact"
    _, valid = ws.read(0, 0, 80, 90)
    inside = np.zeros((80, 90), bool)
    inside[15:55, 20:60] = True
    np.testing.assert_array_equal(valid, inside)


def test_a_warp_off_the_lattice_keeps_nodata_out_of_the_resampling(tmp_path):
    """A scene resampled onto a mosaic grid with --nodata (the file declares none) equals the same scene declaring
    that nodata: the hole and the outside invalid, no smeared values."""
    plain, _ = _scene(tmp_path, "plain.tif")
    declared, _ = _scene(tmp_path, "declared.tif", nodata=0)
    crs = RasterSource(plain).grid.crs
    target = GeoBox((90, 100), Affine(7.5, 0, 500000.0 - 63.3, 0, -7.5, 4500000.0 + 41.7), crs)
    wa, how = on_grid(RasterSource(plain, nodata=0), target)
    wb, _ = on_grid(RasterSource(declared), target)
    assert how.startswith("resampled")
    da, va = wa.read(0, 0, 90, 100)
    db, vb = wb.read(0, 0, 90, 100)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(np.where(va, da, 0), np.where(vb, db, 0))
    assert not va[:, :5].any() and not va[:4].any()  # outside the scene (it starts 63 m, 42 m in)


def test_an_rgba_scene_is_read_on_a_grid_with_its_alpha(tmp_path):
    """Issue 21, point 8: a valid RGBA GeoTIFF read onto a mosaic grid (before: "The VRT already has an alpha
    band", surfaced as "the file is truncated or corrupt"): its alpha and its footprint both mark the invalid
    pixels."""
    rgba = np.concatenate([texture((40, 40), seed=4, dtype="uint8", scale=200),
                           np.full((1, 40, 40), 255, np.uint8)])
    rgba[3, :, :8] = 0  # transparent columns
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=4, dtype="uint8", crs="EPSG:32633",
                       transform=T, photometric="RGB", alpha="YES") as ds:
        ds.write(rgba)
    src = RasterSource(path, bands="1,2,3")
    np.testing.assert_array_equal(src.read(0, 0, 40, 40)[1], rgba[3] > 0)
    target = GeoBox((60, 60), Affine(10.0, 0, 500000.0 - 100, 0, -10.0, 4500000.0 + 100), src.grid.crs)
    ws, _ = on_grid(src, target)
    _, valid = ws.read(0, 0, 60, 60)
    inside = np.zeros((60, 60), bool)
    inside[10:50, 10:50] = rgba[3] > 0
    np.testing.assert_array_equal(valid, inside)
