"""Change maps: 1 - cosine, exact grids or reprojected, and refusals of incomparable cubes."""

from __future__ import annotations

import copy

import dask
import dask.array as da
import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

import geodino
from geodino import analysis
from geodino.errors import CubeMismatchError
from tests.analysis.conftest import unit
from tests.cubes import PROVENANCE, make_cube, structured_features


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
    with pytest.raises(CubeMismatchError, match="different grids.*CRS.*align='reproject'"):
        analysis.change(cube, far)
    with pytest.raises(CubeMismatchError, match="do not overlap"):  # the same numbers in another zone: 6 deg west
        analysis.change(cube, far, align="reproject")


def _floor_regrid(src_t, src_shape, dst_t, dst_shape):
    """Truth for the same-CRS case, by hand: the source cell under each destination centre (flooring pixel
    positions), -1 off the source grid."""
    def axis(o_d, s_d, n_d, o_s, s_s, n_s):
        i = np.floor((o_d + (np.arange(n_d) + 0.5) * s_d - o_s) / s_s).astype(int)
        return np.where((i >= 0) & (i < n_s), i, -1)
    return (axis(dst_t.f, dst_t.e, dst_shape[0], src_t.f, src_t.e, src_shape[0]),
            axis(dst_t.c, dst_t.a, dst_shape[1], src_t.c, src_t.a, src_shape[1]))


@pytest.mark.parametrize("dx, dy, scale", [(0.37, -2.6, 1), (0.5, 0.5, 1), (-0.5, 1.5, 1), (0.5, -0.5, 0.5),
                                           (1.3, 0.71, 1.37)])
def test_reproject_in_one_crs_takes_the_patch_under_each_centre(tmp_path, cube, feats, valid, dx, dy, scale):
    # grids offset by half a patch put centres exactly on patch edges: the patch after the edge, as ever (an exact
    # tie; at scales such as 1.37 a centre "on" an edge is float noise either way, so that case avoids edges)
    t = cube.rio.transform()
    tb = t * Affine.translation(dx, dy) * Affine.scale(scale)
    later = structured_features(valid.shape, feats.shape[0], seed=7)
    b = geodino.open_cube(make_cube(tmp_path / "b.zarr", later, valid, transform=tb, chunk=5,
                                    provenance={**PROVENANCE, "tiling": {"tile": 128}}))
    ri, ci = _floor_regrid(tb, valid.shape, t, valid.shape)
    on = (ri[:, None] >= 0) & (ci[None, :] >= 0)
    sel = on & valid & valid[ri][:, ci]
    exp = np.full(valid.shape, np.nan, np.float32)
    ua, ub = unit(feats.astype(np.float16).astype(np.float32), 0), unit(later.astype(np.float16).astype(np.float32), 0)
    exp[sel] = 1 - np.sum(ua[:, sel] * ub[:, ri][:, :, ci][:, sel], axis=0)
    got = analysis.change(cube, b, align="reproject").values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
    np.testing.assert_allclose(got[sel], exp[sel], atol=1e-6)


def _never_compute(*args, **kwargs):
    raise AssertionError("computed while building the graph")


def test_reproject_across_crss_against_pyproj_truth(tmp_path, cube, feats, valid):
    # cube b: the same scene on a UTM 32 grid (each patch takes the features of the UTM 33 patch under its centre,
    # by pyproj), a block of it changed and a band invalid; change on a's grid must take, for each a patch, the b
    # patch under its centre: pyproj again, independently of GDAL's warp
    t = cube.rio.transform()
    h, w = valid.shape
    to32, to33 = (Transformer.from_crs(s, d, always_xy=True) for s, d in ((32633, 32632), (32632, 32633)))
    xs, ys = to32.transform([t.c, t.c + w * t.a] * 2, [t.f] * 2 + [t.f + h * t.e] * 2)
    tb = Affine(160.0, 0, np.floor(min(xs) / 160) * 160 - 320, 0, -160.0, np.ceil(max(ys) / 160) * 160 + 320)
    hb, wb = int((tb.f - min(ys)) // 160) + 3, int((max(xs) - tb.c) // 160) + 3
    cb, rb = np.meshgrid(np.arange(wb) + 0.5, np.arange(hb) + 0.5)
    ax, ay = to33.transform(*(tb * (cb, rb)))
    ca, ra = np.floor((ax - t.c) / t.a).astype(int), np.floor((ay - t.f) / t.e).astype(int)
    inside = (ca >= 0) & (ca < w) & (ra >= 0) & (ra < h)
    fb = np.zeros((feats.shape[0], hb, wb), np.float32)
    fb[:, inside] = feats[:, ra[inside], ca[inside]]
    fb[:, 10:20, 10:25] = np.random.default_rng(3).normal(size=(feats.shape[0], 10, 15))
    vb = inside.copy()
    vb[inside] &= valid[ra[inside], ca[inside]]
    vb[5:7, :] = False
    b = geodino.open_cube(make_cube(tmp_path / "utm32.zarr", fb, vb, transform=tb, crs="EPSG:32632", chunk=7,
                                    provenance={**PROVENANCE, "tiling": {"tile": 112}}))
    with dask.config.set(scheduler=_never_compute):
        ch = analysis.change(cube, b, align="reproject", relax=("tile",))
    assert isinstance(ch.data, da.Array) and ch.rio.crs == cube.rio.crs and ch.shape == valid.shape
    ca_, ra_ = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    bx, by = to32.transform(*(t * (ca_, ra_)))
    ci, ri = np.floor((bx - tb.c) / tb.a).astype(int), np.floor((by - tb.f) / tb.e).astype(int)
    sel = (ci >= 0) & (ci < wb) & (ri >= 0) & (ri < hb) & valid
    sel[sel] &= vb[ri[sel], ci[sel]]
    exp = np.full(valid.shape, np.nan, np.float32)
    ua = unit(feats.astype(np.float16).astype(np.float32), 0)
    ub = unit(fb.astype(np.float16).astype(np.float32), 0)
    exp[sel] = 1 - np.sum(ua[:, sel] * ub[:, ri[sel], ci[sel]], axis=0)
    got = ch.values
    assert np.nanmax(exp) > 0.5 and (~sel).sum() > 100  # a change and invalid patches to find
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
    np.testing.assert_allclose(got[sel], exp[sel], atol=1e-6)


def test_accessor_on_opened_cubes(cube, cube_path):
    assert cube.geodino.provenance["model"]["name"] == PROVENANCE["model"]["name"]
    np.testing.assert_array_equal(cube.geodino.pca_rgb(sample=400).values,
                                  analysis.pca_rgb(cube_path, sample=400).values)
    assert np.nanmax(cube.geodino.change(cube_path).values) < 1e-5
    assert cube.geodino.cluster(3, sample=300).sizes == {"y": 40, "x": 48}
    fm = cube.geodino.feature_map([1, 5])
    assert fm.dims == ("band", "y", "x") and fm.feature.values.tolist() == [1, 5]
