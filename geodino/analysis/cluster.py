"""k-means clustering of patch features: MiniBatchKMeans fitted on a seeded sample of valid patches (unit
features, so clusters follow cosine similarity), labels predicted lazily chunk by chunk."""

from __future__ import annotations

import numpy as np

from geodino.cube.reading import (NORMALISED, as_cubes, as_list, check_fitted, check_k, n_valid, patch_map,
                                    single_or_list, unit_block)
from geodino.analysis.pca import DEFAULT_SAMPLE
from geodino.cube.sampling import random_patches, unit_rows

__all__ = ["fit_clusters", "cluster", "NODATA_LABEL"]

NODATA_LABEL = -1


def fit_clusters(cube, k: int = 8, *, sample: int = DEFAULT_SAMPLE, seed: int = 0):
    """A fitted :class:`sklearn.cluster.MiniBatchKMeans` on ``sample`` random valid patches' unit features (its
    ``geodino_fingerprint_`` is the fitted cube's, checked when the model labels another cube)."""
    from sklearn.cluster import MiniBatchKMeans

    from geodino.cube.compat import fingerprint

    cubes, _ = as_cubes(cube, relax=NORMALISED)
    total, counts = n_valid(cubes)
    if total:  # refuse an impossible k before reading any feature
        check_k(k, "k", total, total)
    x = random_patches(cubes, sample, seed, counts=counts)
    check_k(k, "k", total, len(x))
    model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=min(4096, len(x))).fit(unit_rows(x))
    model.geodino_fingerprint_ = fingerprint(cubes[0])
    return model


def cluster(cube, k: int = 8, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, model=None):
    """Cluster labels ``0..k-1`` of one cube as a lazy ``(y, x)`` int16 map, ``-1`` (the declared nodata) on
    invalid patches. Several cubes sharing one clustering: :func:`cluster_maps` (a list)."""
    cubes, single = as_cubes(cube, relax=NORMALISED)
    return single_or_list(_cluster(cubes, k, sample, seed, model), single, "cluster")


def cluster_maps(cubes, k: int = 8, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, model=None) -> list:
    """:func:`cluster` of several cubes sharing one clustering (fitted on a sample pooled over all of them):
    always a list, one map per cube given (even of one)."""
    return _cluster(as_cubes(as_list(cubes), relax=NORMALISED)[0], k, sample, seed, model)


def _cluster(cubes, k, sample, seed, model) -> list:
    if model is not None:
        check_fitted(getattr(model, "geodino_fingerprint_", None), cubes, what="apply the clustering",
                     a_name="the clustering's cube")
    model = model if model is not None else fit_clusters(cubes, k, sample=sample, seed=seed)
    k = int(model.n_clusters)

    def labels(f, v):
        u = unit_block(f)
        ok = v & np.all(np.isfinite(u), axis=-1)
        out = np.full(v.shape, NODATA_LABEL, dtype=np.int16)
        if ok.any():
            out[ok] = model.predict(u[ok]).astype(np.int16)
        return out

    attrs = {"long_name": f"k-means cluster of unit features (k={k})", "n_clusters": k,
             "flag_values": list(range(k))}
    return [patch_map(ds, labels, bands=None, dtype=np.int16, nodata=NODATA_LABEL, name="cluster",
                      attrs=attrs) for ds in cubes]
