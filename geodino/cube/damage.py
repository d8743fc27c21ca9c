"""Damaged cubes: a chunk file cut short or overwritten is reported as one line naming the cube and the chunk.

Cubes are read lazily, so a damaged chunk surfaces deep inside a computation as a codec's error (blosc's "error
during decompression", a chunk of the wrong size...). :func:`reading_cubes` turns such an error, raised by zarr or
numcodecs, into a :class:`~geodino.errors.CubeError` naming the cube and, when a short scan finds it, the chunk.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

from geodino.errors import CubeError, GeodinoError

__all__ = ["reading_cubes", "find_damaged_chunk"]

_CODEC_PARTS = (f"{os.sep}numcodecs{os.sep}", f"{os.sep}zarr{os.sep}", f"{os.sep}blosc")


def _from_codec(e: BaseException) -> bool:
    """Whether ``e`` was raised inside zarr or numcodecs (decoding stored bytes)."""
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(e.__traceback__)]
    return bool(files) and any(p in files[-1] for p in _CODEC_PARTS)


def _stored_objects(arr):
    """``(key, region)`` of each object an array is stored in: its shards when sharded (one file holds a shard's
    chunks), else its chunks; ``key`` is the object's name under the array (``c/0/1/0``)."""
    step = arr.shards or arr.chunks
    grid = [-(-n // s) for n, s in zip(arr.shape, step)]
    for idx in itertools.product(*(range(n) for n in grid)):
        region = tuple(slice(i * s, min(n, (i + 1) * s)) for i, s, n in zip(idx, step, arr.shape))
        yield arr.metadata.encode_chunk_key(idx), region


def find_damaged_chunk(path: str | os.PathLike, budget_s: float = 10.0) -> str | None:
    """The key of the first stored object (a shard of a sharded array, else a chunk) of ``path`` that cannot be
    decoded (``features/c/0/1/0``: the file under the cube), or None if none was found within ``budget_s`` seconds
    of decoding."""
    import zarr

    t0 = time.monotonic()
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - the metadata itself is damaged: the caller names the cube
        return None
    for name, arr in root.arrays():
        for key, region in _stored_objects(arr):
            if time.monotonic() - t0 > budget_s:
                return None
            try:
                arr[region]
            except Exception:  # noqa: BLE001 - any failure to decode is damage
                return f"{name}/{key}"
    return None


@contextlib.contextmanager
def reading_cubes(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterator[None]:
    """Within the block, a codec error from reading the cubes ``paths`` is raised as one :class:`CubeError`."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    try:
        yield
    except GeodinoError:
        raise
    except (RuntimeError, ValueError, TypeError) as e:
        if not _from_codec(e):
            raise
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        for p in paths:
            if Path(p).exists():
                key = find_damaged_chunk(p)
                if key is not None:
                    raise CubeError(f"cube {p} is damaged: its chunk {key} cannot be decoded ({first}); the file was "
                                    "cut short or overwritten: re-create the cube (the same `geodino embed` command "
                                    "with --overwrite) or restore it from a copy") from None
        raise CubeError(f"cube {', '.join(map(str, paths))} is damaged: a chunk cannot be decoded ({first}); "
                        "re-create it (the same `geodino embed` command with --overwrite) or restore it from a "
                        "copy") from None
