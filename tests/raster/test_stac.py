"""STAC Items -> one virtual raster of the chosen bands, with the item's metadata carried along."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geodino.errors import BandError, RasterNotFoundError, StacError
from geodino.raster import RasterSource, resolve_radiometry
from geodino.raster.scene import expand_scenes, resolve_scene, scene_name
from geodino.raster.stac import stac_scene
from tests.raster.items import ITEM_ID, S2_BANDS, collection, s2_item, write


def _read(path, window):
    with rasterio.open(path) as ds:
        return ds.read(1, window=window)


@pytest.fixture(scope="module")
def served_item(http_data, shared_data, tmp_path_factory):
    """An Earth-Search-like item on disk whose assets are the real band files over HTTP."""
    return write(tmp_path_factory.mktemp("stac") / "item.json", s2_item(http_data.url, shared_data))


def test_item_stacks_the_requested_bands_over_http(served_item, http_data, shared_data):
    r = resolve_scene(str(served_item), "red,green,blue")
    src = RasterSource(r.path, bands=r.bands, identity=r.identity)
    assert src.band_names == ["B04", "B03", "B02"] and src.dtype == np.uint16 and src.nodata == 0
    with rasterio.open(shared_data / S2_BANDS["red"][1]) as ds:
        assert src.grid.shape == ds.shape and src.grid.affine == ds.transform and src.grid.crs.epsg == 32629
    data, valid = src.read(100, 200, 300, 400)  # a window: only byte ranges are fetched
    for i, key in enumerate(("red", "green", "blue")):
        np.testing.assert_array_equal(data[i], _read(shared_data / S2_BANDS[key][1], ((100, 400), (200, 600))))
    reqs = http_data.requests()
    assert any(status == 206 and rng for _, _, rng, status in reqs)
    assert not any(m == "GET" and rng is None and p.endswith(".tif") for m, p, rng, _ in reqs), "whole-file GET"
    # the item's metadata rides along as tags, where radiometry finds the Sentinel-2 offset
    assert src.tags["PLATFORM"] == "sentinel-2a" and src.tags["DATETIME"] == "2020-02-19T11:21:53Z"
    assert src.tags["PROCESSING_BASELINE"] == "02.14" and src.tags["BOA_ADD_OFFSET"] == "0"
    assert src.band_tags[0]["STAC_ASSET"] == "red" and src.band_tags[0]["EO_COMMON_NAME"] == "red"
    rad, why = resolve_radiometry("s2-l2a", src)
    assert rad.bias == (0.0,) * 3 and "metadata BOA_ADD_OFFSET=0" in why
    # resolving again gives the same input identity (what a resumed embed checks)
    assert resolve_scene(str(served_item), "red,green,blue").identity == r.identity
    assert r.identity.path.startswith("stac:") and ITEM_ID in r.identity.path
    assert r.describe()["item_id"] == ITEM_ID and r.describe()["epsg"] == 32629


@pytest.mark.parametrize("bands, assets", [
    ("red,green,blue", ["red", "green", "blue"]),        # eo:bands common names (asset keys too here)
    ("B08,B04,B03", ["nir", "red", "green"]),            # eo:bands names
    (None, ["red", "green", "blue"]),                    # the default
    ("nir,red,red-jp2", ["nir", "red", "red-jp2"]),      # an asset key picks that very asset
])
def test_band_choice(tmp_path, shared_data, bands, assets):
    item = write(tmp_path / "item.json", s2_item("https://example.invalid/tile", shared_data))
    sc = stac_scene(str(item), bands)
    assert [b.asset for b in sc.bands] == assets
    # a COG is preferred over the JP2 copy holding the same band
    assert all(b.path.startswith("/vsicurl/https://example.invalid/tile/") for b in sc.bands)
    assert all(b.href.endswith(".tif") for b in sc.bands if not b.asset.endswith("jp2"))


def test_missing_band_names_the_assets(tmp_path, shared_data):
    item = write(tmp_path / "item.json", s2_item("https://example.invalid", shared_data))
    with pytest.raises(BandError, match=r"'swir16' is not in STAC item .*red \(B04/red\)"):
        stac_scene(str(item), "red,green,swir16")
    with pytest.raises(BandError, match="chosen by name"):
        stac_scene(str(item), "3,2,1")


def test_projection_is_required_and_checked(tmp_path, shared_data):
    item = s2_item("https://example.invalid", shared_data, **{"proj:epsg": None})
    with pytest.raises(StacError, match="no projection information"):
        stac_scene(str(write(tmp_path / "a.json", item)), "red,green,blue")
    # STAC 1.1 / projection v2: proj:code
    sc = stac_scene(str(write(tmp_path / "b.json", s2_item("https://x.invalid", shared_data,
                                                           **{"proj:epsg": None, "proj:code": "EPSG:32629"}))))
    assert sc.epsg == 32629 and sc.crs == "EPSG:32629" and sc.shape == (1098, 1098)


def test_item_and_file_crs_must_agree(tmp_path, shared_data):
    item = write(tmp_path / "item.json", s2_item(str(shared_data), shared_data, **{"proj:epsg": 32630}))
    with pytest.raises(Exception, match="EPSG:32630"):
        resolve_scene(str(item), "red,green,blue")


@pytest.mark.parametrize("props, raster_offsets, offset, rule", [
    ({}, True, 0.0, "earthsearch"),                                    # baseline 02.14, not applied
    ({"s2:processing_baseline": "04.00"}, True, -1000.0, "earthsearch"),  # not applied (raster:bands ignored)
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}, True, 0.0, "earthsearch"),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": None}, True, 0.0, "raster:bands"),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": None}, False, -1000.0, "baseline"),
    ({"s2:processing_baseline": None, "earthsearch:boa_offset_applied": None}, False, None, None),
])
def test_sentinel2_offset_rules(tmp_path, shared_data, props, raster_offsets, offset, rule):
    d = s2_item("https://x.invalid", shared_data, **props)
    if not raster_offsets:
        for a in d["assets"].values():
            a.pop("raster:bands", None)
    sc = stac_scene(str(write(tmp_path / "i.json", d)))
    assert sc.radiometry_hint == "s2-l2a"
    assert sc.boa_add_offset == offset
    assert (sc.boa_offset_source is None) if rule is None else (rule in sc.boa_offset_source)
    assert ("BOA_ADD_OFFSET" in sc.tags()) == (offset is not None)


def test_raster_offsets_give_the_offset_and_other_sensors_none(tmp_path, shared_data):
    d = s2_item("https://x.invalid", shared_data, **{"s2:processing_baseline": None,
                                                    "earthsearch:boa_offset_applied": None})
    for a in d["assets"].values():
        for rb in a.get("raster:bands", []):
            rb["offset"] = -0.1
    assert stac_scene(str(write(tmp_path / "a.json", d))).boa_add_offset == -1000.0
    ls = s2_item("https://x.invalid", shared_data, platform="landsat-8", constellation=None,
                 **{"processing:level": None, "s2:processing_baseline": None, "earthsearch:boa_offset_applied": None})
    ls["collection"] = "landsat-c2-l2"
    sc = stac_scene(str(write(tmp_path / "l.json", ls)))
    assert sc.radiometry_hint == "landsat-c2-l2" and sc.boa_add_offset is None and "BOA_ADD_OFFSET" not in sc.tags()


def test_relative_hrefs_resolve_against_the_item(tmp_path, shared_data):
    item = write(tmp_path / "item.json", s2_item("", shared_data, relative=True))
    sc = stac_scene(str(item))
    assert sc.bands[0].href == str((tmp_path / S2_BANDS["red"][1]).resolve())


def test_item_collections_become_one_scene_per_item(tmp_path, shared_data):
    a = s2_item(str(shared_data), shared_data)
    b = s2_item(str(shared_data), shared_data)
    b["id"] = "S2A_29RKH_20200220_0_L2A"
    coll = write(tmp_path / "search.json", collection(a, b))
    refs = expand_scenes([str(coll), "plain.tif"])
    assert refs == [f"{coll}#{ITEM_ID}", f"{coll}#S2A_29RKH_20200220_0_L2A", "plain.tif"]
    assert [scene_name(r).with_suffix(".zarr").name for r in refs[:2]] == [f"{ITEM_ID}.zarr",
                                                                           "S2A_29RKH_20200220_0_L2A.zarr"]
    assert stac_scene(refs[1]).item_id == "S2A_29RKH_20200220_0_L2A"
    with pytest.raises(StacError, match="holds 2 items"):
        stac_scene(str(coll))
    with pytest.raises(StacError, match="no item 'nope'"):
        stac_scene(f"{coll}#nope")


def test_not_stac(tmp_path):
    (tmp_path / "cat.json").write_text(json.dumps({"type": "Catalog", "id": "c", "stac_version": "1.0.0",
                                                   "description": "d", "links": []}))
    with pytest.raises(StacError, match="a STAC Catalog"):
        stac_scene(str(tmp_path / "cat.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StacError, match="not valid JSON"):
        stac_scene(str(tmp_path / "bad.json"))
    with pytest.raises(RasterNotFoundError):
        stac_scene(str(tmp_path / "missing.json"))


def test_coarser_bands_are_resampled_onto_the_finest_grid(tmp_path, shared_data):
    """A 200 m band stacked with 100 m bands lands on the 100 m grid exactly as GDAL resamples it itself."""
    from rasterio.enums import Resampling

    coarse = tmp_path / "B08_200m.tif"
    with rasterio.open(shared_data / S2_BANDS["nir"][1]) as ds:
        prof = ds.profile | {"width": ds.width // 2, "height": ds.height // 2, "transform": ds.transform * ds.transform.scale(2)}
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        data = ds.read(1, out_shape=(ds.height // 2, ds.width // 2), resampling=Resampling.average)
    with rasterio.open(coarse, "w", **(prof | {"tiled": False})) as out:
        out.write(data, 1)
    d = s2_item(str(shared_data), shared_data)
    d["assets"]["nir"]["href"] = str(coarse)
    sc = stac_scene(str(write(tmp_path / "item.json", d)), "nir,red,green")
    r = resolve_scene(str(tmp_path / "item.json"), "nir,red,green")
    src = RasterSource(r.path, bands=r.bands, identity=r.identity)
    assert src.grid.shape == (1098, 1098) and sc.bands[0].href == str(coarse)
    got, _ = src.read(0, 0, 1098, 1098)
    with rasterio.open(coarse) as ds:
        want = ds.read(1, out_shape=(1098, 1098), resampling=Resampling.bilinear)
    assert np.abs(got[0].astype(int) - want.astype(int)).max() <= 1
    np.testing.assert_array_equal(got[1], _read(shared_data / S2_BANDS["red"][1], ((0, 1098), (0, 1098))))
