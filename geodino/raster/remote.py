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

__all__ = ["gdal_path", "is_remote", "open_remote", "raster_error"]

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
