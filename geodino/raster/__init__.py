"""Stage 1 of the pipeline: raster sources (windowed reads, bands, masks) and their radiometry."""

from geodino.raster.radiometry import RADIOMETRIES, Radiometry, geobench_radiometry, resolve_radiometry
from geodino.raster.source import RasterSource, SourceIdentity, inside_mask, parse_bands

__all__ = ["RasterSource", "SourceIdentity", "parse_bands", "inside_mask", "Radiometry", "RADIOMETRIES",
           "resolve_radiometry", "geobench_radiometry"]
