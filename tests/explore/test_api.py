"""The explorer's API against independent truth: `geodino.analysis` (similarity, pca_rgb, change), the patch grid
(pyproj + the cube's transform) and the export formats read back by geopandas and rasterio. Fast: small cubes,
Starlette's TestClient on the ASGI app (no sockets)."""

from __future__ import annotations

import io
import json

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon, box, mapping
from starlette.testclient import TestClient

import geodino
from geodino import analysis
from geodino.explore.app import create_app
from geodino.explore.engine import Session
from tests.explore.conftest import patch_lonlat, tile_of


def client_for(cubes, **kw):
    s = Session(cubes, **kw)
    return s, TestClient(create_app(s), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def full(dated_cubes):
    return client_for([dated_cubes[0]])


@pytest.fixture(scope="module")
def ds(dated_cubes):
    return geodino.open_cube(dated_cubes[0])


def rows_cols(hits):
    return [(h["row"], h["col"]) for h in hits]


def lib_top(ds, pos, neg=None, k=20):
    top = analysis.similarity(ds, pos, neg, crs="EPSG:4326", top_k=k).top
    return list(zip(top["row"], top["col"])), top["score"].to_numpy()


def test_click_gives_the_patch_itself_first_then_the_library_ranking(full, ds):
    s, c = full
    lon, lat = patch_lonlat(ds, 5, 7)
    r = c.post("/api/query", json={"positives": [[lon, lat]], "k": 20})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert (hits[0]["row"], hits[0]["col"]) == (5, 7) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    want, scores = lib_top(ds, [(lon, lat)])
    assert rows_cols(hits) == want
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-5)
    assert all(h["exact"] for h in hits) and s.kind == "full"


def test_negatives_and_polygons_are_the_librarys_query(full, ds):
    _, c = full
    pos, neg = patch_lonlat(ds, 5, 7), patch_lonlat(ds, 18, 30)
    r = c.post("/api/query", json={"positives": [list(pos)], "negatives": [list(neg)], "k": 20}).json()
    want, scores = lib_top(ds, [pos], [neg])
    assert rows_cols(r["hits"]) == want
    np.testing.assert_allclose([h["score"] for h in r["hits"]], scores, atol=1e-5)
    corners = [patch_lonlat(ds, rr, cc) for rr, cc in ((2, 2), (2, 9), (8, 9), (8, 2))]
    poly = Polygon(corners)
    r = c.post("/api/query", json={"polygons": [mapping(poly)], "k": 20}).json()
    want, scores = lib_top(ds, gpd.GeoSeries([poly], crs="EPSG:4326"))
    assert rows_cols(r["hits"]) == want
    np.testing.assert_allclose([h["score"] for h in r["hits"]], scores, atol=1e-5)


def test_compact_vectors_rerank_to_the_exact_hits(dated_cubes, ds):
    s, c = client_for([dated_cubes[0]], vectors="compact", rerank=2000)
    assert s.kind == "compact" and not s.vectors[0].exact
    pos, neg = patch_lonlat(ds, 12, 20), patch_lonlat(ds, 3, 3)
    r = c.post("/api/query", json={"positives": [list(pos)], "negatives": [list(neg)], "k": 30}).json()
    want, scores = lib_top(ds, [pos], [neg], k=30)
    assert rows_cols(r["hits"]) == want and all(h["exact"] for h in r["hits"])
    np.testing.assert_allclose([h["score"] for h in r["hits"]], scores, atol=1e-5)
    s.rerank = 0  # without re-ranking the scores are the compact codes' and say so
    r = c.post("/api/query", json={"positives": [list(pos)], "k": 5}).json()
    assert not any(h["exact"] for h in r["hits"])


def test_a_compact_cube_is_explored_as_it_is(dated_cubes, tmp_path):
    from geodino.cube.compress import compress

    compress(dated_cubes[0], tmp_path / "c.zarr", k=16)
    cds = geodino.open_cube(tmp_path / "c.zarr")
    s, c = client_for([tmp_path / "c.zarr"])
    assert s.vectors[0].exact and s.vectors[0].kind == "compact"
    pos = patch_lonlat(cds, 9, 9)
    r = c.post("/api/query", json={"positives": [list(pos)], "k": 15}).json()
    want, scores = lib_top(cds, [pos], k=15)
    assert rows_cols(r["hits"]) == want
    np.testing.assert_allclose([h["score"] for h in r["hits"]], scores, atol=1e-4)


def test_k_and_threshold_refilter_the_same_result(full, ds):
    s, c = full
    lon, lat = patch_lonlat(ds, 5, 7)
    first = c.post("/api/query", json={"positives": [[lon, lat]], "k": 50}).json()
    calls = []
    orig = s.query
    s.query = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        r = c.get("/api/hits", params={"query": first["id"], "k": 10}).json()
        assert r["id"] == first["id"] and r["hits"] == first["hits"][:10]
        t = first["hits"][30]["score"]
        r = c.get("/api/hits", params={"query": first["id"], "k": 200, "threshold": t}).json()
        assert [h["score"] >= t for h in r["hits"]] == [True] * len(r["hits"]) and len(r["hits"]) >= 31
        assert r["hits"][:31] == first["hits"][:31]
    finally:
        s.query = orig
    assert not calls


def _png(resp) -> np.ndarray:
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGBA"))


def test_tiles_show_the_cube_where_it_is(full, ds):
    s, c = full
    lon, lat = patch_lonlat(ds, 12, 20)
    q = c.post("/api/query", json={"positives": [[lon, lat]]}).json()["id"]
    z, x, y, px, py = tile_of(lon, lat, 12)  # 160 m patches: a patch is ~4 px at zoom 12
    heat = _png(c.get(f"/tiles/heat/{z}/{x}/{y}.png", params={"query": q}))
    assert heat.shape == (256, 256, 4) and heat[int(py), int(px), 3] > 0
    # the PCA-RGB tile's pixel under a patch centre is analysis.pca_rgb's value of that patch
    rgb = ds.geodino.pca_rgb().values
    for row, col in ((12, 20), (3, 4), (20, 35)):
        lon, lat = patch_lonlat(ds, row, col)
        z, x, y, px, py = tile_of(lon, lat, 14)
        tile = _png(c.get(f"/tiles/pca/{z}/{x}/{y}.png"))
        want = np.rint(rgb[:, row, col] * 255)
        np.testing.assert_allclose(tile[int(py), int(px), :3], want, atol=1)
        assert tile[int(py), int(px), 3] == 255
    far = _png(c.get("/tiles/heat/12/0/0.png", params={"query": q}))  # the Arctic: nothing there
    assert far[..., 3].max() == 0
    # threshold: only patches at or above it stay coloured
    hot = _png(c.get(f"/tiles/heat/{z}/{x}/{y}.png", params={"query": q, "threshold": 0.9999}))
    assert (hot[..., 3] > 0).sum() < (_png(c.get(f"/tiles/heat/{z}/{x}/{y}.png", params={"query": q}))[..., 3] > 0).sum()


def test_change_mode_is_analysis_change(dated_cubes):
    s, c = client_for(list(dated_cubes))
    assert s.dates == ["2021-06-01", "2022-06-01"]
    r = c.post("/api/change", json={"date": "2021-06-01", "date_b": "2022-06-01", "k": 40}).json()
    a, b = (geodino.open_cube(p) for p in dated_cubes)
    want = analysis.change(a, b).values
    got = s.result(r["id"]).maps[0]
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
    order = np.argsort(-np.nan_to_num(want, nan=-9).ravel(), kind="stable")[:40]
    assert sorted(rows_cols(r["hits"])) == sorted((int(i // want.shape[1]), int(i % want.shape[1])) for i in order)
    assert all(10 <= h["row"] < 16 and 5 <= h["col"] < 15 for h in r["hits"][:20])  # the changed block first
    # the query of a date searches that date's cube only
    lon, lat = patch_lonlat(a, 12, 10)
    r = c.post("/api/query", json={"date": "2022-06-01", "positives": [[lon, lat]], "k": 5}).json()
    assert {h["cube"] for h in r["hits"]} == {1} and r["hits"][0]["date"] == "2022-06-01"


def test_exports_carry_hits_query_and_provenance(full, ds, tmp_path):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    s, c = full
    lon, lat = patch_lonlat(ds, 5, 7)
    r = c.post("/api/query", json={"positives": [[lon, lat]], "k": 25}).json()
    t = ds.rio.transform()
    for fmt in ("geojson", "parquet"):
        resp = c.get(f"/api/export/{r['id']}.{fmt}", params={"k": 25})
        assert resp.status_code == 200, resp.text
        p = tmp_path / f"hits.{fmt}"
        p.write_bytes(resp.content)
        g = gpd.read_parquet(p) if fmt == "parquet" else gpd.read_file(p)
        assert g.crs == ds.rio.crs and len(g) == 25
        assert list(zip(g["row"], g["col"])) == rows_cols(r["hits"])
        for (_, h) in g.iterrows():
            cell = box(t.c + h["col"] * t.a, t.f + (h["row"] + 1) * t.e, t.c + (h["col"] + 1) * t.a,
                       t.f + h["row"] * t.e)
            assert h.geometry.symmetric_difference(cell).area < 1e-6 * cell.area
        q = g["query"].iloc[0]
        q = json.loads(q) if isinstance(q, str) else q  # GDAL's GeoJSON driver reads a JSON string back as JSON
        assert q["mode"] == "similarity" and q["positives"][0]["coordinates"] == pytest.approx([lon, lat])
        assert set(g["fingerprint"]) == {s.cubes[0].fingerprint} and {str(d)[:10] for d in g["date"]} == {"2021-06-01"}
    resp = c.get(f"/api/export/{r['id']}.tif")
    p = tmp_path / "heat.tif"
    p.write_bytes(resp.content)
    assert cog_validate(str(p), quiet=True)[0]
    with rasterio.open(p) as src:
        assert src.crs == ds.rio.crs and src.transform == t
        np.testing.assert_allclose(src.read(1), s.result(r["id"]).maps[0], equal_nan=True)
        assert "geodino_query" in src.tags()


@pytest.mark.filterwarnings("error::UserWarning")  # geopandas' "geographic CRS ... centroid" warning
def test_hits_and_exports_of_a_lonlat_cube_warn_nothing_and_give_the_patch_centres(tmp_path):
    from affine import Affine

    from tests.cubes import make_cube, structured_features

    t = Affine(0.0013, 0, 10.123, 0, -0.0011, 45.67)
    cube = make_cube(tmp_path / "ll_20210601.zarr", structured_features((16, 16), 32, seed=4), crs="EPSG:4326",
                     transform=t)
    s, c = client_for([cube])
    r = c.post("/api/query", json={"positives": [[t.c + 7.5 * t.a, t.f + 5.5 * t.e]], "k": 30}).json()
    g = s.hits(r["id"], k=30)
    assert len(g) == 30 and g.crs == "EPSG:4326"
    np.testing.assert_allclose(g["lon"], t.c + (g["col"] + 0.5) * t.a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g["lat"], t.f + (g["row"] + 0.5) * t.e, rtol=0, atol=1e-12)
    for fmt in ("geojson", "parquet"):
        resp = c.get(f"/api/export/{r['id']}.{fmt}", params={"k": 30})
        assert resp.status_code == 200, resp.text


def test_bad_requests_are_json_4xx_and_the_server_keeps_serving(full, ds):
    s, c = full
    lon, lat = patch_lonlat(ds, 5, 7)
    qid = c.post("/api/query", json={"positives": [[lon, lat]]}).json()["id"]
    cases = [
        (c.post("/api/query", content=b"{not json"), 400, "not JSON"),
        (c.post("/api/query", json=[1, 2]), 400, "JSON object"),
        (c.post("/api/query", json={"positives": "here"}), 400, "must be a list"),
        (c.post("/api/query", json={"positives": [["a", "b"]]}), 400, "cannot read a positive example"),
        (c.post("/api/query", json={"positives": [[0.0, 0.0]]}), 400, "outside the cube"),
        (c.post("/api/query", json={"positives": []}), 400, "at least one positive"),
        (c.post("/api/query", json={"positives": [[lon, lat]], "k": "many"}), 400, "k must be"),
        (c.post("/api/query", json={"positives": [[lon, lat]], "k": 0}), 400, "k must be within"),
        (c.post("/api/query", json={"positives": [[lon, lat]], "date": "1999-01-01"}), 400, "no cube of date"),
        (c.post("/api/query", json={"positives": [[lon, lat]], "negatives": [[lon, lat]]}), 400, "the query is empty"),
        (c.get("/api/hits", params={"query": "nope"}), 404, "no query"),
        (c.get("/api/hits", params={"query": qid, "threshold": "high"}), 400, "threshold must be a number"),
        (c.get(f"/tiles/heat/3/99/0.png", params={"query": qid}), 400, "does not exist"),
        (c.get(f"/tiles/nope/3/1/1.png"), 404, "no tile layer"),
        (c.get(f"/tiles/heat/3/a/1.png", params={"query": qid}), 400, "whole number"),
        (c.get(f"/api/export/{qid}.shp"), 400, "unknown export format"),
        (c.get(f"/api/thumb/7/0/0.png"), 400, "no cube"),
        (c.post("/api/change", json={}), 400, "two dates"),
        (c.get("/api/nothing"), 404, "Not Found"),
    ]
    for resp, status, text in cases:
        assert resp.status_code == status, (resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/json") and text in resp.json()["error"]
    assert c.get("/api/session").status_code == 200


NAN = float("nan")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # shapely's warning on NaN coordinates stays inside
@pytest.mark.parametrize("geom, why", [
    ({"type": "Nope"}, "Unknown geometry type"),
    ({"type": "GeometryCollection", "geometries": [{"type": "Nope"}]}, "Unknown geometry type"),
    ({"type": "LineString", "coordinates": [[10.0, 45.0]]}, "point array must contain 0 or >1 elements"),
    ({"type": "Polygon", "coordinates": [[10.0, 45.0]]}, "not iterable"),
    ({"type": "Polygon", "coordinates": [[[10.0, 45.0], [10.1, 45.0]]]}, "at least 4 coordinates"),
    ({"type": "Polygon"}, "'coordinates'"),
    ({"coordinates": [10.0, 45.0]}, 'a GeoJSON geometry needs a "type"'),
    ({"type": "Polygon", "coordinates": []}, "empty or not a valid geometry"),
    ({"type": "Polygon", "coordinates": [[[10.0, 45.0], [10.1, 45.0], [NAN, 45.1], [10.0, 45.0]]]},
     "empty or not a valid geometry"),
    ({"type": "Point", "coordinates": [NAN, 45.0]}, "empty or not a valid geometry"),
])
def test_a_malformed_geojson_geometry_is_a_400_naming_it(full, ds, geom, why):
    s, c = full
    lon, lat = patch_lonlat(ds, 5, 7)
    for body in ({"polygons": [geom]}, {"positives": [[lon, lat]], "negatives": [geom]}):
        r = c.post("/api/query", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, (r.status_code, r.text)
        msg = r.json()["error"]
        assert why in msg and "\n" not in msg and ("give [lon, lat] or a GeoJSON geometry" in msg or "draw it again"
                                                   in msg), msg
    assert c.post("/api/query", json={"positives": [[lon, lat]]}).status_code == 200


def test_a_bug_is_a_json_500_not_a_traceback_page(full, ds, monkeypatch):
    s, c = full
    monkeypatch.setattr(s, "query", lambda *a, **k: 1 / 0)
    lon, lat = patch_lonlat(ds, 5, 7)
    r = c.post("/api/query", json={"positives": [[lon, lat]]})
    assert r.status_code == 500 and "ZeroDivisionError" in r.json()["error"] and "Traceback" not in r.text
    monkeypatch.undo()
    assert c.post("/api/query", json={"positives": [[lon, lat]]}).status_code == 200


def test_a_cube_removed_while_serving_is_a_410(dated_cubes, tmp_path):
    import shutil

    shutil.copytree(dated_cubes[0], tmp_path / "gone_20210601.zarr")
    s, c = client_for([tmp_path / "gone_20210601.zarr"], vectors="compact")
    ds = s.cubes[0].ds
    lon, lat = patch_lonlat(ds, 5, 7)
    assert c.post("/api/query", json={"positives": [[lon, lat]]}).status_code == 200
    shutil.rmtree(tmp_path / "gone_20210601.zarr")
    r = c.post("/api/query", json={"positives": [[lon, lat]]})
    assert r.status_code == 410 and "is gone" in r.json()["error"]
    assert c.get("/api/session").status_code == 200 and c.get("/tiles/pca/3/1/1.png").status_code == 200


def test_the_gone_check_looks_at_the_cubes_the_query_searches(dated_cubes, tmp_path):
    """An undated cube (date "", listed last) next to a dated one: a query of date "" searches the undated cube,
    and only its removal is a 410."""
    import shutil

    dated, undated = tmp_path / "site_20210601.zarr", tmp_path / "undated.zarr"
    shutil.copytree(dated_cubes[0], dated)
    shutil.copytree(dated_cubes[1], undated)
    s, c = client_for([dated, undated], vectors="compact")
    assert s.dates == ["2021-06-01", ""]
    lon, lat = patch_lonlat(s.cubes[1].ds, 5, 7)
    shutil.rmtree(dated)
    r = c.post("/api/query", json={"date": "", "positives": [[lon, lat]], "k": 5})
    assert r.status_code == 200, r.text
    assert {h["cube"] for h in r.json()["hits"]} == {1}
    r = c.post("/api/query", json={"positives": [[lon, lat]]})
    assert r.status_code == 410 and "site_20210601.zarr is gone" in r.json()["error"]
    shutil.copytree(dated_cubes[0], dated)
    shutil.rmtree(undated)
    r = c.post("/api/query", json={"date": "", "positives": [[lon, lat]]})
    assert r.status_code == 410 and "undated.zarr is gone" in r.json()["error"]
    assert c.post("/api/query", json={"positives": [[lon, lat]]}).status_code == 200


def test_not_comparable_cubes_are_refused(dated_cubes, other_model_cube):
    from geodino.errors import CubeMismatchError

    with pytest.raises(CubeMismatchError, match="not comparable"):
        Session([dated_cubes[0], other_model_cube])
    s = Session([dated_cubes[0], other_model_cube], force=True)
    assert len(s.cubes) == 2


def test_session_reports_what_it_holds(full):
    s, c = full
    info = c.get("/api/session").json()
    assert info["vectors"] == "full" and info["cubes"][0]["valid"] == int(s.vectors[0].n)
    assert info["dates"] == ["2021-06-01"] and len(info["bounds"]) == 4
    page = c.get("/")
    assert page.status_code == 200 and "maplibre-gl.js" in page.text
    js = c.get("/static/vendor/maplibre-gl.js")
    assert js.status_code == 200 and b"MapLibre" in js.content[:400]
    assert c.get("/static/vendor/MAPLIBRE-LICENSE.txt").status_code == 200


def test_a_mosaics_per_crs_cubes_are_searched_together(tmp_path):
    """Two cubes of one date in two UTM zones (as a mosaic writes them): one ranking, as analysis.similarity's over
    both, and tiles that draw each where it lies."""
    from affine import Affine

    from tests.cubes import make_cube, structured_features

    f = structured_features((16, 16), 32, seed=4)
    a = make_cube(tmp_path / "west_20230301.zarr", f, crs="EPSG:32633",
                  transform=Affine(160.0, 0, 830000.0, 0, -160.0, 4500000.0))
    b = make_cube(tmp_path / "east_20230301.zarr", structured_features((16, 16), 32, seed=5), crs="EPSG:32634",
                  transform=Affine(160.0, 0, 170000.0, 0, -160.0, 4500000.0))
    s, c = client_for([a, b])
    assert s.dates == ["2023-03-01"]
    da, db = geodino.open_cube(a), geodino.open_cube(b)
    pos = patch_lonlat(db, 4, 4)
    r = c.post("/api/query", json={"positives": [list(pos)], "k": 40}).json()
    lib = analysis.similarity([da, db], [pos], crs="EPSG:4326", top_k=40).top
    assert [(h["cube"], h["row"], h["col"]) for h in r["hits"]] == list(zip(lib["cube"], lib["row"], lib["col"]))
    assert {h["cube"] for h in r["hits"]} == {0, 1} and (r["hits"][0]["cube"], r["hits"][0]["row"]) == (1, 4)
    for ds_, ci in ((da, 0), (db, 1)):
        lon, lat = patch_lonlat(ds_, 8, 8)
        z, x, y, px, py = tile_of(lon, lat, 13)
        tile = _png(c.get(f"/tiles/pca/{z}/{x}/{y}.png"))
        want = np.rint(s.vectors[ci].rgba[8, 8, :3])
        np.testing.assert_allclose(tile[int(py), int(px), :3], want, atol=1)


def test_a_cube_on_object_storage(s3_env, dated_cubes, ds):
    """A cube on S3 (the local S3 server): explored like a local one, re-ranking from its own bytes."""
    bucket = s3_env.create_bucket("explore")
    for f in dated_cubes[0].rglob("*"):
        if f.is_file():
            s3_env.upload(f, bucket, f"site_20210601.zarr/{f.relative_to(dated_cubes[0])}")
    s, c = client_for(["s3://explore/site_20210601.zarr"], vectors="compact")
    assert s.dates == ["2021-06-01"] and s.cubes[0].path.startswith("s3://")
    pos = patch_lonlat(ds, 12, 20)
    r = c.post("/api/query", json={"positives": [list(pos)], "k": 20}).json()
    want, scores = lib_top(ds, [pos])
    assert rows_cols(r["hits"]) == want
    np.testing.assert_allclose([h["score"] for h in r["hits"]], scores, atol=1e-5)
    s.close()


def test_reranking_from_a_cube_whose_chunks_vanished_is_a_410_not_nodata_scores(dated_cubes, ds, tmp_path,
                                                                                  monkeypatch):
    """Without a local re-rank store (no room on disk) candidates are read from the cube's chunks; chunks deleted
    since start-up read as NaN fill values in zarr, which must never become scores."""
    import shutil

    from geodino.explore.engine import Session as S

    monkeypatch.setattr(S, "_store_dir", lambda self, counts: None)
    shutil.copytree(dated_cubes[0], tmp_path / "c_20210601.zarr")
    s, c = client_for([tmp_path / "c_20210601.zarr"], vectors="compact")
    assert s.store_dir is None
    pos = patch_lonlat(ds, 12, 20)
    r = c.post("/api/query", json={"positives": [list(pos)], "k": 20}).json()
    assert rows_cols(r["hits"]) == lib_top(ds, [pos])[0]
    shutil.rmtree(tmp_path / "c_20210601.zarr" / "features" / "c")  # the chunks, not the cube's metadata
    r = c.post("/api/query", json={"positives": [list(patch_lonlat(ds, 3, 3))], "k": 20})
    assert r.status_code == 410 and "removed or changed" in r.json()["error"], r.text
    assert c.get("/api/session").status_code == 200


@pytest.mark.parametrize("kind", ["full", "compact"])
def test_point_queries_take_the_stored_features_and_equal_the_librarys_query_vector(dated_cubes, ds, kind):
    """Point examples are answered from the features kept at start-up (no chunk read); the vector must be
    analysis.query_vector's. Points the stored features cannot answer go to the library, which words the problem."""
    import warnings

    from geodino.errors import EmptySampleError

    s = Session([dated_cubes[0]], vectors=kind)
    try:
        assert s.kind == kind and (kind == "full" or s.vectors[0].store is not None)
        cube = s.cubes_of(None)[0]
        pos = gpd.GeoSeries(gpd.points_from_xy(*zip(*[patch_lonlat(ds, 12, 20), patch_lonlat(ds, 4, 6)])),
                            crs="EPSG:4326")
        neg = gpd.GeoSeries(gpd.points_from_xy(*zip(patch_lonlat(ds, 3, 3))), crs="EPSG:4326")
        for p, n in ((pos, neg[:0]), (pos, neg), (pos[:1], neg)):
            got = s._stored_query_vector([cube], p, n)
            assert got is not None
            want = analysis.query_vector(ds, p, n if len(n) else None)
            np.testing.assert_allclose(got, want, atol=2e-6)
        invalid = np.argwhere(~ds["valid"].values)[0]
        bad = gpd.GeoSeries(gpd.points_from_xy(*zip(patch_lonlat(ds, *invalid))), crs="EPSG:4326")
        assert s._stored_query_vector([cube], bad, neg[:0]) is None
        with pytest.raises(EmptySampleError):
            s.query(None, [list(patch_lonlat(ds, *invalid))])
        t = ds.rio.transform()  # a point on a cell edge: the library decides which patch
        from pyproj import Transformer

        edge = Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True).transform(t.c + 7 * t.a,
                                                                                       t.f + 5.5 * t.e)
        on_edge = gpd.GeoSeries(gpd.points_from_xy([edge[0]], [edge[1]]), crs="EPSG:4326")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib = analysis.query_vector(ds, on_edge)
        fast = s._stored_query_vector([cube], on_edge, neg[:0])
        assert fast is None or np.allclose(fast, lib, atol=2e-6)
    finally:
        s.close()


def test_cube_bounds_from_its_geobox(tmp_path):
    """The lon/lat bounds the explorer shows: the patch grid's GeoBox.boundingbox, bit for bit the corners
    origin + shape * size on an awkward grid."""
    import numpy as np
    from affine import Affine
    from rasterio.warp import transform_bounds

    from geodino.explore.cubes import open_cubes
    from tests.cubes import make_cube

    t = Affine(10.000001, 0, 300123.3, 0, -9.99999, 5000000.7)
    [c] = open_cubes([make_cube(tmp_path / "awkward.zarr", np.ones((4, 7, 5), np.float32), transform=t)])
    xs, ys = [t.c, t.c + 5 * t.a], [t.f, t.f + 7 * t.e]
    assert tuple(c.gbox.boundingbox) == (min(xs), min(ys), max(xs), max(ys))
    assert c.bounds_lonlat() == list(transform_bounds(c.crs, "EPSG:4326", min(xs), min(ys), max(xs), max(ys),
                                                      densify_pts=21))
