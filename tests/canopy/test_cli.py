"""`geodino canopy` on the command line: a demo run, and each bad input of the issue answered with one line and
exit code 2, leaving no output behind."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from geodino.cli import main
from tests.canopy.conftest import TINY, TINY_HEAD, cli_args, scene_raster


def run(capfd, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capfd.readouterr().err


def test_cli_writes_the_cog_and_says_so(tmp_path, capfd, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(128, 128))
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "chm.tif", *cli_args(opts))
    assert code == 0, err
    assert "chm.tif: complete; 4 tiles written" in err and "read as it is" in err
    assert rasterio.open(tmp_path / "chm.tif").count == 1
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "chm.tif", *cli_args(opts), "--overwrite")
    assert code == 0 and "4 tiles written" in err
    # the height cube: `info` describes it; readers of feature cubes refuse it in one line
    assert main(["info", str(tmp_path / "chm.heights.zarr")]) == 0
    out = capfd.readouterr().out
    assert "(complete)" in out and "128 x 128 px of canopy heights in m (float32)" in out and "bands     : 1,2,3" in out
    for argv in (["index", str(tmp_path / "chm.heights.zarr"), "-o", str(tmp_path / "idx")],
                 ["export", "cog", str(tmp_path / "chm.heights.zarr"), str(tmp_path / "x.tif")]):
        code, err = run(capfd, *argv)
        assert code == 2 and err.count("\n") == 1 and "is a canopy height cube (geodino canopy), not a feature " \
            "cube" in err, err


def test_random_weights_say_so(tmp_path, capfd):
    scene = scene_raster(tmp_path / "s.tif", shape=(64, 64))
    o = {"weights": "random", "arch": TINY, "head_arch": TINY_HEAD, "device": "cpu", "tile": 64, "threads": 1}
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "chm.tif", *cli_args(o))
    assert code == 0, err
    assert "--weights random: the heights are MEANINGLESS" in err and "RANDOM WEIGHTS" in err
    assert rasterio.open(tmp_path / "chm.tif").tags()["geodino_random_weights"] == "True"


def _no_crs(tmp_path):
    return scene_raster(tmp_path / "nocrs.tif", shape=(64, 64), crs=None, transform=Affine.identity())


def _geographic(tmp_path):  # 1e-5 degrees at 60 N: 1.1 m tall but 0.56 m wide on the ground
    return scene_raster(tmp_path / "geo.tif", shape=(64, 64), crs="EPSG:4326",
                        transform=Affine(1e-5, 0, 10.0, 0, -1e-5, 60.0))


def _coarse(tmp_path):
    return scene_raster(tmp_path / "coarse.tif", shape=(64, 64), transform=Affine(30, 0, 500000, 0, -30, 4500000))


CASES = {
    "backbone/head mismatch": (lambda t, o, bb: {**o, "arch": {**TINY, "depth": 3}}, None,
                               "reads blocks [0, 1, 2, 3] but dinov3-vitl16-sat493m has 3 blocks"),
    "head of another shape": (lambda t, o, bb: {**o, "head_arch": {**TINY_HEAD, "n_bins": 32}}, None,
                              "has n_bins=64, but chmv2-vitl16-sat493m has n_bins=32"),
    "wrong head file": (lambda t, o, bb: {**o, "weights": str(bb)}, None,
                        "holds a DINOv3 backbone (geodino layout) but no CHMv2 head"),
    "missing weights": (lambda t, o, bb: {**o, "weights": str(t / "nope.safetensors")}, None, "nope.safetensors"),
    "no CRS": (lambda t, o, bb: o, _no_crs, "has no CRS, so its ground resolution is unknown"),
    "geographic, not square": (lambda t, o, bb: o, _geographic, "reproject it to square pixels"),
    "too coarse": (lambda t, o, bb: o, _coarse, "upsampling more than 8x invents no trees"),
    "tile not a multiple of 32": (lambda t, o, bb: {**o, "tile": 48}, None, "must be a multiple of 32"),
    "blend beyond the halo": (lambda t, o, bb: {**o, "blend": 48}, None, "must lie in 0..halo (32)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capfd, opts, backbone_only):
    edit, make_scene, message = CASES[case]
    scene = make_scene(tmp_path) if make_scene else scene_raster(tmp_path / "s.tif", shape=(64, 64))
    before = set(tmp_path.iterdir())
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "chm.tif", *cli_args(edit(tmp_path, opts, backbone_only)))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("geodino: error:"), err
    assert message in lines[0], lines[0]
    assert set(tmp_path.iterdir()) == before  # no COG, no height cube


def test_existing_output_without_overwrite(tmp_path, capfd, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(64, 64))
    (tmp_path / "chm.tif").write_bytes(b"someone's file")
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "chm.tif", *cli_args(opts))
    assert code == 2 and err.count("\n") == 1 and "exists: pass --overwrite" in err
    assert (tmp_path / "chm.tif").read_bytes() == b"someone's file" and not (tmp_path / "chm.heights.zarr").exists()


def test_a_cube_of_other_settings_is_refused_and_kept(tmp_path, capfd, opts):
    scene = scene_raster(tmp_path / "s.tif", shape=(64, 64))
    assert run(capfd, "canopy", scene, "-o", tmp_path / "a.tif", "--cube", tmp_path / "h.zarr", *cli_args(opts))[0] == 0
    code, err = run(capfd, "canopy", scene, "-o", tmp_path / "b.tif", "--cube", tmp_path / "h.zarr",
                    *cli_args({**opts, "halo": 16}))
    assert code == 2 and err.count("\n") == 1 and "made with different settings (blend 32 -> 16; halo 32 -> 16" in err
    assert "--overwrite" in err
    assert not (tmp_path / "b.tif").exists()
    h = rasterio.open(tmp_path / "a.tif").read(1)
    assert np.isfinite(h).all()


def test_readme_canopy_demo_runs(shared_data, tmp_path, capfd, monkeypatch):
    import re
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```bash\n(.*?)```", (repo / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "configs/canopy/cpu-demo.yaml" in b)
    argv = shlex.split(block.replace("\\\n", " ").strip().splitlines()[0])
    assert argv[:2] == ["geodino", "canopy"]
    argv[argv.index("-o") + 1] = str(tmp_path / "naip_chm.tif")
    monkeypatch.chdir(repo)
    code, err = run(capfd, *argv[1:])
    assert code == 0, err
    with rasterio.open(tmp_path / "naip_chm.tif") as ds:
        assert ds.shape == (500, 500) and ds.tags()["geodino_random_weights"] == "True"


def test_sigterm_stops_gracefully_and_the_same_command_resumes(tmp_path, opts):
    """As `embed`: SIGTERM mid-run exits 143 with one line, leaves a resumable height cube (recorded as
    interrupted) and no COG; the same command then finishes it, bit-identical to an uninterrupted run."""
    import json
    import signal
    import time

    from geodino.cube.store import WRITTEN, tile_status
    from tests.canopy.test_canopy import _chunks
    from tests.faults.conftest import cli_process, error_lines

    scene = scene_raster(tmp_path / "s.tif", shape=(256, 256))
    out, cube = tmp_path / "chm.tif", tmp_path / "chm.heights.zarr"
    argv = ["canopy", scene, "-o", out, *cli_args({**opts, "threads": 1})]
    p = cli_process(argv, fault={"slow": 0.15})  # each chunk write slowed, so that the signal lands mid-run

    def written() -> int:
        try:
            return int((tile_status(cube) == WRITTEN).sum())
        except Exception:  # noqa: BLE001 - not created yet
            return 0

    deadline = time.monotonic() + 300
    while p.poll() is None and written() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "interrupted: rerun the same command" in error_lines(err.splitlines())[-1]
    assert not out.exists()
    attrs = json.loads((cube / "zarr.json").read_text())["attributes"]
    assert attrs["geodino_status"] == "incomplete" and attrs["geodino"]["runs"][-1]["interrupted"] is True
    assert 0 < written() < 16
    assert main([str(a) for a in argv]) == 0 and out.exists()
    assert main(["canopy", str(scene), "-o", str(tmp_path / "clean.tif"), *cli_args(opts)]) == 0
    a, b = _chunks(cube), _chunks(tmp_path / "clean.heights.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
