"""Every bad input of `geodino embed`: one line on stderr, exit code 2, no traceback, the source untouched,
and no cube left that claims to be complete."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import rasterio
from affine import Affine

from geodino.cube import is_cube, read_attrs
from geodino.models import build_model, save_weights
from tests.embed.conftest import MODEL, TINY
from tests.rasters import texture, write_raster


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "geodino", "embed", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def tiny(weights, radiometry=("--radiometry", "minmax", "--minmax", "0,4000")):
    return ["--model", MODEL, "--weights", str(weights), *[f"--arch={k}={v}" for k, v in TINY.items()],
            "--tile", "64", "--halo", "16", "--device", "cpu", *radiometry]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_clean_failure(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("geodino: error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def assert_no_complete_cube(path):
    assert not (is_cube(path) and read_attrs(path).get("geodino_status") == "complete")


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", texture((100, 120), seed=1))


def test_missing_file(tmp_path, tiny_weights):
    r = run(tmp_path / "nope.tif", "-o", tmp_path / "o.zarr", *tiny(tiny_weights))
    assert_clean_failure(r, "does not exist")
    assert not (tmp_path / "o.zarr").exists()


def test_not_a_raster(tmp_path, tiny_weights):
    bad = tmp_path / "notes.tif"
    bad.write_text("hello, not a raster\n")
    before = sha(bad)
    r = run(bad, "-o", tmp_path / "o.zarr", *tiny(tiny_weights))
    assert_clean_failure(r, "not a raster")
    assert sha(bad) == before and not (tmp_path / "o.zarr").exists()


def test_too_few_bands(tmp_path, tiny_weights):
    one = write_raster(tmp_path / "one.tif", texture((64, 64), bands=1))
    r = run(one, "-o", tmp_path / "o.zarr", *tiny(tiny_weights))
    assert_clean_failure(r, "1 band(s)", "--bands 1,1,1")
    r = run(one, "-o", tmp_path / "o.zarr", "--bands", "3,2,1", *tiny(tiny_weights))
    assert_clean_failure(r, "too few bands")
    assert not (tmp_path / "o.zarr").exists()


def test_band_name_not_found(tmp_path, scene, tiny_weights):
    described = write_raster(tmp_path / "d.tif", texture((64, 64), bands=4), descriptions=["B02", "B03", "B04", "B08"])
    r = run(described, "-o", tmp_path / "o.zarr", "--bands", "red,green,blue", *tiny(tiny_weights))
    assert_clean_failure(r, "band 'red' not found", "'B04'")
    r = run(described, "-o", tmp_path / "o.zarr", "--bands", "B04,B03,B02", *tiny(tiny_weights))
    assert r.returncode == 0, r.stderr


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_no_crs_is_allowed_with_a_warning_and_pixel_coordinates(tmp_path, tiny_weights):
    src = write_raster(tmp_path / "nocrs.tif", texture((64, 80)), crs=None, transform=Affine.identity())
    out = tmp_path / "o.zarr"
    r = run(src, "-o", out, *tiny(tiny_weights))
    assert r.returncode == 0, r.stderr
    assert "no CRS" in r.stderr and "pixel coordinates" in r.stderr
    attrs = read_attrs(out)
    assert attrs["geodino"]["crs"].startswith("none") and "proj:code" not in attrs
    import rioxarray  # noqa: F401
    import xarray as xr
    ds = xr.open_zarr(out)
    assert ds.x.values[:2].tolist() == [8.0, 24.0] and ds.rio.crs is None


def test_rotated_transform(tmp_path, tiny_weights):
    rot = write_raster(tmp_path / "rot.tif", texture((64, 64)), transform=Affine(10, 2, 500000, 1, -10, 4500000))
    r = run(rot, "-o", tmp_path / "o.zarr", *tiny(tiny_weights))
    assert_clean_failure(r, "rotated", "gdalwarp")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_unwritable_output_as_user(tmp_path, scene, tiny_weights):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = run(scene, "-o", ro / "o.zarr", *tiny(tiny_weights))
    assert r.returncode == 5 and "permission denied while writing the cube" in r.stderr, r.stderr  # README: exit 5


def test_unwritable_output(tmp_path, scene, tiny_weights):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    r = run(scene, "-o", blocker / "o.zarr", *tiny(tiny_weights))
    assert_clean_failure(r, "cannot write")
    assert blocker.read_text().startswith("a file")


def test_output_that_already_exists(tmp_path, scene, tiny_weights):
    precious = tmp_path / "precious.zarr"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not lose me")
    for extra in ([], ["--overwrite"]):
        r = run(scene, "-o", precious, *tiny(tiny_weights), *extra)
        assert_clean_failure(r, "exists and is not a geodino cube")
        assert (precious / "thesis.txt").read_text() == "do not lose me"
        assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    # an existing plain directory is a folder of cubes (like cp FILE DIR): the cube goes inside it
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert run(scene, "-o", folder, *tiny(tiny_weights)).returncode == 0
    assert (folder / "notes.txt").read_text() == "keep" and is_cube(folder / "scene.zarr")
    a_file = tmp_path / "out.zarr"
    a_file.write_text("x")
    r = run(scene, "-o", a_file, *tiny(tiny_weights), "--overwrite")
    assert_clean_failure(r, "not a geodino cube")
    # a cube made with other settings
    out = tmp_path / "c.zarr"
    assert run(scene, "-o", out, *tiny(tiny_weights)).returncode == 0
    r = run(scene, "-o", out, *tiny(tiny_weights), "--halo", "32")
    assert_clean_failure(r, "different settings", "--overwrite")
    assert read_attrs(out)["geodino"]["tiling"]["halo"] == 16


def test_weights_that_do_not_match_the_model(tmp_path, scene):
    other = save_weights(build_model("dinov3-vitb16-lvd1689m", depth=1), tmp_path / "vitb.safetensors")
    before = sha(scene)
    r = run(scene, "-o", tmp_path / "o.zarr", "--model", MODEL, "--weights", other, "--arch=depth=1",
            "--device", "cpu", "--radiometry", "minmax", "--minmax", "0,4000")
    assert_clean_failure(r, "do not fit dinov3-vits16-lvd1689m", "dinov3-vitb16-lvd1689m")
    assert sha(scene) == before and not (tmp_path / "o.zarr").exists()


def test_bad_options(tmp_path, scene, tiny_weights):
    assert_clean_failure(run(scene, *tiny(tiny_weights), "--tile", "100"), "multiple of the patch size")
    assert_clean_failure(run(scene, *tiny(tiny_weights), "--radiometry", "magic"), "radiometry")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile: 64\nbogus_option: 1\n")
    assert_clean_failure(run(scene, *tiny(tiny_weights), "--config", cfg), "unknown embed option")


def test_debug_shows_the_traceback(tmp_path, tiny_weights):
    r = subprocess.run([sys.executable, "-m", "geodino", "--debug", "embed", str(tmp_path / "nope.tif"),
                        *tiny(tiny_weights)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr


def _gcp_only(tmp):
    from rasterio.control import GroundControlPoint

    path = tmp / "gcp.tif"
    data = texture((64, 64))
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16") as ds:
        ds.write(data)
        ds.gcps = ([GroundControlPoint(0, 0, 500000, 4500000), GroundControlPoint(0, 64, 500640, 4500000),
                    GroundControlPoint(64, 0, 500000, 4499360)], rasterio.crs.CRS.from_epsg(32633))
    return path


def _rpc_only(tmp):
    from rasterio.rpc import RPC

    path = tmp / "rpc.tif"
    data = texture((64, 64))
    rpc = RPC(height_off=0, height_scale=100, lat_off=45, lat_scale=0.1, line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, 1] + [0] * 17, line_off=32, line_scale=32, long_off=9, long_scale=0.1,
              samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=32, samp_scale=32)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16") as ds:
        ds.write(data)
        ds.rpcs = rpc
    return path


def _text_file(path):
    path.write_text("hello, not a raster\n")
    return path


BAD = {  # case -> (make input(tmp_path) -> path, extra CLI args, words the one error line must hold)
    "nodata outside the dtype": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--nodata", "-9999"],
                                 ["--nodata -9999 is outside the range", "0..65535"]),
    "fractional nodata on integers": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--nodata", "0.5"],
                                      ["--nodata 0.5 is fractional", "integer"]),
    "nodata out of uint8 range": (lambda p: write_raster(p / "s.tif", texture((64, 64), dtype="uint8")),
                                  ["--nodata", "300"], ["outside the range", "0..255"]),
    "GCP-only raster": (_gcp_only, [], ["ground control points", "gdalwarp"]),
    "RPC-only raster": (_rpc_only, [], ["RPCs", "gdalwarp -rpc"]),
    "unknown S2 offset": (lambda p: write_raster(p / "s.tif", texture((64, 64))),
                          ["--radiometry", "s2-l2a"], ["BOA_ADD_OFFSET", "--s2-offset -1000", "--s2-offset 0"]),
    "unknown sensor": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--radiometry-none"],
                       ["does not say which sensor", "--radiometry"]),
    "radiometry-like of a non-cube": (lambda p: write_raster(p / "s.tif", texture((64, 64))),
                                      ["--radiometry-like", "nothing-here.zarr"], ["--radiometry-like", "zarr"]),
    "blend wider than the halo": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--blend", "3"],
                                  ["--blend 3", "halo"]),
    "rotated grid": (lambda p: write_raster(p / "s.tif", texture((64, 64)),
                                            transform=Affine(10, 2, 500000, 1, -10, 4500000)), [], ["rotated"]),
    "missing band": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--bands", "1,2,7"],
                     ["band 7", "too few bands"]),
    "bad tile": (lambda p: write_raster(p / "s.tif", texture((64, 64))), ["--tile", "100"], ["multiple of"]),
    "not a raster": (lambda p: _text_file(p / "s.tif"), [], ["not a raster"]),
}


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("case", sorted(BAD))
def test_table_of_bad_inputs_one_line_exit_2_never_an_internal_error(tmp_path, tiny_weights, case):
    make, extra, words = BAD[case]
    src = make(tmp_path)
    before = sha(src)
    radiometry = ("--radiometry", "minmax", "--minmax", "0,4000")
    if any(a.startswith("--radiometry") for a in extra):
        radiometry = ()
    extra = [a for a in extra if a != "--radiometry-none"]
    r = run(src, "-o", tmp_path / "o.zarr", *tiny(tiny_weights, radiometry), *extra, cwd=tmp_path)
    assert "internal error" not in r.stderr, r.stderr
    assert_clean_failure(r, *words)
    assert sha(src) == before and not (tmp_path / "o.zarr").exists()


def test_nir_taken_as_red_warns_and_the_run_says_which_bands(tmp_path, tiny_weights, capfd):
    """A 4-band file described B02, B03, B04, B08 read with --bands 4,3,2 (README's old main command): embedded,
    with one warning naming the bands taken (B08 as red) and how to choose by name; info shows them too."""
    from geodino.cli import main

    src = write_raster(tmp_path / "s2.tif", texture((64, 80), bands=4), descriptions=["B02", "B03", "B04", "B08"])
    args = [str(src), *map(str, tiny(tiny_weights))]
    from geodino.raster.bands import BandColourWarning

    with pytest.warns(BandColourWarning) as w:  # in-process, pytest records what the CLI prints as a warning line
        assert main(["embed", *args, "-o", str(tmp_path / "o.zarr"), "--bands", "4,3,2"]) == 0
    [msg] = [str(x.message) for x in w if x.category is BandColourWarning]
    assert "bands 4,3,2 = B08, B04, B03 are near-infrared, red, green" in msg
    assert msg.endswith("choose them by name: --bands B04,B03,B02")
    assert "bands 4,3,2 = B08, B04, B03 read as red, green, blue" in capfd.readouterr().err
    assert main(["info", str(tmp_path / "o.zarr")]) == 0
    assert "bands     : 4,3,2 = B08, B04, B03 (as red, green, blue)" in capfd.readouterr().out
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BandColourWarning)
        assert main(["embed", *args, "-o", str(tmp_path / "p.zarr"), "--bands", "B04,B03,B02"]) == 0
