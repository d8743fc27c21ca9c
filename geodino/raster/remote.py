"""Remote rasters through GDAL's virtual filesystems, and the errors they raise said in one line.

URLs map onto GDAL paths (``https://h/x.tif`` -> ``/vsicurl/https://h/x.tif``, ``s3://b/k`` -> ``/vsis3/b/k``,
``gs://`` -> ``/vsigs/``, ``az://`` -> ``/vsiaz/``). Credentials and endpoints are GDAL's own configuration, read
from the environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``, or
``AWS_NO_SIGN_REQUEST=YES`` for public buckets), ``AWS_REGION``, and for S3-compatible services
``AWS_S3_ENDPOINT=host:port`` with ``AWS_HTTPS=NO`` and ``AWS_VIRTUAL_HOSTING=FALSE`` where needed.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

from geodino.errors import CredentialsError, RasterError, RasterNotFoundError, RemoteError

__all__ = ["gdal_path", "is_remote", "open_remote", "raster_error", "object_url", "remote_identity", "forget_cached"]

_VSI = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "azure": "/vsiaz/"}
_CREDENTIALS = re.compile(r"signature|access key|accessdenied|access denied|forbidden|response code: 40[13]|"
                          r"invalidtoken|expiredtoken|credentials not filled|not defined, and", re.I)
_NOT_FOUND = re.compile(r"does not exist|response code: 404|nosuchkey|nosuchbucket|not found", re.I)
_UNREACHABLE = re.compile(r"curl error|could not connect|couldn't connect|failed to connect|could not resolve|"
                          r"couldn't resolve|timed out|timeout|connection refused|network is unreachable", re.I)


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL or a GDAL virtual-filesystem path rather than a local file."""
    return "://" in path or path.startswith("/vsi")


def gdal_path(href: str) -> str:
    """The GDAL path of a URL or local path (local paths and ``/vsi...`` paths are returned unchanged)."""
    if href.startswith("/vsi") or "://" not in href:
        return href
    scheme = urlparse(href).scheme.lower()
    if scheme in ("http", "https"):
        return "/vsicurl/" + href
    if scheme in _VSI:
        return _VSI[scheme] + href.split("://", 1)[1]
    if scheme == "file":
        return urlparse(href).path
    raise RasterError(f"{href}: unsupported URL scheme {scheme!r}; use http(s)://, s3://, gs://, az:// or a path")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def raster_error(path: str, e: BaseException, what: str | None = None) -> Exception:
    """The geodino error for GDAL failing to open ``path`` (credentials refused, unreachable, missing, or not a
    raster), with a message that says what to do."""
    what = what or path
    msg = _first_line(e)
    if _CREDENTIALS.search(msg):
        return CredentialsError(f"{what}: the storage service refused the credentials ({msg}); set "
                                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES "
                                "for a public bucket")
    if _UNREACHABLE.search(msg):
        return RemoteError(f"{what}: cannot reach the server ({msg}); check the URL, the endpoint "
                           "(AWS_S3_ENDPOINT for S3-compatible storage) and the network")
    if _NOT_FOUND.search(msg):
        return RasterNotFoundError(f"{what} does not exist ({msg}); check the path or URL")
    return RasterError(f"{what} is not a raster GDAL can read ({msg})")


def open_remote(path: str, what: str | None = None):
    """Open a remote raster with rasterio (a dataset to close), turning GDAL's failures into geodino errors."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        raise raster_error(path, e, what) from e


# -- what identifies a remote object ----------------------------------------------------------------------------
_FROM_VSI = {"/vsicurl/": "", "/vsis3/": "s3://", "/vsigs/": "gs://", "/vsiaz/": "az://"}


def object_url(path: str) -> str | None:
    """The URL of a remote raster's GDAL path (``/vsicurl/https://h/x`` -> ``https://h/x``, ``/vsis3/b/k`` ->
    ``s3://b/k``), the URL itself, or None for a local path (or a GDAL path of another kind)."""
    for prefix, scheme in _FROM_VSI.items():
        if path.startswith(prefix):
            return scheme + path[len(prefix):]
    return path if "://" in path and not path.startswith("file://") else None


def _http_identity(url: str, timeout: float = 30.0) -> dict:
    """ETag, Last-Modified and size of an http(s) object: a HEAD request, or where a server refuses HEAD (a
    presigned GET URL, say) a one-byte ranged GET, whose Content-Range carries the size."""
    import urllib.error
    import urllib.request

    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        req = urllib.request.Request(url, method=method, headers={"User-Agent": "geodino", **headers})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                h = r.headers
                size = h.get("Content-Length")
                rng = re.fullmatch(r"bytes \d+-\d+/(\d+)", h.get("Content-Range") or "")
                if rng:
                    size = rng.group(1)
                return {"etag": h.get("ETag"), "last_modified": h.get("Last-Modified"),
                        "size": int(size) if size and size.isdigit() else None}
        except urllib.error.HTTPError as e:  # worded as GDAL's own failure would be (404: missing, 403: refused)
            last = Exception(f"HTTP response code: {e.code} ({e.reason})")
            if e.code in (401, 403, 404, 410):
                break
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = Exception(f"could not connect: {getattr(e, 'reason', e)}")
    raise _identity_error(url, last, "the server", "the URL and the network")  # the loop set `last` (or returned)


def _identity_error(url: str, e: Exception, asked: str, check: str) -> Exception:
    """:func:`raster_error`'s reading of a failed HEAD; where none of the known refusals matches, one saying what
    was asked."""
    err = raster_error(url, e)
    if type(err) is RasterError:
        return RemoteError(f"{url}: cannot ask {asked} what the object is ({_first_line(e)}); check {check}")
    return err


def _object_store_config(scheme: str) -> dict:
    """obstore's configuration for ``s3://`` from GDAL's environment (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
    ``AWS_NO_SIGN_REQUEST``), which obstore does not read; its own variables (``AWS_ENDPOINT``...) still apply."""
    import os

    if scheme != "s3":
        return {}
    cfg = {}
    if os.environ.get("AWS_S3_ENDPOINT") and not os.environ.get("AWS_ENDPOINT"):
        plain = os.environ.get("AWS_HTTPS", "YES").upper() in ("NO", "FALSE", "OFF")
        cfg["endpoint"] = f"{'http' if plain else 'https'}://{os.environ['AWS_S3_ENDPOINT']}"
        if plain:
            cfg["allow_http"] = True
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "ON"):
        cfg["skip_signature"] = True
    return cfg


def _store_identity(url: str) -> dict:
    """ETag, Last-Modified and size of an object on S3, GCS or Azure (an object-store HEAD, obstore)."""
    import obstore
    from obstore.store import from_url

    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    try:
        meta = obstore.head(from_url(f"{scheme}://{bucket}", **_object_store_config(scheme)), key)
    except FileNotFoundError:
        raise RasterNotFoundError(f"{url} does not exist (the object store has no such object)") from None
    except Exception as e:  # noqa: BLE001 - obstore's errors: refused credentials, unreachable endpoint
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        if isinstance(e, (PermissionDeniedError, UnauthenticatedError)):
            e = Exception(f"access denied ({_first_line(e)})")
        raise _identity_error(url, e, "the object store", "the credentials and the endpoint") from None
    lm = meta.get("last_modified")
    return {"etag": meta.get("e_tag"), "last_modified": lm.isoformat() if lm is not None else None,
            "size": int(meta["size"]) if meta.get("size") is not None else None}


def remote_identity(path: str) -> dict:
    """What identifies the remote object behind ``path`` (a URL or GDAL /vsi path) now: ``{"url", "etag",
    "last_modified", "size"}``, from an HTTP HEAD (http, https) or an object-store HEAD (s3, gs, az). A cube
    records it, and a resume that finds another one is refused: the object was replaced at the same URL."""
    url = object_url(path)
    if url is None:
        raise ValueError(f"{path} is not a remote object")
    scheme = urlparse(url).scheme.lower()
    ident = _http_identity(url) if scheme in ("http", "https") else _store_identity(url)
    return {"url": url, **ident}


def forget_cached(path: str) -> None:
    """Drop what GDAL's network file systems cache of ``path`` (its size and the bytes read so far). GDAL keeps
    them for the life of the process, so after the object at a URL is replaced, opening the URL again in the same
    process reads the old bytes without a word (tested: a swapped file behind the local HTTP server read back
    as the old one). rasterio has no binding for it, so GDAL's ``VSICurlPartialClearCache`` is called through
    ctypes in the libgdal rasterio loaded; where that library cannot be found, caching is switched off for the
    path's prefix (``CPL_VSIL_CURL_NON_CACHED``)."""
    import ctypes
    import ctypes.util
    import glob
    import os

    import rasterio

    # a wheel's bundled libgdal, else the system's
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*")) or \
        [lib for lib in [ctypes.util.find_library("gdal")] if lib]
    for lib in libs:
        try:
            fn = getattr(ctypes.CDLL(lib), "VSICurlPartialClearCache")
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_char_p], None
        fn(path.encode())
        return
    from rasterio.env import get_gdal_config, set_gdal_config

    current = get_gdal_config("CPL_VSIL_CURL_NON_CACHED") or ""
    set_gdal_config("CPL_VSIL_CURL_NON_CACHED", ":".join(x for x in (current, path) if x))
