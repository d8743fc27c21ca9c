"""`geodino export` and `geodino compress`: outputs, and every bad input of the issue answered with one line and
exit code 2, leaving no output (not even a hidden partial one) behind."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

import geodino
from geodino.cli import main
from tests.cubes import PROVENANCE, make_cube, structured_features

SHAPE = (24, 32)


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    f = structured_features(SHAPE, 16, seed=7)
    v = np.ones(SHAPE, bool)
    v[:8, :8] = False
    a = make_cube(tmp / "a.zarr", f, v)
    prov = copy.deepcopy(PROVENANCE)
    prov["radiometry"]["gain"] = [2e-4] * 3
    b = make_cube(tmp / "b.zarr", f, v, provenance=prov)
    empty = make_cube(tmp / "empty.zarr", f, np.zeros(SHAPE, bool))
    return a, b, empty


def run(capfd, *args):
    code = main([str(a) for a in args])
    return code, capfd.readouterr().err


def assert_one_line(code, err, *needles):
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("geodino: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in errors[0], errors[0]


def lonlat(cube_path, r, c):
    ds = geodino.open_cube(cube_path)
    t = Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True)
    return "{:.7f},{:.7f}".format(*t.transform(float(ds.x[c]), float(ds.y[r])))


def test_exports_and_compress(tmp_path, capfd, cubes):
    a, _, _ = cubes
    for m in ("pca-rgb", "cluster", "features", "valid"):
        code, err = run(capfd, "export", "cog", a, tmp_path / f"{m}.tif", "--map", m, "--k", "4")
        assert code == 0, err
        assert cog_validate(tmp_path / f"{m}.tif")[0]
    code, err = run(capfd, "export", "cog", a, tmp_path / "sim.tif", "--map", "similarity", "--positive",
                    lonlat(a, 12, 12), "--negative", lonlat(a, 20, 30), "--crs", "EPSG:4326", "--top",
                    tmp_path / "top.parquet", "--top-k", "10")
    assert code == 0, err
    top = gpd.read_parquet(tmp_path / "top.parquet")
    with rasterio.open(tmp_path / "sim.tif") as r:
        sim = r.read(1)
    assert len(top) == 10 and np.all(np.diff(top.score) <= 0)
    np.testing.assert_allclose(top.score, np.sort(sim[np.isfinite(sim)])[::-1][:10], rtol=1e-6)
    assert sim[top.row[0], top.col[0]] == np.nanmax(sim)
    code = main(["export", "geoparquet", str(a), str(tmp_path / "tiles.parquet"), "--pool", "mean", "--json"])
    assert code == 0 and json.loads(capfd.readouterr().out)["rows"] == 11
    assert len(gpd.read_parquet(tmp_path / "tiles.parquet")) == 11
    code, err = run(capfd, "compress", a, "-o", tmp_path / "c.zarr", "--k", "8")
    assert code == 0 and "8-d int8" in err, err
    assert geodino.open_cube(tmp_path / "c.zarr").sizes["feature"] == 16
    code, err = run(capfd, "export", "cog", a, tmp_path / "change.tif", "--map", "change", "--other",
                    tmp_path / "c.zarr")
    assert code == 0, err


def test_bad_inputs(tmp_path, capfd, cubes):
    a, b, empty = cubes
    out = tmp_path / "out.tif"
    cases = [
        (["export", "cog", a, out, "--map", "change", "--other", b], ["radiometry gain differs", "--force"]),
        (["export", "cog", a, out, "--map", "similarity", "--positive", "-30.0,10.0", "--crs", "EPSG:4326"],
         ["outside the cube"]),
        (["export", "cog", a, out, "--map", "similarity", "--positive", "500100,4499900"], ["no CRS", "--crs"]),
        (["export", "cog", a, out, "--sample", "0"], ["sample size"]),
        (["export", "cog", empty, out], ["no valid patches"]),
        (["export", "cog", a, out, "--map", "cluster", "--k", "5000"], ["k=5000", "number of valid patches (704)"]),
        (["compress", a, "-o", tmp_path / "c.zarr", "--k", "5000"], ["k must be"]),
        (["compress", empty, "-o", tmp_path / "c.zarr", "--k", "4"], ["no valid patches"]),
        (["export", "geoparquet", empty, tmp_path / "t.parquet", "--level", "patch"], ["no valid patch"]),
    ]
    for argv, needles in cases:
        code, err = run(capfd, *argv)
        assert_one_line(code, err, *needles)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], (argv, list(tmp_path.iterdir()))
    # forced, the mismatched cubes compare
    code, err = run(capfd, "export", "cog", a, out, "--map", "change", "--other", b, "--force")
    assert code == 0, err


def test_existing_outputs_are_kept(tmp_path, capfd, cubes):
    a, _, _ = cubes
    for name, argv in [("x.tif", ["export", "cog", a]), ("x.parquet", ["export", "geoparquet", a]),
                       ("x.zarr", ["compress", a, "-o"])]:
        target = tmp_path / name
        target.mkdir() if name.endswith(".zarr") else target.write_text("precious")
        code, err = run(capfd, *argv, target)
        assert_one_line(code, err, "exists", "--overwrite")
        assert (target.is_dir() and not any(target.iterdir())) or target.read_text() == "precious"
    code, _ = run(capfd, "export", "cog", a, tmp_path / "x.tif", "--overwrite")
    assert code == 0 and cog_validate(tmp_path / "x.tif")[0]


def test_console_script_exit_code(tmp_path, cubes):
    a, b, _ = cubes
    r = subprocess.run([sys.executable, "-m", "geodino", "export", "cog", a, tmp_path / "c.tif", "--map", "change",
                        "--other", b], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not comparable" in r.stderr, r.stderr
