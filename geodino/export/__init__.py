"""Exports: the one place that writes the field's exchange formats. Cloud Optimized GeoTIFFs of any map
(:func:`write_cog`) and GeoParquet tables of tile or patch embeddings with their footprints
(:func:`write_embeddings`, :func:`write_geoparquet`)."""

from geodino.export.cog import write_cog
from geodino.export.geoparquet import tile_embeddings, write_embeddings, write_geoparquet

__all__ = ["write_cog", "write_embeddings", "write_geoparquet", "tile_embeddings"]
