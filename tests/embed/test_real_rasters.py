"""The real satellite rasters in ../shared/data (see its MANIFEST.md): skipped with a reason where absent."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from geodino.cube import open_cube
from geodino.embed import EmbedConfig, embed
from geodino.errors import ConfigError
from tests.embed.test_source import stack_vrt

CASES = [
    # file, options, expected bands
    ("s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif",
     {"bands": "B04,B03,B02", "radiometry": "s2-l2a", "s2_offset": 0}, [3, 2, 1]),
    ("rasterio_RGB.byte.tif", {}, [1, 2, 3]),  # 8-bit: the uint8 preset by default
    ("rasterio_cogeo.tif", {}, [1, 2, 3]),
    ("naip_m_3607717_sw_18_1_20160620_subset.tif", {}, [1, 2, 3]),
    ("landsat_ard_albers_3band_int16.tif", {"bands": "3,2,1", "radiometry": "percentile"}, [3, 2, 1]),
    ("l8_elkton_B4_epsg4326.tif", {"bands": "1,1,1", "radiometry": "landsat-c2-l2"}, [1, 1, 1]),
]


def opts_for(tiny_opts, **opts):
    """The tiny model with the case's own radiometry (metadata defaults where the case gives none)."""
    return {**tiny_opts, "radiometry": None, "minmax": None, **opts}


@pytest.mark.parametrize("name,opts,bands", CASES, ids=[c[0].split(".")[0] for c in CASES])
def test_real_raster_to_cube(shared_data, tmp_path, tiny_opts, name, opts, bands):
    path = shared_data / name
    [s] = embed([path], EmbedConfig.build(**opts_for(tiny_opts, **opts), tile=128, halo=32,
                                          output=str(tmp_path / "c.zarr")))
    assert s.status == "complete"
    ds = open_cube(s.output)
    with rasterio.open(path) as src:
        assert ds.rio.crs == src.crs
        assert tuple(ds.rio.transform())[:6] == pytest.approx(tuple(src.transform @ Affine.scale(16))[:6])
        assert ds.sizes["y"] == -(-src.height // 16) and ds.sizes["x"] == -(-src.width // 16)
        mask = np.all(src.read_masks(bands) > 0, axis=0)
    assert ds.attrs["geodino"]["bands"]["indexes"] == bands
    # patch validity follows the file's own mask (nodata collar, internal mask)
    H, W = mask.shape
    padded = np.zeros((ds.sizes["y"] * 16, ds.sizes["x"] * 16), bool)
    padded[:H, :W] = mask
    frac = padded.reshape(ds.sizes["y"], 16, ds.sizes["x"], 16).mean(axis=(1, 3))
    np.testing.assert_array_equal(ds.valid.values, (frac >= 0.5) & (frac > 0))
    feats = ds.features.values
    assert np.isfinite(feats[:, ds.valid.values]).all()


def test_rgb_byte_collar_skips_empty_tiles(shared_data, tmp_path, tiny_opts):
    [s] = embed([shared_data / "rasterio_RGB.byte.tif"],
                EmbedConfig.build(**opts_for(tiny_opts), tile=64, halo=16, output=str(tmp_path / "c.zarr")))
    assert s.tiles_skipped > 0 and s.tiles_written + s.tiles_skipped == s.tiles_total
    ds = open_cube(s.output)
    skipped = ds.tile_status.values == 2
    assert np.isnan(ds.cls.values[skipped]).all() and np.isfinite(ds.cls.values[~skipped]).all()


def test_sentinel2_band_files_stacked_in_a_vrt(shared_data, tmp_path, tiny_opts):
    files = [shared_data / f"s2l2a_29RKH_20200219_{b}.tif" for b in ("B04", "B03", "B02")]
    with rasterio.open(files[0]) as ds:
        t, w, h, crs = ds.transform, ds.width, ds.height, ds.crs.to_string()
    vrt = stack_vrt(tmp_path / "rgb.vrt", files, w, h, t, crs=crs)
    opts = opts_for(tiny_opts, radiometry="s2-l2a")
    # the files carry no sensing date, processing baseline or BOA_ADD_OFFSET: the offset must be given
    with pytest.raises(ConfigError, match="--s2-offset -1000 for products processed since 2022-01-25"):
        embed([vrt], EmbedConfig.build(**opts, tile=256, halo=32, output=str(tmp_path / "c.zarr")))
    assert not (tmp_path / "c.zarr").exists()
    [s] = embed([vrt], EmbedConfig.build(**opts, s2_offset=0, tile=256, halo=32, output=str(tmp_path / "c.zarr")))
    ds = open_cube(s.output)
    assert s.status == "complete" and ds.rio.crs.to_epsg() == 32629
    rad = ds.attrs["geodino"]["radiometry"]
    assert rad["params"]["offset"] == 0.0 and rad["gain"] == pytest.approx([2.25e-4] * 3) and rad["bias"] == [0.0] * 3
