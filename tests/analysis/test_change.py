"""Change maps: 1 - cosine, exact grids or reprojected, and refusals of incomparable cubes."""

from __future__ import annotations

import copy

import dask.array as da
import numpy as np
import pytest
from affine import Affine

import geodino
from geodino import analysis
from geodino.errors import CubeMismatchError
from tests.analysis.conftest import unit
from tests.cubes import PROVENANCE, make_cube


def test_change_is_one_minus_cosine(tmp_path, cube, feats, valid):
    later = feats.copy()
    later[:, 10:20, 10:20] = np.random.default_rng(5).normal(size=(feats.shape[0], 10, 10))
    v2 = valid.copy()
    v2[0:4, 0:4] = False
    b = geodino.open_cube(make_cube(tmp_path / "b.zarr", later, v2))
    ch = analysis.change(cube, b)
    assert isinstance(ch.data, da.Array) and ch.rio.crs == cube.rio.crs
    ua = unit(feats.astype(np.float16).astype(np.float32), 0)
    ub = unit(later.astype(np.float16).astype(np.float32), 0)
    ref = 1 - np.sum(ua * ub, axis=0)
    both = valid & v2
    got = ch.values
    np.testing.assert_allclose(got[both], ref[both], atol=1e-5)
    assert np.isnan(got[~both]).all()
    assert np.nanmax(got[both & ~np.pad(np.ones((10, 10), bool), ((10, 20), (10, 28)))]) < 1e-5


def test_exact_join_refuses_another_grid_and_reproject_aligns(tmp_path, cube, feats, valid):
    t = cube.rio.transform()
    # the same scene, cut 3 patches further right and 2 further down: another grid of the same CRS
    sub = feats[:, 2:, 3:]
    b = geodino.open_cube(make_cube(tmp_path / "shifted.zarr", sub, valid[2:, 3:], chunk=16,
                                    transform=t * Affine.translation(3, 2),
                                    provenance={**PROVENANCE, "tiling": {"tile": 128}}))  # stored in other chunks
    with pytest.raises(CubeMismatchError, match="different grids.*align='reproject'"):
        analysis.change(cube, b)
    ch = analysis.change(cube, b, align="reproject").values
    assert ch.shape == valid.shape
    assert np.isnan(ch[:2]).all() and np.isnan(ch[:, :3]).all()
    inner = valid[2:, 3:]
    assert np.nanmax(np.abs(ch[2:, 3:][inner])) < 1e-5  # same features on the overlap


def test_mismatched_cubes_are_refused_unless_forced(tmp_path, cube, feats, valid):
    prov = copy.deepcopy(PROVENANCE)
    prov["radiometry"]["params"]["offset"] = -1000.0
    b = geodino.open_cube(make_cube(tmp_path / "other.zarr", feats, valid, provenance=prov))
    with pytest.raises(CubeMismatchError, match=r"radiometry params.offset differs \(0 for cube .*, -1000 for cube .*--force"):
        analysis.change(cube, b)
    assert np.nanmax(analysis.change(cube, b, force=True).values) < 1e-5
    far = geodino.open_cube(make_cube(tmp_path / "utm32.zarr", feats, valid, crs="EPSG:32632"))
    with pytest.raises(CubeMismatchError, match="CRS"):
        analysis.change(cube, far, align="reproject")


def test_accessor_on_opened_cubes(cube, cube_path):
    assert cube.geodino.provenance["model"]["name"] == PROVENANCE["model"]["name"]
    np.testing.assert_array_equal(cube.geodino.pca_rgb(sample=400).values,
                                  analysis.pca_rgb(cube_path, sample=400).values)
    assert np.nanmax(cube.geodino.change(cube_path).values) < 1e-5
    assert cube.geodino.cluster(3, sample=300).sizes == {"y": 40, "x": 48}
    fm = cube.geodino.feature_map([1, 5])
    assert fm.dims == ("band", "y", "x") and fm.feature.values.tolist() == [1, 5]
