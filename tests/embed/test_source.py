"""Raster reading: bands, masks, dtypes, windowed reads, reflect padding, radiometry, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from odc.geo.geobox import GeoBox

from geodino.errors import BandError, ConfigError, GridError, RasterError
from geodino.grid import require_north_up
from geodino.raster import RasterSource, inside_mask, resolve_radiometry
from geodino.raster.radiometry import DISPLAY_GAIN
from geodino.tiling import TileGrid
from tests.rasters import texture, write_raster


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_dtypes_and_window_reads(tmp_path, dtype):
    data = texture((70, 90), dtype=dtype, seed=1)
    src = RasterSource(write_raster(tmp_path / "r.tif", data))
    assert src.dtype == np.dtype(dtype)
    raw, valid = src.read(10, 20, 30, 40)
    np.testing.assert_array_equal(raw, data[:, 10:40, 20:60])
    assert raw.dtype == np.dtype(dtype) and valid.all()


def test_reflect_padding_matches_numpy_pixels_and_validity(tmp_path):
    data = texture((50, 60), seed=2)
    data[:, 0:3, 10:20] = 0  # nodata near the top edge: its mirror image is nodata too
    src = RasterSource(write_raster(tmp_path / "r.tif", data, nodata=0))
    raw, valid = src.read(-20, -30, 100, 130)
    ref = np.pad(data, ((0, 0), (20, 30), (30, 40)), mode="reflect")
    np.testing.assert_array_equal(raw, ref)
    np.testing.assert_array_equal(valid, ~np.any(ref == 0, axis=0))  # mirrored pixels are as valid as their source
    inside = inside_mask(-20, -30, 100, 130, (50, 60))
    expect = np.zeros((100, 130), bool)
    expect[20:70, 30:90] = True
    np.testing.assert_array_equal(inside, expect)


def test_reads_are_windowed(tmp_path, monkeypatch):
    """No read ever asks for the whole raster: each is a window no larger than requested."""
    data = texture((400, 500), seed=3)
    src = RasterSource(write_raster(tmp_path / "r.tif", data))
    seen = []
    with src._dataset() as ds:  # this thread's cached handle (the reads below reuse it)
        real = ds.read

    def spy(*a, **k):
        seen.append(k.get("window"))
        return real(*a, **k)

    monkeypatch.setattr(ds, "read", spy)
    tiles = TileGrid(src.grid, 128, 32)
    for t in tiles.tiles():
        r, c = t.read_origin
        src.read(r, c, t.window, t.window)
    assert len(seen) == len(tiles) and all(w is not None and w.width <= 192 and w.height <= 192 for w in seen)


def test_bands_by_index_description_and_colorinterp(tmp_path):
    data = texture((32, 32), bands=4, seed=4)
    p = write_raster(tmp_path / "d.tif", data, descriptions=["B02", "B03", "B04", "B08"])
    assert RasterSource(p, bands="4,3,2").bands == [4, 3, 2]
    assert RasterSource(p, bands="B04,b03,B02").bands == [3, 2, 1]
    assert RasterSource(p).bands == [3, 2, 1]  # Sentinel-2 descriptions give RGB by default
    rgb = write_raster(tmp_path / "rgb.tif", texture((32, 32), bands=4, dtype="uint8"),
                       colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined])
    assert RasterSource(rgb).bands == [3, 2, 1]
    assert RasterSource(rgb, bands="red,green,blue").bands == [3, 2, 1]
    with pytest.raises(BandError, match="exactly 3"):
        RasterSource(p, bands="1,2")
    with pytest.raises(BandError, match="none is labelled"):
        RasterSource(write_raster(tmp_path / "u.tif", data))


def test_masks_nodata_user_nodata_dataset_mask_and_nan(tmp_path):
    data = texture((40, 40), seed=5)
    data[:, :5, :] = 0
    src = RasterSource(write_raster(tmp_path / "n.tif", data, nodata=0))
    assert not src.read(0, 0, 40, 40)[1][:5].any() and src.read(0, 0, 40, 40)[1][5:].all()
    data2 = data.copy()
    data2[:, 10, :] = 7
    src = RasterSource(write_raster(tmp_path / "u.tif", data2), nodata=7)
    v = src.read(0, 0, 40, 40)[1]
    assert not v[10].any() and v[:5].all()  # 0 is not nodata here: only the user's value is
    mask = np.ones((40, 40), bool)
    mask[:, 30:] = False
    src = RasterSource(write_raster(tmp_path / "m.tif", data2, mask=mask))
    np.testing.assert_array_equal(src.read(0, 0, 40, 40)[1], mask)
    f = texture((40, 40), dtype="float32", seed=6)
    f[1, 3, 4] = np.nan
    v = RasterSource(write_raster(tmp_path / "f.tif", f)).read(0, 0, 40, 40)[1]
    assert not v[3, 4] and v.sum() == 40 * 40 - 1


def stack_vrt(path, band_files, width, height, transform, crs="EPSG:32633", dtype="UInt16"):
    """A VRT stacking single-band files (what gdalbuildvrt -separate writes)."""
    bands = "".join(
        f'<VRTRasterBand dataType="{dtype}" band="{i}"><SimpleSource><SourceFilename relativeToVRT="0">{f}'
        f"</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        for i, f in enumerate(band_files, 1))
    wkt = rasterio.crs.CRS.from_string(crs).to_wkt()
    gt = ", ".join(str(v) for v in transform.to_gdal())
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{wkt}</SRS>'
                    f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>")
    return path


def test_vrt_input(tmp_path):
    t = Affine(10, 0, 500000, 0, -10, 4500000)
    arrays = [texture((48, 56), bands=1, seed=i) for i in range(3)]
    files = [write_raster(tmp_path / f"b{i}.tif", a, transform=t) for i, a in enumerate(arrays)]
    vrt = stack_vrt(tmp_path / "stack.vrt", files, 56, 48, t)
    src = RasterSource(vrt)
    raw, valid = src.read(5, 6, 20, 30)
    np.testing.assert_array_equal(raw, np.concatenate(arrays)[:, 5:25, 6:36])
    assert src.grid.affine == t and valid.all()


def test_grid_and_tiles_cover_the_raster_exactly():
    g = GeoBox((170, 200), Affine(10, 0, 0, 0, -10, 0), None)
    tg = TileGrid(g, 64, 32)
    assert tg.patch_grid.shape == (11, 13) and tg.shape == (3, 4)
    cover = np.zeros(tg.patch_grid.shape, int)
    for t in tg.tiles():
        ys, xs = t.patch_slice
        cover[ys, xs] += 1
        assert t.window == 128 and t.read_origin == (t.row - 32, t.col - 32)
    assert (cover == 1).all()
    assert TileGrid.fit(GeoBox((40, 50), Affine.identity(), None), 512, 64).tile == 64
    with pytest.raises(GridError, match="multiple of the patch size"):
        TileGrid(g, 100, 32)
    with pytest.raises(GridError, match="rotated"):
        require_north_up(GeoBox((10, 10), Affine(1, 0.5, 0, 0, -1, 0), "EPSG:4326"))


def test_radiometry_formulas(tmp_path):
    data = np.full((3, 16, 16), 2000, np.uint16)
    p = write_raster(tmp_path / "s2.tif", data, tags={"BOA_ADD_OFFSET_B04": "-1000"})
    src = RasterSource(p)
    r, msg = resolve_radiometry("s2-l2a", src)
    # display = clip(2.25 * reflectance, 0, 1), reflectance = (DN + offset) / 10000
    assert r.apply(data)[0, 0, 0] == pytest.approx(2.25 * (2000 - 1000) / 10000) and "BOA_ADD_OFFSET" in msg
    r, _ = resolve_radiometry("s2-l2a", src, s2_offset=0)
    assert r.apply(data)[0, 0, 0] == pytest.approx(2.25 * 0.2)
    assert r.apply(np.full((3, 1, 1), 9000, np.uint16))[0, 0, 0] == 1.0  # clipped
    r, _ = resolve_radiometry("landsat-c2-l2", src)
    assert r.apply(np.array([[[10000]]] * 3, np.uint16))[0, 0, 0] == pytest.approx(2.25 * (10000 * 2.75e-5 - 0.2))
    r, _ = resolve_radiometry("minmax", src, minmax=(1000, 3000))
    assert r.apply(data)[0, 0, 0] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="--minmax"):
        resolve_radiometry("minmax", src)
    assert DISPLAY_GAIN == 2.25


@pytest.mark.parametrize("tags,offset,why", [
    ({"PROCESSING_BASELINE": "05.09"}, -1000.0, "baseline"),
    ({"PROCESSING_BASELINE": "02.14"}, 0.0, "baseline"),
    ({"PRODUCT_START_TIME": "2019-07-01T10:40:21.024Z"}, 0.0, "sensed 2019-07-01"),
])
def test_the_s2_offset_from_baseline_or_sensing_date(tmp_path, tags, offset, why):
    src = RasterSource(write_raster(tmp_path / "s2.tif", np.full((3, 8, 8), 2000, np.uint16), tags=tags))
    r, msg = resolve_radiometry("s2-l2a", src)
    assert r.params["offset"] == offset and why in msg


@pytest.mark.parametrize("tags", [{}, {"PRODUCT_START_TIME": "2023-05-04T10:40:21Z"}])
def test_an_unknown_s2_offset_is_an_error_naming_the_option(tmp_path, tags):
    src = RasterSource(write_raster(tmp_path / "s2.tif", np.full((3, 8, 8), 2000, np.uint16), tags=tags))
    with pytest.raises(ConfigError, match="--s2-offset -1000 .* or --s2-offset 0"):
        resolve_radiometry("s2-l2a", src)


def test_default_radiometry_follows_the_metadata_and_percentile_only_on_request(tmp_path):
    u8 = RasterSource(write_raster(tmp_path / "a.tif", texture((64, 64), dtype="uint8")))
    r, msg = resolve_radiometry(None, u8)
    assert r.kind == "uint8" and "8-bit data" in msg
    s2 = RasterSource(write_raster(tmp_path / "s2.tif", texture((64, 64)),
                                   tags={"PRODUCT_TYPE": "S2MSI2A", "PROCESSING_BASELINE": "05.10"}))
    r, msg = resolve_radiometry(None, s2)
    assert r.kind == "s2-l2a" and r.params["offset"] == -1000.0 and "Sentinel-2 L2A" in msg
    ls = RasterSource(write_raster(tmp_path / "l.tif", texture((64, 64)),
                                   tags={"LANDSAT_PRODUCT_ID": "LC08_L2SP_015033_20200820_20200905_02_T1"}))
    assert resolve_radiometry(None, ls)[0].kind == "landsat-c2-l2"
    data = texture((200, 200), seed=9)
    src = RasterSource(write_raster(tmp_path / "b.tif", data))
    with pytest.raises(ConfigError, match="does not say which sensor made it: choose --radiometry"):
        resolve_radiometry(None, src)
    r, msg = resolve_radiometry("percentile", src)
    lo, hi = np.percentile(data[0].astype(float), [2, 98])  # no overview: the decimated read is the raster
    assert r.params["min"][0] == pytest.approx(lo) and r.params["max"][0] == pytest.approx(hi)
    assert r.apply(data).min() == 0.0 and r.apply(data).max() == 1.0 and "this scene only" in msg


def test_radiometry_like_reuses_another_cubes_exact_mapping(tmp_path):
    src = RasterSource(write_raster(tmp_path / "b.tif", texture((64, 64), seed=2)))
    ref, _ = resolve_radiometry("percentile", src)
    other = RasterSource(write_raster(tmp_path / "c.tif", texture((64, 64), seed=3) // 2 + 7))
    got, msg = resolve_radiometry(None, other, like={**ref.to_dict(), "copied_from": "a.zarr"})
    assert got.same_mapping(ref) and got.gain == ref.gain and "copied from another cube" in msg
    assert not resolve_radiometry("percentile", other)[0].same_mapping(ref)


def test_not_a_raster_and_directory(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"\x00" * 100)
    with pytest.raises(RasterError, match="not a raster"):
        RasterSource(tmp_path / "x.tif")
    with pytest.raises(RasterError, match="directory"):
        RasterSource(tmp_path)


def test_close_releases_every_threads_handles(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    src = RasterSource(write_raster(tmp_path / "r.tif", texture((64, 64), seed=1)))
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: src.read(i, i, 8, 8), range(12)))
    handles = list(src._handles)
    assert handles and not any(h.closed for h in handles)
    src.close()
    assert all(h.closed for h in handles)
    assert src.read(0, 0, 4, 4)[0].shape == (3, 4, 4)  # reopens on demand
