"""pipelines/bench_canopy.py runs (smoke sizes only: no figure or timing is asserted but the table's shape)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_canopy_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_canopy.py"), "--smoke", "--workdir",
                        str(tmp_path), "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "seams on heights" in r.stdout and "peak RSS" in r.stdout and "canopy tiles/s" in r.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["seams"]) == 2 and all(row["pairs"] > 0 for row in out["seams"])
    assert len(out["memory"]) == 1 and out["speed"]["canopy_tiles_per_s"] > 0
