"""Reading cubes chunk by chunk: aligned dask views of features and valid, and seeded random samples of valid
patches drawn without ever holding more than one chunk per thread (for fits on cubes larger than memory).

The sample is *uniform*: every valid patch of the cubes has the same probability ``n / N`` of being drawn (``N``
the valid patches). While at most ``max_chunks`` chunks hold valid patches it is a simple random sample of ``n``
distinct patches. Beyond that, reading ``n`` patches scattered over every chunk would read up to ``n`` chunks, so
it is an equal-probability two-stage sample that reads about ``max_chunks`` chunks: chunk ``c`` (``N_c`` valid
patches) is drawn with probability ``p_c = min(1, max(N_c * max_chunks, n) / N)`` (systematic sampling over the
chunks, seeded), and a drawn chunk gives a simple random sample of ``n / (N p_c)`` of its patches (rounded at random
to keep the expectation), so that each patch's probability is ``p_c * n / (N p_c) = n / N`` whatever its chunk's
size. The sample then holds about ``n`` patches, in groups per chunk. (Until this design, chunks were drawn with
probability growing with their size and patches uniformly among them: patches of sparse chunks, e.g. at scene edges
or among clouds, were drawn far less often than ``n / N``.) The result depends only on the cubes, ``n``,
``max_chunks`` and the seed, never on the scheduler. Passes over every chunk (counts, reductions) run in batches of
chunks, so dask's graphs, and the memory they take, do not grow with the cube either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geodino.errors import EmptySampleError

__all__ = ["feature_blocks", "valid_counts", "random_patches", "draw", "unit_rows", "compute_batched", "row_bands",
           "MAX_CHUNKS", "BATCH"]

MAX_CHUNKS = 256  # chunks a random sample reads (about: see the module docstring)
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


def compute_batched(tasks: list, batch: int = BATCH) -> list:
    """``dask.compute`` of many delayed tasks, ``batch`` at a time (bounded graph size): the list of results."""
    import dask

    return [r for i in range(0, len(tasks), batch) for r in dask.compute(*tasks[i:i + batch])]


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


def draw(counts: np.ndarray, n: int, rng: np.random.Generator, max_chunks: int = MAX_CHUNKS
         ) -> list[tuple[int, np.ndarray]]:
    """Which valid patches a uniform sample of ``n`` takes (see the module docstring): ``(flat chunk index, sorted
    ranks among that chunk's valid patches)`` per chunk read, for chunks holding ``counts`` valid patches each."""
    flat = np.asarray(counts, np.int64).ravel()
    total = int(flat.sum())
    n = min(int(n), total)
    nonempty = np.flatnonzero(flat)
    if len(nonempty) <= max_chunks:  # a simple random sample of n distinct patches
        take = np.sort(rng.choice(total, size=n, replace=False))
        starts = np.concatenate([[0], np.cumsum(flat)])
        which = np.searchsorted(starts, take, side="right") - 1
        out = []
        for c in np.unique(which):
            lo, hi = np.searchsorted(which, [c, c + 1])
            out.append((int(c), take[lo:hi] - starts[c]))
        return out
    pi = n / total  # every patch's probability
    nc = flat[nonempty].astype(np.float64)
    p = np.minimum(1.0, np.maximum(nc * max_chunks, n) / total)
    cum = np.concatenate([[0.0], np.cumsum(p)])
    u = rng.random()
    hits = np.floor(cum[1:] - u) - np.floor(cum[:-1] - u)  # systematic: chunk c is drawn with probability p_c
    out = []
    for j in np.flatnonzero(hits > 0):
        want = pi / p[j] * nc[j]  # expected patches from this chunk: pi * N_c / p_c
        k = int(np.floor(want)) + int(rng.random() < want - np.floor(want))
        k = min(k, int(nc[j]))
        if k:
            out.append((int(nonempty[j]), np.sort(rng.choice(int(nc[j]), size=k, replace=False))))
    return out


def random_patches(cubes, n: int, seed: int = 0, *, counts: Sequence[np.ndarray] | None = None,
                   max_chunks: int = MAX_CHUNKS) -> np.ndarray:
    """A seeded uniform random sample of valid patches' features, ``[m, D]`` float32: ``m = min(n, valid
    patches)`` distinct patches, or about ``n`` when more than ``max_chunks`` chunks hold valid patches (every
    patch equally likely either way; module docstring).

    ``cubes``: a Dataset or several (pooled). Raises :class:`EmptySampleError` for ``n < 1`` or when no cube has
    a valid patch.
    """
    import dask

    cubes = list(cubes) if isinstance(cubes, (list, tuple)) else [cubes]
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise EmptySampleError(f"sample size must be a positive number of patches, got {n!r}")
    counts = [valid_counts(c) for c in cubes] if counts is None else list(counts)
    flat = np.concatenate([c.ravel() for c in counts])
    if int(flat.sum()) == 0:
        raise EmptySampleError("the cube has no valid patches to sample (every tile was skipped as nodata, or the "
                               "cube is still empty): embed a scene with valid pixels first")
    picks = dict(draw(flat, n, np.random.default_rng(seed), max_chunks))
    tasks = []
    offset = 0
    for ds, c in zip(cubes, counts):
        f, v = feature_blocks(ds)
        for j in range(c.size):
            ranks = picks.get(offset + j)
            if ranks is not None:  # only the drawn chunks enter a graph
                by, bx = np.unravel_index(j, c.shape)
                tasks.append(dask.delayed(_pick)(f.blocks[0, by, bx], v.blocks[by, bx], ranks))
        offset += c.size
    rows = compute_batched(tasks)
    out = np.concatenate(rows, axis=0) if rows else np.zeros((0, int(cubes[0].sizes["feature"])), np.float32)
    return out[np.all(np.isfinite(out), axis=1)]
