"""A source read onto a larger grid of its CRS (what a mosaic reads scenes through)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from geodino.raster import RasterSource
from geodino.raster.warped import grid_offset, on_grid
from tests.rasters import texture, write_raster

TARGET = Affine(10, 0, 500000, 0, -10, 4500800)  # the scene below sits 64 rows down, 64 columns right


@pytest.mark.parametrize("nodata", [None, 0])
def test_a_scene_on_the_lattice_is_copied_exactly_and_invalid_outside(tmp_path, nodata):
    data = texture((100, 120), seed=1)
    mask = np.ones((100, 120), bool)
    mask[10:30, 20:50] = False  # GDAL's dataset mask (or, with nodata, pixels set to it)
    if nodata is not None:
        data[:, ~mask] = nodata
    path = write_raster(tmp_path / "s.tif", data, transform=Affine(10, 0, 500640, 0, -10, 4500160), nodata=nodata,
                        mask=mask if nodata is None else None)
    src = RasterSource(path)
    target = GeoBox((300, 300), TARGET, src.grid.crs)
    assert grid_offset(src.grid, target) == (64, 64)
    ws, how = on_grid(src, target)
    assert how == "exact" and ws.grid == target
    raw, valid = ws.read(0, 0, 300, 300)
    inside = np.s_[64:164, 64:184]
    np.testing.assert_array_equal(valid[inside], mask)  # the file's own mask, on the target grid
    assert valid.sum() == mask.sum()  # nothing valid outside the scene
    np.testing.assert_array_equal(raw[(slice(None), *inside)][:, mask], data[:, mask])
    # a worker receives it by pickling (no GDAL handle travels), and reads the same
    again = pickle.loads(pickle.dumps(ws))
    np.testing.assert_array_equal(again.read(64, 64, 100, 120)[0], raw[(slice(None), *inside)])
    ws.close()
    again.close()


def test_a_scene_off_the_lattice_is_resampled(tmp_path):
    path = write_raster(tmp_path / "s.tif", texture((64, 64), seed=2), transform=Affine(10, 0, 500645, 0, -10, 4500160))
    src = RasterSource(path)
    target = GeoBox((200, 200), TARGET, src.grid.crs)
    assert grid_offset(src.grid, target) is None
    ws, how = on_grid(src, target)
    assert how == "resampled (bilinear)"
    raw, valid = ws.read(0, 0, 200, 200)
    # the scene covers columns 64.5..128.5 of the target: 63 or 64 columns of valid pixels
    cols = np.flatnonzero(valid.any(axis=0))
    assert 64 <= cols[0] <= 65 and 127 <= cols[-1] <= 128
    ws.close()
