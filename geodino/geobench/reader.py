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

from geodino.errors import DatasetError, SplitError
from geodino.geobench.pickles import GeoBenchObject, UnsafePickleError, load_attrs_pickle, safe_loads

__all__ = ["TASKS", "TaskInfo", "GeoBenchTask", "Sample", "benchmark_root", "find_tasks", "resolve_task_name",
           "SPLITS"]

CLASSIFICATION_DIR = "classification_v1.0"
SEGMENTATION_DIR = "segmentation_v1.0"
SPLITS = ("train", "valid", "test")
REDOWNLOAD = "download the task again (geobench-download)"


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
    """The benchmark root: ``path``, else ``$GEO_BENCH_DIR`` (:func:`geodino.checks.geobench_root`)."""
    from geodino.checks import geobench_root

    return geobench_root(path)


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
            raise DatasetError(f"{self.info.name}: no folder for this task under {self.root / self.info.folder}; "
                               "download it (geobench-download) or leave it out of --tasks")
        self.dir = d
        self.name = self.info.name
        self.kind = self.info.kind
        specs_path = self.specs_path = d / "task_specs.pkl"
        if not specs_path.is_file():
            raise DatasetError(f"{self.name}: {specs_path} is missing: the task folder is incomplete; {REDOWNLOAD}")
        try:
            data = specs_path.read_bytes()
        except OSError as e:
            raise DatasetError(f"{self.name}: cannot read {specs_path} ({e}); {REDOWNLOAD}") from e
        try:
            self.specs = safe_loads(data, f"{self.name}: {specs_path}")
        except UnsafePickleError:
            raise
        except DatasetError as e:
            raise DatasetError(f"{e}; {REDOWNLOAD}") from e
        self.partitions: dict[str, dict[str, list[str]]] = {}
        self.partition_errors: dict[str, str] = {}  # partition -> why its file cannot be used
        self._partitions()
        self.band_stats = self._json("band_stats.json", required=True)
        self.label_map = self._json("label_map.json")
        self.label_stats = self._json("label_stats.json")

    # -- metadata -------------------------------------------------------------------------------------
    def _json(self, name: str, required: bool = False):
        p = self.dir / name
        if not p.is_file():
            if required:
                raise DatasetError(f"{self.name}: {p} is missing: the task folder is incomplete; {REDOWNLOAD}")
            return None
        try:
            return json.loads(p.read_text())
        except (ValueError, OSError) as e:
            raise DatasetError(f"{self.name}: {p} is not valid JSON ({e}); {REDOWNLOAD}") from e

    def partition_file(self, partition: str) -> Path:
        return self.dir / f"{partition}_partition.json"

    def _partitions(self) -> None:
        """Parse every <name>_partition.json; a broken one is remembered and refused only when it is used."""
        for p in sorted(self.dir.glob("*_partition.json")):
            name = p.name[: -len("_partition.json")]
            try:
                self.partitions[name] = _read_partition(p, name)
            except SplitError as e:
                self.partition_errors[name] = f"{self.name}: {e}"
        if "default" not in self.partitions and "default" not in self.partition_errors:
            self.partition_errors["default"] = (f"{self.name}: {self.partition_file('default')} is missing (it lists "
                                                f"the train/valid/test samples); {REDOWNLOAD}")

    @property
    def n_classes(self) -> int:
        lt = getattr(self.specs, "label_type", None)
        n = getattr(lt, "n_classes", None)
        if n is None:
            raise DatasetError(f"{self.name}: {self.specs_path} has no label_type.n_classes; {REDOWNLOAD}")
        return int(n)

    @property
    def class_names(self) -> list[str] | None:
        lt = getattr(self.specs, "label_type", None)
        return getattr(lt, "_class_names", None) or getattr(lt, "class_name", None)

    @property
    def bands_info(self) -> list:
        return list(getattr(self.specs, "bands_info", []) or [])

    def partition(self, partition: str = "default") -> dict[str, list[str]]:
        """The splits of ``partition``, or a :class:`SplitError` naming its file and what to do."""
        if partition in self.partition_errors:
            raise SplitError(self.partition_errors[partition])
        if partition not in self.partitions:
            have = ", ".join(sorted(self.partitions)) or "none"
            raise SplitError(f"{self.name}: there is no {self.partition_file(partition)} (partitions: {have}); "
                             "choose one of those with --partition")
        return self.partitions[partition]

    def split(self, split: str, partition: str = "default") -> list[str]:
        """Sample names of ``split`` (train | valid | test) in ``partition`` (default, 0.10x_train, ...)."""
        part = self.partition(partition)
        if split not in part:
            raise SplitError(f"{self.name}: {self.partition_file(partition)} has no {split!r} split (it has "
                             f"{', '.join(part) or 'none'}); {REDOWNLOAD}")
        return list(part[split])

    def missing_samples(self, names: list[str]) -> list[str]:
        """The names among ``names`` without a <name>.hdf5 in the task folder (one directory listing)."""
        present = {p.name[:-5] for p in os.scandir(self.dir) if p.name.endswith(".hdf5")}
        return [n for n in names if n not in present]

    def check_samples(self, names: list[str], partition: str = "default") -> None:
        """Raise a :class:`DatasetError` naming the first missing sample file of ``names``, if any."""
        missing = self.missing_samples(names)
        if missing:
            raise DatasetError(f"{self.name}: {len(missing)} sample file(s) listed in "
                               f"{self.partition_file(partition)} are missing, e.g. {self.dir / (missing[0] + '.hdf5')}"
                               f": the download is incomplete; {REDOWNLOAD}")

    def band_names(self) -> list[set[str]]:
        """Lower-case name and alt names of each band in task_specs.pkl."""
        return [_names(info) for info in self.bands_info]

    def check_bands(self, wanted) -> None:
        """Raise a :class:`DatasetError` when a band the protocol asks for is not in task_specs.pkl."""
        have = self.band_names()
        if not have:
            return  # specs without bands_info: each sample is checked when read (find_band)
        for want in wanted:
            if not any(str(want).lower() in n for n in have):
                listing = ", ".join(repr(getattr(i, "name", "?")) for i in self.bands_info)
                raise DatasetError(f"{self.name}: the protocol asks for band {want!r}, which {self.specs_path} does "
                                   f"not list (bands: {listing}); set input.bands in configs/geobench/{self.name}.yaml "
                                   "or pass --set input.bands=[...] with bands the task has")

    # -- samples --------------------------------------------------------------------------------------
    def load_sample(self, name: str) -> Sample:
        path = self.dir / f"{name}.hdf5"
        if not path.is_file():
            raise DatasetError(f"{self.name}: sample file {path} is missing (the partition lists it): the download is "
                               f"incomplete; {REDOWNLOAD}")
        try:
            return self._read_sample(path, name)
        except (DatasetError, OSError, KeyError, ValueError, TypeError) as e:  # h5py raises these for damaged files
            cls, reason = ((type(e), str(e)) if isinstance(e, DatasetError) else
                           (DatasetError, f"not a readable HDF5 file: {type(e).__name__}: {e}"))
            raise cls(f"{self.name}: cannot read sample file {path} ({' '.join(reason.split())}); {REDOWNLOAD}, or "
                      f"remove {name!r} from the partition file") from e

    def _read_sample(self, path: Path, name: str) -> Sample:
        import h5py

        with h5py.File(path, "r") as fp:
            if "pickle" not in fp.attrs:
                raise DatasetError("no 'pickle' attribute: not a GEO-Bench sample")
            attrs = load_attrs_pickle(fp.attrs["pickle"], "its attribute 'pickle'")
            if not isinstance(attrs, dict):
                raise DatasetError(f"its attribute 'pickle' holds a {type(attrs).__name__}, not a dict")
            order = attrs.get("bands_order") or list(fp.keys())
            bands, infos, dates, label = {}, {}, {}, None
            for key in order:
                if key not in fp:
                    raise DatasetError(f"it lists band {key!r} but holds no such dataset")
                arr = fp[key][()]
                meta = attrs.get(key, {}) if isinstance(attrs.get(key), dict) else {}
                if key.startswith("label"):
                    label = arr
                    continue
                bands[key] = arr
                infos[key] = meta.get("band_info")
                dates[key] = meta.get("date_id", meta.get("date"))
        if label is None:
            if "label" not in attrs:
                raise DatasetError("neither a label dataset nor a label attribute")
            label = attrs["label"]
        return Sample(name, bands, infos, dates, label)

    def find_band(self, sample: Sample, want: str, date_index: int = 0) -> str:
        """HDF5 key of the band named ``want`` (name or alt name, case-insensitive); for time series the
        ``date_index``-th date."""
        want_l = want.lower()
        hits = []
        for key, info in sample.band_info.items():
            base = re.sub(r"_\d{4}-\d{2}-\d{2}.*$", "", key).lower()
            if want_l in _names(info) or (not info and want_l == base):
                hits.append(key)
        where = f"{self.name}: sample file {self.dir / (sample.name + '.hdf5')}"
        if not hits:
            listing = ", ".join(sorted(sample.bands))
            raise DatasetError(f"{where} has no band {want!r} (bands: {listing}); set input.bands in "
                               f"configs/geobench/{self.name}.yaml or pass --set input.bands=[...]")
        hits.sort(key=lambda k: (str(sample.dates.get(k)), k))
        if date_index >= len(hits):
            raise DatasetError(f"{where} has {len(hits)} date(s) of {want!r}, not {date_index + 1}; "
                               f"lower input.date_index (--set input.date_index=0)")
        return hits[date_index]

    def stats_for(self, key: str, info) -> dict:
        """band_stats.json entry of a band (by its band name, falling back to the raw key)."""
        for k in (getattr(info, "name", None), key, re.sub(r"_\d{4}-\d{2}-\d{2}.*$", "", key)):
            if k and k in self.band_stats:
                return self.band_stats[k]
        raise DatasetError(f"{self.name}: {self.dir / 'band_stats.json'} has no entry for band "
                           f"{getattr(info, 'name', key)!r}; {REDOWNLOAD}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.partition("default").values())

    def describe(self) -> dict:
        d = self.partitions.get("default", {})
        return {"task": self.name, "kind": self.kind, "classes": self.n_classes,
                "bands": len(self.bands_info), "patch_size": list(getattr(self.specs, "patch_size", []) or []),
                "train": len(d.get("train", [])), "valid": len(d.get("valid", [])), "test": len(d.get("test", [])),
                "partitions": sorted(self.partitions), "dir": str(self.dir)}


def _names(info) -> set[str]:
    names = {str(getattr(info, "name", "") or "").lower()}
    return names | {str(a).lower() for a in (getattr(info, "alt_names", ()) or ())}


def _read_partition(path: Path, name: str) -> dict[str, list[str]]:
    """A partition file: a JSON object of split -> list of sample names (train, valid, test for "default")."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise SplitError(f"{path} is not valid JSON ({e}); {REDOWNLOAD}") from e
    need = SPLITS if name == "default" else ("train",)
    if (not isinstance(data, dict) or not all(k in data for k in need)
            or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in data.values())):
        raise SplitError(f"{path} is not a GEO-Bench partition (a JSON object of {', '.join(need)} -> lists of "
                         f"sample names); {REDOWNLOAD}")
    return data
