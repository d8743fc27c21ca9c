"""Stage 1 of the pipeline: raster sources (windowed reads, bands, masks) and their radiometry; remote rasters
(``https://``, ``s3://`` through GDAL's virtual filesystems) and STAC Items, resolved into what a source opens; a source read onto another grid of its CRS
(``warped.py``, for mosaics); the chosen bands read as colours, and the warning when they are not red, green and
blue (``bands.py``)."""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "radiometry": ["RADIOMETRIES", "Radiometry", "geobench_radiometry", "resolve_radiometry"],
    "scene": ["ResolvedScene", "expand_scenes", "resolve_scene"],
    "source": ["RasterSource", "SourceIdentity", "inside_mask", "parse_bands"],
    "stac": ["StacBand", "StacScene"],
    "bands": ["BandColourWarning", "describe_bands"],
})
