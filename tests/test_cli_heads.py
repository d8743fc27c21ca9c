"""`geodino train` and `geodino predict` from the command line: a run end to end, and every bad input of the issue
answered with one line and exit code 2, leaving no output behind."""

from __future__ import annotations

import copy
import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import LineString, Point, box

import geodino
from geodino.cli import main
from tests.cubes import PROVENANCE, make_cube, structured_features

SHAPE = (24, 32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_heads")
    f = structured_features(SHAPE, 16, seed=7)
    a = make_cube(d / "a.zarr", f)
    prov = copy.deepcopy(PROVENANCE)
    prov["model"]["weights"]["sha256"] = "f" * 64
    b = make_cube(d / "b.zarr", f, provenance=prov)
    ds = geodino.open_cube(a)
    t = ds.rio.transform()
    crs = ds.rio.crs
    left = box(t.c, t.f - 24 * 160, t.c + 16 * 160, t.f)
    right = box(t.c + 16 * 160, t.f - 24 * 160, t.c + 32 * 160, t.f)
    gpd.GeoDataFrame({"cls": ["bare", "crop"]}, geometry=[left, right], crs=crs).to_file(d / "ok.gpkg")
    gpd.GeoDataFrame({"cls": ["bare", "bare"]}, geometry=[left, right], crs=crs).to_file(d / "single.gpkg")
    gpd.GeoDataFrame({"cls": ["a", "b"]}, geometry=[Point(t.c + 80, t.f - 80), Point(t.c + 240, t.f - 80)],
                     crs=crs).to_file(d / "few.gpkg")
    gpd.GeoDataFrame({"cls": ["a"]}, geometry=[LineString([(t.c, t.f), (t.c + 999, t.f - 999)])],
                     crs=crs).to_file(d / "lines.gpkg")
    gpd.GeoDataFrame({"cls": ["a", "b"]}, geometry=[Point(100.0, -40.0), Point(100.1, -40.1)],
                     crs="EPSG:4326").to_file(d / "far.gpkg")
    (d / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return d, a, b


def run(capfd, *args):
    code = main([str(x) for x in args])
    out, err = capfd.readouterr()
    return code, out, err


def test_train_then_predict(setup, capfd):
    d, a, _ = setup
    code, out, err = run(capfd, "train", a, "--labels", d / "ok.gpkg", "--class-column", "cls", "--block", "4",
                         "-o", d / "head.safetensors", "--json")
    assert code == 0, err
    card = json.loads(out)
    assert card["classes"] == ["bare", "crop"] and "valid (" in err and "accuracy" in err
    assert json.loads((d / "head.json").read_text())["head"] == "logreg"
    code, _, err = run(capfd, "predict", a, "--head", d / "head.safetensors", "-o", d / "map.tif")
    assert code == 0, err
    with rasterio.open(d / "map.tif") as r:
        m = r.read(1)
        assert r.transform == geodino.open_cube(a).rio.transform()
    assert m.shape == SHAPE and set(np.unique(m)) <= {0, 1}  # (accuracy: tests/heads, on planted labels)
    assert (d / "map_proba.tif").exists()
    code, _, err = run(capfd, "predict", a, "--head", d / "head.safetensors", "-o", d / "map.tif")
    assert code == 2 and "--overwrite" in err


BAD = [
    ("labels in another CRS without overlap", ["train", "{a}", "--labels", "{d}/far.gpkg", "--class-column", "cls"],
     "does not overlap the cube"),
    ("a missing class column", ["train", "{a}", "--labels", "{d}/ok.gpkg", "--class-column", "landcover"],
     "has no column 'landcover'"),
    ("no class column given", ["train", "{a}", "--labels", "{d}/ok.gpkg"], "needs a class column"),
    ("a single class", ["train", "{a}", "--labels", "{d}/single.gpkg", "--class-column", "cls"], "single class"),
    ("too few samples for the split", ["train", "{a}", "--labels", "{d}/few.gpkg", "--class-column", "cls"],
     "too few samples for the split"),
    ("geometries that are not points or polygons",
     ["train", "{a}", "--labels", "{d}/lines.gpkg", "--class-column", "cls"], "LineString geometries"),
    ("an unknown head", ["train", "{a}", "--labels", "{d}/ok.gpkg", "--class-column", "cls", "--head", "svm"],
     "unknown --head"),
    ("an unreadable head file", ["predict", "{a}", "--head", "{d}/garbage.safetensors"], "cannot read head file"),
    ("a missing head file", ["predict", "{a}", "--head", "{d}/nothing.safetensors"], "does not exist"),
    ("a head/cube mismatch", ["predict", "{b}", "--head", "{d}/head.safetensors"], "weights differ (sha256 "),
]


@pytest.mark.parametrize("what,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_2(setup, capfd, tmp_path, what, args, message):
    d, a, b = setup
    if not (d / "head.safetensors").exists():
        assert main(["train", str(a), "--labels", str(d / "ok.gpkg"), "--class-column", "cls", "--block", "4",
                     "-o", str(d / "head.safetensors")]) == 0
        capfd.readouterr()
    out_path = tmp_path / ("out.safetensors" if args[0] == "train" else "out.tif")
    argv = [x.format(a=a, b=b, d=d) for x in args] + ["-o", str(out_path)]
    code, _, err = run(capfd, *argv)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geodino: error:") and message in lines[0], err
    assert "Traceback" not in err and not list(tmp_path.iterdir())  # nothing written, not even a partial file
