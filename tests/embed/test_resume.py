"""Resume after SIGKILL, refusal of other settings and of a second writer, completeness marking."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geodino.cube import CubeLock, open_cube, read_attrs, tile_status
from geodino.embed import EmbedConfig, embed
from geodino.errors import CubeExistsError, CubeLockedError
from tests.embed.conftest import MODEL, TINY
from tests.rasters import texture, write_raster


def cli_args(scene, out, weights, *extra):
    arch = [f"--arch={k}={v}" for k, v in TINY.items()]
    return [sys.executable, "-m", "geodino", "embed", str(scene), "-o", str(out), "--model", MODEL,
            "--weights", str(weights), *arch, "--tile", "64", "--halo", "16", "--batch-size", "3",
            "--device", "cpu", "--radiometry", "minmax", "--minmax", "0,4000", *extra]


def chunk_bytes(cube: Path) -> dict[str, bytes]:
    out = {}
    for name in ("features", "valid", "cls", "tile_status"):
        for f in sorted((cube / name).rglob("*")):
            if f.is_file() and f.name != "zarr.json":
                out[str(f.relative_to(cube))] = f.read_bytes()
    return out


def tiles_done(cube) -> int:
    """Tiles written or skipped so far (0 while the cube is being created)."""
    try:
        return int((tile_status(cube) != 0).sum())
    except Exception:  # not created yet
        return 0


def wait_for_tiles(cube, n: int, finished=lambda: None, timeout: float = 120) -> None:
    """Wait until ``n`` tiles of ``cube`` are done (or ``finished()`` is not None)."""
    deadline = time.time() + timeout
    while time.time() < deadline and tiles_done(cube) < n and finished() is None:
        time.sleep(0.05)


@pytest.fixture
def big_scene(tmp_path):
    data = texture((1024, 1280), seed=8)
    data[:, 600:760, 0:400] = 0  # some skipped tiles
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


def test_sigkill_then_rerun_gives_the_same_bytes_as_a_clean_run(tmp_path, big_scene, tiny_weights):
    cube = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cli_args(big_scene, cube, tiny_weights), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for_tiles(cube, 40, proc.poll)
    assert proc.poll() is None, "the run finished before it could be killed: make the scene larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    attrs = read_attrs(cube)
    st = tile_status(cube)
    assert attrs["geodino_status"] == "incomplete" and (st == 0).any() and (st != 0).any()

    r = subprocess.run(cli_args(big_scene, cube, tiny_weights), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "already present" in r.stderr
    assert read_attrs(cube)["geodino_status"] == "complete"

    clean = tmp_path / "clean.zarr"
    r = subprocess.run(cli_args(big_scene, clean, tiny_weights), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = chunk_bytes(cube), chunk_bytes(clean)
    assert a.keys() == b.keys() and len(a) > 100
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    ds_a, ds_b = open_cube(cube), open_cube(clean)
    np.testing.assert_array_equal(ds_a.features.values, ds_b.features.values)
    runs = read_attrs(cube)["geodino"]["runs"]
    assert len(runs) == 1 and runs[0]["tiles_written"] < len(st.ravel())  # the killed run recorded nothing


def test_info_reports_grid_provenance_and_completeness(tmp_path, big_scene, tiny_weights):
    cube = tmp_path / "c.zarr"
    assert subprocess.run(cli_args(big_scene, cube, tiny_weights), capture_output=True, timeout=600).returncode == 0
    r = subprocess.run([sys.executable, "-m", "geodino", "info", str(cube)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "(complete)" in out and "80 x 64 patches, 64 features (float16), EPSG:32633" in out
    assert "tiles     : " in out and "0 pending of 320" in out and "sha256" in out and "minmax" in out
    r = subprocess.run([sys.executable, "-m", "geodino", "info", str(cube), "--json"], capture_output=True,
                       text=True, timeout=60)
    import json

    info = json.loads(r.stdout)
    assert info["completeness"]["pending"] == 0 and info["provenance"]["tiling"]["halo"] == 16
    r = subprocess.run([sys.executable, "-m", "geodino", "info", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "not a zarr v3 store" in r.stderr


def _cfg(tiny_opts, out, **kw):
    return EmbedConfig.build(**tiny_opts, tile=64, halo=16, output=str(out), **kw)


def test_other_settings_are_refused_unless_overwrite(tmp_path, tiny_opts):
    src = write_raster(tmp_path / "s.tif", texture((100, 100), seed=1))
    out = tmp_path / "c.zarr"
    [s] = embed([src], _cfg(tiny_opts, out))
    assert s.status == "complete"
    [again] = embed([src], _cfg(tiny_opts, out))
    assert again.status == "already complete" and again.tiles_written == 0
    with pytest.raises(CubeExistsError, match=r"different settings \(.*halo 16 -> 32"):
        embed([src], _cfg(tiny_opts, out).replace(halo=32))
    with pytest.raises(CubeExistsError, match="different settings") as e:  # named in words, not Python values
        embed([src], _cfg(tiny_opts, out).replace(minmax=(0.0, 3000.0)))
    assert "radiometry minmax (gain 0.00025, bias 0) -> minmax (gain 0.000333333, bias 0)" in str(e.value)
    assert not any(c in str(e.value) for c in "{}[]'"), str(e.value)
    [s2] = embed([src], _cfg(tiny_opts, out, overwrite=True).replace(halo=32))
    assert s2.status == "complete" and read_attrs(out)["geodino"]["tiling"]["halo"] == 32


def test_a_changed_source_is_a_different_job(tmp_path, tiny_opts):
    src = write_raster(tmp_path / "s.tif", texture((100, 100), seed=1))
    out = tmp_path / "c.zarr"
    embed([src], _cfg(tiny_opts, out))
    write_raster(src, texture((100, 100), seed=2))
    with pytest.raises(CubeExistsError, match=r"its source .*s\.tif changed since the cube was begun \(size"):
        embed([src], _cfg(tiny_opts, out))


def test_second_concurrent_writer_is_refused(tmp_path, tiny_opts):
    src = write_raster(tmp_path / "s.tif", texture((100, 100), seed=1))
    out = tmp_path / "c.zarr"
    with CubeLock(out):
        with pytest.raises(CubeLockedError, match="being written by pid"):
            embed([src], _cfg(tiny_opts, out))
    assert embed([src], _cfg(tiny_opts, out))[0].status == "complete"


def test_never_complete_while_tiles_are_missing(tmp_path, tiny_opts, monkeypatch):
    """A crash mid-run leaves an incomplete cube that the same call completes."""
    from geodino.embed import tasks

    src = write_raster(tmp_path / "s.tif", texture((200, 200), seed=3))
    out = tmp_path / "c.zarr"
    real = tasks.infer_batch

    def failing(spec, radiometry, batch, dtype):  # shipped to the worker by value: no shared state
        if any(t.tile.key == "2-1" for t in batch):
            raise RuntimeError("simulated crash")
        return real(spec, radiometry, batch, dtype)

    monkeypatch.setattr(tasks, "infer_batch", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed([src], _cfg(tiny_opts, out, batch_size=2, prefetch=1))
    assert read_attrs(out)["geodino_status"] == "incomplete"
    st = tile_status(out)
    assert st[2, 1] == 0 and (st != 0).any()
    monkeypatch.setattr(tasks, "infer_batch", real)
    [s] = embed([src], _cfg(tiny_opts, out, batch_size=2, prefetch=1))
    assert s.status == "complete" and s.tiles_resumed > 0 and (tile_status(out) != 0).all()
