"""The vectors a session queries, held in memory and built in ONE streaming pass over each cube (never the whole
cube at once): the valid patches' vectors, and the cube's PCA-RGB image for the base layer.

Two kinds, chosen per session (``vectors="auto"``: ``full`` while every cube's unit features fit in
:data:`FULL_BUDGET` bytes, else ``compact``):

- ``full``: the unit-normalised float32 features (exact cosine, the same numbers as
  :func:`geodino.analysis.similarity`).
- ``compact``: 64-d int8 codes of one PCA basis fitted on a seeded sample of the session's cubes (the encoding of
  :mod:`geodino.cube.compact`, 64 B + 8 B per patch). Scores are the cosine of the *decoded* features, computed in
  64 dimensions; the explorer re-ranks the best candidates with the cube's full features
  (a :class:`RerankStore`, else windowed chunk reads), so hits carry exact scores. A compact cube (``geodino
  compress``) is read as it is: its codes are its features, so its scores are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from geodino.cube.compact import CompactBasis, fit_basis
from geodino.cube.sampling import feature_blocks, random_patches, unit_rows

__all__ = ["CubeVectors", "build_vectors", "FULL_BUDGET", "BLOCK"]

FULL_BUDGET = 128 * 2**20  # bytes of float32 unit features a session keeps in memory before going compact
BLOCK = 65_536  # rows per block in scans: bounds the float32 temporaries to a few MB
_Q = 127.0


@dataclass
class CubeVectors:
    """One cube's valid patches in memory: ``flat`` (row * width + col, ascending), the vectors (``unit`` [N, D]
    float32, or ``codes`` [N, k] int8 with ``norm`` and ``inv_len`` [N] and the ``basis``), and ``rgba`` [H, W, 4]
    uint8, the cube's PCA-RGB (alpha 0 on invalid patches)."""

    shape: tuple[int, int]
    flat: np.ndarray
    rgba: np.ndarray
    kind: str
    exact: bool  # whether scores() are the cube's own cosine (no re-ranking needed)
    unit: np.ndarray | None = None
    codes: np.ndarray | None = None
    norm: np.ndarray | None = None
    inv_len: np.ndarray | None = None
    basis: CompactBasis | None = None
    store: RerankStore | None = None  # full features of the valid patches, for exact re-ranking
    store_row: np.ndarray | None = None  # each patch's row in the store

    @property
    def n(self) -> int:
        return int(self.flat.size)

    @property
    def nbytes(self) -> int:
        arrays = (self.flat, self.rgba, self.unit, self.codes, self.norm, self.inv_len, self.store_row)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def rows_cols(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.divmod(self.flat[idx], self.shape[1])

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Cosine of every valid patch to the unit query ``q`` [D] (float32 [N]), scanned in blocks."""
        q = np.asarray(q, np.float32)
        out = np.empty(self.n, np.float32)
        if self.kind == "full":
            for i in range(0, self.n, BLOCK):
                out[i:i + BLOCK] = self.unit[i:i + BLOCK] @ q
            return out
        b = self.basis
        w = (b.components @ q) * (b.scale / _Q)  # the query in code space: one dot per patch
        c0 = float(b.mean @ q)
        dots = code_dots(self.codes, w)
        np.multiply(self.norm, dots, out=out)
        out += c0
        out *= self.inv_len
        return out

    def exact_unit_rows(self, idx: np.ndarray) -> np.ndarray:
        """The cube's own unit features of patches ``idx`` from the re-rank :attr:`store`."""
        return unit_rows(self.store.read(self.store_row[idx]))

    def unit_rows(self, idx: np.ndarray) -> np.ndarray:
        """The unit vectors of patches ``idx`` [n] as float32 [n, D] (decoded when compact)."""
        if self.kind == "full":
            return self.unit[idx]
        dec = self.basis.decode(self.codes[idx], self.norm[idx])
        return dec * self.inv_len[idx, None]

    def image(self, values: np.ndarray, fill=np.nan, dtype=np.float32) -> np.ndarray:
        """Per-patch ``values`` [N] as a [H, W] array (``fill`` on invalid patches)."""
        img = np.full(self.shape[0] * self.shape[1], fill, dtype)
        img[self.flat] = values
        return img.reshape(self.shape)


def code_dots(codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``codes [N, k] int8 @ w [k]`` as float32 [N].

    numpy has no int8 matrix product: casting the codes to float32 block by block took 260 ms for 1M x 64 on the
    project's 2-core machine. torch's int8 x int8 -> int32 product (``torch._int_mm``, oneDNN) takes ~30 ms, so
    the query is split into two int8 "digits" (``w ~ hi * s1 + lo * s2``, relative error ~1e-5, far below the
    int8 codes' own) and multiplied in one call. numpy serves the shapes ``_int_mm`` does not take.
    """
    import torch  # (torch._int_mm is in every torch that pyproject allows)

    n, k = codes.shape
    if n >= 32 and k % 8 == 0 and k >= 16:
        s1 = float(np.abs(w).max()) / _Q or 1.0
        hi = np.rint(w / s1)
        r = w - hi * s1
        s2 = float(np.abs(r).max()) / _Q or 1.0
        lo = np.rint(r / s2)
        digits = np.zeros((k, 8), np.int8)
        digits[:, 0], digits[:, 1] = hi, lo
        out = np.empty(n, np.float32)
        for i in range(0, n, 8 * BLOCK):  # bounded int32 temporaries
            part = torch._int_mm(torch.from_numpy(codes[i:i + 8 * BLOCK]), torch.from_numpy(digits)).numpy()
            out[i:i + 8 * BLOCK] = part[:, 0] * np.float32(s1) + part[:, 1] * np.float32(s2)
        return out
    out = np.empty(n, np.float32)
    for i in range(0, n, BLOCK):
        out[i:i + BLOCK] = codes[i:i + BLOCK].astype(np.float32) @ w
    return out


class RerankStore:
    """The valid patches' full features, as the cube stores them (float16 or float32), in one flat file on local
    disk, written in the start-up pass: re-ranking reads a candidate's row with one ``pread`` instead of decoding
    its whole 2 MB chunk (scattered top-100 candidates span ~100 chunks: ~600 ms). Read with ``pread``, not
    mapped, so the server's RSS does not grow with the file. The file is anonymous (``tempfile.TemporaryFile``:
    unlinked from the start), so the disk space comes back however the server ends, even on SIGTERM or kill -9.
    """

    def __init__(self, folder: str, dim: int, dtype):
        import tempfile

        self.dim, self.dtype = int(dim), np.dtype(dtype)
        self._file = tempfile.TemporaryFile(mode="w+b", dir=folder, prefix="geodino-explore-")

    def append(self, x: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(x, self.dtype).tobytes())
        self._file.flush()  # read() preads the file, past the write buffer

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` as float32 ``[n, dim]``."""
        size = self.dim * self.dtype.itemsize
        fd = self._file.fileno()
        out = np.empty((len(rows), self.dim), np.float32)
        for i, r in enumerate(np.asarray(rows, np.int64)):
            out[i] = np.frombuffer(os.pread(fd, size, int(r) * size), self.dtype)
        return out

    def close(self) -> None:
        self._file.close()


def _rgba_block(shape, r, c, fit, u) -> np.ndarray:
    """One chunk's PCA-RGB ([h, w, 4] uint8): patches ``(r, c)`` of unit features ``u`` opaque where their colour
    is finite, the rest transparent. The colour is ``analysis.pca_rgb``'s (first three components of the unit
    features, 2-98 % stretch to 0..1)."""
    rgba = np.zeros(tuple(shape) + (4,), np.uint8)
    span = np.where(fit.hi > fit.lo, fit.hi - fit.lo, 1.0).astype(np.float32)
    s = np.clip(((u - fit.mean) @ fit.components.T - fit.lo) / span, 0.0, 1.0)
    good = np.all(np.isfinite(s), axis=-1)
    rgba[r, c, :3] = np.where(good[:, None], np.rint(np.nan_to_num(s) * 255), 0).astype(np.uint8)
    rgba[r, c, 3] = np.where(good, 255, 0)
    return rgba


def _full_block(fblock, vblock, r0, c0, kind, basis, fit, keep_raw=False):
    """One chunk of a full cube -> (rows, cols, rgba, vectors of its valid patches); runs in dask's threads."""
    f = np.asarray(fblock)
    v = np.asarray(vblock, bool)
    r, c = np.nonzero(v)
    x = np.ascontiguousarray(f[:, r, c].T, dtype=np.float32)  # [n, D]: only the valid patches
    ok = np.all(np.isfinite(x), axis=1)
    r, c, u = r[ok], c[ok], unit_rows(x[ok])
    rgba = _rgba_block(v.shape, r, c, fit, u)
    if kind == "full":
        return r + r0, c + c0, rgba, (u,), None
    codes, norm = basis.encode(u)
    raw = np.ascontiguousarray(f[:, r, c].T) if keep_raw else None
    return r + r0, c + c0, rgba, (codes, norm, _inv_len(basis, codes, norm)), raw


def _compact_block(cblock, nblock, vblock, r0, c0, basis, fit):
    """One chunk of a compact cube (its own codes) -> (rows, cols, rgba, (codes, norm, inv_len))."""
    codes = np.asarray(cblock)
    norm = np.asarray(nblock, np.float32)
    v = np.asarray(vblock, bool) & np.isfinite(norm)
    r, c = np.nonzero(v)
    cv, nv = np.ascontiguousarray(codes[:, r, c].T), norm[r, c]
    rgba = _rgba_block(v.shape, r, c, fit, unit_rows(basis.decode(cv, nv)))
    return r + r0, c + c0, rgba, (cv, nv, _inv_len(basis, cv, nv)), None


def _inv_len(basis: CompactBasis, codes: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """1 / |decoded feature|, in code space: |mean + z P|^2 = |mean|^2 + 2 z.(P mean) + |z|^2 (P's rows are
    orthonormal)."""
    z = codes.astype(np.float32) * (basis.scale / _Q) * norm.astype(np.float32)[:, None]
    pm = basis.components @ basis.mean
    sq = float(basis.mean @ basis.mean) + 2 * (z @ pm) + np.sum(z * z, axis=1)
    return (1.0 / np.sqrt(np.maximum(sq, 1e-24))).astype(np.float32)


def _fit_rgb(x: np.ndarray, seed: int, percentiles=(2.0, 98.0)):
    """:func:`geodino.analysis.fit_pca` (3 components) on a sample already drawn the same way (the same seeded
    :func:`random_patches` call), so that one sample serves this and the compact basis."""
    from sklearn.decomposition import PCA

    from geodino.analysis import PCAFit

    u = unit_rows(x)
    p = PCA(n_components=3, random_state=seed).fit(u)
    lo, hi = np.percentile(p.transform(u), percentiles, axis=0)
    return PCAFit(p.mean_.astype(np.float32), p.components_.astype(np.float32),
                  p.explained_variance_ratio_.astype(np.float64), len(x), lo.astype(np.float32),
                  hi.astype(np.float32))


def _blocks(ds, compact_input: bool):
    """Per spatial chunk ``(r0, c0, dask blocks...)``, in row-major order: ``(codes, norm, valid)`` of a compact
    cube, else ``(features, valid)``."""
    f, v = feature_blocks(ds)
    if compact_input:
        f = ds["codes"].data.rechunk({0: -1})
        arrays = (f, ds["norm"].data.rechunk(f.chunks[1:]), v.rechunk(f.chunks[1:]))
    else:
        arrays = (f, v)
    rows, cols = (np.cumsum((0,) + c).tolist() for c in f.chunks[1:])
    for by, bx in np.ndindex(f.numblocks[1:]):
        yield rows[by], cols[bx], [a.blocks[(0, by, bx) if a.ndim == 3 else (by, bx)] for a in arrays]


def build_vectors(cubes, kind: str, *, sample: int = 10_000, seed: int = 0, components: int = 64,
                  batch: int = 8, fit=None, store_dir: str | None = None) -> list[CubeVectors]:
    """Build each cube's :class:`CubeVectors` in one pass over its chunks (``batch`` chunks per dask graph, so
    memory holds a few chunks at a time whatever the cube's size).

    ``cubes``: Datasets of one session. ``kind``: ``full`` or ``compact`` (compact cubes are always read as their
    own codes). ``fit``: the PCA for the RGB base layer (default: :func:`geodino.analysis.fit_pca`'s fit of the
    cubes together, as ``analysis.pca_rgb`` does). ``store_dir``: where compact vectors of full cubes keep a
    :class:`RerankStore` (None: re-ranking reads the cube's chunks).
    """
    import dask

    full = [ds for ds in cubes if "geodino_compact" not in ds.attrs]
    # the sample analysis.fit_pca(cubes, 3) draws (the same seeded call), for the RGB layer and the compact basis
    x = random_patches(list(cubes), sample, seed)
    fit = fit or _fit_rgb(x, seed)
    basis = None
    if kind == "compact" and full:  # one basis for the session's full cubes, fitted on a pooled seeded sample
        xf = x if len(full) == len(cubes) else random_patches(full, sample, seed)
        basis = fit_basis(xf, min(components, xf.shape[1], len(xf)), seed)
    out = []
    for ci, ds in enumerate(cubes):
        compact_input = "geodino_compact" in ds.attrs
        b = CompactBasis.from_dataset(ds) if compact_input else basis
        this_kind = "compact" if compact_input else kind
        store = None
        if this_kind == "compact" and not compact_input and store_dir is not None:
            store = RerankStore(store_dir, ds.sizes["feature"], ds["features"].dtype)
        h, w = int(ds.sizes["y"]), int(ds.sizes["x"])
        rgba = np.zeros((h, w, 4), np.uint8)
        flats, parts = [], []
        todo = list(_blocks(ds, compact_input))
        try:
            for i in range(0, len(todo), batch):
                tasks = [dask.delayed(_compact_block)(*arrays, r0, c0, b, fit) if compact_input else
                         dask.delayed(_full_block)(*arrays, r0, c0, this_kind, b, fit, store is not None)
                         for r0, c0, arrays in todo[i:i + batch]]
                for (r0, c0, _), (rr, cc, img, vec, raw) in zip(todo[i:i + batch], dask.compute(*tasks)):
                    rgba[r0:r0 + img.shape[0], c0:c0 + img.shape[1]] = img
                    flats.append(rr.astype(np.int64) * w + cc)
                    parts.append(vec)
                    if store is not None:
                        store.append(raw)
        except BaseException:
            if store is not None:
                store.close()
            raise
        flat = np.concatenate(flats) if flats else np.zeros(0, np.int64)
        order = np.argsort(flat, kind="stable")
        cols = [np.concatenate([p[j] for p in parts])[order] for j in range(len(parts[0]))] if parts else []
        if this_kind == "full":
            cv = CubeVectors((h, w), flat[order], rgba, "full", True, unit=np.ascontiguousarray(cols[0]))
        else:
            cv = CubeVectors((h, w), flat[order], rgba, "compact", compact_input, codes=np.ascontiguousarray(cols[0]),
                             norm=cols[1].astype(np.float32), inv_len=cols[2], basis=b, store=store,
                             store_row=order if store is not None else None)
        out.append(cv)
    return out


def choose_kind(cubes, requested: str, valid_counts: list[int]) -> str:
    """``full`` or ``compact`` for ``requested`` (``auto``: full while the unit features fit :data:`FULL_BUDGET`)."""
    from geodino.errors import ConfigError

    if requested not in ("auto", "full", "compact"):
        raise ConfigError(f"vectors must be auto, full or compact, got {requested!r}")
    if requested != "auto":
        return requested
    need = sum(n * int(ds.sizes["feature"]) * 4 for n, ds in zip(valid_counts, cubes))
    return "full" if need <= FULL_BUDGET else "compact"
