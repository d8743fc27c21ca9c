"""Reading GEO-Bench's on-disk format without the geobench package, and refusing what it must refuse."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from geodino.errors import DatasetError
from geodino.geobench import GeoBenchTask, InputPrep, benchmark_root, find_tasks
from geodino.geobench.pickles import PickledCRS, UnsafePickleError, safe_loads
from tests.geobench.synth import write_task


def test_all_tasks_found_and_described(bench):
    found = {info.name: d for info, d in find_tasks(bench)}
    assert set(found) == {"m-eurosat", "m-brick-kiln", "m-forestnet", "m-bigearthnet", "m-chesapeake", "m-NeonTree"}
    assert "geobench" not in sys.modules and "ccb" not in sys.modules  # read without the package
    t = GeoBenchTask(bench, "m-eurosat")
    assert t.describe()["train"] == 24 and t.n_classes == 4 and t.kind == "classification"
    assert t.specs.kind == "TaskSpecifications" and t.bands_info[3].alt_names == ("4", "04", "red")


def test_samples_labels_and_pickled_objects(bench):
    t = GeoBenchTask(bench, "m-eurosat")
    s = t.load_sample(t.split("train")[0])
    assert isinstance(s.label, int) and s.bands["04 - Red"].dtype == np.int16
    ml = GeoBenchTask(bench, "m-bigearthnet").load_sample("train_0000")
    assert ml.label.shape == (43,) and set(np.unique(ml.label)) <= {0, 1}
    seg = GeoBenchTask(bench, "m-chesapeake").load_sample("test_0001")
    assert seg.label.shape == (32, 32) and seg.label.max() < 7
    import h5py
    from geodino.geobench.pickles import load_attrs_pickle

    with h5py.File(bench / "classification_v1.0" / "m-eurosat" / "train_0000.hdf5") as fp:
        attrs = load_attrs_pickle(fp.attrs["pickle"], "x")
    band = attrs["04 - Red"]
    assert isinstance(band["crs"], PickledCRS) and "32633" in (band["crs"].wkt or str(band["crs"].state))
    assert band["transform"].a == 10


def test_rgb_by_name_dated_keys_old_class_paths_and_other_shapes(bench):
    prep = InputPrep()
    fn = GeoBenchTask(bench, "m-forestnet")  # dated keys "04 - Red_2018-05-03"
    s = fn.load_sample("valid_0000")
    assert fn.find_band(s, "red") == "04 - Red_2018-05-03"
    assert prep.image(fn, s).shape == (3, 32, 32)
    bk = GeoBenchTask(bench, "m-brick-kiln")  # written with ccb.io.* class paths, float bands
    img = prep.image(bk, bk.load_sample("train_0001"))
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    nt = GeoBenchTask(bench, "m-NeonTree")  # geobench.io.* paths; 4x4 canopy and 4x4x5 hyperspectral bands
    s = nt.load_sample("train_0000")
    assert s.bands["Hyperspectral"].shape == (4, 4, 5) and prep.image(nt, s).shape == (3, 32, 32)


def test_minmax_stretch_uses_band_stats(bench):
    t = GeoBenchTask(bench, "m-eurosat")
    s = t.load_sample("train_0003")
    st = t.band_stats["04 - Red"]
    raw = s.bands["04 - Red"].astype(np.float64)
    expect = np.round(np.clip((raw - st["min"]) / (st["max"] - st["min"]), 0, 1) * 255) / 255
    np.testing.assert_allclose(InputPrep().image(t, s)[0], expect, atol=1e-6)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_that_would_run_code_is_rejected_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)), protocol=4)
    pickle.loads(evil)  # sanity: unpickling it for real runs code
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError, match="pathlib.Path.touch|not on geodino's allow-list"):
        safe_loads(evil, "x")
    write_task(tmp_path, "m-eurosat", "classification", n_classes=2, n_train=2, n_valid=2, n_test=2,
               evil_specs=evil)
    with pytest.raises(UnsafePickleError, match="task_specs.pkl"):
        GeoBenchTask(tmp_path, "m-eurosat")
    assert not marker.exists()
    # and in a sample's attrs
    write_task(tmp_path, "m-pv4ger", "classification", n_classes=2, n_train=2, n_valid=2, n_test=2)
    import h5py

    with h5py.File(tmp_path / "classification_v1.0" / "m-pv4ger" / "train_0000.hdf5", "a") as fp:
        fp.attrs["pickle"] = str(pickle.dumps({"label": _Evil(str(marker))}))
    t = GeoBenchTask(tmp_path, "m-pv4ger")
    with pytest.raises(UnsafePickleError):
        t.load_sample("train_0000")
    assert not marker.exists()
    for payload in (pickle.dumps(eval), b"cos\nsystem\n(S'true'\ntR."):
        with pytest.raises(UnsafePickleError):
            safe_loads(payload)


def test_missing_files_partitions_and_bands(tmp_path, bench, monkeypatch):
    monkeypatch.delenv("GEO_BENCH_DIR", raising=False)
    with pytest.raises(DatasetError, match="GEO_BENCH_DIR"):
        benchmark_root(None)
    monkeypatch.setenv("GEO_BENCH_DIR", str(bench))
    assert benchmark_root(None) == bench
    with pytest.raises(DatasetError, match="neither"):
        benchmark_root(tmp_path)
    root = tmp_path / "copy"
    shutil.copytree(bench, root)
    d = root / "classification_v1.0" / "m-eurosat"
    t = GeoBenchTask(root, "m-eurosat")
    with pytest.raises(DatasetError, match="no partition '0.05x_train'"):
        t.split("train", "0.05x_train")
    (d / "test_0000.hdf5").unlink()
    with pytest.raises(DatasetError, match="sample test_0000 of m-eurosat is missing"):
        t.load_sample("test_0000")
    with pytest.raises(DatasetError, match="has no band 'swir'"):
        t.find_band(t.load_sample("train_0000"), "swir")
    (d / "band_stats.json").unlink()
    with pytest.raises(DatasetError, match="no band_stats.json"):
        GeoBenchTask(root, "m-eurosat")
    (d / "default_partition.json").unlink()
    (d / "task_specs.pkl").unlink()
    with pytest.raises(DatasetError, match="no task_specs.pkl"):
        GeoBenchTask(root, "m-eurosat")
    with pytest.raises(DatasetError, match="unknown GEO-Bench task"):
        GeoBenchTask(root, "m-nope")
    s = root / "segmentation_v1.0" / "m-chesapeake"
    (s / "default_partition.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        GeoBenchTask(root, "m-chesapeake")
