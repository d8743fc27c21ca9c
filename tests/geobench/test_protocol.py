"""End-to-end GEO-Bench runs on synthetic tasks: heads must learn labels that depend on the image content."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from geodino.geobench import GeoBenchTask, InputPrep, extract_features, markdown_table, run_geobench
from geodino.models import load_backbone
from tests.geobench.conftest import FAST, MODEL, TINY


@pytest.fixture(scope="module")
def results(bench, gb_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    res = run_geobench(["m-eurosat", "m-brick-kiln", "m-forestnet", "m-bigearthnet", "m-chesapeake", "m-NeonTree"],
                       MODEL, gb_weights, benchmark_dir=bench, arch=TINY, overrides=FAST,
                       cache_dir=tmp_path_factory.mktemp("cache"), out_dir=out, device="cpu")
    return res, out


def test_classification_heads_learn(results):
    res, _ = results
    t = res["tasks"]
    for name, chance in (("m-eurosat", 25.0), ("m-brick-kiln", 50.0), ("m-forestnet", 33.3)):
        assert t[name]["results"]["logreg"]["value"] >= max(85.0, chance + 40), (name, t[name]["results"])
        assert t[name]["results"]["knn5"]["value"] >= chance + 30
        # the bootstrap CI of an accuracy against the binomial normal approximation 1.96 sqrt(p(1-p)/n)
        lo, hi = t[name]["results"]["logreg"]["ci"]
        p, n = t[name]["results"]["logreg"]["value"] / 100, t[name]["sizes"]["test"]
        half = 100 * 1.96 * np.sqrt(p * (1 - p) / n)
        assert abs((hi - lo) / 2 - half) <= 0.35 * half + 100 / n, (name, lo, hi, half)
    assert t["m-eurosat"]["results"]["logreg"]["C"] > 0


def test_multilabel_f1_and_map(results):
    r = results[0]["tasks"]["m-bigearthnet"]["results"]["logreg"]
    assert r["metric"] == "f1_micro" and r["value"] >= 60.0 and r["mAP"] >= 70.0


def test_segmentation_heads_learn(results):
    t = results[0]["tasks"]
    ches = t["m-chesapeake"]
    assert ches["results"]["linear"]["value"] >= 60.0 and ches["results"]["dpt"]["value"] >= 60.0  # chance ~8
    assert ches["results"]["dpt"]["excluded_classes"] == [6] and ches["results"]["dpt"]["ignore_index"] == 6
    assert t["m-NeonTree"]["results"]["linear"]["value"] >= 75.0
    assert ches["layers"] == [0, 1]


def test_results_files_and_table(results):
    res, out = results
    data = json.loads((out / "results.json").read_text())
    assert data["weights"]["sha256"] == res["weights"]["sha256"] and not data["random_weights"]
    assert data["tasks"]["m-eurosat"]["input"]["stats"] == ["min", "max"]
    assert data["aggregate"]["classification"]["tasks"] == 4 and "iqm" in data["aggregate"]["segmentation"]
    md = (out / "results.md").read_text()
    assert "| m-eurosat | logreg | accuracy |" in md and "model card" in md


def test_table_sets_metrics_beside_the_model_card(results):
    res = json.loads(json.dumps(results[0]))
    res["model"] = "dinov3-vitl16-sat493m"
    res["model_card_means"] = {"classification": 79.6, "segmentation": 74.5}
    res["tasks"]["m-eurosat"]["model_card"] = 94.1
    md = markdown_table(res)
    v = res["tasks"]["m-eurosat"]["results"]["logreg"]["value"]
    assert f"| 94.1 | {v - 94.1:+.1f} |" in md and "model card mean 79.6" in md


def _engine(weights, precision="fp32"):
    from geodino.engine import Engine, EngineSpec

    return Engine(EngineSpec(MODEL, weights, "cpu", precision, tuple(sorted(TINY.items()))))


def test_features_are_cached(bench, gb_weights, tmp_path, monkeypatch):
    task = GeoBenchTask(bench, "m-eurosat")
    eng = _engine(gb_weights)
    a = extract_features(task, "test", eng, InputPrep(), cache_dir=tmp_path)
    monkeypatch.setattr(eng, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    b = extract_features(task, "test", eng, InputPrep(), cache_dir=tmp_path)
    assert a.path == b.path and np.array_equal(a.cls, b.cls) and b.attrs["complete"]
    assert b.attrs["weights"]["sha256"] and b.attrs["prep"]["normalization"] == "model"
    assert b.attrs["radiometry"]["kind"] == "geobench" and b.attrs["radiometry"]["levels"] == 255
    c = extract_features(task, "test", _engine(gb_weights), InputPrep(size=64), cache_dir=tmp_path)
    assert c.path != a.path  # another input preparation is another cache entry
    d = extract_features(task, "test", _engine(gb_weights, "bf16"), InputPrep(), cache_dir=tmp_path)
    assert d.path != a.path and d.attrs["numerics"]["precision"] == "bf16"  # other numerics, another entry


@pytest.mark.parametrize("task_name,size", [("m-eurosat", "native"), ("m-NeonTree", 64), ("m-forestnet", "native")])
def test_engine_features_equal_the_protocol_computed_by_hand(bench, gb_weights, tmp_path, task_name, size):
    """The engine's geobench preset against the protocol in numpy (InputPrep.image: band_stats min-max, 255
    steps) followed by the resize, the normalisation and one forward pass of the same backbone, in fp32."""
    import torch

    task = GeoBenchTask(bench, task_name)
    prep = InputPrep(size=size)
    eng = _engine(gb_weights)
    seg = task.kind == "segmentation"
    layers = [0, 1] if seg else None
    fs = extract_features(task, "test", eng, prep, cache_dir=tmp_path, layers=layers)
    names = task.split("test")
    imgs = [prep.image(task, task.load_sample(n)) for n in names]
    x = prep.batch(imgs, *prep.mean_std(eng.cfg))
    model = load_backbone(MODEL, gb_weights, **TINY)
    with torch.no_grad():
        out = model.forward_features(x, layers=layers)
    np.testing.assert_allclose(fs.cls, out["cls"].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(fs.patch_mean, out["patches"].mean(dim=(1, 2)).numpy(), rtol=2e-3, atol=2e-3)
    if seg:
        np.testing.assert_allclose(fs.patches[...].astype(np.float32), torch.stack(out["layers"], 1).numpy(),
                                   rtol=3e-3, atol=3e-3)


def test_train_fraction_partitions_seeds_and_progress(bench, gb_weights, tmp_path):
    seen, done = {}, []
    res = run_geobench(["m-eurosat", "m-NeonTree"], MODEL, gb_weights, benchmark_dir=bench, arch=TINY,
                       overrides=FAST, partition="0.10x_train", seeds=[0, 1], cache_dir=tmp_path / "c",
                       out_dir=tmp_path / "o", device="cpu",
                       progress=lambda t, stage, d, n: seen.__setitem__((t, stage), (d, n)),
                       on_task=lambda name, rec: done.append((name, rec["status"], rec["wall_s"])))
    assert res["tasks"]["m-eurosat"]["sizes"]["train"] == 2 and res["tasks"]["m-eurosat"]["partition"] == "0.10x_train"
    seg = res["tasks"]["m-NeonTree"]["results"]["linear"]
    assert len(seg["seeds"]) == 2 and seg["value"] == pytest.approx(np.mean(seg["seeds"]))
    # every stage reported its progress up to its total: features, the C sweep, each head, seed and test pass
    assert seen[("m-eurosat", "features train")] == (2, 2) and seen[("m-eurosat", "features test")] == (12, 12)
    assert seen[("m-eurosat", "logreg (8 C)")] == (1, 1)
    assert seen[("m-NeonTree", "linear lr=0.01 seed 1")] == (150, 150)
    assert seen[("m-NeonTree", "dpt seed 0 test")] == (12, 12)
    assert [(n, s) for n, s, _ in done] == [("m-eurosat", "ok"), ("m-NeonTree", "ok")]
    w = done[1][2]
    assert w["total"] >= w["features"] + w["heads"] - 1e-3 and w["heads"] > 0
    assert res["status"] == "complete" and not res["failed"]


def test_cli_list_and_run_with_random_weights(bench, tmp_path):
    r = subprocess.run([sys.executable, "-m", "geodino", "geobench", "list", "--benchmark-dir", str(bench), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["task"]: row for row in json.loads(r.stdout)}
    assert rows["m-bigearthnet"]["classes"] == 43 and rows["m-chesapeake"]["test"] == 12
    r = subprocess.run([sys.executable, "-m", "geodino", "geobench", "list", "--benchmark-dir", str(bench)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0 and "m-bigearthnet" in r.stdout, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout  # the table fits 80 columns
    args = [sys.executable, "-m", "geodino", "geobench", "run", "--tasks", "m-eurosat,m-chesapeake", "--model", MODEL,
            "--weights", "random", *[f"--arch={k}={v}" for k, v in TINY.items()], "--benchmark-dir", str(bench),
            "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "out"), "--device", "cpu",
            "--set", "segmentation.iterations=20", "--set", "segmentation.input_size=32",
            "--set", "classification.logreg.c_num=3", "--set", "classification.logreg.n_jobs=1",
            "--set", "evaluation.bootstrap=50",
            "--set", "segmentation.dpt_features=16"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "MEANINGLESS" in r.stderr and "| m-eurosat | logreg |" in r.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["random_weights"] is True and data["weights"]["sha256"] == "random-init"
    assert "Random weights" in (tmp_path / "out" / "results.md").read_text()
    r = subprocess.run([*args, "--protocol", "knn,linear", "-o", str(tmp_path / "out2")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert set(data["tasks"]["m-eurosat"]["results"]) == {"knn5", "knn20"}
    assert set(data["tasks"]["m-chesapeake"]["results"]) == {"linear"}
    r = subprocess.run([*args[:-2], "--set", "bogus.key=1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown protocol key 'bogus'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "geodino", "geobench", "list", "--benchmark-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "neither" in r.stderr


@pytest.mark.parametrize("unset", [None, 0])
def test_a_segmentation_input_size_left_unset_is_the_input_size(bench, gb_weights, tmp_path, unset):
    """``segmentation.input_size`` null (``--set segmentation.input_size=null``) or 0 falls back to ``input.size``,
    as it always did; it once became an internal error (``int(None)``) or a refusal of size 0."""
    over = {**FAST, "input": {"size": 32}, "segmentation": {**FAST["segmentation"], "input_size": unset,
                                                            "iterations": 5}}
    res = run_geobench(["m-NeonTree"], MODEL, gb_weights, benchmark_dir=bench, arch=TINY, overrides=over,
                       cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", device="cpu")
    task = res["tasks"]["m-NeonTree"]
    assert task["status"] == "ok", task
    assert task["input"]["size"] == 32
