"""Stacking bands of several rasters (local or remote, e.g. one COG per band) into one virtual raster.

The result is GDAL VRT XML, kept as a string: GDAL opens the XML text itself as a dataset name, so the stack
needs no file, travels to dask workers with the source, and is the same text on every run (a resumed embed sees
the same input). It is written with ElementTree because rasterio has no public BuildVRT and GDAL's own Python
bindings (``gdal.BuildVRT(..., separate=True)``) are not installable beside rasterio's bundled GDAL; the XML
follows GDAL's VRT format (one ``SimpleSource`` per band, with ``SourceProperties`` so that GDAL opens a source
only when its pixels are read).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from geodino.errors import GridError, RasterError
from geodino.raster.remote import open_remote

__all__ = ["VrtBand", "stack_vrt"]

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}
_COLORS = {"red": "Red", "green": "Green", "blue": "Blue"}


@dataclass(frozen=True)
class VrtBand:
    """One band of the stack: band ``band`` (1-based) of the raster at GDAL path ``path``."""

    path: str
    band: int = 1
    description: str = ""
    color: str | None = None  # "red" | "green" | "blue" sets the colour interpretation
    tags: dict = field(default_factory=dict, hash=False, compare=False)
    what: str | None = None  # how error messages name the source (e.g. "asset 'red' of item X")


def _probe(path: str, what: str | None) -> SimpleNamespace:
    """What the stack needs of a source, read once (the dataset is closed again)."""
    with open_remote(path, what) as ds:
        return SimpleNamespace(width=ds.width, height=ds.height, transform=tuple(ds.transform)[:6], crs=ds.crs,
                               dtypes=ds.dtypes, nodata=ds.nodatavals, blocks=ds.block_shapes)


def _metadata(parent: ET.Element, tags: dict) -> None:
    if tags:
        md = ET.SubElement(parent, "Metadata")
        for k, v in tags.items():
            ET.SubElement(md, "MDI", key=str(k)).text = str(v)


def _fmt(x: float) -> str:
    return format(float(x), ".17g")


def stack_vrt(bands: Sequence[VrtBand], *, crs=None, tags: dict | None = None) -> str:
    """VRT XML stacking ``bands`` in order on the grid of the finest-resolution source.

    Every source must be north-up and in the same CRS; ``crs`` (anything ``rasterio.crs.CRS.from_user_input``
    takes) is what the metadata says: sources without a CRS get it, and a source in another CRS is refused.
    Sources of coarser resolution are resampled bilinearly onto the grid; pixels no source covers are nodata.
    """
    from rasterio.crs import CRS

    if not bands:
        raise RasterError("no bands to stack")
    want = CRS.from_user_input(crs) if crs is not None else None
    probes = {}
    for b in bands:
        if b.path not in probes:
            probes[b.path] = _probe(b.path, b.what)
        src = probes[b.path]
        what = b.what or b.path
        if not 1 <= b.band <= len(src.dtypes):
            raise RasterError(f"{what} has {len(src.dtypes)} band(s); band {b.band} was asked for")
        a, bb, _, d, e, _ = src.transform
        if bb != 0 or d != 0 or a <= 0 or e >= 0:
            raise GridError(f"{what} is not a north-up raster (transform {src.transform}): warp it first")
        if want is not None and src.crs and CRS.from_user_input(src.crs) != want:
            raise RasterError(f"{what} is in {src.crs.to_string()} but the metadata says {want.to_string()}: "
                              "the item and its files disagree; fix the item's proj: fields")
    crss = {CRS.from_user_input(p.crs).to_wkt() if p.crs else None for p in probes.values()} - {None}
    if len(crss) > 1:
        raise RasterError("the bands to stack are in different CRSs: " + "; ".join(
            f"{b.what or b.path}: {probes[b.path].crs}" for b in bands))
    wkt = next(iter(crss)) if crss else (want.to_wkt() if want is not None else None)
    ref = min(probes.values(), key=lambda s: s.transform[0])
    ta, _, tc, _, te, tf = ref.transform

    root = ET.Element("VRTDataset", rasterXSize=str(ref.width), rasterYSize=str(ref.height))
    if wkt:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = wkt
    ET.SubElement(root, "GeoTransform").text = ", ".join(_fmt(v) for v in (tc, ta, 0, tf, 0, te))
    _metadata(root, tags or {})
    for i, b in enumerate(bands, 1):
        src = probes[b.path]
        dtype = np.dtype(src.dtypes[b.band - 1]).name
        if dtype not in _GDAL_TYPES:
            raise RasterError(f"{b.what or b.path} has dtype {dtype}, which a stack cannot hold")
        vb = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band=str(i))
        if b.description:
            ET.SubElement(vb, "Description").text = b.description
        nodata = src.nodata[b.band - 1]
        if nodata is not None:
            ET.SubElement(vb, "NoDataValue").text = _fmt(nodata)
        if b.color in _COLORS:
            ET.SubElement(vb, "ColorInterp").text = _COLORS[b.color]
        _metadata(vb, b.tags)
        sa, _, sc, _, se, sf = src.transform
        same_res = np.isclose(sa, ta) and np.isclose(se, te)
        ss = ET.SubElement(vb, "SimpleSource", **({} if same_res else {"resampling": "bilinear"}))
        ET.SubElement(ss, "SourceFilename", relativeToVRT="0").text = b.path
        ET.SubElement(ss, "SourceBand").text = str(b.band)
        by, bx = src.blocks[b.band - 1]
        ET.SubElement(ss, "SourceProperties", RasterXSize=str(src.width), RasterYSize=str(src.height),
                      DataType=_GDAL_TYPES[dtype], BlockXSize=str(bx), BlockYSize=str(by))
        ET.SubElement(ss, "SrcRect", xOff="0", yOff="0", xSize=str(src.width), ySize=str(src.height))
        ET.SubElement(ss, "DstRect", xOff=_fmt((sc - tc) / ta), yOff=_fmt((sf - tf) / te),
                      xSize=_fmt(src.width * sa / ta), ySize=_fmt(src.height * se / te))
    return ET.tostring(root, encoding="unicode")
