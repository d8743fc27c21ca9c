"""Stage 1 of the pipeline: raster sources (windowed reads, bands, masks) and their radiometry."""

from geodino.raster.radiometry import RADIOMETRIES, Radiometry, resolve_radiometry
from geodino.raster.source import RasterSource, SourceIdentity, parse_bands

__all__ = ["RasterSource", "SourceIdentity", "parse_bands", "Radiometry", "RADIOMETRIES", "resolve_radiometry"]
