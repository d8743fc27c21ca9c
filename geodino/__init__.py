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

from geodino._process import memory_policy  # the CLI's memory policy, opted into from Python (a context manager)

try:
    __version__ = version("geodino")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_cube", "memory_policy", "explore"]


def open_cube(url, *, storage_options: dict | None = None, chunks: dict | str | None = None,
              require_complete: bool = False):
    """Open a geodino feature cube (a local path or a URL: ``s3://``, ``gs://``, ``az://``, ``http(s)://``) as a
    lazy, dask-backed ``xarray.Dataset`` (``.rio.crs`` set, ``.geodino`` analysis accessor registered; compact
    cubes are dequantised transparently). ``storage_options`` configure a remote store (credentials otherwise come
    from the environment); ``chunks`` are dask chunks as :func:`xarray.open_zarr` takes them (None: the cube's
    own); ``require_complete`` refuses a cube whose embedding has not finished."""
    import geodino.analysis.accessor  # noqa: F401  (registers ds.geodino)
    from geodino.cube.reading import open_cube as _open

    return _open(url, require_complete=require_complete, storage_options=storage_options, chunks=chunks)


def __getattr__(name):
    if name == "explore":  # the interactive map (a callable module: geodino.explore(cubes))
        import importlib

        return importlib.import_module("geodino.explore")
    raise AttributeError(name)
