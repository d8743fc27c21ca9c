"""Shared pieces of the fault tests: the tiny model's CLI options, running children, comparing cubes bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.embed.conftest import MODEL, TINY, tiny_weights  # noqa: F401  (the session fixture, shared)

ROOT = Path(__file__).resolve().parents[2]
ARRAYS = ("features", "valid", "cls", "tile_status")


def tiny_args(weights, threads: int = 4, tile: int = 64) -> list[str]:
    """`geodino embed` options of a tiny random model on the CPU (fixed radiometry, small tiles)."""
    return ["--model", MODEL, "--weights", str(weights), *[f"--arch={k}={v}" for k, v in TINY.items()],
            "--device", "cpu", "--tile", str(tile), "--halo", "16", "--threads", str(threads),
            "--radiometry", "minmax", "--minmax", "0,4000", "--batch-size", "2"]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_children(runs: list[dict], tmp: Path, timeout: float = 300) -> tuple[int, list[dict], str]:
    """Run ``runs`` (each {"argv": [...], "fault": ...}) in ONE child process; its return code (negative: killed
    by that signal), the per-run results it reported, and its stderr."""
    spec = tmp / f"runs-{len(list(tmp.glob('runs-*.json')))}.json"
    spec.write_text(json.dumps(runs))
    p = subprocess.run([sys.executable, "-m", "tests.faults.child", str(spec)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=child_env())
    results = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, results, p.stderr


def run_child_with_signals(runs: list[dict], tmp: Path, timeout: float = 600) -> tuple[int, list[dict], str]:
    """As :func:`run_children`, and a run with ``"signal": {"name": "SIGTERM", "marker": FILE}`` gets that signal
    once FILE exists (the child touches it where its ``rename`` fault pauses), or with ``"cube": DIR`` once that
    cube has a written tile: the child survives the signal (its handler stops the run in ``main``) and goes on to
    the next run, so every signal case shares one interpreter."""
    import signal
    import time

    spec = tmp / f"runs-{len(list(tmp.glob('runs-*.json')))}.json"
    spec.write_text(json.dumps(runs))
    p = subprocess.Popen([sys.executable, "-m", "tests.faults.child", str(spec)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
    deadline = time.monotonic() + timeout
    try:
        for run in runs:
            sig = run.get("signal")
            if not sig:
                continue
            while time.monotonic() < deadline and p.poll() is None:
                if ("marker" in sig and Path(sig["marker"]).exists()) or \
                        ("cube" in sig and _tiles_written(Path(sig["cube"])) >= sig.get("tiles", 1)):
                    break
                time.sleep(0.02)
            if p.poll() is None:
                p.send_signal(getattr(signal, sig["name"]))
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return p.returncode, results, err


def _tiles_written(cube: Path) -> int:
    """Tiles written so far in a cube another process writes (0 before it exists)."""
    try:
        from geodino.cube.store import WRITTEN, tile_status

        return int(np.sum(tile_status(cube) == WRITTEN))
    except Exception:  # noqa: BLE001 - not created yet, or its metadata is being written
        return 0


def cli_process(argv: list[str], fault: dict | None = None, **kw) -> subprocess.Popen:
    """The CLI in its own process (for signals), with an optional injected store fault."""
    env = child_env()
    if fault:
        env["GEODINO_TEST_FAULT"] = json.dumps(fault)
    return subprocess.Popen([sys.executable, "-m", "tests.faults.child", "--cli", *map(str, argv)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("geodino:")]


def cube_bytes(path: Path) -> dict[str, bytes]:
    """The bytes of every data array of a cube (NaNs compare as bits)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {name: np.ascontiguousarray(root[name][...]).tobytes() for name in ARRAYS}


def assert_bit_identical(a: Path, b: Path) -> None:
    ba, bb = cube_bytes(a), cube_bytes(b)
    for name in ARRAYS:
        assert ba[name] == bb[name], f"{name} of {b} differs from {a}"


def status_of(path: Path) -> str:
    return json.loads((path / "zarr.json").read_text())["attributes"]["geodino_status"]


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """A 320 x 320 px uint16 scene: 25 tiles of 64 px."""
    from tests.rasters import texture, write_raster

    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", texture((320, 320), seed=7))


@pytest.fixture(scope="session")
def reference(scene, tiny_weights, tmp_path_factory) -> Path:  # noqa: F811
    """The uninterrupted cube of ``scene`` that every resumed run must equal bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    rc, res, err = run_children([{"argv": ["embed", str(scene), "-o", str(out), *tiny_args(tiny_weights)]}],
                                out.parent)
    assert rc == 0 and res[0]["rc"] == 0, (rc, res, err)
    assert status_of(out) == "complete"
    return out


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """What the commands read: a cube, labels, a head and an index of it, a tiny CHMv2 checkpoint and an 8-bit
    scene, a GEO-Bench task and a tiny backbone."""
    import geodino
    from geodino.heads import align_labels, save_head, train_on_cube
    from geodino.index import build_index
    from geodino.models import build_model, save_canopy_weights, save_weights
    from geodino.models.testing import context_mixing_canopy_model
    from tests.canopy.conftest import TINY as CHM_TINY
    from tests.canopy.conftest import TINY_HEAD, scene_raster
    from tests.conftest import randomize_
    from tests.cubes import make_cube, structured_features
    from tests.geobench.conftest import MODEL as GB_MODEL
    from tests.geobench.conftest import TINY as GB_TINY
    from tests.geobench.synth import write_task
    from tests.heads.conftest import planted_labels, write_label_raster

    d = tmp_path_factory.mktemp("inputs")
    feats = structured_features((24, 32), 16, seed=7)
    cube = make_cube(d / "c.zarr", feats, np.ones((24, 32), bool))
    ds = geodino.open_cube(cube)
    labels = write_label_raster(d / "labels.tif", planted_labels(ds.features.values.astype(np.float32),
                                                                 np.ones((24, 32), bool)), ds)
    head = save_head(train_on_cube(cube, align_labels(cube, labels), head="logreg", n_boot=20), d / "h.safetensors")
    index = build_index([cube], d / "idx").path
    lon, lat = _lonlat_of(ds)
    chm = save_canopy_weights(context_mixing_canopy_model(arch=CHM_TINY, head_arch=TINY_HEAD), d / "chm.safetensors")
    scene = scene_raster(d / "scene.tif", shape=(160, 176))
    bench = d / "bench"
    write_task(bench, "m-eurosat", "classification", n_classes=3, n_train=6, n_valid=4, n_test=4, seed=1)
    gbw = save_weights(randomize_(build_model(GB_MODEL, **GB_TINY), seed=3), d / "gb.safetensors")
    return {"dir": d, "cube": cube, "labels": labels, "head": head, "index": index, "near": f"{lon},{lat}",
            "chm": chm, "scene": scene, "bench": bench, "gb_weights": gbw}


def _lonlat_of(ds) -> tuple[float, float]:
    from pyproj import Transformer

    x, y = float(ds.x[5]), float(ds.y[5])
    return Transformer.from_crs(ds.rio.crs, "EPSG:4326", always_xy=True).transform(x, y)
