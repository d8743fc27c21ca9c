"""Broken and degenerate GEO-Bench tasks through the CLI: one line each (task, file, what to do), never an
internal error, the readable tasks still run, and ``run --tasks all`` exits 2 at the end.

One benchmark root holds all 12 task names, each with one corruption from the table below (two stay intact), so
that a single ``list`` and a single ``run --tasks all`` cover the table.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.geobench.conftest import MODEL, TINY
from tests.geobench.synth import write_task

SMALL = {"n_train": 6, "n_valid": 4, "n_test": 4}


def _partition(d: Path, **splits):
    parts = json.loads((d / "default_partition.json").read_text())
    parts.update(splits)
    (d / "default_partition.json").write_text(json.dumps(parts))


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_sample(d: Path):
    import h5py

    with h5py.File(d / "train_0000.hdf5", "a") as fp:
        fp.attrs["pickle"] = str(pickle.dumps({"label": _Touch(str(d / "pwned"))}))


# case: (task, how it is written and broken, list status, run status, fragments of its one line)
CASES = {
    "single-class train split": (
        "m-eurosat", lambda root: write_task(root, "m-eurosat", "classification", n_classes=3, seed=1,
                                             labels=lambda split, i: 1 if split == "train" else i % 3, **SMALL),
        "ok", "partial", ["logistic regression is not applicable", "default_partition.json",
                          "holds a single class (1)", "at least 2 classes (kNN ran)"]),
    "empty valid split": (
        "m-brick-kiln", lambda root: _partition(write_task(root, "m-brick-kiln", "classification", n_classes=2,
                                                           seed=2, **SMALL), valid=[]),
        "ok", "partial", ["logistic regression is not applicable", "the valid split of",
                          "default_partition.json is empty", "use a partition with a valid split"]),
    "empty train split": (
        "m-so2sat", lambda root: _partition(write_task(root, "m-so2sat", "classification", n_classes=3, seed=3,
                                                       **SMALL), train=[]),
        "ok", "failed", ["every protocol is not applicable: the train split of", "default_partition.json is empty",
                         "--partition default"]),
    "missing partition file": (
        "m-forestnet", lambda root: (write_task(root, "m-forestnet", "classification", n_classes=3, seed=4, **SMALL)
                                     / "default_partition.json").unlink(),
        "error", "failed", ["default_partition.json is missing", "download the task again"]),
    "unparsable partition file": (
        "m-pv4ger", lambda root: (write_task(root, "m-pv4ger", "classification", n_classes=2, seed=5, **SMALL)
                                  / "default_partition.json").write_text('{"train": ["train_0000",'),
        "error", "failed", ["default_partition.json is not valid JSON", "download the task again"]),
    "band the protocol asks for is missing": (
        "m-bigearthnet", lambda root: write_task(root, "m-bigearthnet", "multilabel", n_classes=43, seed=6,
                                                 drop_bands=("02 - Blue",), **SMALL),
        "error", "failed", ["asks for band 'blue'", "task_specs.pkl does not list",
                            "set input.bands in configs/geobench/m-bigearthnet.yaml"]),
    "truncated sample file": (
        "m-chesapeake", lambda root: (write_task(root, "m-chesapeake", "segmentation", n_classes=7, dtype="uint8",
                                                 scale=255, seed=7, **SMALL)
                                      / "test_0001.hdf5").write_bytes(b"\x89HDF"),
        "ok", "failed", ["cannot read sample file", "test_0001.hdf5", "not a readable HDF5 file",
                         "download the task again", "remove 'test_0001' from the partition file"]),
    "missing sample file": (
        "m-cashew-plant", lambda root: (write_task(root, "m-cashew-plant", "segmentation", n_classes=3,
                                                   dtype="uint8", scale=255, seed=8, **SMALL)
                                        / "valid_0002.hdf5").unlink(),
        "error", "failed", ["1 sample file(s) listed in", "default_partition.json are missing", "valid_0002.hdf5",
                            "download the task again"]),
    "sample pickle naming a foreign global": (
        "m-pv4ger-seg", lambda root: _evil_sample(write_task(root, "m-pv4ger-seg", "segmentation", n_classes=2,
                                                             dtype="uint8", scale=255, seed=9, **SMALL)),
        "error", "failed", ["cannot read sample file", "train_0000.hdf5", "pathlib.Path.touch",
                            "not on geodino's allow-list"]),
    "unreadable task_specs.pkl": (
        "m-SA-crop-type", lambda root: (write_task(root, "m-SA-crop-type", "segmentation", n_classes=3,
                                                   dtype="uint8", scale=255, seed=10, **SMALL)
                                        / "task_specs.pkl").write_bytes(b"\x80\x04\x95garbage"),
        "error", "failed", ["task_specs.pkl is not a readable GEO-Bench pickle"]),
    "intact, current layout": (
        "m-NeonTree", lambda root: write_task(root, "m-NeonTree", "segmentation", n_classes=2, dtype="uint8",
                                              scale=255, seed=11, **SMALL),
        "ok", "ok", []),
    "intact, old ccb.io layout with eval_loss = Accuracy class": (
        "m-nz-cattle", lambda root: write_task(root, "m-nz-cattle", "segmentation", n_classes=2, dtype="uint8",
                                               scale=255, prefix="ccb.io", eval_loss="class", seed=12, **SMALL),
        "ok", "ok", []),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    for _, make, *_ in CASES.values():
        make(root)
    (root / "classification_v1.0" / "m-foo").mkdir()  # a folder that is no GEO-Bench task
    env_py = [sys.executable, "-m", "geodino", "geobench"]
    listing = subprocess.run([*env_py, "list", "--benchmark-dir", str(root), "--json"], capture_output=True,
                             text=True, timeout=300)
    out = tmp_path_factory.mktemp("out")
    run = subprocess.run([*env_py, "run", "--tasks", "all", "--budget", "quick", "--model", MODEL,
                          "--weights", "random", *[f"--arch={k}={v}" for k, v in TINY.items()],
                          "--benchmark-dir", str(root), "--cache-dir", str(out / "cache"), "-o", str(out / "res"),
                          "--device", "cpu", "--set", "segmentation.iterations=4",
                          "--set", "segmentation.input_size=32",
                          "--set", "segmentation.batch_size=4", "--set", "classification.logreg.c_num=2",
                          "--set", "classification.logreg.n_jobs=1", "--set", "evaluation.bootstrap=20"],
                         capture_output=True, text=True, timeout=600)
    return root, listing, run, out / "res"


def test_list_shows_every_folder_with_its_status(broken):
    root, listing, _, _ = broken
    assert listing.returncode == 0, listing.stderr
    rows = {r["task"]: r for r in json.loads(listing.stdout)}
    assert set(rows) == {task for task, *_ in CASES.values()} | {"m-foo"}
    assert rows["m-foo"]["status"] == "error" and "not a GEO-Bench v1 task name" in rows["m-foo"]["reason"]
    for case, (task, _, list_status, _, fragments) in CASES.items():
        assert rows[task]["status"] == list_status, (case, rows[task])
        if list_status == "error":
            reason = rows[task]["reason"]
            assert reason.startswith(f"{task}: ") and "\n" not in reason, (case, reason)
            assert all(f in reason for f in fragments[:2]), (case, reason)
    assert rows["m-NeonTree"]["train"] == 6 and rows["m-nz-cattle"]["classes"] == 2


@pytest.mark.parametrize("case", list(CASES))
def test_run_reports_each_corruption_in_one_line(broken, case):
    _, _, run, res = broken
    task, _, _, run_status, fragments = CASES[case]
    assert run.returncode == 2, run.stderr[-3000:]
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith(f"geodino: error: {task}: ")]
    data = json.loads((res / "results.json").read_text())
    rec = data["tasks"][task]
    assert rec["status"] == run_status, (case, rec.get("problems"))
    if run_status == "ok":
        assert not lines and not rec["problems"] and rec["primary"]["value"] >= 0
        return
    assert len(lines) >= 1, (case, run.stderr[-3000:])
    assert all(f in lines[0] for f in fragments), (case, lines[0])
    assert rec["problems"][0] in lines[0] and task in data["failed"]
    assert rec["problems"][0] in (res / "results.md").read_text()


def test_the_readable_tasks_ran_and_the_run_says_it_is_incomplete(broken):
    root, _, run, res = broken
    data = json.loads((res / "results.json").read_text())
    assert data["status"] == "incomplete" and data["budget"] == "quick" and data["finished"]
    assert set(data["failed"]) == {t for t, _, _, s, _ in CASES.values() if s != "ok"}
    eurosat = data["tasks"]["m-eurosat"]["results"]
    assert eurosat["logreg"]["status"] == "not applicable" and {"knn5", "knn20"} <= set(eurosat)
    assert set(data["tasks"]["m-NeonTree"]["results"]) == {"linear"}  # the quick budget has no DPT head
    for name, rec in data["tasks"].items():
        assert rec["wall_s"]["total"] >= 0 and (rec["status"] == "failed" or rec["wall_s"]["features"] > 0), name
        assert f"{name}: " in run.stderr  # the per-task line with its wall time
    assert "m-NeonTree: ok in" in run.stderr and data["tasks"]["m-NeonTree"]["wall_s"]["heads"] > 0
    md = (res / "results.md").read_text()
    assert "## Problems" in md and "Budget `quick`" in md and "| m-eurosat | logreg | n/a |" in md
    assert data["aggregate"]["segmentation"]["tasks"] == 2
    assert not (root / "segmentation_v1.0" / "m-pv4ger-seg" / "pwned").exists()  # the pickle never ran
