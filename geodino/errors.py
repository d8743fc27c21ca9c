"""The exceptions geodino raises for problems a user can fix.

Every error derives from :class:`GeodinoError` and, where one fits, from the matching builtin
(``FileNotFoundError``, ``ValueError``...), so generic ``except`` clauses keep working. Messages are one
line that names what is wrong and what to do about it; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import contextlib

__all__ = [
    "GeodinoError", "ConfigError", "OutputExistsError", "InputSizeError", "WeightsError", "WeightsNotFoundError",
    "WeightsMismatchError", "UnsafeFileError", "RasterError", "RasterNotFoundError", "BandError", "GridError",
    "CubeError", "CubeExistsError", "CubeLockedError", "SchedulerError", "DatasetError", "StacError", "RemoteError",
    "CredentialsError", "VectorIndexError", "IndexMismatchError", "CubeMismatchError", "QueryError",
    "MissingCRSError", "GeometryOutsideError", "SampleError", "EmptySampleError", "LabelError", "SplitError",
    "RasterReadError", "EnvironmentFault", "DiskFullError", "OutputPermissionError", "StoreUnreachableError",
    "Interrupted", "environment_fault", "output_faults", "HeadError", "HeadMismatchError",
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
    KEPT = "finished tiles are kept"  # what a rerun keeps, said at the end of the line

    def __init__(self, where: str, detail: str, action: str = "writing", kept: str | None = None):
        self.where, self.detail, self.action = where, detail, action
        self.kept = kept or self.KEPT
        super().__init__(where, detail, action, kept)  # the constructor's args: pickles rebuild it from them

    hint = "fix it,"

    def __str__(self) -> str:
        return (f"{self.what} while {self.action} {self.where} ({self.detail}); {self.hint} then rerun the same "
                f"command to resume ({self.kept})")


class DiskFullError(EnvironmentFault):
    """No space left on the output's device (ENOSPC, EDQUOT)."""

    exit_code = 4
    what = "disk full"
    hint = "free space there (or choose another output),"


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


# the errno names of the machine's faults, each with the fault it stands for (in the order messages are matched)
_FAULTS = {**dict.fromkeys(("ENOSPC", "EDQUOT", "EFBIG"), DiskFullError),
           **dict.fromkeys(("EACCES", "EPERM", "EROFS"), OutputPermissionError),
           **dict.fromkeys(("EIO", "ESTALE", "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN",
                            "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ENOENT"),
                           StoreUnreachableError)}


def _errno_in_text(text: str) -> int | None:
    """The errno an error message from a library without Python's ``OSError`` (GDAL, safetensors, faiss,
    pyarrow) names: ``[Errno 28]``, ``errno 28``, ``code: 28`` or the C library's own words for it."""
    import errno
    import os
    import re

    m = re.search(r"(?:\[errno |errno[ =:]+|os \{ code: )(\d+)", text, re.I)
    if m:
        return int(m.group(1))
    low = text.lower()
    for name in _FAULTS:
        code = getattr(errno, name, None)
        if code is not None and name != "ENOENT" and os.strerror(code).lower() in low:
            return code
    if "free disk space available" in low or "disk full" in low:  # GDAL's own check before it writes
        return errno.ENOSPC
    return None


def environment_fault(e: BaseException, where: str, action: str = "writing",
                      kept: str | None = None) -> "EnvironmentFault | None":
    """The :class:`EnvironmentFault` an error met while ``action``-ing ``where`` stands for (None when it is none
    of them: a bug or bad input, left to surface as one). ``OSError`` s are read by their errno; errors of
    libraries that report a failed write in their own exception types (GDAL through rasterio, safetensors,
    faiss, pyarrow) by the errno or the system's message they quote; causes and contexts are followed."""
    import errno

    if isinstance(e, EnvironmentFault):
        return e
    for cur in _chain(e):
        if isinstance(cur, GeodinoError):  # already worded for the user (refused credentials, a missing bucket)
            return None
        code = cur.errno if isinstance(cur, OSError) and isinstance(cur.errno, int) else None
        text = str(cur)
        if code is None:
            code = _errno_in_text(text)
            if code == errno.ENOENT:  # a message quoting a missing file: an input's, as likely as the output's
                code = None
        if code is None and isinstance(cur, PermissionError):
            code = errno.EACCES
        if code is None and isinstance(cur, (ConnectionError, TimeoutError)):
            code = errno.ENOTCONN
        name = errno.errorcode.get(code, "")
        if name in _FAULTS:
            strerror = getattr(cur, "strerror", None) if isinstance(cur, OSError) else None
            first = text.splitlines()[0][:200] if text else type(cur).__name__
            return _FAULTS[name](where, f"{name}: {strerror or first}", action, kept)
    return None


def folder_fault(folder) -> int | None:
    """After a write into ``folder`` failed without an errno (GDAL reports libtiff's failed writes as "Write
    failed"), what the folder says: ENOSPC when its filesystem has (almost) no space left, EROFS when it is
    mounted read-only, EACCES when this process may not write there; None when none of them holds."""
    import errno
    import os

    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 1 << 20:
        return errno.ENOSPC
    if not os.access(folder, os.W_OK):
        return errno.EACCES
    return None


def unwritable_folder(folder, where: str, kept: str | None = None) -> "OutputPermissionError | None":
    """The :class:`OutputPermissionError` (exit 5) for an output whose existing ``folder`` cannot be written into
    (a read-only filesystem, no write permission), or None when it can."""
    import errno
    import os

    code = folder_fault(folder)
    if code not in (errno.EROFS, errno.EACCES):
        if os.access(folder, os.W_OK | os.X_OK):
            return None
        code = errno.EACCES
    return OutputPermissionError(where, f"{errno.errorcode[code]}: {folder} is not writable ({os.strerror(code)})",
                                 "writing", kept)


OUTPUT_KEPT = "nothing is left half-written and no earlier output was changed"


def _belongs_to(filename: str, output: str) -> bool:
    """Whether ``filename`` is ``output``, lies under it (a folder output) or is one of its temporary siblings
    (``.NAME.<id>.partial...``: what geodino writes before renaming into place, and ``NAME_proba.tif`` beside a
    class map)."""
    import os

    f, o = os.path.abspath(filename), os.path.abspath(output)
    if f == o or f.startswith(o.rstrip(os.sep) + os.sep):
        return True
    folder, stem = os.path.dirname(o), os.path.splitext(os.path.basename(o))[0]
    if not stem or not f.startswith(folder.rstrip(os.sep) + os.sep):
        return False
    first = os.path.relpath(f, folder).split(os.sep)[0]  # .NAME.tif.<id>.partial.tif, NAME_proba.tif, .NAME.<id>.x/
    return first.lstrip(".").startswith(stem)


def output_fault(e: BaseException, outputs, kept: str | None = None) -> "EnvironmentFault | None":
    """The :class:`EnvironmentFault` an error of a command that writes ``outputs`` (paths; the first names it)
    stands for, or None. A file that is missing counts only when it is part of an output (its folder vanished
    mid-write: an unmounted disk); elsewhere it is bad input or a bug, left to surface as such."""
    import errno

    outputs = [str(o) for o in outputs if o]
    fault = environment_fault(e, "", "writing", kept or OUTPUT_KEPT)
    if fault is None:
        return None
    fname = next((str(c.filename) for c in _chain(e) if isinstance(c, OSError) and c.filename
                  and isinstance(c.filename, (str, bytes))), None)
    owner = next((o for o in outputs if fname and _belongs_to(fname, o)), None)
    if fname and owner is None and _errno_of(e) in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return None
    if owner is not None or fname is None:
        where, action = (owner or (outputs[0] if outputs else "the output")), "writing"
    else:  # another file than the outputs (an input, a temporary folder)
        where = fname
        action = "writing" if isinstance(fault, DiskFullError) else "accessing"
    if fname and fname != where:
        where = f"{where} ({fname})"
    return type(fault)(where, fault.detail, action, fault.kept)


def _chain(e: BaseException, depth: int = 6):
    cur, n = e, 0
    while cur is not None and n < depth:
        yield cur
        cur, n = cur.__cause__ or cur.__context__, n + 1


def _errno_of(e: BaseException) -> int | None:
    for c in _chain(e):
        if isinstance(c, OSError) and isinstance(c.errno, int):
            return c.errno
    return None


@contextlib.contextmanager
def output_faults(outputs=(), kept: str | None = None):
    """Within the block, an error that is a fault of the machine while writing ``outputs`` (disk full, permission
    denied, an unreachable store; see :func:`output_fault`) is raised as its :class:`EnvironmentFault`, whose
    exit code the CLI uses. Every command that writes runs in one (the CLI's ``guarded``)."""
    outputs = list(outputs)
    try:
        yield
    except GeodinoError:
        raise
    except Exception as e:
        fault = output_fault(e, outputs, kept)
        if fault is None:
            raise
        raise fault from e


class ResolutionError(RasterError):
    """A raster does not say how large its pixels are on the ground (no CRS or geotransform), so a product that
    needs a ground resolution (canopy heights) cannot resample it to the model's."""


class HeadError(GeodinoError, ValueError):
    """A trained head file is missing, unreadable, or not a geodino head."""


class HeadMismatchError(HeadError, CubeMismatchError):
    """A head was trained on features of another model, weights, radiometry or width than the cube's."""
