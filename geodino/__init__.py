"""geodino: DINOv3 features of satellite scenes, streamed into georeferenced zarr cubes.

The public surface is small; subpackages hold the stages of the pipeline, in the direction data flows:
``geodino.raster`` (sources) -> ``geodino.tiling`` (tile grid) -> ``geodino.engine`` (backbone inference)
-> ``geodino.cube`` (zarr feature cubes); ``geodino.heads`` and ``geodino.analysis`` read cubes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geodino")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
