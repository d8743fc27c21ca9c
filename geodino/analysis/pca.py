"""Principal components of patch features: fitted on a seeded random sample of valid patches, applied lazily to
whole cubes (chunk by chunk), and a display version (three components, 2-98 % stretch per band)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from geodino.cube.reading import (NORMALISED, as_cubes, as_list, check_fitted, check_k, n_valid, patch_map,
                                    single_or_list, unit_block)
from geodino.cube.sampling import random_patches, unit_rows
from geodino.errors import SampleError

__all__ = ["PCAFit", "fit_pca", "pca", "pca_rgb", "DEFAULT_SAMPLE"]

DEFAULT_SAMPLE = 10_000  # patches: enough for the leading components; fixed, so memory does not grow with cubes


@dataclass(frozen=True)
class PCAFit:
    """A PCA of unit-normalised patch features: ``mean`` [D], ``components`` [k, D] (rows), explained variance
    ratios, the sample size it was fitted on and each component's 2 and 98 % values over that sample;
    ``fingerprint``: the comparable fields of the cube it was fitted on (:mod:`geodino.cube.compat`), checked when
    the fit is applied to another cube."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    n_samples: int
    lo: np.ndarray
    hi: np.ndarray
    fingerprint: dict | None = field(default=None, repr=False)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``[..., D]`` raw features -> ``[..., k]`` component scores (unit-normalised first)."""
        return (unit_rows(x.astype(np.float32)) - self.mean) @ self.components.T


def fit_pca(cube, n_components: int = 3, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
            percentiles: tuple[float, float] = (2.0, 98.0)) -> PCAFit:
    """Fit a PCA on ``sample`` random valid patches (pooled over several cubes if given)."""
    from sklearn.decomposition import PCA

    from geodino.cube.compat import fingerprint

    cubes, _ = as_cubes(cube, relax=NORMALISED)
    total, counts = n_valid(cubes)
    if total:  # refuse an impossible request before reading any feature
        check_k(n_components, "n_components", total, total)
    if n_components > cubes[0].sizes["feature"]:
        raise SampleError(f"n_components={n_components} is larger than the cube's {cubes[0].sizes['feature']} "
                          "features")
    x = random_patches(cubes, sample, seed, counts=counts)
    check_k(n_components, "n_components", total, len(x))
    p = PCA(n_components=n_components, random_state=seed).fit(unit_rows(x))
    scores = p.transform(unit_rows(x))
    lo, hi = np.percentile(scores, percentiles, axis=0)
    return PCAFit(p.mean_.astype(np.float32), p.components_.astype(np.float32),
                  p.explained_variance_ratio_.astype(np.float64), len(x), lo.astype(np.float32),
                  hi.astype(np.float32), fingerprint(cubes[0]))


def pca(cube, n_components: int = 3, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
        fit: PCAFit | None = None) -> xr.DataArray:
    """Principal-component scores of one cube as a lazy ``(band, y, x)`` float32 map (NaN on invalid patches).

    The PCA is fitted on a seeded sample of ``sample`` valid patches, or given as ``fit``. Several cubes on one
    basis: :func:`pca_maps` (a list).
    """
    cubes, single = as_cubes(cube, relax=NORMALISED)
    return single_or_list(_pca(cubes, n_components, sample, seed, fit), single, "pca")


def pca_maps(cubes, n_components: int = 3, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
             fit: PCAFit | None = None) -> list[xr.DataArray]:
    """:func:`pca` of several cubes on one basis (fitted on a sample pooled over all of them): always a list, one
    map per cube given (even of one)."""
    return _pca(as_cubes(as_list(cubes), relax=NORMALISED)[0], n_components, sample, seed, fit)


def _pca(cubes, n_components, sample, seed, fit, percentiles=(2.0, 98.0), stretch=False) -> list[xr.DataArray]:
    if fit is not None:
        check_fitted(fit.fingerprint, cubes, what="apply the PCA fit", a_name="the PCA fit's cube")
    fit = fit or fit_pca(cubes, n_components, sample=sample, seed=seed, percentiles=percentiles)
    mean, comp = fit.mean, fit.components.T
    span = np.where(fit.hi > fit.lo, fit.hi - fit.lo, 1.0).astype(np.float32)

    def scores(f, v):
        s = (unit_block(f) - mean) @ comp
        if stretch:
            s = np.clip((s - fit.lo) / span, 0.0, 1.0)
        s = s.astype(np.float32)
        s[~(v & np.all(np.isfinite(s), axis=-1))] = np.nan
        return s

    attrs = {"long_name": "first three principal components, 2-98 % stretch" if stretch else
             "principal component scores of unit features",
             "explained_variance_ratio": [float(r) for r in fit.explained_variance_ratio],
             "pca_fit_samples": fit.n_samples}
    if stretch:  # a colour image: .geodino.to_cog writes it as RGB uint8 (geodino.export.cog.write_rgb_cog)
        attrs["geodino_display"] = "rgb"
    return [patch_map(ds, scores, bands=fit.components.shape[0], dtype=np.float32, nodata=np.nan,
                      name="pca_rgb" if stretch else "pca", attrs=attrs) for ds in cubes]


def pca_rgb(cube, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, percentiles: tuple[float, float] = (2.0, 98.0),
            fit: PCAFit | None = None) -> xr.DataArray:
    """The first three components of one cube stretched to 0..1 for display (``(band=3, y, x)`` float32, NaN
    nodata); ``.geodino.to_cog`` writes it as an RGB uint8 COG. Several cubes on one basis:
    :func:`pca_rgb_maps` (a list).

    The stretch maps each component's ``percentiles`` over the fit sample to 0 and 1 (clipped), so it needs no
    extra pass over the cube.
    """
    cubes, single = as_cubes(cube, relax=NORMALISED)
    return single_or_list(_pca(cubes, 3, sample, seed, fit, percentiles, True), single, "pca_rgb")


def pca_rgb_maps(cubes, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                 percentiles: tuple[float, float] = (2.0, 98.0), fit: PCAFit | None = None) -> list[xr.DataArray]:
    """:func:`pca_rgb` of several cubes on one basis and one stretch: always a list, one map per cube given."""
    return _pca(as_cubes(as_list(cubes), relax=NORMALISED)[0], 3, sample, seed, fit, percentiles, True)

