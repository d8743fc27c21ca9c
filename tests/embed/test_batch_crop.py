"""A batch's windows are cropped to the full tile's extended core whatever tile comes first (issue 21, point 8).

The engine crops every window of a batch alike, and `embed/tasks.py` took that crop from the batch's first tile's
own size: right only because the short tiles of the last row and column come last in row-major batches. A batch
that starts with a short tile (a corner) cut its neighbours' features short.
"""

from __future__ import annotations

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox

from geodino.embed.tasks import infer_batch
from geodino.job.tasks import read_tile
from geodino.engine import EngineSpec
from geodino.raster import RasterSource
from geodino.tiling import TileGrid
from tests.embed.conftest import MODEL, TINY
from tests.rasters import texture, write_raster


def test_every_tile_has_the_full_tiles_crop():
    grid = GeoBox((90, 110), Affine(10, 0, 0, 0, -10, 0), None)
    tiles = TileGrid(grid, 64, 16, 16, 1)
    full, corner = tiles.tile_at(0, 0), tiles.tile_at(1, 1)
    assert (corner.height, corner.width) == (32, 48)  # short in both directions
    assert corner.extended_in_window == full.extended_in_window == (slice(0, 6), slice(0, 6))


def test_a_batch_that_starts_with_a_short_tile_gives_each_tile_its_own_features(tiny_weights, tmp_path):
    src = RasterSource(write_raster(tmp_path / "s.tif", texture((90, 110), seed=3)))
    tiles = TileGrid(src.grid, 64, 16, 16, 1)
    spec = EngineSpec(MODEL, str(tiny_weights), "cpu", "fp32", tuple(sorted(TINY.items())))
    radiometry = ((1 / 4000,) * 3, (0.0,) * 3, None)
    data = {t.key: read_tile(src, t, 0.5) for t in tiles.tiles()}
    corner, full = tiles.tile_at(1, 1), tiles.tile_at(0, 0)
    alone = {k: infer_batch(spec, radiometry, [data[k]], "float32")[k] for k in (corner.key, full.key)}
    both = infer_batch(spec, radiometry, [data[corner.key], data[full.key]], "float32")
    for k in (corner.key, full.key):
        t = tiles.tile_at(*map(int, k.split("-")))
        assert both[k].extended.shape == (t.height // 16 + 2, t.width // 16 + 2, TINY["embed_dim"]), k
        np.testing.assert_array_equal(both[k].extended, alone[k].extended)
