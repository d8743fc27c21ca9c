"""The embed job: raster -> tiles -> backbone -> zarr cube, scheduled with dask; regional mosaics
of many scenes, one cube per CRS (``mosaic.py``). Library behind `geodino embed`."""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ["EmbedConfig"],
    "plan": ["ScenePlan", "plan_scene"],
    "run": ["EmbedSummary", "embed"],
})
