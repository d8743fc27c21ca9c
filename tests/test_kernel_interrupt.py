"""A Jupyter kernel survives an interrupt of ``geodino.embed.embed`` (twice), and the cube resumes bit-identically.

Interrupting a kernel sends it SIGINT; before, the library's own handler took a second one as "stop at once"
(``os._exit``), which killed the kernel. Now the library installs no handler: the first interrupt stops the job
cleanly (tiles in flight finished, the run recorded, the lease released) with ``geodino.errors.Interrupted``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from geodino.cube import read_attrs, tile_status
from geodino.embed import embed
from tests.rasters import texture, write_raster
from tests.test_side_effects import chunk_bytes, lib_opts, tiny_weights  # noqa: F401  (the shared fixture)

jupyter_client = pytest.importorskip("jupyter_client")

REPO = Path(__file__).resolve().parents[1]


def _collect(kc, msg_id: str, timeout: float = 120.0) -> dict:
    """What the cell ``msg_id`` printed, the error it ended with and its reply status."""
    out = {"stdout": "", "stderr": "", "error": None}
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out[content["name"]] += content["text"]
        elif kind == "error":
            out["error"] = content["ename"]
        elif kind == "status" and content["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            out["reply"] = reply["content"]["status"]
            return out


def _run(kc, code: str, timeout: float = 120.0) -> dict:
    return _collect(kc, kc.execute(code), timeout)


def test_a_kernel_survives_interrupts_of_an_embed_and_the_cube_resumes(tiny_weights, tmp_path):
    from jupyter_client import KernelManager

    scene = write_raster(tmp_path / "scene.tif", texture((256, 1024), seed=5))  # 4 x 16 tiles of 64 px
    reference = tmp_path / "reference.zarr"
    [ref] = embed(scene, **lib_opts(tiny_weights, reference))
    assert ref.status == "complete" and ref.tiles_total == 64
    out = tmp_path / "kernel.zarr"
    marker = tmp_path / "first-tiles"
    opts = lib_opts(tiny_weights, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p),
           "OMP_NUM_THREADS": "1"}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        setup = _run(kc, "import time, warnings\nwarnings.simplefilter('ignore')\n"
                         "from geodino.embed import embed\nfrom geodino.errors import Interrupted\n"
                         f"opts = {opts!r}\n"
                         "def slow(scene, done, total):\n"
                         f"    if done:\n        open({str(marker)!r}, 'a').close()\n"
                         "    time.sleep(0.2)\n")
        assert setup["reply"] == "ok", setup
        cell = kc.execute(f"embed({str(scene)!r}, progress=slow, **opts)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not marker.exists():  # the kernel has written its first tiles
            time.sleep(0.02)
        km.interrupt_kernel()
        time.sleep(0.2)
        km.interrupt_kernel()  # a second interrupt while the first is being handled
        stopped = _collect(kc, cell, timeout=180)  # the interrupted cell ends with geodino's Interrupted
        assert stopped["reply"] == "error" and stopped["error"] == "Interrupted", stopped
        assert "finishing the tiles in flight" in stopped["stderr"]
        # the next cell runs in the same, living kernel
        after = _run(kc, "print('alive', 6 * 7)", timeout=180)
        assert after["reply"] == "ok" and "alive 42" in after["stdout"], after
        assert km.is_alive()
        assert 0 < int((tile_status(out) != 0).sum()) < 64
        runs = read_attrs(out)["geodino"]["runs"]
        assert runs and runs[-1]["interrupted"] is True
        # the kernel resumes its own cube at once (the lease was let go)
        resumed = _run(kc, "[s] = embed(%r, **opts)\nprint(s.status, s.tiles_resumed > 0)" % str(scene), timeout=180)
        assert resumed["reply"] == "ok" and "complete True" in resumed["stdout"], resumed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert chunk_bytes(out) == chunk_bytes(reference)
