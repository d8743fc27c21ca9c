"""What the chosen bands are, in words: their descriptions read as colours, and a warning when the three bands the
model reads as red, green and blue are not those colours (a near-infrared band taken as red, ...).

Colours come from what a file says about its bands: GDAL band descriptions that name a colour (``red``,
``Near-Infrared``), Sentinel-2 band names (``B04`` red, ``B08`` near-infrared...), STAC ``eo:bands`` common names
(which geodino's STAC stacks carry as descriptions and colour interpretation) and GDAL's colour interpretation.
A band without such a name has no known colour and is never warned about. Landsat's ``SR_B3`` is red on Landsat
4-7 and green on Landsat 8-9, so Landsat band numbers are not read as colours.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

__all__ = ["BandColourWarning", "band_colour", "describe_bands", "rgb_warning", "warn_rgb_order"]

RGB = ("red", "green", "blue")

_WORDS = {
    "red": "red", "r": "red", "green": "green", "g": "green", "blue": "blue", "b": "blue",
    "nir": "near-infrared", "near-infrared": "near-infrared", "near infrared": "near-infrared",
    "nir08": "near-infrared", "nir09": "near-infrared", "nir narrow": "near-infrared",
    "rededge": "red edge", "red edge": "red edge", "red-edge": "red edge",
    "coastal": "coastal aerosol", "coastal aerosol": "coastal aerosol", "cirrus": "cirrus",
    "swir": "short-wave infrared", "swir16": "short-wave infrared", "swir22": "short-wave infrared",
    "pan": "panchromatic", "lwir": "thermal infrared", "lwir11": "thermal infrared", "lwir12": "thermal infrared",
    "water vapour": "water vapour", "water vapor": "water vapour", "alpha": "alpha",
}
# Sentinel-2 MSI: B01 coastal, B02 blue, B03 green, B04 red, B05-B07 red edge, B08 NIR, B8A NIR narrow, B09 water
# vapour, B10 cirrus, B11-B12 SWIR (ESA's band names; Element 84 / Planetary Computer assets use them too)
_S2 = {1: "coastal aerosol", 2: "blue", 3: "green", 4: "red", 5: "red edge", 6: "red edge", 7: "red edge",
       8: "near-infrared", 9: "water vapour", 10: "cirrus", 11: "short-wave infrared", 12: "short-wave infrared"}
_S2_NAME = re.compile(r"b(0[1-9]|1[0-2]|8a)")  # zero-padded: Sentinel-2's own spelling
_BARE_NAME = re.compile(r"b([1-9]|1[0-2])")  # B4: Sentinel-2 under an s2 preset, ambiguous (Landsat) otherwise


class BandColourWarning(UserWarning):
    """The bands read as red, green and blue are described as other colours."""


def band_colour(name: str | None, preset: str | None = None) -> str | None:
    """The colour (``red``, ``near-infrared``...) a band's description names, or None when it names none."""
    if not name:
        return None
    s = re.sub(r"[_\s]+", " ", str(name).strip().lower())
    if s in _WORDS:
        return _WORDS[s]
    m = _S2_NAME.fullmatch(s)
    if m:
        return "near-infrared" if m.group(1) == "8a" else _S2[int(m.group(1))]
    m = _BARE_NAME.fullmatch(s)
    if m and preset == "s2-l2a":
        return _S2[int(m.group(1))]
    return None


def describe_bands(indexes: Sequence[int], names: Sequence[str | None] | None = None) -> str:
    """``3,2,1 = B04, B03, B02``: 1-based band numbers and what the file calls them (numbers alone without names;
    GDAL's ``undefined``/``gray`` colour interpretation is no name)."""
    nums = ",".join(str(i) for i in indexes)
    shown = [n for n in (names or []) if n and str(n).lower() not in ("undefined", "gray", "grey")]
    return f"{nums} = {', '.join(str(n) for n in names)}" if names and len(shown) == len(names) else nums


def rgb_warning(indexes: Sequence[int], names: Sequence[str | None], file_names: Sequence[str | None],
                path: str, preset: str | None = None) -> str | None:
    """The warning for bands ``indexes`` (named ``names``; the file's bands are named ``file_names``) read as red,
    green, blue, or None when no band is known to be another colour than the one it is read as."""
    colours = [band_colour(n, preset) for n in names]
    wrong = [i for i, (c, want) in enumerate(zip(colours, RGB)) if c is not None and c != want]
    if not wrong:
        return None
    said = ", ".join(f"{c} as {want}" for c, want in zip(colours, RGB) if c is not None and c != want)
    # the first band of each colour (reversed: the first one written is the one kept)
    by_colour = {c: n for n in reversed(file_names) if (c := band_colour(n, preset)) in RGB}
    if all(c in by_colour for c in RGB):
        how = f"choose them by name: --bands {','.join(by_colour[c] for c in RGB)}"
    else:
        missing = [c for c in RGB if c not in by_colour]
        how = (f"the file has no band described as {' or '.join(missing)}: choose the closest by number or name "
               "(--bands), knowing the features see other colours")
    return (f"{path}: bands {describe_bands(indexes, names)} are {', '.join(str(c or '?') for c in colours)}, "
            f"but the model reads them as red, green, blue, so it sees {said}; {how}")


def warn_rgb_order(source, preset: str | None = None, stacklevel: int = 3) -> None:
    """Warn (:class:`BandColourWarning`) when a :class:`~geodino.raster.RasterSource`'s chosen bands are described as
    other colours than red, green and blue."""
    msg = rgb_warning(source.bands, source.band_names, getattr(source, "file_band_names", source.band_names),
                      source.name.rsplit("/", 1)[-1] if len(source.name) < 400 else "the scene", preset)
    if msg:
        warnings.warn(msg, BandColourWarning, stacklevel=stacklevel)
