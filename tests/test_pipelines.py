"""The benchmark scripts run (smoke sizes only: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_cpu.py"), "--smoke", "--workdir",
                        str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    from geodino.models import flops_per_image, get_config

    arch = get_config("dinov3-vits16-lvd1689m").arch.replace(depth=2, embed_dim=64, num_heads=2)
    impls = {row["impl"] for row in res["rows"]}
    assert {"timm fp32 eager", "timm bf16 weights", "geodino model only (eager)",
            "geodino embed end to end (halo 0, blend 0)"} <= impls
    for row in res["rows"]:  # TFLOP/s, MFU and km²/h follow from the measured rate, the FLOPs and the ceiling
        want = row["tiles_per_s"] * flops_per_image(arch, row["window"], row["window"]) / 1e12
        assert abs(row["tflops"] - want) <= 1e-6 * max(want, 1e-9)
        ceiling = res["ceiling_tflops"]["bf16" if row["precision"] in ("bf16", "int8") else "fp32"]
        assert abs(row["mfu"] - row["tflops"] / ceiling) <= 1e-9
        if row["km2_per_hour_10m"] is not None:
            assert abs(row["km2_per_hour_10m"] - row["tiles_per_s"] * (row["core"] / 100) ** 2 * 3600) < 1e-6
    e2e = [row for row in res["rows"] if row["impl"].startswith("geodino embed")]
    assert [row["tiles"] for row in e2e] == [9, 9]  # a 192² scene in 64-px tiles
    assert res["fidelity"]["dinov3-vits16-lvd1689m"]["bf16_vs_fp32_cos_p1"] > 0.99


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


def test_bench_embed_runs_without_a_gpu(tmp_path):
    import torch

    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_embed.py"), "--smoke", "--workdir",
                        str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    if not torch.cuda.is_available():
        assert res["a"] == res["b"] == [] and "no CUDA GPU" in res["notes"][0]


def test_bench_store_smoke():
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_store.py"), "--size", "1024", "--dim", "8",
                        "--reads", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| one object") or line.startswith("| sharded")]
    assert len(rows) == 2
    plain, sharded = (int(row.split("|")[3]) for row in rows)
    assert sharded < plain


def test_bench_predict_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_predict.py"), "--sizes", "300", "600",
                        "--time-size", "600", "--heads", "logreg", "--dim", "16", "--workdir", str(tmp_path),
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr  # exit 0 only when the predict peak RSS spread is <= 10 %
    res = json.loads(out.read_text())
    assert [row["op"] for row in res["rows"]] == ["predict", "predict", "train+predict"]
    assert [row["chunks"] for row in res["rows"][:2]] == [1, 4]  # 19² and 38² patches in 32-patch chunks
    assert res["rows"][2]["map_accuracy"] > 0.8 and res["rss_spread"] <= 0.10
