"""A library without side effects: library calls leave the process's settings (GDAL's cache, malloc, faiss's
threads, logger levels, signal handlers) as they found them; the CLI applies its memory policy and owns signals;
a Ctrl-C in a library call stops the job cleanly and the process carries on; provenance records the library call
(not ``sys.argv``) without changing the fingerprint that resume relies on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rasterio.env import get_gdal_config

import geodino._process as process
from geodino.cube import read_attrs, tile_status
from geodino.embed import embed
from geodino.errors import Interrupted
from tests.cubes import make_cube, structured_features
from tests.embed.conftest import MODEL, TINY, tiny_weights  # noqa: F401  (the session fixture, shared)
from tests.rasters import texture, write_raster

ROOT = Path(__file__).resolve().parents[1]
TILES = 28  # the scene's tiles


def _gdal_cache() -> int:
    return int(get_gdal_config("GDAL_CACHEMAX"))  # rasterio answers GDALGetCacheMax64() for this key


@pytest.fixture
def spy(monkeypatch):
    """Records every call of the process-wide memory policy (and of its malloc parts)."""
    calls = []
    for name in ("bound_memory", "_tune_malloc"):
        real = getattr(process, name)

        def wrapped(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(process, name, wrapped)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    return calls


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # 7 x 4 tiles of 64 px in shards of one tile row: a stop at the first written row leaves rows unwritten even
    # when the host stalls the main thread (with 3 rows, the batches in flight by then were the whole scene)
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", texture((448, 256), seed=4))


def lib_opts(weights, out) -> dict:
    return {"output": str(out), "model": MODEL, "weights": str(weights), "arch": dict(TINY), "device": "cpu",
            "tile": 64, "halo": 16, "batch_size": 2, "threads": 2, "radiometry": "minmax", "minmax": (0, 4000)}


def cli_argv(scene, out, weights) -> list[str]:
    return ["embed", str(scene), "-o", str(out), "--model", MODEL, "--weights", str(weights),
            *[f"--arch={k}={v}" for k, v in TINY.items()], "--device", "cpu", "--tile", "64", "--halo", "16",
            "--batch-size", "2", "--threads", "2", "--radiometry", "minmax", "--minmax", "0,4000"]


def chunk_bytes(cube: Path) -> dict[str, bytes]:
    return {str(f.relative_to(cube)): f.read_bytes() for name in ("features", "valid", "cls", "tile_status")
            for f in sorted((cube / name).rglob("*")) if f.is_file() and f.name != "zarr.json"}


@pytest.fixture(scope="module")
def reference(scene, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    [s] = embed(scene, **lib_opts(tiny_weights, out))
    assert s.status == "complete" and s.tiles_total == TILES
    return out


def test_a_library_embed_leaves_the_process_as_it_found_it(scene, tiny_weights, tmp_path, spy):
    dist = logging.getLogger("distributed")
    old_levels = {n: logging.getLogger(n).level for n in ("distributed", "distributed.worker", "distributed.core")}
    dist.setLevel(logging.INFO)
    cache = _gdal_cache()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = {}

    def progress(_scene, done, _total):  # while the job runs: no handler of its own, the GDAL cache capped
        if done and "cache" not in seen:
            seen["cache"] = _gdal_cache()
            seen["handlers"] = {s: signal.getsignal(s) for s in handlers}

    try:
        [s] = embed(scene, progress=progress, **lib_opts(tiny_weights, tmp_path / "a.zarr"))
        assert s.status == "complete"
        assert spy == []  # no mallopt, no process-wide GDAL setting
        assert seen["cache"] == 64 * 2**20 and _gdal_cache() == cache  # capped during the call only
        assert seen["handlers"] == handlers and {s: signal.getsignal(s) for s in handlers} == handlers
        assert dist.level == logging.INFO  # distributed's loggers put back as they were
        assert logging.getLogger("distributed.worker").level == old_levels["distributed.worker"]
    finally:
        for n, lv in old_levels.items():
            logging.getLogger(n).setLevel(lv)


def test_compress_and_write_cog_leave_malloc_and_the_gdal_cache_alone(tmp_path, spy):
    from geodino import open_cube
    from geodino.cube.compress import compress
    from geodino.export.cog import write_cog

    cube = make_cube(tmp_path / "c.zarr", structured_features((24, 40), 32, seed=1))
    cache = _gdal_cache()
    compress(cube, tmp_path / "k.zarr", k=8, sample=300)
    m = open_cube(cube)["features"].isel(feature=slice(0, 3)).astype("float32").rename({"feature": "band"})
    write_cog(m, tmp_path / "m.tif", nodata=np.nan)
    assert spy == [] and _gdal_cache() == cache


def test_the_cli_applies_the_memory_policy(tmp_path, monkeypatch):
    from geodino.cli import main

    calls = []
    monkeypatch.setattr(process, "bound_memory", lambda *a: calls.append(a))  # recorded, not applied to pytest
    cube = make_cube(tmp_path / "c.zarr", structured_features((24, 40), 32, seed=1))
    assert main(["compress", str(cube), "-o", str(tmp_path / "k.zarr"), "--k", "8", "--sample", "300"]) == 0
    assert calls == [()]


def test_the_cli_embed_applies_the_policy_and_its_own_signal_handlers(scene, tiny_weights, tmp_path, monkeypatch):
    from geodino.cli import main

    calls, seen = [], {}
    monkeypatch.setattr(process, "bound_memory", lambda *a: calls.append(a))
    import geodino.cli._signals as cli_signals

    real = cli_signals.graceful_stop

    def spying():
        seen["used"] = True
        return real()

    monkeypatch.setattr(cli_signals, "graceful_stop", spying)
    before = signal.getsignal(signal.SIGINT)
    assert main(cli_argv(scene, tmp_path / "cli.zarr", tiny_weights)) == 0
    assert calls == [(64,)] and seen == {"used": True} and signal.getsignal(signal.SIGINT) is before


def test_faiss_threads_are_put_back_after_an_index_build(tmp_path):
    import faiss

    from geodino.index import build_index

    cube = make_cube(tmp_path / "c.zarr", structured_features((24, 40), 32, seed=1))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        build_index([cube], tmp_path / "idx", threads=1)
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_provenance_records_the_call_and_the_fingerprint_ignores_it(scene, tiny_weights, reference, tmp_path):
    """From Python the cube records the call (not the test runner's argv); a cube begun from Python resumes from
    the CLI, and a cube the CLI made is "already complete" to the same library call: one fingerprint."""
    prov = read_attrs(reference)["geodino"]
    assert prov["command"] is None
    assert prov["call"]["function"] == "geodino.embed.embed"
    assert prov["call"]["args"]["scenes"] == [str(scene)] and prov["call"]["args"]["tile"] == 64
    assert " ".join(sys.argv) not in str(prov)  # not the test runner's command line

    # begun from Python (stopped once a tile is written), resumed by the CLI: bit-identical to the reference
    out = tmp_path / "py_then_cli.zarr"
    done = {"n": 0}

    def progress(_s, d, _t):
        done["n"] = d

    with pytest.raises(Interrupted):
        embed(scene, progress=progress, stop=lambda: signal.SIGINT if done["n"] >= 1 else None,
              **lib_opts(tiny_weights, out))
    assert read_attrs(out)["geodino_status"] == "incomplete"
    assert 0 < int((tile_status(out) != 0).sum()) < TILES
    p = subprocess.run([sys.executable, "-m", "geodino", *cli_argv(scene, out, tiny_weights)], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    # the CLI's output is geodino's own lines: dask's cluster shutdown at exit logs nothing (it logged nine INFO
    # lines once the job's quietened logger levels were put back before the atexit close)
    assert not [ln for ln in p.stderr.splitlines() if "distributed" in ln or ln.startswith(("INFO", "DEBUG"))], \
        p.stderr
    assert chunk_bytes(out) == chunk_bytes(reference)
    assert read_attrs(out)["geodino"]["call"]["function"] == "geodino.embed.embed"  # the cube's origin stays

    # made by the CLI: the same library call finds it complete (a different fingerprint would refuse it)
    out2 = tmp_path / "cli.zarr"
    p = subprocess.run([sys.executable, "-m", "geodino", *cli_argv(scene, out2, tiny_weights)], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    prov2 = read_attrs(out2)["geodino"]
    assert prov2["command"].startswith("geodino embed ") and "call" not in prov2
    assert prov2["fingerprint"] == prov["fingerprint"]
    [s] = embed(scene, **lib_opts(tiny_weights, out2))
    assert s.status == "already complete"


def test_ctrl_c_in_a_library_call_stops_cleanly_and_the_cube_resumes(scene, tiny_weights, reference, tmp_path):
    """Two SIGINTs (Python's default handler: KeyboardInterrupt on the main thread) while the job runs: the
    call raises Interrupted, the lease is released, the process lives on, and a rerun completes the cube
    bit-identically."""
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    out = tmp_path / "ctrl_c.zarr"
    sent = {"n": 0}

    def progress(_s, done, _t):
        if done >= 2 and sent["n"] == 0:
            sent["n"] = 2
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as e:
        embed(scene, progress=progress, **lib_opts(tiny_weights, out))
    assert e.value.signum == signal.SIGINT and e.value.exit_code == 130
    assert sent["n"] == 2 and 0 < int((tile_status(out) != 0).sum()) < TILES
    runs = read_attrs(out)["geodino"]["runs"]
    assert runs[-1]["interrupted"] is True
    [s] = embed(scene, **lib_opts(tiny_weights, out))  # the lease was let go: the same process resumes at once
    assert s.status == "complete" and s.tiles_resumed > 0
    assert chunk_bytes(out) == chunk_bytes(reference)
