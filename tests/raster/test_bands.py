"""Bands read as red, green and blue that a file describes as other colours are warned about, with the bands taken
and how to choose by name; bands without such names never are."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from rasterio.enums import ColorInterp

from geodino.raster import RasterSource
from geodino.raster.bands import BandColourWarning, band_colour, describe_bands, rgb_warning, warn_rgb_order
from tests.rasters import write_raster

S2 = ["B02", "B03", "B04", "B08"]


@pytest.mark.parametrize("name,preset,colour", [
    ("B04", None, "red"), ("b03", None, "green"), ("B02", "s2-l2a", "blue"), ("B08", None, "near-infrared"),
    ("B8A", None, "near-infrared"), ("B11", None, "short-wave infrared"), ("B4", "s2-l2a", "red"),
    ("B4", "landsat-c2-l2", None),  # Landsat 5/7 band 4 is NIR, Landsat 8/9 band 4 red: not guessed
    ("SR_B3", "landsat-c2-l2", None), ("Red", None, "red"), ("near infrared", None, "near-infrared"),
    ("nir08", None, "near-infrared"), ("undefined", None, None), ("gray", None, None), ("", None, None),
    ("elevation", None, None)])
def test_band_colours_from_names(name, preset, colour):
    assert band_colour(name, preset) == colour


def test_describe_bands():
    assert describe_bands([3, 2, 1], ["B04", "B03", "B02"]) == "3,2,1 = B04, B03, B02"
    assert describe_bands([1, 2, 3], ["undefined", "undefined", "undefined"]) == "1,2,3"
    assert describe_bands([1, 2, 3], None) == "1,2,3"


def test_the_warning_names_the_bands_taken_and_how_to_choose():
    msg = rgb_warning([4, 3, 2], ["B08", "B04", "B03"], S2, "s2.tif", "s2-l2a")
    assert msg == ("s2.tif: bands 4,3,2 = B08, B04, B03 are near-infrared, red, green, but the model reads them as "
                   "red, green, blue, so it sees near-infrared as red, red as green, green as blue; choose them by "
                   "name: --bands B04,B03,B02")
    assert rgb_warning([3, 2, 1], ["B04", "B03", "B02"], S2, "s2.tif", "s2-l2a") is None
    assert rgb_warning([1, 2, 3], ["undefined"] * 3, ["undefined"] * 4, "x.tif") is None  # nothing known
    no_blue = rgb_warning([3, 2, 4], ["B04", "B03", "B08"], ["B03", "B04", "B08"], "x.tif")
    assert "no band described as blue" in no_blue


def test_a_source_warns_for_nir_as_red_and_not_for_rgb(tmp_path):
    path = write_raster(tmp_path / "s2.tif", np.full((4, 32, 32), 1000, np.uint16), descriptions=S2)
    src = RasterSource(path, bands="4,3,2")
    assert src.band_names == ["B08", "B04", "B03"] and src.file_band_names == S2
    with pytest.warns(BandColourWarning, match=r"bands 4,3,2 = B08, B04, B03 .* --bands B04,B03,B02"):
        warn_rgb_order(src, "s2-l2a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_rgb_order(RasterSource(path, bands="B04,B03,B02"), "s2-l2a")
        rgb = write_raster(tmp_path / "rgb.tif", np.zeros((3, 32, 32), np.uint8),
                           colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue])
        warn_rgb_order(RasterSource(rgb), "uint8")
    swapped = RasterSource(rgb, bands="3,2,1")  # GDAL's colour interpretation says blue, green, red
    with pytest.warns(BandColourWarning, match="it sees blue as red, red as blue; choose them by name: "
                                               "--bands red,green,blue"):
        warn_rgb_order(swapped, "uint8")
