"""Process-wide memory policy for long streaming jobs (one place, called by the embed runner and workers).

* glibc raises its mmap threshold dynamically after large frees, after which tile-sized buffers come from the
  heap and fragment it: RSS then creeps up with the number of tiles. A fixed 1 MiB threshold returns every large
  buffer to the OS when it is freed.
* GDAL's block cache defaults to 5 % of RAM; on a big raster it fills to that and makes RSS grow with raster
  size. It is capped (unless the user set ``GDAL_CACHEMAX``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["bound_memory"]

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3
_done = {"malloc": False}


def _fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    if _done["malloc"] or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    _done["malloc"] = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_THRESHOLD, nbytes)
    except OSError:  # not glibc (macOS, musl): nothing to do
        pass


def _cap_gdal_cache(mb: int) -> None:
    if os.environ.get("GDAL_CACHEMAX"):
        return
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", int(mb) * 2**20)


def bound_memory(gdal_cache_mb: int = 64) -> None:
    """Make this process's peak memory independent of how many tiles it streams."""
    _fix_mmap_threshold()
    _cap_gdal_cache(gdal_cache_mb)
