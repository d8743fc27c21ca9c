"""Process-wide memory policy for long streaming jobs (one place). It is the CLI's: ``geodino embed``, ``canopy``,
``compress``, ``predict``, ``export`` and ``explore`` call :func:`bound_memory` for their process, and cluster
workers get it only when ``configure_workers`` asks. Library calls (``geodino.embed.embed``, ``canopy``,
``compress``, ``write_cog``) leave malloc alone and cap GDAL's block cache only inside a scoped
``rasterio.Env`` (:func:`gdal_cache`), restored when they return. A caller who wants the CLI's policy in a notebook
opts in with ``with geodino.memory_policy(): ...`` (:func:`memory_policy`).

* glibc raises its mmap threshold dynamically after large frees, so which buffers come from the heap changes as
  a run goes on, and RSS creeps up with the number of tiles. The threshold is fixed instead at 1 MiB (tiles,
  pieces and chunk buffers are mapped and unmapped), with a 64 MiB trim threshold. Around a CPU model call,
  :func:`model_allocations` raises it to 32 MiB, so that the model's activations (4-16 MB per ViT-L/16 layer at
  512 px) are reused from the heap rather than page-faulted in afresh (220k faults per ViT-L tile at 1 MiB: the
  model ran at 0.55x its speed), and trims the heap afterwards.
* glibc gives each thread that meets a locked arena a new one, up to 8 per core. The reader, writer and
  inference threads then fragment many heaps: on 2 cores (tiny model, ``pipelines/bench_memory.py``-style runs)
  peak RSS grew 15 % from 64 to 576 tiles while the bytes in use stayed flat. Arenas are capped at the number
  of cores (no more threads allocate at once than run at once): the growth fell to 5 %.
* GDAL's block cache defaults to 5 % of RAM; on a big raster it fills to that and makes RSS grow with raster
  size. It is capped (unless the user set ``GDAL_CACHEMAX``).

Environment variables that glibc reads (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_ARENA_MAX``) win over these.

The malloc settings cannot be undone: setting ``M_MMAP_THRESHOLD`` turns glibc's dynamic threshold off for the
life of the process (``no_dyn_threshold`` in glibc's malloc.c), and arenas already made stay. That is why the
library never applies them by default.
"""

from __future__ import annotations

import contextlib
import functools
import os

__all__ = ["bound_memory", "memory_policy", "gdal_cache", "model_allocations"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_done: dict = {}  # what _tune_malloc did for this process ("fixed": the mmap threshold it set)


@functools.cache
def _libc():
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # not glibc
        return None


def _tune_malloc() -> None:
    """The mmap threshold fixed at 1 MiB (trim at 64 MiB) and arenas capped at the number of cores, once per
    process; each is left alone when the environment sets it for glibc."""
    mallopt = getattr(_libc(), "mallopt", None)  # glibc only (macOS, musl: nothing to do)
    if not _done.get("mmap") and not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        _done["mmap"] = True
        if mallopt is not None:
            mallopt(_M_MMAP_THRESHOLD, 1 << 20)
            mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            _done["fixed"] = 1 << 20
    if not _done.get("arenas") and not os.environ.get("MALLOC_ARENA_MAX"):
        _done["arenas"] = True
        if mallopt is not None:
            mallopt(_M_ARENA_MAX, max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                      else os.cpu_count() or 2))


@contextlib.contextmanager
def model_allocations(nbytes: int = 32 << 20):
    """Around a model call: activations up to ``nbytes`` come from the heap and are reused, instead of being
    mapped afresh (and page-faulted in) at every op under the streaming threshold; the free heap pages are handed
    back afterwards. Only while :func:`bound_memory` has fixed the threshold (and on glibc)."""
    fixed = _done.get("fixed")
    if fixed is None:
        yield
        return
    libc = _libc()
    libc.mallopt(_M_MMAP_THRESHOLD, nbytes)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, fixed)
        libc.malloc_trim(0)


def bound_memory(gdal_cache_mb: int = 64) -> None:
    """Make this process's peak memory independent of how many tiles it streams (process-wide and for good: the
    CLI's, and a cluster worker's when ``configure_workers`` asks; never called by a library function)."""
    _tune_malloc()
    if not os.environ.get("GDAL_CACHEMAX"):
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", int(gdal_cache_mb) * 2**20)


@contextlib.contextmanager
def gdal_cache(mb: int):
    """GDAL's block cache capped at ``mb`` MiB within the block (unless the user set ``GDAL_CACHEMAX``), and put
    back as it was afterwards. GDAL has one cache per process: inside the block every thread sees the cap (the
    job's reader threads included)."""
    if os.environ.get("GDAL_CACHEMAX"):
        yield
        return
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=int(mb) * 2**20):
        yield


@contextlib.contextmanager
def memory_policy(gdal_cache_mb: int = 64):
    """Opt in to the CLI's memory policy from Python::

        with geodino.memory_policy():
            geodino.embed.embed("scene.tif", output="scene.zarr")

    malloc's streaming settings (glibc; they stay for the process's life, as glibc cannot go back to its dynamic
    mmap threshold) and GDAL's block cache capped within the block. Without it a long job in a notebook keeps
    glibc's defaults (see docs/benchmarks.md for what that costs in peak RSS)."""
    _tune_malloc()
    with gdal_cache(gdal_cache_mb):
        yield
