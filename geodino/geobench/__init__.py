"""GEO-Bench v1 evaluation of frozen backbones: the official on-disk format, DINOv3's protocols."""

from geodino.geobench.features import FeatureSet, InputPrep, extract_features
from geodino.geobench.protocol import load_protocol
from geodino.geobench.reader import TASKS, GeoBenchTask, benchmark_root, find_tasks
from geodino.geobench.run import markdown_table, run_geobench

__all__ = ["TASKS", "GeoBenchTask", "benchmark_root", "find_tasks", "InputPrep", "FeatureSet", "extract_features",
           "load_protocol", "run_geobench", "markdown_table"]
