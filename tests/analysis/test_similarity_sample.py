"""Sampling at geometries and similarity search, checked against brute force on the known features."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Transformer
from shapely.geometry import Point, box

from geodino import analysis
from geodino.analysis.sample import PartlyOutsideWarning
from geodino.errors import EmptySampleError, GeometryOutsideError, MissingCRSError
from tests.analysis.conftest import unit

T = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)


def centre(cube, r, c):
    return float(cube.x[c]), float(cube.y[r])


def f16(feats):
    return feats.astype(np.float16).astype(np.float32)


def test_points_take_the_patch_that_holds_them(cube, feats, valid):
    x, y = centre(cube, 5, 7)
    lon, lat = T.transform(x + 70, y - 70)  # inside patch (5, 7), given in lon/lat
    s = analysis.sample(cube, [(lon, lat)], crs="EPSG:4326")
    np.testing.assert_allclose(s.values[0], f16(feats)[:, 5, 7])
    assert s.n_patches.values.tolist() == [1]


def test_points_outside_or_invalid_are_nan(cube, valid):
    r, c = map(int, np.argwhere(~valid)[0])
    x0, y0 = centre(cube, 0, 0)
    pts = gpd.GeoSeries([Point(*centre(cube, 3, 3)), Point(*centre(cube, r, c)), Point(x0 - 100, y0)],
                        crs="EPSG:32633")
    with pytest.warns(PartlyOutsideWarning):
        s = analysis.sample(cube, pts)
    assert np.isfinite(s.values[0]).all() and np.isnan(s.values[1:]).all()
    assert s.n_patches.values.tolist() == [1, 0, 0]
    s = analysis.sample(cube, pts.iloc[[2]], tolerance=120.0)  # 100 m left of the first centre... 80 m edge
    assert s.n_patches.values.tolist() == [1]


def test_polygon_mean_over_covered_valid_patches(cube, feats, valid):
    x0, y0 = centre(cube, 28, 2)
    x1, y1 = centre(cube, 34, 9)  # rows 28..34 include the invalid band 30..32
    s = analysis.sample(cube, [box(x0 - 40, y1 - 40, x1 + 40, y0 + 40)], crs="EPSG:32633")
    m = valid[28:35, 2:10]
    ref = f16(feats)[:, 28:35, 2:10][:, m].mean(axis=1)
    assert s.n_patches.values[0] == m.sum()
    np.testing.assert_allclose(s.values[0], ref, rtol=1e-5, atol=1e-5)
    tiny = Point(*centre(cube, 2, 2)).buffer(10)  # smaller than a patch: the patch it touches
    np.testing.assert_allclose(analysis.sample(cube, [tiny], crs="EPSG:32633").values[0], f16(feats)[:, 2, 2])


def test_bad_queries(cube):
    x, y = centre(cube, 3, 3)
    with pytest.raises(MissingCRSError, match="no CRS"):
        analysis.sample(cube, [(x, y)])
    with pytest.raises(MissingCRSError):
        analysis.similarity(cube, gpd.GeoSeries([Point(x, y)]))
    with pytest.raises(GeometryOutsideError, match="outside the cube"):
        analysis.sample(cube, [(x + 1e6, y)], crs="EPSG:32633")
    with pytest.raises(GeometryOutsideError, match="1 of 2"):  # similarity is strict: every example must be inside
        analysis.similarity(cube, [(x, y), (x + 1e6, y)], crs="EPSG:32633")
    with pytest.raises(EmptySampleError):
        analysis.sample(cube, [], crs="EPSG:32633")


def test_similarity_is_cosine_to_positives_minus_negatives(cube, feats, valid):
    (r1, c1), (r2, c2), (r3, c3) = np.argwhere(valid)[[10, 700, 1300]]
    pos = [centre(cube, r1, c1), centre(cube, r2, c2)]
    neg = [centre(cube, r3, c3)]
    res = analysis.similarity(cube, pos, neg, crs="EPSG:32633", top_k=25)
    u = unit(f16(feats), axis=0)
    q = (u[:, r1, c1] + u[:, r2, c2]) / 2 - u[:, r3, c3]
    ref = np.einsum("dhw,d->hw", u, q / np.linalg.norm(q))
    got = res.map.values
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5)
    assert np.isnan(got[~valid]).all() and res.map.rio.crs == cube.rio.crs
    # top-k is the brute-force ranking, footprints hold the patch centres
    order = np.argsort(-np.where(valid, ref, -np.inf), axis=None)[:25]
    rr, cc = np.unravel_index(order, valid.shape)
    assert list(zip(res.top.row, res.top.col)) == list(zip(rr, cc))
    assert res.top["rank"].tolist() == list(range(1, 26)) and res.top.crs == cube.rio.crs
    assert all(g.contains(Point(x, y)) for g, x, y in zip(res.top.geometry, res.top.x, res.top.y))
    assert all(abs(g.area - 160.0 ** 2) < 1e-6 for g in res.top.geometry)
    np.testing.assert_allclose(res.top.x, cube.x.values[cc])


def test_examples_on_invalid_patches_are_ignored_or_refused(cube, valid):
    r, c = map(int, np.argwhere(~valid)[0])
    bad = centre(cube, r, c)
    with pytest.warns(PartlyOutsideWarning, match="invalid patches"):
        res = analysis.similarity(cube, [bad, centre(cube, *np.argwhere(valid)[0])], crs="EPSG:32633", top_k=0)
    assert len(res.top) == 0 and res.query.shape == (cube.sizes["feature"],)
    with pytest.raises(EmptySampleError, match="valid patch"):
        analysis.similarity(cube, [bad], crs="EPSG:32633")


def test_similarity_maps_is_always_a_list(cube):
    import xarray as xr

    q = np.ones(cube.sizes["feature"], np.float32)
    one = analysis.similarity(cube, vector=q, top_k=0)
    assert isinstance(one.map, xr.DataArray) and isinstance(one.maps, list) and len(one.maps) == 1
    two = analysis.similarity([cube, cube], vector=q, top_k=0)
    assert isinstance(two.maps, list) and len(two.maps) == 2
    np.testing.assert_array_equal(two.maps[0].values, one.map.values)


def test_open_cube_takes_storage_options_and_chunks(cube_path):
    import inspect

    import geodino

    sig = inspect.signature(geodino.open_cube)
    assert list(sig.parameters)[:3] == ["url", "storage_options", "chunks"]
    assert all(sig.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("storage_options", "chunks"))
    own = geodino.open_cube(cube_path)
    rechunked = geodino.open_cube(cube_path, chunks={"y": 5, "x": 7}, storage_options=None)
    assert rechunked["features"].data.chunksize[1:] == (5, 7) and own["features"].data.chunksize != \
        rechunked["features"].data.chunksize
    np.testing.assert_array_equal(rechunked["features"].values, own["features"].values)
    assert rechunked.rio.crs == own.rio.crs


def test_top_patch_footprints_on_an_awkward_grid(tmp_path, feats, valid):
    """Footprints and centres of the top patches on a grid with a fractional origin and pixel size: bit for bit
    the corners ``origin + index * size`` and ``origin + (index + 1) * size`` (what they always were)."""
    import shapely
    from affine import Affine

    import geodino
    from tests.cubes import make_cube

    t = Affine(10.000001, 0, 300123.3, 0, -9.99999, 5000000.7)
    ds = geodino.open_cube(make_cube(tmp_path / "awkward.zarr", feats, valid, transform=t))
    top = analysis.similarity(ds, vector=feats[:, 3, 4], top_k=30).top
    r, c = top.row.to_numpy(), top.col.to_numpy()
    x0, x1, y0, y1 = t.c + c * t.a, t.c + (c + 1) * t.a, t.f + r * t.e, t.f + (r + 1) * t.e
    want = shapely.box(x0, y1, x1, y0)
    assert len(top) == 30 and r.max() > 0 and c.max() > 0
    np.testing.assert_array_equal(shapely.get_coordinates(top.geometry.values), shapely.get_coordinates(want))
    np.testing.assert_array_equal(top.x, (x0 + x1) / 2)
    np.testing.assert_array_equal(top.y, (y0 + y1) / 2)
