"""A mosaic's `valid` follows its scenes' footprints (issue 21, point 3), with or without `--nodata`, on real
imagery: the NAIP crop (no nodata, no mask) and a second scene made from it by moving and rescaling its grid
(resampled onto the mosaic's grid). Before, `--nodata` switched GDAL's masks off: the warp's fill outside a scene
counted as valid, so patches no scene covers were "valid" and tiles could go to a scene that does not cover them.
An RGBA scene (issue 21, point 8) joins a mosaic with its alpha as its mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

import geodino
from geodino.cube.mosaic import tile_sources
from geodino.embed import EmbedConfig, embed
from tests.embed.conftest import MODEL, TINY

NAIP = "naip_m_3607717_sw_18_1_20160620_subset.tif"


def _opts(weights, out, **kw):
    kw = {"mosaic": True, **kw}
    return EmbedConfig.build(model=MODEL, weights=str(weights), arch=dict(TINY), device="cpu", threads=2, tile=64,
                             halo=16, blend=1, batch_size=4, bands="1,2,3", output=str(out), **kw)


@pytest.fixture(scope="module")
def scenes(shared_data, tmp_path_factory):
    """A: the NAIP crop as it is (1 m, 300 x 300 px, no nodata). B: its pixels on a grid of 1.25 m moved 170.4 m
    east and 95.6 m south (a later date): it covers ground A does not, and the union's bounding box holds ground
    neither covers."""
    d = tmp_path_factory.mktemp("naip2")
    a = shared_data / NAIP
    with rasterio.open(a) as src:
        prof, data = src.profile, src.read()
    t = prof["transform"]
    tb = Affine(1.25, 0, t.c + 170.4, 0, -1.25, t.f - 95.6)
    b = d / "naip_shifted_20170620.tif"
    # four plain bands, as NAIP's (GDAL would otherwise take a 4-band 8-bit RGB file's fourth band for alpha)
    with rasterio.open(b, "w", **{**prof, "transform": tb, "photometric": "MINISBLACK"}) as dst:
        dst.write(data)
    with rasterio.open(b) as check:
        assert ColorInterp.alpha not in check.colorinterp
    return a, b


def _footprint_fraction(ds, bounds_list) -> np.ndarray:
    """Per patch of ``ds``, the fraction of its 16 x 16 pixel centres inside any of the rectangles."""
    t = ds.rio.transform()  # patch grid: 16 px of the mosaic's 1 m grid
    h, w = ds.sizes["y"], ds.sizes["x"]
    sub = (np.arange(16) + 0.5) / 16
    ys = t.f + t.e * (np.arange(h)[:, None] + sub[None, :])  # [h, 16]
    xs = t.c + t.a * (np.arange(w)[:, None] + sub[None, :])  # [w, 16]
    inside = np.zeros((h, 16, w, 16), bool)
    for left, bottom, right, top in bounds_list:
        iy = (ys > bottom) & (ys < top)
        ix = (xs > left) & (xs < right)
        inside |= iy[:, :, None, None] & ix[None, None, :, :]
    return inside.mean(axis=(1, 3))


@pytest.mark.parametrize("nodata", [None, 255], ids=["no --nodata", "--nodata 255"])
def test_valid_follows_the_scenes_footprints(scenes, tiny_weights, tmp_path, nodata):
    a, b = scenes
    out = tmp_path / "region"
    [s] = embed([str(a), str(b)], _opts(tiny_weights, out, **({"nodata": nodata} if nodata is not None else {})))
    assert s.status == "complete"
    ds = geodino.open_cube(s.output)
    bounds = []
    for p in (a, b):
        with rasterio.open(p) as src:
            bounds.append(tuple(src.bounds))
    # a tile's features (and validity) are its chosen scene's: truth is that scene's footprint per patch
    choice = tile_sources(s.output)
    per = [_footprint_fraction(ds, [b]) for b in bounds]
    tp = ds.attrs["geodino"]["tiling"]["tile"] // 16  # patches per tile side
    chosen = np.repeat(np.repeat(choice, tp, 0), tp, 1)[: ds.sizes["y"], : ds.sizes["x"]]
    frac = np.where(chosen == 0, per[0], np.where(chosen == 1, per[1], 0.0))
    valid = ds["valid"].values
    assert (_footprint_fraction(ds, bounds) == 0).sum() > 20  # ground neither scene covers (bounding box corners)
    np.testing.assert_array_equal(valid[frac <= 0.25], False, err_msg="patches outside their scene are valid")
    np.testing.assert_array_equal(valid[frac >= 0.75], True, err_msg="patches inside their scene are invalid")
    # every tile went to a scene that covers its core (the fill of a scene never wins a tile)
    for (ty, tx), idx in np.ndenumerate(choice):
        if idx >= 0:
            block = per[idx][ty * tp:(ty + 1) * tp, tx * tp:(tx + 1) * tp]
            assert block.max() > 0, (ty, tx, idx)


def test_an_rgba_scene_joins_a_mosaic_with_its_alpha(shared_data, tiny_weights, tmp_path):
    """Issue 21, point 8: an RGBA GeoTIFF (the NAIP crop's RGB, its left 64 columns transparent) embeds with
    --mosaic as it does alone (before: exit 2, "the file is truncated or corrupt": GDAL refused a second alpha
    band), with its transparent patches invalid in both (the mosaic's patches on its own tile lattice)."""
    with rasterio.open(shared_data / NAIP) as src:
        prof, rgb = src.profile, src.read([1, 2, 3])
    alpha = np.full((1, *rgb.shape[1:]), 255, np.uint8)
    alpha[:, :, :64] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", **{**prof, "count": 4, "photometric": "RGB", "alpha": "YES"}) as dst:
        dst.write(np.concatenate([rgb, alpha]))
    [m] = embed([str(path)], _opts(tiny_weights, tmp_path / "region"))
    [alone] = embed([str(path)], _opts(tiny_weights, tmp_path / "alone.zarr", mosaic=False))
    assert m.status == "complete" and alone.status == "complete"
    va = geodino.open_cube(alone.output)["valid"].values
    assert not va[:, :4].any() and va[:, 4:].all()  # 64 transparent px: the first 4 patch columns
    ds = geodino.open_cube(m.output)
    left, bottom, right, top = prof["transform"].c, 0, 0, prof["transform"].f
    right = left + prof["width"] * prof["transform"].a
    bottom = top + prof["height"] * prof["transform"].e
    frac = _footprint_fraction(ds, [(left + 64, bottom, right, top)])  # the opaque part
    vm = ds["valid"].values
    np.testing.assert_array_equal(vm[frac <= 0.25], False)
    np.testing.assert_array_equal(vm[frac >= 0.75], True)


def test_scale_with_nodata_embeds_as_the_file_declaring_it(tiny_weights, tmp_path):
    """`embed --scale 2 --nodata 0` of a scene that declares no nodata gives the cube of the same scene declaring
    nodata 0, bit for bit (before, bilinear resampling smeared the hole's zeros into its edge pixels, which counted
    as valid and reached the model as data)."""
    from tests.faults.conftest import assert_bit_identical
    from tests.rasters import texture, write_raster

    data = texture((96, 112), seed=9)
    data[:, 20:60, 30:70] = 0
    plain = write_raster(tmp_path / "plain.tif", data)
    declared = write_raster(tmp_path / "declared.tif", data, nodata=0)
    opts = dict(model=MODEL, weights=str(tiny_weights), arch=dict(TINY), device="cpu", threads=2, tile=64, halo=16,
                radiometry="minmax", minmax=(0, 4000), scale=2)
    [a] = embed([str(plain)], EmbedConfig.build(output=str(tmp_path / "a.zarr"), nodata=0, **opts))
    [b] = embed([str(declared)], EmbedConfig.build(output=str(tmp_path / "b.zarr"), **opts))
    assert_bit_identical(Path(a.output), Path(b.output))
    valid = geodino.open_cube(a.output)["valid"].values
    assert not valid[3:7, 4:8].any() and valid[:2].all()  # the hole (rows 40..120, cols 60..140 px at x2); above it
