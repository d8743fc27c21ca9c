"""Exports: the one place that writes the field's exchange formats. Cloud Optimized GeoTIFFs of any map
(:func:`write_cog`) and GeoParquet tables of tile or patch embeddings with their footprints
(:func:`write_embeddings`, :func:`write_geoparquet`)."""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cog": ["write_cog", "write_rgb_cog"],
    "geoparquet": ["write_embeddings", "write_geoparquet", "tile_embeddings"],
})
