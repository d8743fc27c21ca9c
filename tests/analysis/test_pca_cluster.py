"""PCA and k-means: fitted on a seeded sample, applied lazily, identical to scikit-learn on the same patches,
masked where invalid and georeferenced like the cube."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA

from geodino import analysis
from geodino.cube.sampling import random_patches
from geodino.errors import EmptySampleError, SampleError
from tests.analysis.conftest import unit


def test_pca_matches_sklearn_on_all_valid_patches(cube, feats, valid):
    m = analysis.pca(cube, 4, sample=10**6)  # sample >= valid patches: the fit sees every valid patch
    assert isinstance(m.data, da.Array) and m.dims == ("band", "y", "x") and m.sizes["band"] == 4
    assert m.rio.crs == cube.rio.crs and m.rio.transform() == cube.rio.transform() and np.isnan(m.rio.nodata)
    x = unit(feats.astype(np.float16).astype(np.float32)[:, valid].T)
    ref = PCA(4).fit(x).transform(x)
    got = m.values[:, valid].T
    for j in range(4):  # components are defined up to sign
        s = np.sign(np.dot(got[:, j], ref[:, j]))
        np.testing.assert_allclose(s * got[:, j], ref[:, j], atol=2e-4)
    assert np.isnan(m.values[:, ~valid]).all()


def test_pca_rgb_stretch_and_seeded_sample(cube, valid):
    a = analysis.pca_rgb(cube, sample=300, seed=3)
    b = analysis.pca_rgb(cube, sample=300, seed=3)
    c = analysis.pca_rgb(cube, sample=300, seed=4)
    va, vb, vc = a.values, b.values, c.values
    np.testing.assert_array_equal(va, vb)
    assert not np.allclose(np.nan_to_num(va), np.nan_to_num(vc))
    assert a.attrs["pca_fit_samples"] == 300
    v = va[:, valid]
    assert np.nanmin(v) == 0.0 and np.nanmax(v) == 1.0
    # the 2-98 % stretch: about 2 % of valid patches clip at each end (on the sample; the cube is alike)
    low = (v == 0).mean(axis=1)
    assert np.all((low > 0.005) & (low < 0.06)), low


def test_random_sample_is_uniform_over_valid_patches(cube, feats, valid):
    x = random_patches(cube, 500, seed=0)
    assert x.shape == (500, feats.shape[0])
    pool = {tuple(np.round(r, 2)) for r in feats.astype(np.float16).astype(np.float32)[:, valid].T}
    assert all(tuple(np.round(r, 2)) in pool for r in x)  # only valid patches, never NaN rows
    assert len({tuple(r) for r in x}) == 500  # without replacement
    with pytest.raises(EmptySampleError):
        random_patches(cube, 0)


def test_cluster_labels_are_the_fitted_models_predictions(cube, feats, valid):
    model = analysis.fit_clusters(cube, 5, sample=800, seed=1)
    assert isinstance(model, MiniBatchKMeans) and model.n_clusters == 5
    labels = analysis.cluster(cube, model=model)
    assert labels.dtype == np.int16 and labels.rio.nodata == -1 and isinstance(labels.data, da.Array)
    lv = labels.values
    x = unit(feats.astype(np.float16).astype(np.float32)[:, valid].T)
    np.testing.assert_array_equal(lv[valid], model.predict(x))
    assert (lv[~valid] == -1).all() and set(np.unique(lv[valid])) <= set(range(5))


def test_k_larger_than_valid_patches(cube, valid):
    n = int(valid.sum())
    with pytest.raises(SampleError, match=f"k={n + 1} is larger than the number of valid patches \\({n}\\)"):
        analysis.cluster(cube, n + 1)
    with pytest.raises(SampleError, match="larger than the sample"):
        analysis.cluster(cube, 50, sample=20)
    with pytest.raises(SampleError):
        analysis.pca(cube, n + 1)


def test_several_cubes_share_one_fit(cube_path, cube):
    maps = analysis.pca_rgb_maps([cube_path, cube], sample=500)
    assert isinstance(maps, list) and len(maps) == 2
    np.testing.assert_array_equal(maps[0].values, maps[1].values)


@pytest.mark.parametrize("name, args", [("pca", {"sample": 300}), ("pca_rgb", {"sample": 300}),
                                        ("cluster", {"k": 3, "sample": 300}), ("feature_map", {})])
def test_one_function_one_return_type(cube_path, cube, name, args):
    """``f(cube)`` is one DataArray whatever the cube (a path, a Dataset); ``f_maps(cubes)`` is a list whatever
    their number, one of one included; a list given to ``f`` still gets its list (as before), with a warning."""
    import warnings

    import xarray as xr

    one, many = getattr(analysis, name), getattr(analysis, f"{name}_maps" if name != "feature_map" else "feature_maps")
    for c in (cube_path, cube):
        assert isinstance(one(c, **args), xr.DataArray)
    for cs in ([cube], (cube_path,), [cube_path, cube]):
        out = many(cs, **args)
        assert isinstance(out, list) and len(out) == len(cs) and all(isinstance(m, xr.DataArray) for m in out)
    assert isinstance(many(cube, **args), list)  # one cube given to the list form: a list of one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = one([cube, cube], **args)
    assert isinstance(legacy, list) and len(legacy) == 2
    assert any(issubclass(w.category, FutureWarning) and f"{name}_maps" in str(w.message) or "feature_maps" in
               str(w.message) for w in caught)
    np.testing.assert_array_equal(legacy[0].values, many([cube, cube], **args)[0].values)
