"""Synthetic GEO-Bench tasks written in the exact on-disk format of GEO-Bench v1.

The pickled objects carry the official class paths (``geobench.dataset.Sentinel2``, ``geobench.label.Classification``,
``geobench.task.TaskSpecifications`` and, for files of older versions, ``ccb.io.*``): stand-in modules are put in
``sys.modules`` only while writing, so reading proves geodino needs no ``geobench`` package. Labels are a function
of the image content (class colours), so heads must learn them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import pickle
import sys
import types
from pathlib import Path

import h5py
import numpy as np
from affine import Affine
from rasterio.crs import CRS

COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.2, 0.9], [0.85, 0.85, 0.1], [0.6, 0.1, 0.7],
                    [0.1, 0.7, 0.7], [0.5, 0.5, 0.5]])


# The classes each module of the official package defined for its pickles, over its history (ServiceNow/geo-bench:
# ccb/io/* 2022-01..2023-02, geobench/io/* 2023-02..2023-08, geobench/* since), written down here independently of
# geodino's allow-list so that a class missing there fails the tests.
BAND_INFOS = ["BandInfo", "SpectralBand", "Sentinel1", "Sentinel2", "Landsat8", "Mask", "ElevationBand", "MultiBand",
              "HyperSpectralBands", "CloudProbability", "SegmentationClasses", "Height", "Stats"]
LABEL_TYPES = ["LabelType", "Classification", "SemanticSegmentation", "MultiLabelClassification", "Regression",
               "Detection", "PointAnnotation"]
OFFICIAL_CLASSES = {
    "geobench.task": ["TaskSpecifications", "Accuracy", "SegmentationAccuracy", "MultilabelAccuracy"],
    "geobench.io.task": ["TaskSpecifications", "Loss", "Accuracy", "AccuracyTop30", "CrossEntropy",
                         "MultilabelAccuracy", "SegmentationAccuracy"],
    "ccb.io.task": ["TaskSpecifications", "Loss", "Accuracy", "AccuracyTop30", "CrossEntropy", "MultilabelAccuracy",
                    "SegmentationAccuracy", "Label", "LabelType", "Classification", "Regression", "Detection",
                    "PointAnnotation"],
    **{f"{p}.dataset": BAND_INFOS for p in ("geobench", "geobench.io", "ccb.io")},
    **{f"{p}.label": LABEL_TYPES for p in ("geobench", "geobench.io", "ccb.io")},
}
EVAL_LOSS = {"classification": "Accuracy", "multilabel": "MultilabelAccuracy", "segmentation": "SegmentationAccuracy"}


def _classes(module: str) -> dict:
    """Minimal copies of geobench's pickled classes, created inside ``module``."""

    def init(self, **kw):
        self.__dict__.update(kw)

    return {n: type(n, (), {"__init__": init, "__module__": module}) for n in OFFICIAL_CLASSES[module]}


@contextlib.contextmanager
def geobench_modules(prefix: str = "geobench"):
    """Temporarily importable ``<prefix>.dataset|label|task`` modules (prefix geobench, geobench.io or ccb.io)."""
    added = []
    parts = prefix.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    mods = {}
    for sub in ("dataset", "label", "task"):
        full = f"{prefix}.{sub}"
        m = types.ModuleType(full)
        for k, v in _classes(full).items():
            setattr(m, k, v)
        sys.modules[full] = m
        added.append(full)
        mods[sub] = m
    try:
        yield mods
    finally:
        for name in added:
            sys.modules.pop(name, None)


S2_NAMES = [("01 - Coastal aerosol", ("1", "01")), ("02 - Blue", ("2", "02", "blue")),
            ("03 - Green", ("3", "03", "green")), ("04 - Red", ("4", "04", "red")),
            ("05 - Vegetation Red Edge", ("5", "05")), ("08 - NIR", ("8", "08", "NIR"))]


def _stats(arrays: dict[str, list[np.ndarray]]) -> dict:
    out = {}
    for name, arrs in arrays.items():
        v = np.concatenate([a.ravel().astype(np.float64) for a in arrs])
        q = np.percentile(v, [0.1, 1, 5, 95, 99, 99.9])
        out[name] = {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "std": float(v.std()),
                     "median": float(np.median(v)), "percentile_0_1": q[0], "percentile_1": q[1],
                     "percentile_5": q[2], "percentile_95": q[3], "percentile_99": q[4], "percentile_99_9": q[5]}
    return out


def _image(rng, size, colour_map: np.ndarray) -> np.ndarray:
    """RGB 0..1 image from a per-pixel class map: the class colour plus texture noise."""
    img = COLOURS[colour_map].transpose(2, 0, 1)
    return np.clip(img + rng.normal(0, 0.08, (3, size, size)), 0, 1)


def write_task(root: Path, name: str, kind: str, *, n_classes: int, n_train=24, n_valid=12, n_test=12, size=32,
               dtype="int16", scale=3000.0, prefix="geobench", dated=False, multilabel_classes=5,
               extra_small_bands=False, evil_specs: bytes | None = None, eval_loss: str | None = None,
               labels=None, drop_bands: tuple[str, ...] = (), seed=0) -> Path:
    """One task folder: task_specs.pkl, <sample>.hdf5, partitions, band_stats.json, label_map/label_stats.

    ``eval_loss``: ``"class"`` sets ``eval_loss`` to the metric class itself and ``eval_metrics`` to a list of its
    instances, ``"instance"`` to an instance, as the converters of ccb.io / geobench.io did; ``None`` writes the
    current layout (no such field). ``labels``: a callable (split, index) -> class id overriding the random
    class of classification samples (for degenerate splits). ``drop_bands``: band names left out of the task.
    """
    folder = "segmentation_v1.0" if kind == "segmentation" else "classification_v1.0"
    d = root / folder / name
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {s: [f"{s}_{i:04d}" for i in range(n)] for s, n in (("train", n_train), ("valid", n_valid), ("test", n_test))}
    date = datetime.date(2018, 5, 3) if dated else None
    stats_arrays: dict[str, list] = {}
    with geobench_modules(prefix) as m:
        ds, lb, tk = m["dataset"], m["label"], m["task"]
        band_cls = ds.Landsat8 if dated else ds.Sentinel2
        infos = [band_cls(name=n, alt_names=a, spatial_resolution=10.0, wavelength=None) for n, a in S2_NAMES
                 if n not in drop_bands]
        extra = []
        if extra_small_bands:  # NeonTree-like: bands of other shapes
            extra = [ds.ElevationBand(name="Canopy Height Model", alt_names=(), spatial_resolution=1.0),
                     ds.HyperSpectralBands(name="Hyperspectral", alt_names=(), spatial_resolution=1.0, n_bands=5,
                                           wavelength_range=None)]
        if kind == "segmentation":
            label_type = ds.SegmentationClasses(name="label", spatial_resolution=10.0, n_classes=n_classes,
                                                _class_names=[f"class{i}" for i in range(n_classes)])
        elif kind == "multilabel":
            label_type = lb.MultiLabelClassification(n_classes=n_classes, class_name=[f"c{i}" for i in range(n_classes)])
        else:
            label_type = lb.Classification(n_classes=n_classes, _class_names=[f"c{i}" for i in range(n_classes)])
        old = {}
        if eval_loss is not None:
            metric = getattr(tk, EVAL_LOSS[kind])
            old = {"eval_loss": metric if eval_loss == "class" else metric(), "eval_metrics": [metric()],
                   "bands_stats": None}
        specs = tk.TaskSpecifications(dataset_name=name, benchmark_name=folder, patch_size=(size, size),
                                      n_time_steps=1, bands_info=infos + extra, label_type=label_type,
                                      spatial_resolution=10.0, **old)
        (d / "task_specs.pkl").write_bytes(evil_specs or pickle.dumps(specs, protocol=4))
        label_counts = np.zeros(n_classes)
        for split, samples in names.items():
            for i_sample, sname in enumerate(samples):
                if kind == "segmentation":
                    blocks = rng.integers(0, n_classes, (size // 16, size // 16))
                    cmap = np.kron(blocks, np.ones((16, 16), int))
                    label = cmap.astype(np.int64 if n_classes > 2 else np.uint8)
                    label_counts += np.bincount(cmap.ravel(), minlength=n_classes)
                elif kind == "multilabel":
                    active = rng.random(multilabel_classes) < 0.4
                    active[rng.integers(0, multilabel_classes)] = True
                    cls_ids = np.flatnonzero(active)
                    cmap = np.kron(rng.choice(cls_ids, (size // 8, size // 8)), np.ones((8, 8), int))
                    label = np.zeros(n_classes, np.int64)
                    label[cls_ids] = 1
                else:
                    c = int(rng.integers(0, n_classes))
                    c = c if labels is None else int(labels(split, i_sample))
                    cmap = np.full((size, size), c)
                    label = c
                rgb = _image(rng, size, cmap % len(COLOURS))
                bands = {}
                for info in infos:
                    alt = info.alt_names
                    if "red" in alt:
                        v = rgb[0]
                    elif "green" in alt:
                        v = rgb[1]
                    elif "blue" in alt:
                        v = rgb[2]
                    else:
                        v = rng.random((size, size))
                    arr = (v * scale).astype(dtype) if np.dtype(dtype).kind != "f" else (v * scale).astype(dtype)
                    bands[info.name] = (info, arr)
                with h5py.File(d / f"{sname}.hdf5", "w") as fp:
                    attr: dict = {}
                    order = []
                    for bname, (info, arr) in bands.items():
                        key = bname + (f"_{date.strftime('%Y-%m-%d')}" if date else "")
                        fp.create_dataset(key, data=arr)
                        attr[key] = dict(date=date, date_id=date, spatial_resolution=10.0, band_info=info,
                                         meta_info=None, transform=Affine(10, 0, 500000, 0, -10, 4000000),
                                         crs=CRS.from_epsg(32633))
                        order.append(key)
                        stats_arrays.setdefault(bname, []).append(arr)
                    for info in extra:
                        arr = rng.random((size // 8, size // 8) if info.name.startswith("Canopy")
                                         else (size // 8, size // 8, 5)).astype(np.float32)
                        fp.create_dataset(info.name, data=arr)
                        attr[info.name] = dict(date=None, date_id=None, spatial_resolution=1.0, band_info=info,
                                               meta_info=None, transform=None, crs=None)
                        order.append(info.name)
                    if kind == "segmentation":
                        fp.create_dataset("label", data=label)
                        attr["label"] = dict(date=None, date_id=None, spatial_resolution=10.0, band_info=label_type,
                                             meta_info=None, transform=None, crs=None)
                        order.append("label")
                    else:
                        attr["label"] = label
                    attr["bands_order"] = order
                    fp.attrs["pickle"] = str(pickle.dumps(attr))
    parts = {"train": names["train"], "valid": names["valid"], "test": names["test"]}
    (d / "default_partition.json").write_text(json.dumps(parts))
    for frac in ("0.01x", "0.10x", "0.50x", "1.00x"):
        k = max(2, int(round(float(frac[:-1]) * n_train)))
        (d / f"{frac}_train_partition.json").write_text(json.dumps({**parts, "train": parts["train"][:k]}))
    (d / "band_stats.json").write_text(json.dumps(_stats(stats_arrays)))
    if kind == "segmentation":
        (d / "label_stats.json").write_text(json.dumps({"counts": label_counts.tolist()}))
    else:
        (d / "label_map.json").write_text(json.dumps({f"c{i}": [] for i in range(n_classes)}))
    return d


def write_benchmark(root: Path) -> Path:
    """A small GEO-Bench root covering the formats the reader must handle."""
    write_task(root, "m-eurosat", "classification", n_classes=4, dtype="int16", seed=1)
    write_task(root, "m-brick-kiln", "classification", n_classes=2, dtype="float32", scale=1.0, prefix="ccb.io",
               eval_loss="class", seed=2)
    write_task(root, "m-forestnet", "classification", n_classes=3, dtype="uint8", scale=255, dated=True, seed=3)
    write_task(root, "m-bigearthnet", "multilabel", n_classes=43, dtype="int16", seed=4)
    write_task(root, "m-chesapeake", "segmentation", n_classes=7, dtype="uint8", scale=255, seed=5)
    write_task(root, "m-NeonTree", "segmentation", n_classes=2, dtype="uint8", scale=255, extra_small_bands=True,
               prefix="geobench.io", eval_loss="instance", seed=6)
    return root
