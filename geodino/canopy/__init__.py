"""Canopy height maps: the CHMv2 head streamed over whole scenes, the library behind ``geodino canopy``.

The embed job with another output (the project's architecture map: one streaming job): the same raster
sources and model-input contract, tile grid with halo, dask graph (read -> infer -> piece -> write, back-pressure,
retries, ``--scheduler``), masks, resume and engine; the engine returns heights at pixel resolution
(:mod:`geodino.engine.canopy`), overlapping windows are blended with linear ramps, tile cores are written into a
resumable zarr height cube (:mod:`geodino.canopy.store`) and the finished cube becomes a COG with overviews and
provenance tags (:func:`geodino.export.write_cog`).

>>> from geodino.canopy import canopy
>>> canopy("scene.tif", output="chm.tif", weights="facebook/dinov3-vitl16-chmv2-dpt-head")
"""

from geodino.canopy.options import CanopyOptions
from geodino.canopy.resolution import ground_resolution
from geodino.canopy.run import CanopySummary, canopy, open_heights

__all__ = ["CanopyOptions", "CanopySummary", "canopy", "open_heights", "ground_resolution"]
