"""The exceptions geodino raises for problems a user can fix.

Every error derives from :class:`GeodinoError` and, where one fits, from the matching builtin
(``FileNotFoundError``, ``ValueError``...), so generic ``except`` clauses keep working. Messages are one
line that names what is wrong and what to do about it; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "GeodinoError",
    "ConfigError",
    "OutputExistsError",
    "InputSizeError",
    "WeightsError",
    "WeightsNotFoundError",
    "WeightsMismatchError",
    "UnsafeFileError",
    "RasterError",
    "RasterNotFoundError",
    "BandError",
    "GridError",
    "CubeError",
    "CubeExistsError",
    "CubeLockedError",
    "SchedulerError",
    "DatasetError",
    "StacError",
    "RemoteError",
    "CredentialsError",
    "VectorIndexError",
    "IndexMismatchError",
    "CubeMismatchError",
    "QueryError",
    "MissingCRSError",
    "GeometryOutsideError",
    "SampleError",
    "EmptySampleError",
    "LabelError",
    "SplitError",
    "HeadError",
    "HeadMismatchError",
]


class GeodinoError(Exception):
    """Base class of every error meant for the user (exit code 2 in the CLI)."""

    exit_code = 2


class OutputExistsError(GeodinoError, FileExistsError):
    """An output path exists and would be overwritten."""


class ConfigError(GeodinoError, ValueError):
    """An option or YAML config value is invalid."""


class InputSizeError(GeodinoError, ValueError):
    """An image given to a backbone is not a multiple of its patch size."""


class WeightsError(GeodinoError, ValueError):
    """A weights file is corrupt, truncated or not a checkpoint geodino can read."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights path or hub id cannot be found (locally, or in the HF cache)."""


class WeightsMismatchError(WeightsError):
    """A checkpoint's keys or shapes do not fit the requested model."""


class UnsafeFileError(WeightsError):
    """A file would run code when read (a pickle naming a forbidden global)."""


class RasterError(GeodinoError, ValueError):
    """A raster cannot be used as input (not a raster, rotated, ...)."""


class RasterNotFoundError(RasterError, FileNotFoundError):
    """An input raster does not exist."""


class BandError(RasterError):
    """A requested band is missing, or the raster has too few bands."""


class GridError(GeodinoError, ValueError):
    """A grid, tile or halo setting is inconsistent."""


class CubeError(GeodinoError, ValueError):
    """A feature cube is missing, incomplete, unwritable or was made with other settings."""


class CubeExistsError(CubeError, FileExistsError):
    """The output cube exists and was made with different settings."""


class CubeLockedError(CubeError):
    """Another process is writing the cube."""


class SchedulerError(GeodinoError, ConnectionError):
    """A dask scheduler cannot be reached or cannot run the job."""


class DatasetError(GeodinoError, ValueError):
    """A benchmark dataset is missing files or holds something unexpected."""


class StacError(RasterError):
    """A STAC Item or ItemCollection cannot be turned into a scene (not STAC, no projection, no such item...)."""


class RemoteError(GeodinoError, ConnectionError):
    """A URL or storage endpoint cannot be reached."""


class CredentialsError(GeodinoError, PermissionError):
    """A storage service refused the credentials (or none were found)."""


class VectorIndexError(GeodinoError, ValueError):
    """A vector index is missing or damaged, or cannot be built from the cubes given."""


class IndexMismatchError(VectorIndexError):
    """Cubes (or a query) come from different models, weights, normalisations or vector kinds."""


class CubeMismatchError(CubeError):
    """Two cubes that an operation combines differ in model, weights, radiometry or grid."""


class QueryError(GeodinoError, ValueError):
    """Query points or geometries cannot be used against a cube."""


class MissingCRSError(QueryError):
    """Query geometries come without a coordinate reference system."""


class GeometryOutsideError(QueryError):
    """Query geometries lie outside the cube (or on none of its valid patches)."""


class SampleError(GeodinoError, ValueError):
    """A sample of patches is too small for what is asked of it (e.g. more clusters than valid patches)."""


class EmptySampleError(SampleError):
    """A sample of patches is empty (no valid patch to fit on, a sample size of 0)."""


class LabelError(GeodinoError, ValueError):
    """Training labels cannot fit a head: no samples, or a single class."""


class SplitError(DatasetError):
    """A benchmark split is missing, empty, or unusable by a protocol (names the task and the partition file)."""


class HeadError(GeodinoError, ValueError):
    """A trained head file is missing, unreadable, or not a geodino head."""


class HeadMismatchError(HeadError, CubeMismatchError):
    """A head was trained on features of another model, weights, radiometry or width than the cube's."""
