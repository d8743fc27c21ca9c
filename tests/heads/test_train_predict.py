"""Heads trained on cubes and applied back to them: planted labels recovered, maps on the cube's grid, cards,
label formats, detection, the spatial split, and the refusal of a head/cube mismatch."""

from __future__ import annotations

import copy
import json
import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Point, box

from geodino.errors import HeadError, HeadMismatchError, LabelError
from geodino.heads import align_labels, load_head, predict_map, save_head, train_on_cube
from tests.cubes import PROVENANCE, make_cube


def _map(path):
    with rasterio.open(path) as r:
        return r.read(), r.profile, r.tags(), r


def test_planted_labels_recovered_by_logreg(scene, tmp_path):
    ds, valid, planted = scene["ds"], scene["valid"], scene["planted"]
    head = train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg")
    m = head.card["metrics"]["valid"]
    # (a held-out region a window away from training: a little below the map's accuracy over the whole cube)
    assert m["accuracy"]["value"] >= 0.9 and m["accuracy"]["ci95"][0] <= m["accuracy"]["value"] <= \
        m["accuracy"]["ci95"][1]
    save_head(head, tmp_path / "h.safetensors")
    res = predict_map(scene["path"], tmp_path / "h.safetensors", tmp_path / "map.tif")
    data, prof, tags, _ = _map(res.class_map)
    acc = float((data[0][valid] == planted[valid]).mean())
    assert acc >= 0.95, acc
    assert (data[0][~valid] == 255).all() and prof["nodata"] == 255
    # on the cube's grid, which is the source raster's grid x 16
    assert prof["crs"] == ds.rio.crs and prof["transform"] == ds.rio.transform()
    assert (prof["height"], prof["width"]) == valid.shape
    card = json.loads(tags["geodino_head_card"])
    assert card["classes"] == ["0", "1"] and card["cube"]["radiometry"]["kind"] == "s2-l2a"
    assert tags["geodino_cube_id"] == ds.attrs["geodino"]["cube_id"]
    with rasterio.open(res.class_map) as r:
        assert r.colormap(1)[1][:3] == tuple(card["colours"][1])
    proba, pprof, _, _ = _map(res.probabilities)
    assert proba.shape == (2, *valid.shape) and np.isnan(proba[:, ~valid]).all()
    np.testing.assert_allclose(proba[:, valid].sum(0), 1.0, atol=1e-5)
    assert (proba.argmax(0)[valid] == data[0][valid]).all()
    assert cog_validate(res.class_map)[0] and cog_validate(res.probabilities)[0]


def test_pixel_heads_map_at_the_label_scale(scene, tmp_path):
    ds, valid, planted = scene["ds"], scene["valid"], scene["planted"]
    s = 2
    fine = np.repeat(np.repeat(np.where(valid, planted, 255), s, 0), s, 1)
    from tests.heads.conftest import write_label_raster

    lab = write_label_raster(tmp_path / "fine.tif", fine, ds, scale=s)
    grid = align_labels(ds, lab, scale=s)
    assert grid.labels.shape == (80, 96) and (grid.labels[fine != 255] == fine[fine != 255]).all()
    head = train_on_cube(ds, grid, head="linear", iterations=150, lr=1e-2)
    res = predict_map(ds, head, tmp_path / "lin.tif")
    data, prof, _, _ = _map(res.class_map)
    assert prof["transform"] == ds.rio.transform() * Affine.scale(1 / s) and data.shape[1:] == (80, 96)
    vv = np.repeat(np.repeat(valid, s, 0), s, 1)
    assert float((data[0][vv] == fine[vv]).mean()) >= 0.9
    dpt = train_on_cube(ds, grid, head="dpt", iterations=3, dpt_features=16)
    res = predict_map(ds, dpt, tmp_path / "dpt.tif")
    assert _map(res.class_map)[0].shape == (1, 80, 96)


def test_chunked_prediction_has_no_seams(scene):
    """The linear head applied chunk by chunk with its halo equals the head applied to the whole cube at once."""
    from geodino.heads.mapping import head_proba

    ds = scene["ds"]
    grid = align_labels(ds, scene["labels"], scale=2)
    head = train_on_cube(ds, grid, head="linear", iterations=20)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        res = predict_map(ds, head, Path(d) / "m.tif")
        chunked = _map(res.probabilities)[0]
    whole = head_proba(head, np.where(scene["valid"][None], scene["features"], 0))
    vv = np.repeat(np.repeat(scene["valid"], 2, 0), 2, 1)
    np.testing.assert_allclose(chunked[:, vv], whole[:, vv], atol=1e-5)


def _never_compute(*args, **kwargs):
    raise AssertionError("computed while building the graph")


@pytest.mark.parametrize("kind", ["logreg", "dpt"])
def test_predict_proba_is_lazy_georeferenced_and_seamless(scene, kind):
    """predict_proba builds a lazy map (nothing read), on the cube's grid refined to the head's scale (odc-geo's
    GeoBox: transform, CRS, shape), NaN on invalid patches; a patch head equals the head on the whole cube, the DPT
    head each chunk of 8 patches applied to its window with a 4-patch halo (clipped at the cube's edges). (A 4-patch
    halo does not make the DPT map seamless: it differs from the head on the whole cube by up to 0.011, as the
    chunk loop before it did.)"""
    import dask
    import dask.array as da

    from geodino.heads import predict_proba
    from geodino.heads.mapping import head_proba

    ds, valid = scene["ds"], scene["valid"]
    s = 1 if kind == "logreg" else 2
    head = train_on_cube(ds, align_labels(ds, scene["labels"], scale=s), head=kind, iterations=3, dpt_features=16)
    with dask.config.set(scheduler=_never_compute):
        p = predict_proba(ds, head)
    assert isinstance(p.data, da.Array) and p.dims == ("band", "y", "x") and p.shape == (2, 40 * s, 48 * s)
    assert p.rio.crs == ds.rio.crs and p.rio.transform() == ds.rio.transform() * Affine.scale(1 / s)
    assert p.odc.geobox == ds.odc.geobox.zoom_to(shape=(40 * s, 48 * s)) and np.isnan(p.rio.nodata)
    got = p.values
    feats = np.where(valid[None], scene["features"], 0)
    if kind == "logreg":
        want = head_proba(head, feats)
    else:  # by hand: each 8-patch chunk from its window, the chunk and 4 patches around it clipped to the cube
        want = np.zeros_like(got)
        for r in range(0, 40, 8):
            for c in range(0, 48, 8):
                r0, c0 = max(0, r - 4), max(0, c - 4)
                w = head_proba(head, feats[:, r0:r + 12, c0:c + 12])
                want[:, r * s:(r + 8) * s, c * s:(c + 8) * s] = \
                    w[:, (r - r0) * s:(r - r0 + 8) * s, (c - c0) * s:(c - c0 + 8) * s]
    vv = np.repeat(np.repeat(valid, s, 0), s, 1)
    np.testing.assert_allclose(got[:, vv], want[:, vv], atol=1e-5)
    assert np.isnan(got[:, ~vv]).all()


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "shp"])
def test_vector_labels_in_another_crs(scene, tmp_path, fmt):
    """Polygons and points (in EPSG:4326) with a class column, rasterised onto the cube's grid."""
    ds = scene["ds"]
    t = ds.rio.transform()
    west = box(t.c, t.f - 40 * 160, t.c + 20 * 160, t.f)
    east = box(t.c + 28 * 160, t.f - 40 * 160, t.c + 48 * 160, t.f - 8 * 160)
    pt = Point(t.c + 24.5 * 160, t.f - 30.5 * 160)
    gdf = gpd.GeoDataFrame({"landcover": ["field", "forest", "water"]}, geometry=[west, east, pt], crs=ds.rio.crs)
    path = tmp_path / f"labels.{fmt}"
    g4326 = gdf.to_crs(4326) if fmt != "shp" else gdf.iloc[:2].to_crs(4326)  # a shapefile holds one geometry type
    g4326.to_parquet(path) if fmt == "parquet" else g4326.to_file(path)
    grid = align_labels(ds, path, class_column="landcover")
    assert grid.classes == ("field", "forest", "water")[:3 if fmt != "shp" else 2] and grid.kind == "vector"
    assert (grid.labels[:, :19] == 0).all() and (grid.labels[9:, 29:] == 1).all()
    if fmt != "shp":
        assert grid.labels[30, 24] == 2 and (grid.labels[:, 21:27] >= 0).sum() == 1
    head = train_on_cube(ds, grid, head="knn", k=5, block=6)
    assert head.card["label_counts"]["forest"] == 20 * 32 and head.card["fit"]["k"] == 5


def test_detection_from_positives_and_negatives(scene, tmp_path):
    ds, valid, planted = scene["ds"], scene["valid"], scene["planted"]
    t = ds.rio.transform()
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(valid)
    pick = rng.choice(len(rows), 300, replace=False)
    pts = [Point(t.c + (c + 0.5) * 160, t.f - (r + 0.5) * 160) for r, c in zip(rows[pick], cols[pick])]
    is_pos = planted[rows[pick], cols[pick]] == 1
    pos = gpd.GeoDataFrame(geometry=[p for p, k in zip(pts, is_pos) if k], crs=ds.rio.crs)
    neg = gpd.GeoDataFrame(geometry=[p for p, k in zip(pts, is_pos) if not k], crs=ds.rio.crs)
    grid = align_labels(ds, positives=pos, negatives=neg)
    head = train_on_cube(ds, grid, head="logreg")
    assert head.card["detection"] and head.card["classes"] == ["negative", "positive"]
    res = predict_map(ds, head, tmp_path / "det.tif")
    assert os.path.basename(res.probabilities) == "det_score.tif"
    score = _map(res.probabilities)[0][0]
    assert float(((score > 0.5) == (planted == 1))[valid].mean()) >= 0.9


def test_spatial_split_keeps_validation_a_window_away(scene):
    """No training patch lies within the ring (one model window by default) of a validation patch; the card records
    block, buffer and window sizes."""
    from geodino.heads.split import spatial_split

    ds = scene["ds"]
    head = train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg")
    sp = head.card["split"]
    # make_cube's tiling: 128-px tiles without halo, a window of 8 patches
    assert (sp["block_patches"], sp["buffer_patches"], sp["window_patches"]) == (8, 8, 8) and not sp["optimistic"]
    lab = align_labels(ds, scene["labels"]).labels
    labelled = (lab >= 0) & scene["valid"]
    split = spatial_split(np.where(labelled, lab, -1), block=None, buffer=None, window=8, valid_fraction=0.25, seed=0)
    assert split.describe()["train_patches"] == sp["train_patches"] and sp["ring_patches"] > 0
    tr, va = np.argwhere(split.train), np.argwhere(split.valid)
    gap = np.abs(tr[:, None, :] - va[None, :, :]).max(-1).min()
    assert gap > 8 and not (split.train & split.valid).any()
    assert split.valid.sum() >= 0.25 * labelled.sum()
    assert head.card["fit"]["valid_blocks"] >= 2 and head.card["metrics"]["valid"]["blocks"] >= 2
    with pytest.raises(LabelError, match="too few samples for the split"):
        spatial_split(np.ones((4, 4), bool), block=8, buffer=None, window=8)
    with pytest.raises(LabelError, match=r"ring of 30 patches .* pass a smaller --buffer"):
        train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg", buffer=30)


def test_head_card_and_refusals(scene, tmp_path):
    ds = scene["ds"]
    head = train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg")
    p = save_head(head, tmp_path / "h.safetensors")
    assert p == str(tmp_path / "h.safetensors")  # a string for a path as for a URL
    side = json.loads((tmp_path / "h.json").read_text())
    assert side == json.loads(json.dumps(load_head(p).card)) and side["format"] == "geodino-head/1"
    assert side["cube"]["model"]["weights"]["sha256"] == "0" * 64 and "accuracy" in side["metrics"]["valid"]
    prov = copy.deepcopy(PROVENANCE)
    prov["radiometry"]["gain"] = [2e-4] * 3
    other = make_cube(tmp_path / "other.zarr", scene["features"], scene["valid"], provenance=prov)
    with pytest.raises(HeadMismatchError, match=r"radiometry gain differs \(\[0.0001, 0.0001, 0.0001\] for head "):
        predict_map(other, p, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()
    # a head meant to work across radiometries says so when trained: recorded in its card and in the maps
    across = train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg", c_values=(1.0,),
                           relax=("radiometry",))
    assert across.card["compat"]["relax"] == ["radiometry"]
    res = predict_map(other, across, tmp_path / "across.tif")
    rec = json.loads(_map(res.class_map)[2]["geodino_compat"])
    assert rec["relaxed"] == ["radiometry"] and rec["differences"][0]["detail"] == "radiometry.gain"
    (tmp_path / "bad.safetensors").write_bytes(b"not a head")
    with pytest.raises(HeadError, match="cannot read head file"):
        load_head(tmp_path / "bad.safetensors")


def test_geodino_imports_without_torchgeo():
    import subprocess
    import sys

    code = ("import sys, geodino, geodino.heads, geodino.cli; geodino.cli._register(); "
            "assert 'torchgeo' not in sys.modules, 'torchgeo imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_full_and_compact_heads_are_kept_apart(scene, tmp_path):
    """A head trained on full features is refused on the compact cube and the reverse; one trained on the compact
    cube applies to it; --force (force=True) and relaxations are recorded in the maps' tags."""
    from geodino.cube.compress import compress

    ds = scene["ds"]
    compress(ds, tmp_path / "c.zarr", k=8, sample=1000)
    import geodino

    compact = geodino.open_cube(tmp_path / "c.zarr")
    full_head = train_on_cube(ds, align_labels(ds, scene["labels"]), head="logreg", c_values=(1.0,))
    compact_head = train_on_cube(compact, align_labels(compact, scene["labels"]), head="logreg", c_values=(1.0,))
    assert full_head.card["compat"]["fingerprint"]["compact"] is None
    assert compact_head.card["compat"]["fingerprint"]["compact"]["components"] == 8
    with pytest.raises(HeadMismatchError, match=r"feature encoding differs \(full features for the head, compact "
                                                r"8-d pca-unit-int8"):
        predict_map(compact, full_head, tmp_path / "x.tif")
    with pytest.raises(HeadMismatchError, match=r"feature encoding differs \(compact 8-d .* full features for cube"):
        predict_map(ds, compact_head, tmp_path / "y.tif")
    assert not list(tmp_path.glob("*.tif"))
    res = predict_map(compact, compact_head, tmp_path / "ok.tif")
    assert "geodino_compat" not in _map(res.class_map)[2]
    res = predict_map(compact, full_head, tmp_path / "forced.tif", force=True)
    rec = json.loads(_map(res.class_map)[2]["geodino_compat"])
    assert rec["forced"] and rec["differences"][0]["field"] == "compact"
    res = predict_map(compact, full_head, tmp_path / "relaxed.tif", relax=["compact"])
    rec = json.loads(_map(res.class_map)[2]["geodino_compat"])
    assert rec["relaxed"] == ["compact"] and not rec["forced"]


@pytest.mark.parametrize("kind", ["linear", "dpt"])
def test_pixel_heads_are_reproducible_without_seeding_the_process(scene, kind):
    """The same seed gives the same head bit for bit (its initial weights included: torch seeds each process at
    random), another seed another head, and torch's global generator is left as it was."""
    import torch

    ds = scene["ds"]
    grid = align_labels(ds, scene["labels"], scale=2)
    state = torch.random.get_rng_state()
    runs = [train_on_cube(ds, grid, head=kind, iterations=8, dpt_features=16, seed=s, n_boot=10) for s in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b, c = ({k: np.asarray(v) for k, v in r.tensors.items()} for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert runs[0].card["metrics"] == runs[1].card["metrics"]
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_read_patches_in_any_order(scene):
    """Patches drawn in any order, repeated, across chunks (the reading layer's ``read_patches``, which heads and the
    index read through): [N, D] in the cube's dtype, each the cube's vector there, and its valid flag."""
    from geodino.cube.reading import read_patches

    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 40, 500), rng.integers(0, 48, 500)
    got, ok = read_patches(scene["ds"], rows, cols)
    assert got.dtype == scene["ds"]["features"].dtype and got.shape == (500, scene["features"].shape[0])
    np.testing.assert_array_equal(got.astype(np.float32), scene["features"][:, rows, cols].T)
    np.testing.assert_array_equal(ok, scene["valid"][rows, cols])
    empty, none = read_patches(scene["ds"], [], [])
    assert empty.shape == (0, scene["features"].shape[0]) and none.shape == (0,)
