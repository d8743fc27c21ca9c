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
    assert impls == {"geodino eager", "timm eager"}
    from geodino.models import flops_per_image, get_config

    arch = get_config("dinov3-vits16-lvd1689m").arch.replace(depth=2, embed_dim=64, num_heads=2)
    for row in res["c"]:  # the table's TFLOP/s and MFU follow from the measured rate and the model's FLOPs
        want = row["tiles_per_s"] * flops_per_image(arch, row["size"], row["size"]) / 1e12
        assert abs(row["tflops"] - want) <= 1e-6 * max(want, 1e-9)
        assert abs(row["mfu"] - row["tflops"] / res["cpu_fp32_matmul_tflops"]) <= 1e-9
    e2e = res["c_end_to_end"]
    assert e2e["tiles"] == 16 and e2e["seconds"] > 0  # 512² at tile 128: 4 x 4 tiles


def test_bench_memory_smoke(tmp_path):
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_memory.py"), "--sizes", "300", "700",
                        "--tile", "128", "--halo", "16", "--workdir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr  # exit 0 only when the peak RSS spread is <= 10 %
    res = json.loads(out.read_text())
    assert [row["tiles_total"] for row in res["rows"]] == [9, 36]  # ceil(300/128)², ceil(700/128)²
    assert all(row["status"] == "complete" for row in res["rows"]) and res["rss_spread"] <= 0.10


def test_bench_index_smoke(tmp_path):
    import importlib.util

    libs = ["faiss"] + [lib for lib in ("usearch", "hnswlib") if importlib.util.find_spec(lib)]
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_index.py"), "--n", "3000", "--queries", "20",
                        "--kinds", "i8x64", "--libs", *libs, "--workdir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["lib"] for row in rows] == libs and all("error" not in row for row in rows), rows
    assert all(row["chosen"]["recall"] >= 0.9 and row["bytes_per_vector"] > 0 for row in rows)
    assert "| i8x64 | faiss |" in r.stdout


def test_bench_analysis_smoke(tmp_path):
    out = tmp_path / "analysis.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_analysis.py"), "--sizes", "300", "700",
                        "--dim", "16", "--ops", "similarity", "cog", "--workdir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert "peak RSS spread across sizes" in r.stdout, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["op"], row["patches"]) for row in rows] == [("similarity", 19), ("cog", 19), ("similarity", 44),
                                                             ("cog", 44)]
    assert all(row["peak_rss_mib"] > 0 for row in rows) and (tmp_path / "out_700" / "pca_rgb.tif").is_file()


def test_bench_metrics_smoke(tmp_path):
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_metrics.py"), "--mask", "64", "--items", "50",
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert {row["impl"] for row in rows} >= {"np.bincount (geodino)", "sklearn.metrics.f1_score"}
