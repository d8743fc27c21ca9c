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
    "RasterReadError",
    "EnvironmentFault",
    "DiskFullError",
    "OutputPermissionError",
    "StoreUnreachableError",
    "Interrupted",
    "environment_fault",
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


class RasterReadError(RasterError):
    """Reading a window of a raster failed (a truncated or corrupt file, a bad block): names the file, the pixel
    window and GDAL's message."""

    def __init__(self, path: str, window: tuple[int, int, int, int], gdal_message: str):
        self.path, self.window, self.gdal_message = path, tuple(int(v) for v in window), gdal_message
        # args are the constructor's (how pickles, and dask's tblib, rebuild an exception); __str__ words them
        super().__init__(path, self.window, gdal_message)

    @property
    def brief(self) -> str:
        """The window and GDAL's message (what a failed tile records)."""
        r, c, h, w = self.window
        return f"pixel window rows {r}..{r + h}, cols {c}..{c + w} of {self.path}: {self.gdal_message}"

    def __str__(self) -> str:
        r, c, h, w = self.window
        return (f"cannot read {self.path}: pixel window rows {r}..{r + h}, cols {c}..{c + w} failed "
                f"({self.gdal_message}); the file is truncated or corrupt: replace it, or pass "
                "--on-read-error skip to embed the rest and mark those tiles failed")


class EnvironmentFault(GeodinoError, OSError):
    """The machine, not the input, stopped a run (disk full, permission, an unreachable store): nothing written so
    far is lost, and rerunning the same command resumes. Each kind has its own exit code (README)."""

    exit_code = 1  # only its subclasses are raised
    what = "an environment fault"

    def __init__(self, where: str, detail: str, action: str = "writing"):
        self.where, self.detail, self.action = where, detail, action
        super().__init__(where, detail, action)  # the constructor's args: pickles rebuild it from them

    hint = "fix it,"

    def __str__(self) -> str:
        return (f"{self.what} while {self.action} {self.where} ({self.detail}); {self.hint} then rerun the same "
                "command to resume (finished tiles are kept)")


class DiskFullError(EnvironmentFault):
    """No space left on the output's device (ENOSPC, EDQUOT)."""

    exit_code = 4
    what = "disk full"
    hint = "free space there (or choose another -o),"


class OutputPermissionError(EnvironmentFault, PermissionError):
    """The output cannot be written: permission denied or a read-only filesystem (EACCES, EPERM, EROFS)."""

    exit_code = 5
    what = "permission denied"
    hint = "make it writable,"


class StoreUnreachableError(EnvironmentFault, ConnectionError):
    """The output store vanished or stopped answering (an unmounted disk, a stale NFS handle, I/O errors, a
    storage service that cannot be reached)."""

    exit_code = 6
    what = "output store unreachable"
    hint = "make it reachable again,"


class Interrupted(GeodinoError):
    """A run stopped by SIGINT or SIGTERM (exit 128 + the signal's number: 130, 143); the cube stays resumable."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(self.signum)

    def __str__(self) -> str:
        import signal

        return f"interrupted: rerun the same command to resume (stopped by {signal.Signals(self.signum).name})"


def environment_fault(e: OSError, where: str, action: str = "writing") -> "EnvironmentFault | None":
    """The :class:`EnvironmentFault` an ``OSError`` met while ``action``-ing ``where`` stands for (None when it
    is none of them: a bug, left to surface as one)."""
    import errno

    if isinstance(e, EnvironmentFault):
        return e
    if isinstance(e, GeodinoError):  # already worded for the user (refused credentials, a missing bucket): exit 2
        return None
    detail = f"{errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__}: " \
             f"{e.strerror or str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(where, detail, action)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(e, PermissionError):
        return OutputPermissionError(where, detail, action)
    if e.errno in (errno.ENOENT, errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                   errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET,
                   errno.ECONNABORTED) or isinstance(e, (ConnectionError, TimeoutError)):
        return StoreUnreachableError(where, detail, action)
    return None


class ResolutionError(RasterError):
    """A raster does not say how large its pixels are on the ground (no CRS or geotransform), so a product that
    needs a ground resolution (canopy heights) cannot resample it to the model's."""


class HeadError(GeodinoError, ValueError):
    """A trained head file is missing, unreadable, or not a geodino head."""


class HeadMismatchError(HeadError, CubeMismatchError):
    """A head was trained on features of another model, weights, radiometry or width than the cube's."""
