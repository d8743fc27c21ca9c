"""Reading cubes chunk by chunk: aligned dask views of features and valid, and seeded random samples of valid
patches drawn without ever holding more than one chunk per thread (for fits on cubes larger than memory).

The sample is uniform over all valid patches (of one cube or of several together): the valid count of every chunk
is computed first, then ``n`` distinct ranks are drawn with a seeded generator and each chunk picks its own; the
result depends only on the cubes, ``n`` and the seed, never on the chunking or the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geodino.errors import EmptySampleError

__all__ = ["feature_blocks", "valid_counts", "random_patches", "unit_rows"]


def feature_blocks(ds):
    """``(features, valid)`` as dask arrays ``[D, Y, X]`` and ``[Y, X]``, the feature axis in one chunk and the
    spatial chunks of ``valid`` matching those of ``features``."""
    import dask.array as da

    f = ds["features"].data
    if not isinstance(f, da.Array):
        f = da.from_array(np.asarray(f), chunks=(-1, 256, 256))
    f = f.rechunk({0: -1})
    v = ds["valid"].data
    if not isinstance(v, da.Array):
        v = da.from_array(np.asarray(v), chunks=f.chunks[1:])
    v = v.rechunk(f.chunks[1:])
    return f, v


def _count(block: np.ndarray) -> np.ndarray:
    return np.array([[np.count_nonzero(block)]], dtype=np.int64)


def valid_counts(ds) -> np.ndarray:
    """Valid patches per spatial chunk, ``[chunks_y, chunks_x]`` (reads only ``valid``)."""
    _, v = feature_blocks(ds)
    ny, nx = v.numblocks
    return v.map_blocks(_count, chunks=((1,) * ny, (1,) * nx), dtype=np.int64).compute()


def unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, eps)


def _pick(fblock: np.ndarray, vblock: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(np.asarray(vblock).ravel())[ranks]
    d = fblock.shape[0]
    return np.asarray(fblock).reshape(d, -1)[:, pos].T.astype(np.float32)


def random_patches(cubes, n: int, seed: int = 0, *, counts: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A seeded uniform sample of ``min(n, valid patches)`` valid patches' features, ``[n, D]`` float32.

    ``cubes``: a Dataset or several (pooled: the sample is uniform over all their valid patches). Raises
    :class:`EmptySampleError` for ``n < 1`` or when no cube has a valid patch.
    """
    import dask

    cubes = list(cubes) if isinstance(cubes, (list, tuple)) else [cubes]
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise EmptySampleError(f"sample size must be a positive number of patches, got {n!r}")
    counts = [valid_counts(c) for c in cubes] if counts is None else list(counts)
    flat = np.concatenate([c.ravel() for c in counts])
    total = int(flat.sum())
    if total == 0:
        raise EmptySampleError("the cube has no valid patches to sample (every tile was skipped as nodata, or the "
                               "cube is still empty): embed a scene with valid pixels first")
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(total, size=min(int(n), total), replace=False))
    starts = np.concatenate([[0], np.cumsum(flat)])
    which = np.searchsorted(starts, take, side="right") - 1  # flat chunk index of each drawn rank
    tasks = []
    offset = 0
    for ds, c in zip(cubes, counts):
        f, v = feature_blocks(ds)
        fd, vd = f.to_delayed(), v.to_delayed()
        for j in range(c.size):
            g = offset + j
            lo, hi = np.searchsorted(which, [g, g + 1])
            if hi > lo:
                by, bx = np.unravel_index(j, c.shape)
                tasks.append(dask.delayed(_pick)(fd[0, by, bx], vd[by, bx], take[lo:hi] - starts[g]))
        offset += c.size
    rows = dask.compute(*tasks)
    out = np.concatenate(rows, axis=0)
    return out[np.all(np.isfinite(out), axis=1)]
