"""Environment faults (issue 17, point 3): a full disk, permission denied and an unreachable store, injected at
the store's write (zarr's local-store ``_put``, see ``tests/faults/child.py``) at a seeded random chunk write,
at 1 and 4 reader threads. Each run ends with one line saying what happened, where, and that rerunning resumes,
with its own exit code; the same command then resumes to a cube bit-identical to an uninterrupted run.

The faults are injected by patching the write rather than by filling a real filesystem: a small tmpfs needs root
and mount rights, which CI runners and containers seldom grant.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import assert_bit_identical, error_lines, run_children, status_of, tiny_args

# fault: (errno injected, exit code, words of the line)
FAULTS = {
    "disk full": ("ENOSPC", 4, "disk full while"),
    "permission denied": ("EACCES", 5, "permission denied while"),
    "store unreachable": ("ENOTCONN", 6, "output store unreachable while"),
}
SEED = 17


def _scenarios(tmp_path: Path):
    rng = random.Random(SEED)
    out = []
    for name, (code, rc, words) in FAULTS.items():
        for threads in (1, 4):
            # at a seeded one of the 20 chunk writes of the 25 tiles (5 shards of 5 tiles x 4 arrays)
            out.append((name, code, rc, words, threads, rng.randint(2, 15)))
    out.append(("disk full", "ENOSPC", 4, "disk full while creating", 4, 0))  # full before the cube exists
    return out


def test_faults_one_line_exit_code_and_bit_identical_resume(scene, reference, tiny_weights, tmp_path):
    scenarios = _scenarios(tmp_path)
    runs = []
    for k, (name, code, rc, words, threads, after) in enumerate(scenarios):
        argv = ["embed", str(scene), "-o", str(tmp_path / f"c{k}.zarr"), *tiny_args(tiny_weights, threads)]
        runs.append({"argv": argv, "fault": {"errno": code, "after": after}})
        runs.append({"argv": argv})  # the same command once the fault is gone
    rc, results, err = run_children(runs, tmp_path)
    assert rc == 0, f"child died by signal {-rc}: {err[-2000:]}"
    table = []
    for k, (name, code, want_rc, words, threads, after) in enumerate(scenarios):
        faulty, resumed = results[2 * k], results[2 * k + 1]
        out = tmp_path / f"c{k}.zarr"
        lines = error_lines(faulty["stderr"])
        assert faulty["rc"] == want_rc, (name, threads, faulty)
        assert len(lines) == 1 and not any("Traceback" in x or "ERROR" in x for x in faulty["stderr"]), \
            faulty["stderr"]
        line = lines[0]
        assert words in line and str(out) in line and "rerun the same command to resume" in line, line
        assert code in line, line
        table.append((name, threads, after, faulty["rc"], line))
        assert resumed["rc"] == 0, (name, threads, resumed)
        assert status_of(out) == "complete"
        assert not list(out.rglob("*.partial")), "a resume leaves no partial-write file behind"
        assert_bit_identical(reference, out)
    print("\n" + "\n".join(f"{n} ({t} threads, after {a} chunk writes): exit {c}: {line}"
                           for n, t, a, c, line in table))


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; why not, or None when mounted."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "needs root and mount(8) for a small tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    return None if p.returncode == 0 else f"cannot mount a tmpfs here ({p.stderr.strip()[:120]})"


def test_a_real_full_disk_then_more_space_resumes_bit_identical(scene, reference, tiny_weights, tmp_path):
    """A real filesystem filling up (a 200 kB tmpfs): exit 4 and its line; after it grows (remount), the same
    command resumes to the reference cube's bits."""
    mnt = tmp_path / "small"
    why = _mount_tmpfs(mnt, "200k")
    if why:
        pytest.skip(why)
    try:
        out = mnt / "cube.zarr"
        argv = ["embed", str(scene), "-o", str(out), *tiny_args(tiny_weights, 4)]
        runs = [{"argv": argv}, {"sh": ["mount", "-o", "remount,size=16m", str(mnt)]}, {"argv": argv}]
        rc, results, err = run_children(runs, tmp_path)
        assert rc == 0, err[-2000:]
        full, remount, resumed = results
        lines = error_lines(full["stderr"])
        assert full["rc"] == 4 and len(lines) == 1, full
        assert "disk full while" in lines[0] and str(out) in lines[0] and "rerun the same command" in lines[0]
        assert remount["rc"] == 0, remount
        assert resumed["rc"] == 0, resumed
        assert status_of(out) == "complete" and not list(out.rglob("*.partial"))
        assert_bit_identical(reference, out)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_lease_that_cannot_be_renewed_stops_the_run_with_exit_6(scene, reference, tiny_weights, tmp_path):
    """Issue 21, point 6: the store stops answering the lease's renewals (chunk writes still land, slowly): once
    the lease is about to expire the run stops writing, says so in one line and exits 6 (before the fix the
    failed renewals were swallowed and the run wrote on past its lease, exit 0); the same command then resumes
    to the uninterrupted cube's bits. At 1 and 4 reader threads."""
    runs, outs = [], []
    for threads in (1, 4):
        out = tmp_path / f"lease{threads}.zarr"
        argv = ["embed", str(scene), "-o", str(out), *tiny_args(tiny_weights, threads)]
        runs += [{"argv": argv, "fault": {"slow": 0.1, "lease": {"ttl": 0.8, "renew": "unreachable"}}},
                 {"argv": argv}]
        outs.append(out)
    rc, results, err = run_children(runs, tmp_path)
    assert rc == 0, err[-2000:]
    for k, out in enumerate(outs):
        faulty, resumed = results[2 * k], results[2 * k + 1]
        lines = error_lines(faulty["stderr"])
        assert faulty["rc"] == 6 and len(lines) == 1, faulty
        assert "output store unreachable while holding the lease of the cube" in lines[0] and str(out) in lines[0]
        assert "rerun the same command to resume" in lines[0] and "Traceback" not in "".join(faulty["stderr"])
        assert resumed["rc"] == 0, resumed
        assert status_of(out) == "complete"
        assert_bit_identical(reference, out)
