"""A restricted unpickler for GEO-Bench's pickles (``task_specs.pkl`` and each sample's ``attrs["pickle"]``).

GEO-Bench stores band, label and task descriptions as pickled ``geobench.*`` objects (``ccb.io.*`` and
``geobench.io.*`` in files written by older versions). geodino never imports the ``geobench`` package: every
class of :data:`GEOBENCH_CLASSES` is mapped to a plain attribute bag recording the original class name (their
pickles carry only a class reference and an attribute dict, so nothing runs). Only an allow-list of globals is
resolved (those stand-ins, ``affine.Affine``, rasterio's CRS, ``datetime`` and numpy's array reconstruction); a
pickle naming anything else is rejected when its first foreign global is met, before any of it is built.
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import pickle
from typing import Any

from geodino.errors import DatasetError

__all__ = ["GEOBENCH_CLASSES", "GeoBenchObject", "PickledCRS", "safe_loads", "load_attrs_pickle", "UnsafePickleError"]

# Every class the official package (ServiceNow/geo-bench) defines for what it pickles, by the module that defined
# it, read from the repository's whole history: ccb/io/{dataset,task,label}.py (2022-01 to 2023-02; the label types
# lived in ccb/io/task.py until ccb/io/label.py appeared in 2022-02), geobench/io/* (2023-02 to 2023-08) and
# geobench/{dataset,task,label}.py since. Today's geobench aliases ccb.io.* and geobench.io.* onto its modules
# "for backward compatibility of pickled objects" and keeps empty Accuracy, SegmentationAccuracy and
# MultilabelAccuracy in geobench/task.py "for loading old pickles": converters set ``eval_loss`` to such a class
# (the class object itself, pickled as a global) or an instance, and ``eval_metrics`` to a list of instances.
# Left out on purpose: Band, Sample, Partition, GeneratorWithLength and the Dataset classes are never pickled (a
# sample's pickle holds plain dicts of band infos), and the pre-release ccb.dataset.io / toolbox.core modules
# (2021-12 to 2022-01) wrote GeoTIFF tags, a layout this reader does not read.
_BAND_INFOS = frozenset({
    "BandInfo", "SpectralBand", "Sentinel1", "Sentinel2", "Landsat8", "Mask", "ElevationBand", "MultiBand",
    "HyperSpectralBands", "CloudProbability", "SegmentationClasses", "Height", "Stats",
})
_LABEL_TYPES = frozenset({
    "LabelType", "Classification", "SemanticSegmentation", "MultiLabelClassification", "Regression", "Detection",
    "PointAnnotation",
})
_METRICS = frozenset({"Loss", "Accuracy", "AccuracyTop30", "CrossEntropy", "MultilabelAccuracy",
                      "SegmentationAccuracy"})
_TASK = frozenset({"TaskSpecifications"}) | _METRICS
GEOBENCH_CLASSES: dict[str, frozenset[str]] = {
    "geobench.dataset": _BAND_INFOS, "geobench.label": _LABEL_TYPES, "geobench.task": _TASK,
    "geobench.io.dataset": _BAND_INFOS, "geobench.io.label": _LABEL_TYPES, "geobench.io.task": _TASK,
    "ccb.io.dataset": _BAND_INFOS, "ccb.io.label": _LABEL_TYPES,
    "ccb.io.task": _TASK | {"Label", "LabelType", "Classification", "Regression", "Detection", "PointAnnotation"},
}


class UnsafePickleError(DatasetError):
    """A pickle names a global outside geodino's allow-list."""


class GeoBenchObject:
    """Stand-in for any pickled geobench class: an attribute bag that remembers the original class."""

    _geobench_class = "GeoBenchObject"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    @property
    def kind(self) -> str:
        return self._geobench_class

    def __repr__(self) -> str:
        name = getattr(self, "name", None)
        return f"<{self._geobench_class}{' ' + repr(name) if name else ''}>"


@functools.cache
def _standin(name: str) -> type:
    return type(name, (GeoBenchObject,), {"_geobench_class": name})


class PickledCRS:
    """Stand-in for ``rasterio.crs.CRS``: keeps its WKT (or other state) without needing GDAL."""

    def __init__(self, *args, **kwargs):
        self.state = args[0] if args else kwargs or None

    def __setstate__(self, state):
        self.state = state

    @property
    def wkt(self) -> str | None:
        s = self.state
        if isinstance(s, str):
            return s
        if isinstance(s, dict):
            return s.get("wkt") or s.get("_wkt") or s.get("init")
        return None


# Other globals a GEO-Bench pickle may name: module -> names (numpy's array reconstruction, by either core path)
_NUMPY_CORE = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
_SAFE_GLOBALS = {
    "affine": {"Affine"}, "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
    "collections": {"OrderedDict"}, "builtins": {"set", "frozenset", "tuple", "list", "dict", "complex"},
    **dict.fromkeys(("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                     "numpy._core.numeric"), _NUMPY_CORE),
}


def _safe_global(module: str, name: str):
    if name not in _SAFE_GLOBALS.get(module, ()):
        return None
    if not module.startswith("numpy"):
        return getattr(importlib.import_module(module), name)
    import numpy as np

    if name in ("ndarray", "dtype"):
        return getattr(np, name)
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved core to _core
    return getattr(core.numeric if name == "_frombuffer" else core.multiarray, name, None)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in GEOBENCH_CLASSES.get(module, ()):
            return _standin(name)
        if module in ("rasterio.crs", "rasterio._crs") and name in ("CRS", "_CRS"):
            return PickledCRS
        g = _safe_global(module, name)
        if g is not None:
            return g
        raise UnsafePickleError(f"the pickle names {module}.{name}, which is not on geodino's allow-list of "
                                "GEO-Bench classes: refusing to unpickle it (it could run code); use the official "
                                "GEO-Bench files")


def safe_loads(data: bytes, what: str = "pickle") -> Any:
    """Unpickle ``data`` through the allow-list; anything else raises :class:`UnsafePickleError`."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{what}: {e}") from None
    except Exception as e:  # damaged data fails in many ways (UnpicklingError, EOFError, KeyError, struct...)
        raise DatasetError(f"{what} is not a readable GEO-Bench pickle ({type(e).__name__}: {e})") from e


def load_attrs_pickle(value: Any, what: str) -> dict:
    """Decode a sample's ``attrs["pickle"]``: the ``str()`` of pickled bytes, read back as literal bytes."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise DatasetError(f"{what}: attribute 'pickle' is a {type(value).__name__}, not the expected string")
    try:
        raw = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise DatasetError(f"{what}: attribute 'pickle' is not a bytes literal ({e})") from e
    if not isinstance(raw, bytes):
        raise DatasetError(f"{what}: attribute 'pickle' does not hold bytes")
    return safe_loads(raw, what)
