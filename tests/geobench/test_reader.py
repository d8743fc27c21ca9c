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
from tests.geobench.synth import OFFICIAL_CLASSES, geobench_modules, write_task


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
    with pytest.raises(DatasetError, match="no .*0.05x_train_partition.json"):
        t.split("train", "0.05x_train")
    (d / "test_0000.hdf5").unlink()
    with pytest.raises(DatasetError, match="m-eurosat: sample file .*test_0000.hdf5 is missing"):
        t.load_sample("test_0000")
    with pytest.raises(DatasetError, match="has no band 'swir'"):
        t.find_band(t.load_sample("train_0000"), "swir")
    (d / "band_stats.json").unlink()
    with pytest.raises(DatasetError, match="band_stats.json is missing"):
        GeoBenchTask(root, "m-eurosat")
    (d / "default_partition.json").unlink()
    (d / "task_specs.pkl").unlink()
    with pytest.raises(DatasetError, match="task_specs.pkl is missing"):
        GeoBenchTask(root, "m-eurosat")
    with pytest.raises(DatasetError, match="unknown GEO-Bench task"):
        GeoBenchTask(root, "m-nope")
    s = root / "segmentation_v1.0" / "m-chesapeake"
    (s / "default_partition.json").write_text("{")
    with pytest.raises(DatasetError, match="m-chesapeake: .*default_partition.json is not valid JSON"):
        GeoBenchTask(root, "m-chesapeake").split("train")  # a broken partition file is refused when used


@pytest.mark.parametrize("module", sorted(OFFICIAL_CLASSES))
def test_every_class_the_official_package_pickles_loads_under_each_module_path(module):
    prefix = module.rsplit(".", 1)[0]
    with geobench_modules(prefix) as mods:
        classes = {n: getattr(mods[module.rsplit(".", 1)[1]], n) for n in OFFICIAL_CLASSES[module]}
        blobs = {(n, proto): (pickle.dumps(c(name=f"a {n}", n_classes=3), protocol=proto),
                              pickle.dumps(c, protocol=proto))
                 for n, c in classes.items() for proto in (2, 3, 4, 5)}
    assert prefix.split(".")[0] not in sys.modules  # read back without any geobench/ccb module
    for (n, proto), (instance, cls_ref) in blobs.items():
        obj = safe_loads(instance, "x")
        assert obj.kind == n and obj.name == f"a {n}" and obj.n_classes == 3, (module, n, proto)
        standin = safe_loads(cls_ref, "x")
        assert isinstance(standin, type) and standin._geobench_class == n and isinstance(obj, standin)


def test_task_specs_of_old_converters_and_of_the_current_layout(bench):
    old = (bench / "classification_v1.0" / "m-brick-kiln" / "task_specs.pkl").read_bytes()
    assert b"ccb.io.task" in old and b"Accuracy" in old  # the class itself, as a global reference
    with pytest.raises(ModuleNotFoundError, match="ccb"):
        pickle.loads(old)  # what plain pickle does without the geobench package (GEO-Bench issue #14)
    bk = GeoBenchTask(bench, "m-brick-kiln")
    assert isinstance(bk.specs.eval_loss, type) and bk.specs.eval_loss._geobench_class == "Accuracy"
    assert [m.kind for m in bk.specs.eval_metrics] == ["Accuracy"] and bk.n_classes == 2
    nt = GeoBenchTask(bench, "m-NeonTree")  # geobench.io.task, eval_loss an instance
    assert nt.specs.eval_loss.kind == "SegmentationAccuracy" and b"geobench.io.task" in nt.specs_path.read_bytes()
    cur = GeoBenchTask(bench, "m-eurosat")  # today's geobench.task layout: no eval_loss at all
    assert not hasattr(cur.specs, "eval_loss") and b"geobench.task" in cur.specs_path.read_bytes()


def test_anything_else_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    with geobench_modules("ccb.io") as m:
        ok = m["task"].TaskSpecifications(eval_loss=m["task"].Accuracy, label=_Evil(str(marker)))
        mixed = pickle.dumps(ok, protocol=4)  # an allowed class first, a forbidden global inside
    assert b"ccb.io.task" in mixed
    with pytest.raises(UnsafePickleError, match="pathlib.Path.touch"):
        safe_loads(mixed, "x")
    assert not marker.exists()
    # official classes under a module that never defined them, a class geobench never pickles, a module global
    for module, name in (("geobench.task", "Sentinel2"), ("geobench.dataset", "GeobenchDataset"),
                         ("ccb.io.task", "pickle"), ("geobench.label", "os"), ("ccb.dataset.io", "BandInfo")):
        with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
            safe_loads(f"c{module}\n{name}\n.".encode(), "x")
    # a stand-in cannot be made to call anything: constructing one with arguments is an unreadable pickle
    with pytest.raises(DatasetError, match="not a readable GEO-Bench pickle"):
        safe_loads(b"cgeobench.task\nAccuracy\n(S'rm -rf /'\ntR.", "x")
