"""Reading cubes chunk by chunk: aligned dask views of features and valid, and seeded random samples of valid
patches drawn without ever holding more than one chunk per thread (for fits on cubes larger than memory).

The sample is drawn in two stages, so that a fit reads a bounded part of any cube: the valid count of every chunk
is computed first; if there are more than ``max_chunks`` chunks with valid patches, that many are drawn (seeded,
without replacement, with probability proportional to their valid patches); then ``n`` distinct valid patches are
drawn uniformly among those chunks' and each chunk picks its own. The result depends only on the cubes, ``n``,
``max_chunks`` and the seed, never on the scheduler. Passes over every chunk (counts, reductions) run in batches
of chunks, so dask's graphs, and the memory they take, do not grow with the cube either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geodino.errors import EmptySampleError

__all__ = ["feature_blocks", "valid_counts", "random_patches", "unit_rows", "compute_batched", "row_bands",
           "MAX_CHUNKS", "BATCH"]

MAX_CHUNKS = 256  # chunks a random sample reads at most
BATCH = 128  # chunks per dask graph in passes over a whole cube


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


def compute_batched(tasks: list, batch: int = BATCH, reduce=None):
    """``dask.compute`` of many delayed tasks, ``batch`` at a time (bounded graph size). Returns the list of
    results, or, with ``reduce(acc, results_of_a_batch)``, the running reduction (``acc`` starts as None)."""
    import dask

    out, acc = [], None
    for i in range(0, len(tasks), batch):
        res = list(dask.compute(*tasks[i:i + batch]))
        if reduce is None:
            out.extend(res)
        else:
            acc = reduce(acc, res)
    return out if reduce is None else acc


def row_bands(arr, axis: int, batch: int = BATCH):
    """Slices of ``arr`` along ``axis`` made of whole chunk rows, about ``batch`` chunks each: ``(offset, band)``.
    Slicing before building a graph keeps each graph (and what dask holds for it) to one band."""
    edges = np.concatenate([[0], np.cumsum(arr.chunks[axis])])
    per_row = int(np.prod([len(c) for i, c in enumerate(arr.chunks) if i != axis]))
    step = max(1, batch // max(1, per_row))
    for i in range(0, len(edges) - 1, step):
        r0, r1 = int(edges[i]), int(edges[min(i + step, len(edges) - 1)])
        sl = [slice(None)] * arr.ndim
        sl[axis] = slice(r0, r1)
        yield r0, arr[tuple(sl)]


def valid_counts(ds) -> np.ndarray:
    """Valid patches per spatial chunk, ``[chunks_y, chunks_x]`` (reads only ``valid``)."""
    _, v = feature_blocks(ds)
    parts = []
    for _, band in row_bands(v, 0):
        ny, nx = band.numblocks
        parts.append(band.map_blocks(_count, chunks=((1,) * ny, (1,) * nx), dtype=np.int64).compute())
    return np.concatenate(parts, axis=0)


def _count(block: np.ndarray) -> np.ndarray:
    return np.array([[np.count_nonzero(block)]], dtype=np.int64)


def unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, eps)


def _pick(fblock: np.ndarray, vblock: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(np.asarray(vblock).ravel())[ranks]
    d = fblock.shape[0]
    return np.asarray(fblock).reshape(d, -1)[:, pos].T.astype(np.float32)


def random_patches(cubes, n: int, seed: int = 0, *, counts: Sequence[np.ndarray] | None = None,
                   max_chunks: int = MAX_CHUNKS) -> np.ndarray:
    """A seeded random sample of ``min(n, valid patches)`` distinct valid patches' features, ``[n, D]`` float32,
    read from at most ``max_chunks`` chunks (see the module's docstring).

    ``cubes``: a Dataset or several (pooled). Raises :class:`EmptySampleError` for ``n < 1`` or when no cube has
    a valid patch.
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
    nonempty = np.flatnonzero(flat)
    if len(nonempty) > max_chunks:  # stage 1: a bounded set of chunks, likelier the more valid patches they hold
        keep = rng.choice(nonempty, size=max_chunks, replace=False, p=flat[nonempty] / total)
        mask = np.zeros(flat.shape, bool)
        mask[keep] = True
        flat = np.where(mask, flat, 0)
        total = int(flat.sum())
    take = np.sort(rng.choice(total, size=min(int(n), total), replace=False))
    starts = np.concatenate([[0], np.cumsum(flat)])
    which = np.searchsorted(starts, take, side="right") - 1  # flat chunk index of each drawn rank
    tasks = []
    offset = 0
    for ds, c in zip(cubes, counts):
        f, v = feature_blocks(ds)
        for j in range(c.size):
            g = offset + j
            lo, hi = np.searchsorted(which, [g, g + 1])
            if hi > lo:  # only the drawn chunks enter a graph
                by, bx = np.unravel_index(j, c.shape)
                tasks.append(dask.delayed(_pick)(f.blocks[0, by, bx], v.blocks[by, bx], take[lo:hi] - starts[g]))
        offset += c.size
    rows = compute_batched(tasks)
    out = np.concatenate(rows, axis=0)
    return out[np.all(np.isfinite(out), axis=1)]
