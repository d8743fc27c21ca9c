"""The explorer as a person uses it: headless Chromium (Debian's package, driven by playwright) on the page served
for a cube embedded from a real Sentinel-2 crop, checked against `geodino.analysis` and geopandas.

One browser and one page for the module. Without Chromium these tests skip with that reason; the API tests
(test_api.py) still run. ``GEODINO_SCREENSHOT=1`` rewrites the README's screenshot (docs/explore.png)."""

from __future__ import annotations

import io
import os

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Polygon, box

import geodino
from geodino import analysis
from tests.explore.conftest import REPO, patch_lonlat

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "explore.png"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium): the browser tests are "
                    "skipped, the API tests still run")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e "
                                                                 "'.[dev]'): the browser tests are skipped")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    except Exception as e:
        pw.stop()
        pytest.skip(f"Chromium at {CHROMIUM} does not start under playwright ({str(e).splitlines()[0]})")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def served(demo_cube):
    from geodino.explore.app import create_app
    from geodino.explore.engine import Session
    from geodino.explore.server import BackgroundServer, bind

    session = Session([demo_cube])
    server = BackgroundServer(create_app(session), bind("127.0.0.1", 0))
    yield session, server.url
    server.stop()
    session.close()


@pytest.fixture(scope="module")
def page(browser, served):
    ctx = browser.new_context(viewport={"width": 1100, "height": 720}, accept_downloads=True)
    pg = ctx.new_page()
    pg.goto(served[1])
    pg.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
    yield pg
    ctx.close()


@pytest.fixture(scope="module")
def ds(demo_cube):
    return geodino.open_cube(demo_cube)


def _clear(page):
    page.click("#clear")
    page.wait_for_function("!document.querySelector('#hits li')")


def _point(page, lon, lat):
    xy = page.evaluate("([lon, lat]) => geodinoMap.project([lon, lat])", [lon, lat])
    b = page.locator("#map").bounding_box()
    return b["x"] + xy["x"], b["y"] + xy["y"]


def _click(page, lon, lat, shift=False):
    prev = page.evaluate("document.body.dataset.query || ''")
    x, y = _point(page, lon, lat)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(x, y)
    if shift:
        page.keyboard.up("Shift")
    page.wait_for_function("(prev) => document.body.dataset.query && document.body.dataset.query !== prev", arg=prev,
                           timeout=30_000)


def _hits(page):
    return page.eval_on_selector_all("#hits li", "els => els.map(e => [+e.dataset.row, +e.dataset.col, "
                                                 "+e.dataset.score])")


def _map_pixels(page) -> np.ndarray:
    from PIL import Image

    page.wait_for_function("geodinoMap.loaded() && geodinoMap.areTilesLoaded()", timeout=30_000)
    page.wait_for_timeout(300)
    png = page.locator("#map").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_clicked_patch_is_the_top_hit_with_score_one(page, ds):
    _clear(page)
    lon, lat = patch_lonlat(ds, 16, 16)
    _click(page, lon, lat)
    hits = _hits(page)
    assert hits[0][:2] == [16, 16]
    assert hits[0][2] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 100


def test_heat_map_is_drawn(page, ds):
    _clear(page)
    before = _map_pixels(page)
    lon, lat = patch_lonlat(ds, 8, 20)
    _click(page, lon, lat)
    after = _map_pixels(page)
    changed = np.abs(after - before).sum(axis=-1) > 30
    assert changed.mean() > 0.3, f"only {changed.mean():.1%} of the map's pixels changed"
    # the overlay is the heat map: its source's tiles answered for this query
    tiles = page.evaluate("geodinoMap.getSource('heat').tiles[0]")
    assert page.evaluate("document.body.dataset.query") in tiles


def test_a_negative_reranks_as_analysis_similarity_says(page, ds):
    _clear(page)
    _click(page, *patch_lonlat(ds, 16, 16))
    only_pos = _hits(page)
    _click(page, *patch_lonlat(ds, 5, 25), shift=True)
    state = page.evaluate("({p: geodino.positives, n: geodino.negatives})")
    assert len(state["p"]) == 1 and len(state["n"]) == 1
    hits = _hits(page)
    lib = analysis.similarity(ds, [tuple(state["p"][0])], [tuple(state["n"][0])], crs="EPSG:4326", top_k=100).top
    assert [h[:2] for h in hits] == [[int(r), int(c)] for r, c in zip(lib["row"], lib["col"])]
    np.testing.assert_allclose([h[2] for h in hits], lib["score"], atol=1e-5)
    assert [h[:2] for h in hits] != [h[:2] for h in only_pos]
    if os.environ.get("GEODINO_SCREENSHOT"):
        page.wait_for_function("geodinoMap.areTilesLoaded()")
        page.wait_for_timeout(500)
        from PIL import Image

        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        SCREENSHOT.parent.mkdir(exist_ok=True)  # 128 colours: a small PNG for the README
        shot.quantize(128, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)


def test_polygon_query_is_the_mean_of_the_patches_inside(page, ds):
    _clear(page)
    page.click("#mode-polygon")
    corners = [patch_lonlat(ds, r, c) for r, c in ((20, 4), (20, 12), (27, 12), (27, 4))]
    for lon, lat in corners:
        page.mouse.click(*_point(page, lon, lat))
    prev = page.evaluate("document.body.dataset.query || ''")
    page.click("#finish-polygon")
    page.wait_for_function("(prev) => document.body.dataset.query !== prev", arg=prev, timeout=30_000)
    ring = page.evaluate("geodino.polygons[0].coordinates[0]")
    lib = analysis.similarity(ds, gpd.GeoSeries([Polygon(ring)], crs="EPSG:4326"), top_k=100).top
    hits = _hits(page)
    assert [h[:2] for h in hits] == [[int(r), int(c)] for r, c in zip(lib["row"], lib["col"])]


def test_k_and_threshold_refilter_without_a_new_query(page, ds):
    _clear(page)
    _click(page, *patch_lonlat(ds, 16, 16))
    qid = page.evaluate("document.body.dataset.query")
    scores = [h[2] for h in _hits(page)]
    page.fill("#k", "10")
    page.dispatch_event("#k", "change")
    page.wait_for_function("document.querySelectorAll('#hits li').length === 10")
    t = scores[4]
    page.eval_on_selector("#threshold", "(el, t) => { el.value = t; el.dispatchEvent(new Event('change')); }",
                          t - 1e-6)
    page.wait_for_function("document.querySelectorAll('#hits li').length === 5")
    assert page.evaluate("document.body.dataset.query") == qid
    assert [h[2] for h in _hits(page)] == pytest.approx(scores[:5])
    page.fill("#k", "100")
    page.eval_on_selector("#threshold", "el => { el.value = el.min; el.dispatchEvent(new Event('change')); }")
    page.dispatch_event("#k", "change")
    page.wait_for_function("document.querySelectorAll('#hits li').length === 100")


def test_exported_geojson_opens_in_geopandas_with_the_cubes_footprints(page, ds, tmp_path):
    _clear(page)
    _click(page, *patch_lonlat(ds, 10, 10))
    hits = _hits(page)
    with page.expect_download() as dl:
        page.click("#export-geojson")
    path = tmp_path / "hits.geojson"
    dl.value.save_as(path)
    g = gpd.read_file(path)
    assert g.crs == ds.rio.crs and len(g) == len(hits)
    assert [[int(r), int(c)] for r, c in zip(g["row"], g["col"])] == [h[:2] for h in hits]
    t = ds.rio.transform()
    for _, h in g.iterrows():
        cell = box(t.c + h["col"] * t.a, t.f + (h["row"] + 1) * t.e, t.c + (h["col"] + 1) * t.a, t.f + h["row"] * t.e)
        assert h.geometry.symmetric_difference(cell).area < 1e-6 * cell.area
    np.testing.assert_allclose(g["score"], [h[2] for h in hits], atol=1e-6)
