"""`geodino.canopy.canopy`: heights where the model puts them, blending as specified, masks, resolution,
resume, encodings and provenance."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from geodino.canopy import canopy, open_heights
from geodino.canopy.tasks import is_height_cube
from geodino.cube import read_attrs, tile_status
from geodino.models import RandomWeightsWarning, load_canopy_model
from geodino.raster import RasterSource
from tests.canopy.conftest import GSD, TINY, TINY_HEAD, np_heights, scene_raster


def _direct(weights, scene, row, col, side):
    """Heights of one window computed with the model alone: the read (reflect-padded), uint8 / 255, CHMv2's
    mean/std, forward."""
    m = load_canopy_model(weights, arch=TINY, head_arch=TINY_HEAD)
    raw, _ = RasterSource(str(scene)).read(row, col, side, side)
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)[None]
    x = (x - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return m(x)[0].numpy()


def test_cores_are_the_model_heights_of_their_windows(tmp_path, opts, canopy_weights):
    scene = scene_raster(tmp_path / "s.tif")
    s = canopy(scene, output=str(tmp_path / "chm.tif"), blend=0, **opts)
    assert s.status == "complete" and s.tiles_total == 4 * 4 and not s.random_weights
    # the summary as `geodino canopy --json` prints it: these keys, in this order (as before job.JobSummary)
    assert list(s.to_dict()) == ["scene", "output", "cube", "status", "tiles_total", "tiles_written",
                                 "tiles_skipped", "tiles_resumed", "seconds", "tiles_per_s", "mpx_per_s",
                                 "random_weights", "messages"]
    assert s.to_dict()["output"] == str(tmp_path / "chm.tif") and s.to_dict()["cube"] == s.cube
    h = open_heights(s.cube).values
    for ty, tx in ((0, 0), (1, 2), (3, 3)):  # an edge tile (mirrored context), an inner one, the partial corner
        r, c = ty * 64, tx * 64
        want = _direct(canopy_weights, scene, r - 32, c - 32, 128)[32:96, 32:96]
        got = h[r:r + 64, c:c + 64]
        want = want[:got.shape[0], :got.shape[1]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(h)) and h.shape == (200, 232)
    np.testing.assert_array_equal(np_heights(s.output), h)


def test_blending_ramps_across_core_boundaries(tmp_path, opts, canopy_weights):
    scene = scene_raster(tmp_path / "s.tif")
    b = 16
    s = canopy(scene, output=str(tmp_path / "chm.tif"), blend=b, **opts)
    h = open_heights(s.cube).values
    left = _direct(canopy_weights, scene, 64 - 32, 0 - 32, 128)  # tile (1, 0)
    right = _direct(canopy_weights, scene, 64 - 32, 64 - 32, 128)  # tile (1, 1)
    row = 64 + 32  # mid-core: no vertical neighbour within the ramp
    cols = np.arange(64 - b, 64 + b)
    w_left = np.clip((64 - (cols + 0.5)) / (2 * b) + 0.5, 0, 1)  # linear, 1/2 at the boundary
    want = w_left * left[row - 32, cols + 32] + (1 - w_left) * right[row - 32, cols - 64 + 32]
    np.testing.assert_allclose(h[row, cols], want, rtol=1e-4, atol=1e-4)
    assert np.abs(left[row - 32, 64 + 32 - 1] - right[row - 32, 32]).max() > 1e-3  # windows do disagree there
    inside = 20  # further than the ramp from every boundary: the tile's own window alone
    np.testing.assert_allclose(h[row, inside], left[row - 32, inside + 32], rtol=1e-4, atol=1e-4)


def test_nodata_pixels_and_empty_tiles(tmp_path, opts):
    scene = scene_raster(tmp_path / "s.tif", nodata=0, hole=(slice(0, 70), slice(0, 130)))
    s = canopy(scene, output=str(tmp_path / "chm.tif"), **opts)
    st = tile_status(s.cube)
    assert st[0, 0] == 2 and st[0, 1] == 2 and st[1, 0] == 1  # cores entirely in the hole are skipped
    assert s.tiles_skipped == 2
    h = np_heights(s.output)
    assert np.isnan(h[:70, :130]).all() and np.isfinite(h[70:, :]).all() and np.isfinite(h[:, 130:]).all()
    with rasterio.open(s.output) as ds:
        assert np.isnan(ds.nodata) and ds.overviews(1)


def test_cog_georeferencing_overviews_and_provenance(tmp_path, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(300, 300))
    s = canopy(scene, output=str(tmp_path / "chm.tif"), **opts)
    assert cog_validate(s.output, quiet=True)[0]
    with rasterio.open(s.output) as ds, rasterio.open(scene) as src:
        assert ds.crs == src.crs and ds.transform == src.transform and ds.shape == src.shape
        assert ds.dtypes[0] == "float32" and ds.overviews(1)[0] == 2
        t = ds.tags()
    assert t["units"] == "m" and t["geodino_random_weights"] == "False" and t["geodino_resampled"] == "no"
    assert t["geodino_weights_sha256"] == read_attrs(s.cube)["geodino"]["model"]["weights"]["sha256"]
    assert t["geodino_cube_id"] == read_attrs(s.cube)["geodino"]["cube_id"]
    assert is_height_cube(s.cube)


def test_other_resolutions_are_resampled_in_the_read(tmp_path, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(100, 120), transform=Affine(1.2, 0, 500000, 0, -1.2, 4500000))
    s = canopy(scene, output=str(tmp_path / "chm.tif"), **opts)
    assert any("resampled in the read x2" in m for m in s.messages), s.messages
    with rasterio.open(s.output) as ds:
        assert ds.shape == (200, 240)
        # 0.6 m on the ground: 1.2 map units are 1.2 / 0.9996 m on UTM's central meridian
        assert ds.res == pytest.approx((0.6 * 0.9996, 0.6 * 0.9996), rel=1e-5)
        assert ds.bounds == pytest.approx(rasterio.open(scene).bounds, abs=0.6)
        assert ds.tags()["geodino_resampled"].endswith("bilinear")
        assert ds.tags()["geodino_input_gsd_m"] == str(round(1.2 / 0.9996, 4))


def test_uint16_centimetres(tmp_path, opts):
    scene = scene_raster(tmp_path / "s.tif", nodata=0, hole=(slice(0, 10), slice(0, 10)))
    s = canopy(scene, output=str(tmp_path / "chm.tif"), dtype="uint16", **opts)
    h = open_heights(s.cube).values
    with rasterio.open(s.output) as ds:
        q = ds.read(1)
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535 and ds.scales == (0.01,)
    assert (q[:10, :10] == 65535).all()
    ok = np.isfinite(h)
    np.testing.assert_array_equal(q[ok], np.round(h[ok].astype(np.float64) / 0.01).astype(np.uint16))


def _chunks(cube):
    return {str(f.relative_to(cube)): f.read_bytes() for name in ("heights", "tile_status")
            for f in sorted((cube / name).rglob("*")) if f.is_file() and f.name != "zarr.json"}


def test_interrupted_run_resumes_bit_identically_with_another_batch_size(tmp_path, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(256, 256))
    out = tmp_path / "chm.tif"

    def stop_after_5(scene_, done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        canopy(scene, output=str(out), progress=stop_after_5, **opts)
    cube = tmp_path / "chm.heights.zarr"
    assert not out.exists() and read_attrs(cube)["geodino_status"] == "incomplete"
    st = tile_status(cube)
    assert (st == 0).any() and (st == 1).any()
    s = canopy(scene, output=str(out), **{**opts, "batch_size": 5})
    assert s.status == "complete" and s.tiles_resumed >= 5 and s.tiles_written == 16 - s.tiles_resumed
    clean = canopy(scene, output=str(tmp_path / "clean.tif"), **opts)
    a, b = _chunks(cube), _chunks(tmp_path / "clean.heights.zarr")
    assert a.keys() == b.keys() and len(a) == 32 and all(a[k] == b[k] for k in a)
    np.testing.assert_array_equal(np_heights(out), np_heights(clean.output))


def test_random_weights_are_recorded(tmp_path):
    scene = scene_raster(tmp_path / "s.tif", shape=(64, 64))
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        s = canopy(scene, output=str(tmp_path / "chm.tif"), weights="random", arch=TINY, head_arch=TINY_HEAD,
                   device="cpu", precision="fp32", tile=64, halo=16, threads=1)
    assert s.random_weights
    t = rasterio.open(s.output).tags()
    assert t["geodino_random_weights"] == "True" and "meaningless" in t["geodino_warning"]
    assert t["geodino_weights_sha256"] == "random-init"


def test_real_naip_is_resampled_to_06_m(tmp_path, shared_data, opts):
    naip = shared_data / "naip_m_3607717_sw_18_1_20160620_subset.tif"  # 300x300 px at 1 m, RGBN uint8
    s = canopy(naip, output=str(tmp_path / "naip.tif"), **opts)
    with rasterio.open(s.output) as ds:
        assert ds.shape == (500, 500) and ds.res == pytest.approx((GSD, GSD), rel=1e-3)
        assert ds.tags()["geodino_radiometry"] == "uint8"
        assert np.isfinite(ds.read(1)).all()
