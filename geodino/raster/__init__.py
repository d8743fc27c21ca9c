"""Stage 1 of the pipeline: raster sources (windowed reads, bands, masks) and their radiometry; remote rasters
(``https://``, ``s3://`` through GDAL's virtual filesystems) and STAC Items, resolved into what a source opens; a source read onto another grid of its CRS
(``warped.py``, for mosaics)."""

from geodino.raster.radiometry import RADIOMETRIES, Radiometry, geobench_radiometry, resolve_radiometry
from geodino.raster.scene import ResolvedScene, expand_scenes, resolve_scene
from geodino.raster.source import RasterSource, SourceIdentity, inside_mask, parse_bands
from geodino.raster.stac import StacBand, StacScene

__all__ = ["RasterSource", "SourceIdentity", "parse_bands", "inside_mask", "Radiometry", "RADIOMETRIES",
           "resolve_radiometry", "geobench_radiometry", "ResolvedScene", "resolve_scene", "expand_scenes",
           "StacScene", "StacBand"]
