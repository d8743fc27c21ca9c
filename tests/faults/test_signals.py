"""Signals (issue 17, point 4): SIGTERM, SIGINT, SIGKILL and a second signal at seeded random points of a run
(after a random number of tiles are written), at 1 and 4 reader threads, then the same command resumes to a cube
bit-identical to an uninterrupted run.

Each interrupted run is the CLI in its own process (chunk writes slowed by the injected ``slow`` fault, so that
the signal lands mid-run); the resumes all run in one child.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np

from geodino.cube.store import WRITTEN, tile_status
from tests.faults.conftest import assert_bit_identical, cli_process, error_lines, run_children, status_of, tiny_args

SEED = 1717
# name: (signals sent, threads, expected return code, words of the last line (None: killed, no line))
CASES = {
    "SIGTERM, 1 thread": ((signal.SIGTERM,), 1, 143, "geodino: interrupted: rerun the same command to resume"),
    "SIGTERM, 4 threads": ((signal.SIGTERM,), 4, 143, "geodino: interrupted: rerun the same command to resume"),
    "SIGINT, 4 threads": ((signal.SIGINT,), 4, 130, "geodino: interrupted: rerun the same command to resume"),
    "SIGKILL, 1 thread": ((signal.SIGKILL,), 1, -9, None),
    "SIGKILL, 4 threads": ((signal.SIGKILL,), 4, -9, None),
    "second SIGTERM, 4 threads": ((signal.SIGTERM, signal.SIGTERM), 4, 143, "interrupted again: stopped at once"),
}


def _written(out: Path) -> int:
    """Tiles written so far (a read-only look at the cube the run is writing: shards hold several tiles' status,
    so counting files would not count tiles)."""
    try:
        return int(np.sum(tile_status(out) == WRITTEN))
    except Exception:  # noqa: BLE001 - not created yet, or its metadata is being written
        return 0


def test_signals_then_resume_bit_identical(scene, reference, tiny_weights, tmp_path):
    rng = random.Random(SEED)
    procs = {}
    for k, (name, (sigs, threads, _, _)) in enumerate(CASES.items()):
        out = tmp_path / f"s{k}.zarr"
        argv = ["embed", str(scene), "-o", str(out), *tiny_args(tiny_weights, threads)]
        at = rng.randint(2, 14)  # of 25 tiles
        procs[name] = (cli_process(argv, fault={"slow": 0.12}), out, argv, at)
    deadline = time.monotonic() + 900  # generous: on a loaded machine six starting interpreters crawl
    pending = dict(procs)
    while pending and time.monotonic() < deadline:
        for name, (p, out, _, at) in list(pending.items()):
            if p.poll() is not None or _written(out) >= at:
                for i, s in enumerate(CASES[name][0]):
                    if i:
                        time.sleep(0.05)
                    if p.poll() is None:
                        p.send_signal(s)
                pending.pop(name)
        time.sleep(0.02)
    assert not pending, f"runs that never reached their point: {sorted(pending)}"
    table, resumes = [], []
    for name, (p, out, argv, at) in procs.items():
        _, err = p.communicate(timeout=300)
        sigs, threads, want_rc, words = CASES[name]
        lines = error_lines(err.splitlines())
        table.append((name, at, p.returncode, lines[-1] if lines else "(killed: no line)"))
        assert p.returncode == want_rc, (name, p.returncode, err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        if words is not None:
            assert lines and words in lines[-1], (name, err[-2000:])
        status = tile_status(out)
        assert status_of(out) == "incomplete" and 0 < (status == WRITTEN).sum() < status.size, (name, status)
        if want_rc in (130, 143) and len(sigs) == 1:  # a graceful stop records the run as interrupted
            runs = json.loads((out / "zarr.json").read_text())["attributes"]["geodino"]["runs"]
            assert runs[-1]["interrupted"] is True
        resumes.append({"argv": argv})
    rc, results, err = run_children(resumes, tmp_path)
    assert rc == 0, err[-2000:]
    for (name, (_, out, _, _)), r in zip(procs.items(), results):
        assert r["rc"] == 0, (name, r)
        assert status_of(out) == "complete"
        assert not list(out.rglob("*.partial"))
        assert_bit_identical(reference, out)
    print("\n" + "\n".join(f"{n} (after {a} tiles): exit {rc}: {line}" for n, a, rc, line in table))
