"""GEO-Bench v1 evaluation of frozen backbones: the official on-disk format, DINOv3's protocols.

``reader`` (task folders, samples), ``pickles`` (the allow-listed unpickler), ``catalog`` (every task folder and
whether it can be evaluated), ``protocol`` (per-task YAML and budgets), ``features`` (cached backbone features),
``run`` (features -> heads -> metrics, task by task) and ``report`` (results.json, results.md).
"""

from geodino.geobench.catalog import TaskStatus, scan_tasks
from geodino.geobench.features import FeatureSet, InputPrep, extract_features
from geodino.geobench.protocol import load_protocol
from geodino.geobench.reader import TASKS, GeoBenchTask, benchmark_root, find_tasks
from geodino.geobench.report import markdown_table
from geodino.geobench.run import run_geobench

__all__ = ["TASKS", "GeoBenchTask", "benchmark_root", "find_tasks", "scan_tasks", "TaskStatus", "InputPrep",
           "FeatureSet", "extract_features", "load_protocol", "run_geobench", "markdown_table"]
