"""The benchmark scripts run (smoke sizes only: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_embed_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_embed.py"), "--parts", "a", "b", "c",
                        "--smoke", "--workdir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    impls = {row["impl"] for row in res["c"]}
    assert impls == {"geodino eager", "timm eager"} and all(row["tiles_per_s"] > 0 for row in res["c"])
    assert res["c_end_to_end"]["tiles"] == 16 and "(c) CPU" in r.stdout


def test_bench_memory_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_memory.py"), "--sizes", "300", "700",
                        "--tile", "128", "--halo", "16", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert "peak RSS spread across sizes" in r.stdout, r.stderr


def test_bench_metrics_smoke(tmp_path):
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_metrics.py"), "--mask", "64", "--items", "50",
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert {row["impl"] for row in rows} >= {"np.bincount (geodino)", "sklearn.metrics.f1_score"}
