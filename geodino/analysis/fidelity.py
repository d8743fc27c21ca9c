"""How faithful a compact cube is to its source: bytes per patch, cosine of decoded vs source features over
every valid patch, and the agreement of similarity search (top-k overlap for seeded random query patches)."""

from __future__ import annotations

import numpy as np

from geodino.cube.reading import as_cubes
from geodino.analysis.change import change
from geodino.analysis.similarity import similarity

__all__ = ["compact_fidelity"]


def _stored(ds, names) -> float:
    from geodino.cube.compress import stored_bytes

    return stored_bytes(ds.encoding.get("source"), names)


def compact_fidelity(full, compact, *, queries: int = 20, top_k: int = 100, seed: int = 0) -> dict:
    """Compare a compact cube with its source (both Datasets or paths). Returns a dict of figures:
    ``bytes_per_patch`` (raw codes + norm) and ``float16_bytes_per_patch``, stored (compressed) bytes per valid
    patch of each, ``cosine_mean/p01/min`` over all valid patches, and ``topk_overlap_mean/min`` (fraction of the
    full features' top-``top_k`` patches also in the compact cube's, for ``queries`` random valid query patches).
    """
    (a,), _ = as_cubes(full)
    (b,), _ = as_cubes(compact)
    meta = b.attrs.get("geodino_compact")
    if not meta:
        raise ValueError("the second cube is not a compact cube (made by geodino compress)")
    valid = a["valid"].values & b["valid"].values
    n_valid = int(valid.sum())
    cos = 1.0 - change(a, b).values[valid]
    rng = np.random.default_rng(seed)
    picks = np.argwhere(valid)[rng.choice(n_valid, size=min(queries, n_valid), replace=False)]
    crs = a.rio.crs
    overlaps = []
    for r, c in picks:
        pt = [(float(a.x[c]), float(a.y[r]))]
        ta = similarity(a, pt, crs=crs, top_k=top_k).top
        tb = similarity(b, pt, crs=crs, top_k=top_k).top
        sa, sb = set(zip(ta.row, ta.col)), set(zip(tb.row, tb.col))
        overlaps.append(len(sa & sb) / max(1, len(sa)))
    k, d = int(meta["components"]), int(a.sizes["feature"])
    return {"components": k, "source_features": d, "valid_patches": n_valid,
            "bytes_per_patch": k + 2, "float16_bytes_per_patch": 2 * d,
            "stored_bytes_per_patch": _stored(b, ("codes", "norm")) / max(n_valid, 1),
            "source_stored_bytes_per_patch": _stored(a, ("features",)) / max(n_valid, 1),
            "cosine_mean": float(np.mean(cos)), "cosine_p01": float(np.percentile(cos, 1)),
            "cosine_min": float(np.min(cos)), "queries": len(overlaps), "top_k": top_k,
            "topk_overlap_mean": float(np.mean(overlaps)), "topk_overlap_min": float(np.min(overlaps))}
