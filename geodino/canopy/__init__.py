"""Canopy height maps: the CHMv2 head streamed over whole scenes, the library behind ``geodino canopy``.

The embed job with another output (the project's architecture map: one streaming job): the same raster
sources and model-input contract, tile grid with halo, dask graph (read -> infer -> piece -> write, back-pressure,
retries, ``--scheduler``), masks, resume and engine; the engine returns heights at pixel resolution
(:mod:`geodino.engine.canopy`), overlapping windows are blended with linear ramps, tile cores are written into a
resumable zarr height cube (:mod:`geodino.canopy.tasks`) and the finished cube becomes a COG with overviews and
provenance tags (:func:`geodino.export.write_cog`).

>>> from geodino.canopy import canopy
>>> canopy("scene.tif", output="chm.tif", weights="facebook/dinov3-vitl16-chmv2-dpt-head")
"""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["CanopyOptions"],
    "resolution": ["ground_resolution"],
    "run": ["CanopySummary", "canopy", "open_heights"],
})
