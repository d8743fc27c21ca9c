"""Where a cube lives: a URL (a plain path is a local one) opened through zarr's store abstraction, and the
lease that keeps a second writer out.

Backends (chosen by the URL's scheme):

- a local path (or ``file://``): :class:`zarr.storage.LocalStore` (it writes each object to a temporary file and
  renames it into place, so an object is whole or absent);
- ``s3://``, ``gs://``, ``az://``/``abfs://``, ``http(s)://``: :class:`zarr.storage.ObjectStore` over obstore.
  obstore rather than s3fs/fsspec because it offers the two conditional writes a lease on object storage needs:
  create-if-absent (S3 ``If-None-Match: *``) and replace-if-unchanged (``If-Match: <etag>``), and because it
  pins no botocore (s3fs's aiobotocore would force another botocore than the one this environment carries).
  Credentials and endpoints come from the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_REGION``, ``AWS_ENDPOINT`` + ``AWS_ALLOW_HTTP=true`` for S3-compatible servers) or ``storage_options``
  (obstore's config keys);
- any other fsspec URL (``memory://``, ...): :class:`zarr.storage.FsspecStore` (its lease is best effort: fsspec
  has no general conditional write; see :class:`CubeLease`).

Outputs that are single files (a COG, a GeoParquet table, an index's files, a head) go through the same URLs:
:func:`put_atomic` publishes bytes or a finished local file (a local output: a temporary file renamed into place;
an object store: one PUT, or a multipart upload that S3 makes visible only when complete, so a failed upload
leaves no object), :func:`staged_output` gives a local file to write that is published on success,
:func:`exists`, :func:`read_bytes` and :func:`delete` read and remove such an object.

Nothing here builds a local ``Path`` except for local cubes and local outputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from geodino.errors import (ConfigError, CredentialsError, CubeLockedError, OutputExistsError, RemoteError,
                            StoreUnreachableError)

__all__ = ["store_errors", "cube_url", "is_local", "zarr_store", "list_keys", "delete_keys", "store_nbytes", "exists",
           "CubeLease", "LEASE_KEY", "join", "check_lease", "put_atomic", "staged_output", "read_bytes", "open_input",
           "delete", "is_dir", "check_folder", "location"]

LEASE_KEY = ".geodino.lease"
MUTEX_KEY = ".geodino.lease.takeover"
LEASE_TTL = 60.0  # seconds a lease lives after its last renewal (renewed every quarter of it)
OBSTORE_SCHEMES = {"s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https"}


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def cube_url(path: str | os.PathLike) -> str:
    """The canonical form of a cube location: an absolute local path, or the URL without a trailing slash."""
    s = os.fspath(path)
    if _scheme(s) == "file":
        s = s[len("file://"):]
    if _scheme(s):
        return s.rstrip("/")
    return os.path.abspath(s)


def is_local(path: str | os.PathLike) -> bool:
    return not _scheme(cube_url(path))


def location(path: str | os.PathLike) -> Path | str:
    """An output's location as callers keep it: a local :class:`~pathlib.Path` (as given; a ``file://`` URL as
    its path), or the canonical URL."""
    if not is_local(path):
        return cube_url(path)
    return Path(cube_url(path)) if _scheme(os.fspath(path)) == "file" else Path(path)


def join(base: str | os.PathLike, name: str) -> str:
    """``base/name`` for a path or a URL."""
    b = os.fspath(base)
    return os.path.join(b, name) if not _scheme(b) else b.rstrip("/") + "/" + name


def zarr_store(path: str | os.PathLike, *, read_only: bool = True, storage_options: dict | None = None):
    """A zarr v3 store for the cube at ``path``."""
    from zarr.storage import FsspecStore, LocalStore, ObjectStore

    url = cube_url(path)
    scheme = _scheme(url)
    if not scheme:
        return LocalStore(url, read_only=read_only)
    if scheme in OBSTORE_SCHEMES:
        return ObjectStore(_obstore(url, storage_options), read_only=read_only)
    return FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)


def _obstore(url: str, storage_options: dict | None = None, *, mkdir: bool = False):
    from obstore.store import LocalStore, from_url

    if not _scheme(url):
        if mkdir:
            os.makedirs(url, exist_ok=True)
        return LocalStore(url)
    return from_url(url, **(storage_options or {}))


@contextlib.contextmanager
def store_errors(url: str, what: str = "read"):
    """Turn a remote store's refusals into one-line errors (credentials refused, no such bucket, unreachable
    endpoint); a missing object stays a FileNotFoundError, which callers read as "absent"."""
    no_bucket = f"cannot {what} {url}: the bucket does not exist; create it or correct the URL"
    try:
        yield
    except FileNotFoundError as e:
        if "NoSuchBucket" in str(e):
            raise RemoteError(no_bucket) from None
        raise
    except Exception as e:
        try:
            from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
        except ImportError:  # pragma: no cover - obstore is a dependency
            raise e from None
        if not isinstance(e, BaseError):
            raise
        if not _scheme(url):  # a local filesystem's fault (disk full, read-only, I/O error) through obstore
            from geodino.errors import environment_fault

            fault = environment_fault(e, f"the cube {url}", "writing" if what == "write" else "reading")
            if fault is not None:
                raise fault from None
        text = str(e)
        code = re.search(r"<Code>(\w+)</Code>", text)
        code = code.group(1) if code else type(e).__name__
        if isinstance(e, (PermissionDeniedError, UnauthenticatedError)) or re.search(
                r"SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|ExpiredToken|403 Forbidden", text):
            raise CredentialsError(f"cannot {what} {url}: the store refused the credentials ({code}); check "
                                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's "
                                   "permissions") from None
        if "NoSuchBucket" in text:
            raise RemoteError(no_bucket) from None
        first = text.splitlines()[0][:160] if text else type(e).__name__
        raise RemoteError(f"cannot {what} {url} ({code}): {first}; check the endpoint (AWS_ENDPOINT) and the "
                          "network") from None


def _sync(coro):
    # zarr's stores are async; zarr.core.sync.sync runs a coroutine on zarr's own event loop (what zarr's
    # synchronous API does internally)
    from zarr.core.sync import sync

    return sync(coro)


def list_keys(path: str | os.PathLike, prefix: str = "", *, storage_options: dict | None = None) -> list[str]:
    """Every object key under the cube (relative to its root), or [] when there is none."""
    url = cube_url(path)
    if is_local(url) and not os.path.isdir(url):
        return []
    store = zarr_store(url, storage_options=storage_options)
    try:
        with store_errors(url, "list"):
            from zarr.core.sync import collect_aiterator  # on zarr's loop, as _sync

            return sorted(collect_aiterator(store.list_prefix(prefix)))
    except FileNotFoundError:
        return []


def exists(path: str | os.PathLike, key: str = "", *, storage_options: dict | None = None) -> bool:
    """Whether ``key`` exists under the cube or folder at ``path`` or, without ``key``, the object or file at
    ``path`` itself."""
    url = cube_url(path)
    if is_local(url):
        return os.path.exists(os.path.join(url, key) if key else url)
    if not key:
        store, name = _object(url, storage_options)
        return _head(store, name, url) is not None
    return bool(_sync(zarr_store(url, storage_options=storage_options).exists(key)))


def delete_keys(path: str | os.PathLike, keys: list[str], *, storage_options: dict | None = None) -> None:
    store = zarr_store(path, read_only=False, storage_options=storage_options)
    for k in keys:
        _sync(store.delete(k))


def store_nbytes(path: str | os.PathLike, *, storage_options: dict | None = None) -> int:
    """Bytes of every object of the cube."""
    url = cube_url(path)
    if is_local(url):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(url) for f in fs)
    store = zarr_store(url, storage_options=storage_options)
    return int(_sync(store.getsize_prefix(""))) if list_keys(url, storage_options=storage_options) else 0


def check_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Refuse a folder output that cannot be one: a file at ``path``, or a file where one of its parents should
    be a folder (it is created later, by whoever writes into it)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a folder: choose another path")
    blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot write {what} {p}: {blocker} is a file, not a folder; choose another path")
    return p


# -- single-file outputs -----------------------------------------------------------------------------------------
# The largest object written with one conditional PUT (S3 ``If-None-Match: *``: create only if absent, atomically).
# Larger files go up as a multipart upload (streamed from disk in chunks), which S3 has no conditional form of:
# there the absence is checked just before.
SINGLE_PUT_MAX = 256 * 2**20


def _object(url: str, storage_options: dict | None = None):
    """``(obstore store of the parent, object name)`` of an object URL."""
    from obstore.store import from_url

    parent, _, name = url.rpartition("/")
    if not name or _scheme(parent) == "" or parent.endswith(":/") or parent.endswith(":"):
        raise ValueError(f"{url} names no object")
    return from_url(parent, **(storage_options or {})), name


def _head(store, name: str, url: str) -> dict | None:
    import obstore

    try:
        with store_errors(url, "read"):
            return obstore.head(store, name)
    except FileNotFoundError:
        return None


def is_dir(path: str | os.PathLike, *, storage_options: dict | None = None) -> bool:
    """Whether ``path`` is a local folder or, on an object store, a prefix holding objects."""
    url = cube_url(path)
    if is_local(url):
        return os.path.isdir(url)
    if _scheme(url) not in OBSTORE_SCHEMES:
        return False
    import obstore

    try:
        with store_errors(url, "list"):
            return bool(next(iter(obstore.list(_obstore(url, storage_options), chunk_size=1)), []))
    except FileNotFoundError:
        return False


def put_atomic(url: str | os.PathLike, data: bytes | memoryview | os.PathLike, *, overwrite: bool = False,
               storage_options: dict | None = None) -> str:
    """Publish ``data`` (bytes, or the path of a finished local file) at ``url``, whole or not at all.

    Local: written to a temporary file beside the output (a given file: moved when on the same filesystem) and
    renamed into place. Object store: one PUT up to :data:`SINGLE_PUT_MAX` bytes, a multipart upload beyond,
    which the store makes visible only once complete (a multipart upload cut off may leave hidden parts, which
    a bucket's lifecycle rule for incomplete uploads removes; no object appears). Without ``overwrite``
    an existing output is refused with :class:`~geodino.errors.OutputExistsError` and never replaced. Returns
    the canonical URL."""
    out = cube_url(url)
    is_path = not isinstance(data, (bytes, bytearray, memoryview))
    exists_msg = f"{out} exists: pass --overwrite (overwrite=True) to replace it, or choose another output path"
    if is_local(out):
        tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{uuid.uuid4().hex[:8]}.partial")
        try:
            if is_path:
                try:
                    os.link(os.fspath(data), tmp)  # same filesystem: no copy
                except OSError:
                    shutil.copyfile(os.fspath(data), tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data)
            if not overwrite and os.path.lexists(out):  # appeared since the command's first check
                raise OutputExistsError(exists_msg)
            os.replace(tmp, out)  # atomic on one filesystem
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return out
    import obstore  # not for local outputs: its import costs a process that only writes files ~4 MiB

    store, name = _object(out, storage_options)
    size = os.path.getsize(data) if is_path else len(data)
    with store_errors(out, "write"):
        if size <= SINGLE_PUT_MAX:
            payload = open(os.fspath(data), "rb").read() if is_path else bytes(data)
            try:
                obstore.put(store, name, payload, mode="overwrite" if overwrite else "create", use_multipart=False)
            except obstore.exceptions.AlreadyExistsError:
                raise OutputExistsError(exists_msg) from None
        else:
            if not overwrite and _head(store, name, out) is not None:
                raise OutputExistsError(exists_msg)
            obstore.put(store, name, Path(os.fspath(data)) if is_path else bytes(data), use_multipart=True)
    return out


@contextlib.contextmanager
def staged_output(url: str | os.PathLike, *, overwrite: bool = False, storage_options: dict | None = None,
                  suffix: str = ""):
    """A local file to write an output into, published at ``url`` by :func:`put_atomic` when the block ends
    without an error, and removed in every case: a failed write leaves nothing at ``url`` (and an existing
    output untouched). Local outputs stage beside the output (a rename, no copy); object-store outputs in a
    temporary folder (``TMPDIR``), then one upload. Yields the staging path (a :class:`pathlib.Path`)."""
    out = cube_url(url)
    tag = uuid.uuid4().hex[:8]
    folder = None
    if is_local(out):
        tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{tag}.stage{suffix}")
    else:
        folder = tempfile.mkdtemp(prefix="geodino-out-")
        tmp = os.path.join(folder, f"{out.rpartition('/')[2] or 'output'}{suffix}")
    try:
        yield Path(tmp)
        put_atomic(out, Path(tmp), overwrite=overwrite, storage_options=storage_options)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def read_bytes(url: str | os.PathLike, *, storage_options: dict | None = None) -> bytes:
    """The bytes of the file or object at ``url`` (FileNotFoundError when absent)."""
    out = cube_url(url)
    if is_local(out):
        with open(out, "rb") as f:
            return f.read()
    import obstore

    store, name = _object(out, storage_options)
    with store_errors(out, "read"):
        return bytes(obstore.get(store, name).bytes())


@contextlib.contextmanager
def open_input(url: str | os.PathLike, *, storage_options: dict | None = None):
    """A context giving a seekable binary file object that reads the file or object at ``url`` (ranged reads on
    object stores, so a reader such as pyarrow fetches only the parts it needs)."""
    out = cube_url(url)
    if is_local(out):
        with open(out, "rb") as f:
            yield f
        return
    import obstore

    store, name = _object(out, storage_options)
    with store_errors(out, "read"):
        raw = _ObjectReader(obstore.open_reader(store, name))
    with io.BufferedReader(raw, buffer_size=2**20) as f:
        yield f


class _ObjectReader(io.RawIOBase):
    """obstore's reader as a standard raw file (what pyarrow and other readers expect of a Python file object)."""

    def __init__(self, reader):
        self._r = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._r.read(len(b))
        n = len(data)
        memoryview(b)[:n] = memoryview(data)
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._r.seek(offset, whence)

    def tell(self) -> int:
        return self._r.tell()

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()


def delete(url: str | os.PathLike, *, storage_options: dict | None = None) -> None:
    """Remove the file or object at ``url`` (nothing when absent)."""
    import obstore

    out = cube_url(url)
    if is_local(out):
        if os.path.lexists(out) and not os.path.isdir(out):
            os.unlink(out)
        return
    store, name = _object(out, storage_options)
    with store_errors(out, "write"), contextlib.suppress(FileNotFoundError):
        obstore.delete(store, name)


# -- the lease --------------------------------------------------------------------------------------------------
class _ObstoreIO:
    """The lease object's conditional operations on obstore (local files, S3, GCS, Azure)."""

    def __init__(self, url: str, storage_options: dict | None):
        import obstore

        self.obs = obstore
        self.store = _obstore(url, storage_options, mkdir=True)

    def create(self, data: bytes, key: str = LEASE_KEY) -> str | None:
        """Write ``key`` if it is absent; its version token, or None if it exists."""
        try:
            r = self.obs.put(self.store, key, data, mode="create")
        except self.obs.exceptions.AlreadyExistsError:
            return None
        return r.get("e_tag") or "local"

    def read(self) -> tuple[bytes, str] | None:
        try:
            r = self.obs.get(self.store, LEASE_KEY)
        except FileNotFoundError:
            return None
        return bytes(r.bytes()), r.meta.get("e_tag") or ""

    def replace(self, data: bytes, token: str) -> str | None:
        """Replace the lease if it is still version ``token`` (compare-and-swap); None if it changed.
        Raises NotImplementedError where the backend has no conditional update (local files)."""
        try:
            r = self.obs.put(self.store, LEASE_KEY, data, mode={"e_tag": token})
        except (self.obs.exceptions.PreconditionError, FileNotFoundError):
            return None
        return r.get("e_tag") or token

    def age(self, key: str) -> float | None:
        try:
            return time.time() - self.obs.head(self.store, key)["last_modified"].timestamp()
        except FileNotFoundError:
            return None

    def overwrite(self, data: bytes) -> str:
        r = self.obs.put(self.store, LEASE_KEY, data, mode="overwrite")
        return r.get("e_tag") or "local"

    def delete(self, key: str = LEASE_KEY) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.obs.delete(self.store, key)


class _FsspecIO:
    """Best-effort lease operations on other fsspec filesystems: exclusive create where the filesystem honours
    mode "xb", no compare-and-swap (a takeover race between two processes cannot be excluded there)."""

    def __init__(self, url: str, storage_options: dict | None):
        from fsspec.core import url_to_fs

        self.fs, root = url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")

    def create(self, data: bytes, key: str = LEASE_KEY) -> str | None:
        path = self.root + "/" + key
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except (FileExistsError, ValueError, NotImplementedError):
            if self.fs.exists(path):
                return None
            with self.fs.open(path, "wb") as f:
                f.write(data)
        return "fsspec"

    def read(self) -> tuple[bytes, str] | None:
        try:
            return self.fs.cat_file(self.root + "/" + LEASE_KEY), "fsspec"
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, token: str) -> str | None:
        raise NotImplementedError

    def age(self, key: str) -> float | None:
        try:
            info = self.fs.info(self.root + "/" + key)
        except FileNotFoundError:
            return None
        t = info.get("created") or info.get("mtime") or info.get("LastModified")
        return time.time() - (t.timestamp() if hasattr(t, "timestamp") else float(t)) if t else 0.0

    def overwrite(self, data: bytes) -> str:
        with self.fs.open(self.root + "/" + LEASE_KEY, "wb") as f:
            f.write(data)
        return "fsspec"

    def delete(self, key: str = LEASE_KEY) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.root + "/" + key)


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


class CubeLease:
    """The right to write a cube: a small JSON object ``.geodino.lease`` in the cube's root, on any store.

    Semantics:

    - **acquire** creates the object only if it is absent (S3 ``If-None-Match: *``, an exclusive create on local
      files), holding ``owner`` (a random id), ``host``, ``pid`` and that process's start time, ``acquired``,
      ``expires`` (seconds since the epoch, UTC) and ``ttl``.
    - While held, a daemon thread **renews** it every ``ttl / 4`` seconds, pushing ``expires`` to now + ``ttl``
      (a compare-and-swap on the version it wrote last, where the backend has one).
    - **Expiry rule.** A lease is *stale*, and may be taken over, when the current time is past its ``expires``
      (the holder stopped renewing for ``ttl`` seconds: it died, hung or lost its connection; clocks of writers
      must agree to well within ``ttl``), or at once when it names this host and a process that no longer runs
      (pid absent, or another process's start time: a ``kill -9`` on this machine frees the cube immediately).
      A live lease refuses with :class:`~geodino.errors.CubeLockedError` (one line naming the holder).
    - **Takeover** replaces the stale object only if it has not changed since it was read (S3 ``If-Match``); on
      local files, which have no compare-and-swap, under a short-lived takeover mutex (an exclusive create of
      ``.geodino.lease.takeover``), re-reading the lease inside it: of several contenders exactly one wins.
    - **Renewal is atomic** on every store: a compare-and-swap where the backend has one (S3 ``If-Match``); on
      local files under the same takeover mutex, re-reading the lease inside it, so a renewal and a takeover
      never interleave (the one that comes second sees the other's write).
    - **A holder stops writing when its lease is no longer safe to hold**: when a renewal finds the lease taken
      over (it stalled past expiry), or when renewals keep failing (an unreachable store) until the lease it
      last wrote is within ``ttl / 10`` of expiring. :meth:`check` then raises
      :class:`~geodino.errors.StoreUnreachableError` (exit code 6 in the CLI): the run loop calls it after every
      tile and before finalizing, and a cube writer of this process calls it (:func:`check_lease`) before every
      write, so nothing is written under a lease another writer may hold.
    - **release** deletes the object if it is still ours.

    Chunk writes are idempotent (a tile's bytes depend only on the inputs), so the lease guards against two runs
    interleaving their bookkeeping, not against torn data.
    """

    def __init__(self, path: str | os.PathLike, *, ttl: float | None = None, storage_options: dict | None = None):
        self.url = cube_url(path)
        self.ttl = float(LEASE_TTL if ttl is None else ttl)
        self.storage_options = storage_options
        self.owner = uuid.uuid4().hex
        self._io = None
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        self.expires = 0.0  # the expiry of the lease this holder last wrote (seconds since the epoch)
        self.failure: str | None = None  # why the last renewal failed (None: it succeeded)

    # -- the lease's content ---------------------------------------------------------------------------------
    def _record(self, acquired: str | None = None) -> bytes:
        pid = os.getpid()
        now = time.time()
        self._pending_expiry = round(now + self.ttl, 3)
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": pid,
                           "pid_started": _process_started(pid), "acquired": acquired or _iso(now),
                           "renewed": _iso(now), "expires": self._pending_expiry, "ttl": self.ttl}).encode()

    @staticmethod
    def describe(rec: dict) -> str:
        return f"pid {rec.get('pid')} on {rec.get('host')} (lease renewed {rec.get('renewed')}, " \
               f"expires {_iso(rec.get('expires', 0))})"

    @staticmethod
    def stale_reason(rec: dict, now: float | None = None) -> str | None:
        """Why the lease ``rec`` may be taken over, or None while it is live (the expiry rule above)."""
        now = time.time() if now is None else now
        if rec.get("released"):
            return "released"
        try:
            expires = float(rec["expires"])
        except (KeyError, TypeError, ValueError):
            return "unreadable"
        if now > expires:
            return "expired"
        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
            started = _process_started(rec["pid"])
            if started is None or (rec.get("pid_started") is not None
                                   and abs(started - float(rec["pid_started"])) > 1.0):
                return "its process is gone"
        return None

    # -- acquire / renew / release ---------------------------------------------------------------------------
    def acquire(self) -> "CubeLease":
        with store_errors(self.url, "write"):
            io = self._io = _ObstoreIO(self.url, self.storage_options) if not _scheme(self.url) or \
                _scheme(self.url) in OBSTORE_SCHEMES else _FsspecIO(self.url, self.storage_options)
            for attempt in range(8):
                tok = io.create(self._record())
                if tok is not None:
                    self._token, self.expires = tok, self._pending_expiry
                    break
                cur = io.read()
                if cur is None:
                    continue  # released meanwhile
                data, tok = cur
                try:
                    rec = json.loads(data)
                except ValueError:
                    rec = {}
                if self.stale_reason(rec) is None:
                    raise CubeLockedError(f"{self.url} is being written by {self.describe(rec)}: wait for it to "
                                          f"finish, or stop it (a lease not renewed for {rec.get('ttl', self.ttl):g} "
                                          "s expires, at once if its process on this host is gone)")
                try:
                    new = io.replace(self._record(), tok)
                except NotImplementedError:  # the stale lease taken over only if it is still the one judged
                    new = self._write_exclusively(io, lambda cur: cur is None or cur[0] == data, renewing=False)
                if new is not None:
                    self._token, self.expires = new, self._pending_expiry
                    break
                time.sleep(0.02 * (attempt + 1))
            else:
                raise CubeLockedError(f"{self.url}: another writer is taking the cube over at this moment; try again")
        self._stop.clear()
        self.lost, self.failure = False, None
        with _HELD_LOCK:
            _HELD[self.url] = self
        self._thread = threading.Thread(target=self._renew_loop, name="geodino-lease", daemon=True)
        self._thread.start()
        return self

    def _write_exclusively(self, io, unchanged, renewing: bool) -> str | None:
        """Where the backend has no compare-and-swap (local files): write a fresh record while holding a takeover
        mutex (an exclusive create of ``.geodino.lease.takeover``; one left by a contender that died holding it is
        broken after 30 s), if ``unchanged(the lease read inside it)``; None if not. A takeover tries the mutex
        once (held: None, judged afresh on the next attempt); a renewal waits for a contender's takeover to finish
        (it takes milliseconds)."""
        if not _take_mutex(io, self.owner, attempts=50 if renewing else 1):
            if renewing:
                raise TimeoutError(f"the lease's takeover mutex {MUTEX_KEY} stayed held")
            return None
        try:
            return io.overwrite(self._record()) if unchanged(io.read()) else None
        finally:
            io.delete(MUTEX_KEY)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
                self.failure = None
            except Exception as e:  # noqa: BLE001 - an unreachable store: retried at the next period; check()
                # stops the run once the lease it last wrote is about to expire
                text = str(e).strip().splitlines()
                self.failure = f"{type(e).__name__}: {text[0][:160] if text else ''}"

    def renew(self) -> None:
        """Push the lease's expiry to now + ttl if it is still ours (atomically); mark it lost if it is not."""
        io = self._io
        if io is None or self.lost:
            return
        try:
            new = io.replace(self._record(), self._token)
        except NotImplementedError:  # local files: the takeover mutex makes read-compare-write one step
            new = self._write_exclusively(io, lambda cur: cur is not None and _owner_of(cur[0]) == self.owner,
                                          renewing=True)
        if new is None:
            self.lost = True
        else:
            self._token, self.expires = new, self._pending_expiry

    def check(self) -> None:
        """Raise :class:`~geodino.errors.StoreUnreachableError` if this writer may no longer write: its lease was
        taken over (it stalled past its expiry), or it could not be renewed and is about to expire."""
        if self._io is None and not self.lost:
            return  # not held (released, or never acquired)
        where = f"the cube {self.url}"
        if self.lost:
            raise StoreUnreachableError(where, "this run's lease expired and another writer took the cube over; "
                                        "this run stopped writing", "holding the lease of")
        if time.time() > self.expires - self.ttl / 10:
            why = f"the last renewal failed: {self.failure}" if self.failure else "it was not renewed in time"
            raise StoreUnreachableError(where, f"this run's lease expires at {_iso(self.expires)} and {why}; this "
                                        "run stopped writing", "holding the lease of")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with _HELD_LOCK:
            if _HELD.get(self.url) is self:
                del _HELD[self.url]
        io, self._io = self._io, None
        if io is None or self.lost or time.time() > self.expires:  # expired: another writer may hold it now
            return
        try:  # a live lease is ours alone (nobody takes over a live lease): read, then delete (no mutex, whose
            cur = io.read()  # creation a full disk would refuse)
            if cur is not None and _owner_of(cur[0]) == self.owner:
                io.delete()
        except Exception:  # noqa: BLE001 - the lease then expires by itself
            pass

    def __enter__(self) -> "CubeLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, CubeLease] = {}  # cube URL -> the lease this process holds on it
_HELD_LOCK = threading.Lock()


def check_lease(path: str | os.PathLike) -> None:
    """Before a write: raise if this process holds the cube's lease and may no longer write under it (see
    :meth:`CubeLease.check`). Writers on other processes (dask workers) have no lease here: their run loop
    checks for them."""
    lease = _HELD.get(cube_url(path))
    if lease is not None:
        lease.check()


def _owner_of(data: bytes) -> str | None:
    try:
        return json.loads(data).get("owner")
    except (ValueError, AttributeError):
        return None


def _take_mutex(io, owner: str, attempts: int) -> bool:
    """Create the takeover mutex (``attempts`` tries, a few ms apart); a mutex older than 30 s was left by a
    process that died holding it and is broken."""
    for attempt in range(attempts):
        if io.create(owner.encode(), MUTEX_KEY) is not None:
            return True
        age = io.age(MUTEX_KEY)
        if age is not None and age > 30:
            io.delete(MUTEX_KEY)
            continue
        if attempt + 1 < attempts:
            time.sleep(min(0.05, 0.005 * (attempt + 1)))
    return False


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).isoformat(timespec="seconds")

