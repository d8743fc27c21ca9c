"""The embed job: raster -> tiles -> backbone -> zarr cube, scheduled with dask; regional mosaics
of many scenes, one cube per CRS (``mosaic.py``). Library behind `geodino embed`."""

from geodino.embed.config import EmbedConfig
from geodino.embed.plan import ScenePlan, plan_scene
from geodino.embed.run import EmbedSummary, embed

__all__ = ["EmbedConfig", "EmbedSummary", "ScenePlan", "embed", "plan_scene"]
