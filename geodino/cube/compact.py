"""The compact product: a cube of k-dimensional int8 unit vectors (AlphaEarth-style, 64-d by default) on the same
patch grid as its source, which :func:`geodino.open_cube` dequantises transparently.

Encoding (per valid patch, ``x`` its D features): ``u = x / |x|``; ``z = P (u - mu)`` with the PCA basis ``P``
[k, D] and mean ``mu`` fitted on a seeded sample of valid patches; ``r = |z|``; the unit vector ``z / r`` is stored
as ``codes = round(127 * (z / r) / s)`` in int8 with one scale ``s_j`` per component (the largest ``|z_j / r|``
in the sample), and ``r`` as float16 ``norm``. Decoding gives ``mu + P^T (r * s * codes / 127)``: the
unit-normalised source feature, up to PCA truncation and quantisation. ``mu``, ``P`` and ``s`` are small arrays
of the cube (``compact_mean``, ``compact_components``, ``compact_scale``) described by the ``geodino_compact``
root attribute; ``codes`` and ``norm`` stay available beside the decoded ``features``.

Writing one from a cube is :func:`geodino.cube.compress.compress` (it reads its source through the reading layer).

The provenance is the source cube's, and ``geodino_compact`` (with the basis' sha256) is part of what
:mod:`geodino.cube.compat` compares: a head trained on full features is refused on a compact cube (and the reverse),
as is an index mixing them, while analysis that unit-normalises features first (change, PCA, clustering,
similarity) accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geodino.cube.sampling import unit_rows

__all__ = ["CompactBasis", "decode_compact", "fit_basis", "ATTR", "SCHEME", "DEFAULT_COMPONENTS",
           "DEFAULT_SAMPLE"]

ATTR = "geodino_compact"
SCHEME = "pca-unit-int8"
DEFAULT_COMPONENTS = 64
DEFAULT_SAMPLE = 10_000
_Q = 127.0


@dataclass(frozen=True)
class CompactBasis:
    """``mean`` [D], ``components`` [k, D] (orthonormal rows), ``scale`` [k] (int8 step = scale / 127)."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[..., D]`` features -> int8 ``codes`` [..., k] and float32 ``norm`` [...] (NaN for non-finite rows)."""
        z = (unit_rows(x.astype(np.float32)) - self.mean) @ self.components.T
        r = np.linalg.norm(z, axis=-1)
        zu = z / np.maximum(r, 1e-12)[..., None]
        codes = np.clip(np.rint(zu / self.scale * _Q), -_Q, _Q)
        bad = ~np.all(np.isfinite(codes), axis=-1)
        codes[bad] = 0
        r = r.astype(np.float32)
        r[bad] = np.nan
        return codes.astype(np.int8), r

    def decode(self, codes: np.ndarray, norm: np.ndarray) -> np.ndarray:
        """int8 ``codes`` [..., k] and ``norm`` [...] -> reconstructed unit-scale features [..., D] float32."""
        z = codes.astype(np.float32) * (self.scale / _Q) * norm.astype(np.float32)[..., None]
        return (self.mean + z @ self.components).astype(np.float32)

    @classmethod
    def from_dataset(cls, ds) -> "CompactBasis":
        return cls(np.asarray(ds["compact_mean"].values, np.float32),
                   np.asarray(ds["compact_components"].values, np.float32),
                   np.asarray(ds["compact_scale"].values, np.float32),
                   np.asarray(ds.attrs[ATTR].get("explained_variance_ratio", []), np.float64))


def fit_basis(x: np.ndarray, k: int, seed: int = 0) -> CompactBasis:
    """Fit the PCA-k basis and per-component scales on sample rows ``x`` [n, D]."""
    from sklearn.decomposition import PCA

    u = unit_rows(x.astype(np.float32))
    p = PCA(n_components=k, random_state=seed).fit(u)
    z = (u - p.mean_) @ p.components_.T
    zu = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    scale = np.clip(np.max(np.abs(zu), axis=0), 1e-6, 1.0)
    return CompactBasis(p.mean_.astype(np.float32), p.components_.astype(np.float32), scale.astype(np.float32),
                        p.explained_variance_ratio_.astype(np.float64))


def _encode_fn(basis: CompactBasis):
    def fn(f, v):
        codes, norm = basis.encode(f)
        norm[~v] = np.nan
        codes[~v] = 0
        return np.concatenate([codes.astype(np.float32), norm[..., None]], axis=-1)

    return fn


def _decode_fn(basis: CompactBasis):
    def fn(codes, norm, v):
        out = basis.decode(codes, norm)
        out[~(v & np.isfinite(norm))] = np.nan
        return out

    return fn


def decode_compact(ds):
    """A compact cube's Dataset with ``features (feature, y, x)`` decoded lazily from ``codes`` and ``norm``."""
    import xarray as xr

    basis = CompactBasis.from_dataset(ds)
    d = int(ds["compact_mean"].shape[0])
    feats = xr.apply_ufunc(_decode_fn(basis), ds["codes"], ds["norm"], ds["valid"],
                           input_core_dims=[["component"], [], []], output_core_dims=[["feature"]],
                           dask="parallelized", output_dtypes=[np.float32],
                           dask_gufunc_kwargs={"output_sizes": {"feature": d}})
    feats = feats.transpose("feature", "y", "x")
    feats.attrs = {"long_name": f"DINOv3 patch features decoded from {basis.k}-d int8 codes ({SCHEME})"}
    return ds.assign(features=feats)
