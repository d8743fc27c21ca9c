"""Environment faults (issue 17, point 3): a full disk, permission denied and an unreachable store, injected at
the store's write (zarr's local-store ``_put``, see ``tests/faults/child.py``) at a seeded random chunk write,
at 1 and 4 reader threads. Each run ends with one line saying what happened, where, and that rerunning resumes,
with its own exit code; the same command then resumes to a cube bit-identical to an uninterrupted run.

The faults are injected by patching the write rather than by filling a real filesystem: a small tmpfs needs root
and mount rights, which CI runners and containers seldom grant.
"""

from __future__ import annotations

import random
from pathlib import Path

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
            out.append((name, code, rc, words, threads, rng.randint(3, 40)))
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
