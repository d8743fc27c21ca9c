"""GEO-Bench v1 evaluation of frozen backbones: the official on-disk format, DINOv3's protocols.

``reader`` (task folders, samples), ``pickles`` (the allow-listed unpickler), ``catalog`` (every task folder and
whether it can be evaluated), ``protocol`` (per-task YAML and budgets), ``features`` (cached backbone features),
``run`` (features -> heads -> metrics, task by task) and ``report`` (results.json, results.md).
"""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "catalog": ["TaskStatus", "scan_tasks"],
    "features": ["FeatureSet", "InputPrep", "extract_features"],
    "protocol": ["load_protocol"],
    "reader": ["TASKS", "GeoBenchTask", "benchmark_root", "find_tasks"],
    "report": ["markdown_table"],
    "run": ["run_geobench"],
})
