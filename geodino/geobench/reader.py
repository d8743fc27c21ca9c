"""Reading GEO-Bench v1 as distributed: task folders, partitions, band statistics and per-sample HDF5 files.

No dependency on the ``geobench`` package: pickles go through :mod:`geodino.geobench.pickles`. Bands are
matched on their band info's name and alt names (never on raw HDF5 keys, which carry date suffixes).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geodino.errors import DatasetError
from geodino.geobench.pickles import GeoBenchObject, load_attrs_pickle, safe_loads

__all__ = ["TASKS", "TaskInfo", "GeoBenchTask", "Sample", "benchmark_root", "find_tasks", "resolve_task_name"]

CLASSIFICATION_DIR = "classification_v1.0"
SEGMENTATION_DIR = "segmentation_v1.0"


@dataclass(frozen=True)
class TaskInfo:
    """Static facts of one GEO-Bench task (the protocol lives in configs/geobench/<task>.yaml)."""

    name: str
    kind: str  # classification | multilabel | segmentation
    card_name: str
    aliases: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return SEGMENTATION_DIR if self.kind == "segmentation" else CLASSIFICATION_DIR


TASKS: dict[str, TaskInfo] = {t.name: t for t in [
    TaskInfo("m-bigearthnet", "multilabel", "m-BEnet"),
    TaskInfo("m-brick-kiln", "classification", "m-brick-kiln"),
    TaskInfo("m-eurosat", "classification", "m-eurosat"),
    TaskInfo("m-forestnet", "classification", "m-forestnet"),
    TaskInfo("m-pv4ger", "classification", "m-pv4ger"),
    TaskInfo("m-so2sat", "classification", "m-so2sat"),
    TaskInfo("m-cashew-plant", "segmentation", "m-cashew", ("m-cashew-plantation", "m-cashew")),
    TaskInfo("m-chesapeake", "segmentation", "m-chesapeake", ("m-chesapeake-landcover",)),
    TaskInfo("m-NeonTree", "segmentation", "m-NeonTree", ("m-neontree",)),
    TaskInfo("m-nz-cattle", "segmentation", "m-nz-cattle"),
    TaskInfo("m-pv4ger-seg", "segmentation", "m-pv4ger-seg"),
    TaskInfo("m-SA-crop-type", "segmentation", "m-SA-crop", ("m-sa-crop-type", "m-SA-crop")),
]}


def resolve_task_name(name: str) -> TaskInfo:
    for t in TASKS.values():
        if name == t.name or name.lower() in {t.name.lower(), t.card_name.lower(), *(a.lower() for a in t.aliases)}:
            return t
    raise DatasetError(f"unknown GEO-Bench task {name!r}; tasks: {', '.join(TASKS)}")


def benchmark_root(path: str | os.PathLike | None = None) -> Path:
    """The benchmark root: ``path``, else ``$GEO_BENCH_DIR``."""
    p = path or os.environ.get("GEO_BENCH_DIR")
    if not p:
        raise DatasetError("no GEO-Bench directory: pass --benchmark-dir or set GEO_BENCH_DIR to the folder holding "
                           f"{CLASSIFICATION_DIR}/ and {SEGMENTATION_DIR}/ (download with `geobench-download`)")
    root = Path(p).expanduser()
    if not root.is_dir():
        raise DatasetError(f"GEO-Bench directory {root} does not exist")
    if not ((root / CLASSIFICATION_DIR).is_dir() or (root / SEGMENTATION_DIR).is_dir()):
        raise DatasetError(f"{root} holds neither {CLASSIFICATION_DIR}/ nor {SEGMENTATION_DIR}/: point "
                           "--benchmark-dir at the GEO-Bench root")
    return root


def _task_dir(root: Path, info: TaskInfo) -> Path | None:
    for name in (info.name, *info.aliases):
        d = root / info.folder / name
        if d.is_dir():
            return d
    return None


def find_tasks(root: Path) -> list[tuple[TaskInfo, Path]]:
    """The known tasks present under ``root``."""
    return [(info, d) for info in TASKS.values() if (d := _task_dir(root, info)) is not None]


@dataclass
class Sample:
    name: str
    bands: dict[str, np.ndarray]  # HDF5 key -> 2-D (or 3-D) array
    band_info: dict[str, GeoBenchObject]
    dates: dict[str, object]
    label: object  # int, multi-hot array, or 2-D mask
    meta: dict = field(default_factory=dict)


class GeoBenchTask:
    """One task folder: its specs, partitions, statistics and samples."""

    def __init__(self, root: str | os.PathLike, name: str):
        self.info = resolve_task_name(name)
        self.root = Path(root)
        d = _task_dir(self.root, self.info)
        if d is None:
            raise DatasetError(f"task {self.info.name} not found under {self.root / self.info.folder}: is the "
                               "benchmark fully downloaded?")
        self.dir = d
        self.name = self.info.name
        self.kind = self.info.kind
        specs_path = d / "task_specs.pkl"
        if not specs_path.is_file():
            raise DatasetError(f"{d} has no task_specs.pkl: the task folder is incomplete, download it again")
        self.specs = safe_loads(specs_path.read_bytes(), str(specs_path))
        self.partitions = self._partitions()
        self.band_stats = self._json("band_stats.json", required=True)
        self.label_map = self._json("label_map.json")
        self.label_stats = self._json("label_stats.json")

    # -- metadata -------------------------------------------------------------------------------------
    def _json(self, name: str, required: bool = False):
        p = self.dir / name
        if not p.is_file():
            if required:
                raise DatasetError(f"{self.dir} has no {name}: the task folder is incomplete, download it again")
            return None
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise DatasetError(f"{p} is not valid JSON: {e}") from e

    def _partitions(self) -> dict[str, dict[str, list[str]]]:
        parts = {}
        for p in sorted(self.dir.glob("*_partition.json")):
            try:
                parts[p.name[: -len("_partition.json")]] = json.loads(p.read_text())
            except ValueError as e:
                raise DatasetError(f"{p} is not valid JSON: {e}") from e
        if "default" not in parts:
            raise DatasetError(f"{self.dir} has no default_partition.json: the task folder is incomplete")
        return parts

    @property
    def n_classes(self) -> int:
        lt = getattr(self.specs, "label_type", None)
        n = getattr(lt, "n_classes", None)
        if n is None:
            raise DatasetError(f"{self.dir}/task_specs.pkl has no label_type.n_classes")
        return int(n)

    @property
    def class_names(self) -> list[str] | None:
        lt = getattr(self.specs, "label_type", None)
        return getattr(lt, "_class_names", None) or getattr(lt, "class_name", None)

    @property
    def bands_info(self) -> list:
        return list(getattr(self.specs, "bands_info", []) or [])

    def split(self, split: str, partition: str = "default") -> list[str]:
        """Sample names of ``split`` (train | valid | test) in ``partition`` (default, 0.10x_train, ...)."""
        if partition not in self.partitions:
            raise DatasetError(f"{self.name} has no partition {partition!r}; it has {', '.join(self.partitions)}")
        part = self.partitions[partition]
        if split not in part:
            raise DatasetError(f"partition {partition!r} of {self.name} has no split {split!r} (it has {list(part)})")
        return list(part[split])

    # -- samples --------------------------------------------------------------------------------------
    def load_sample(self, name: str) -> Sample:
        import h5py

        path = self.dir / f"{name}.hdf5"
        if not path.is_file():
            raise DatasetError(f"sample {name} of {self.name} is missing ({path}): the download is incomplete")
        try:
            with h5py.File(path, "r") as fp:
                if "pickle" not in fp.attrs:
                    raise DatasetError(f"{path} has no 'pickle' attribute: not a GEO-Bench sample")
                attrs = load_attrs_pickle(fp.attrs["pickle"], str(path))
                order = attrs.get("bands_order") or list(fp.keys())
                bands, infos, dates, label = {}, {}, {}, None
                for key in order:
                    if key not in fp:
                        raise DatasetError(f"{path} lists band {key!r} but holds no such dataset")
                    arr = fp[key][()]
                    meta = attrs.get(key, {}) if isinstance(attrs.get(key), dict) else {}
                    if key.startswith("label"):
                        label = arr
                        continue
                    bands[key] = arr
                    infos[key] = meta.get("band_info")
                    dates[key] = meta.get("date_id", meta.get("date"))
        except OSError as e:
            raise DatasetError(f"{path} is not a readable HDF5 file: {e}") from e
        if label is None:
            if "label" not in attrs:
                raise DatasetError(f"{path} has neither a label dataset nor a label attribute")
            label = attrs["label"]
        return Sample(name, bands, infos, dates, label)

    def find_band(self, sample: Sample, want: str, date_index: int = 0) -> str:
        """HDF5 key of the band named ``want`` (name or alt name, case-insensitive); for time series the
        ``date_index``-th date."""
        want_l = want.lower()
        hits = []
        for key, info in sample.band_info.items():
            names = {str(getattr(info, "name", "") or "").lower()}
            names |= {str(a).lower() for a in (getattr(info, "alt_names", ()) or ())}
            base = re.sub(r"_\d{4}-\d{2}-\d{2}.*$", "", key).lower()
            if want_l in names or (not info and want_l == base):
                hits.append(key)
        if not hits:
            listing = ", ".join(sorted(sample.bands))
            raise DatasetError(f"{self.name} sample {sample.name} has no band {want!r} (bands: {listing})")
        hits.sort(key=lambda k: (str(sample.dates.get(k)), k))
        if date_index >= len(hits):
            raise DatasetError(f"{self.name} sample {sample.name} has {len(hits)} date(s) of {want!r}, "
                               f"not {date_index + 1}")
        return hits[date_index]

    def stats_for(self, key: str, info) -> dict:
        """band_stats.json entry of a band (by its band name, falling back to the raw key)."""
        for k in (getattr(info, "name", None), key, re.sub(r"_\d{4}-\d{2}-\d{2}.*$", "", key)):
            if k and k in self.band_stats:
                return self.band_stats[k]
        raise DatasetError(f"band_stats.json of {self.name} has no entry for band {getattr(info, 'name', key)!r}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.partitions["default"].values())

    def describe(self) -> dict:
        d = self.partitions["default"]
        return {"task": self.name, "kind": self.kind, "classes": self.n_classes,
                "bands": len(self.bands_info), "patch_size": list(getattr(self.specs, "patch_size", []) or []),
                "train": len(d.get("train", [])), "valid": len(d.get("valid", [])), "test": len(d.get("test", [])),
                "partitions": sorted(self.partitions), "dir": str(self.dir)}
