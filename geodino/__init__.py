"""geodino: DINOv3 features of satellite scenes, streamed into georeferenced zarr cubes.

The public surface is small; subpackages hold the stages of the pipeline, in the direction data flows:
``geodino.raster`` (sources) -> ``geodino.tiling`` (tile grid) -> ``geodino.engine`` (backbone inference)
-> ``geodino.cube`` (zarr feature cubes); ``geodino.embed`` runs that chain, and ``geodino.canopy`` runs it with
the CHMv2 head into canopy-height COGs. Readers of cubes:
``geodino.analysis`` (PCA, similarity, clusters, sampling, change; ``ds.geodino.*``), ``geodino.export`` (COG,
GeoParquet), ``geodino.heads`` and ``geodino.explore`` (the interactive map: ``geodino.explore(cubes)``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geodino")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_cube", "explore"]


def open_cube(path, *, require_complete: bool = False):
    """Open a geodino feature cube as a lazy, dask-backed ``xarray.Dataset`` (``.rio.crs`` set, ``.geodino``
    analysis accessor registered; compact cubes are dequantised transparently)."""
    import geodino.analysis.accessor  # noqa: F401  (registers ds.geodino)
    from geodino.cube import open_cube as _open

    return _open(path, require_complete=require_complete)


def __getattr__(name):
    if name == "explore":  # the interactive map (a callable module: geodino.explore(cubes))
        import importlib

        return importlib.import_module("geodino.explore")
    raise AttributeError(name)
