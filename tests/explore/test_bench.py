"""pipelines/bench_explore.py runs end to end on a tiny cube (the real figures come from its full run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.explore.conftest import REPO


def test_bench_explore_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_explore.py"), "--sizes", "64", "--queries", "3",
                        "--recall", "1", "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| valid patches | start-up s |" in r.stdout and "CPU:" in r.stdout
    [row] = json.loads((tmp_path / "out.json").read_text())
    assert row["valid_patches"] > 3900 and row["queries"] == 3 and row["recall_at_100"] > 0.9
    assert row["rss_peak_mib"] > 0 and row["tile_p95_ms"] > 0
