"""Heads on frozen features (classification probes, segmentation decoders), their metrics and aggregation.

The heads take plain arrays, so they train on features from the GEO-Bench cache
(:mod:`geodino.geobench.features`) or from zarr feature cubes (:func:`cube_training_data`).
"""

from geodino.heads.aggregate import aggregate, iqm, normalize
from geodino.heads.classification import LogRegProtocol, c_grid, class_problem, knn_predict
from geodino.heads.metrics import (accuracy, bootstrap_ci, confusion_matrix, f1_counts, f1_from_counts, f1_micro,
                                  mean_average_precision, miou)
from geodino.heads.segmentation import DPTHead, LinearHead, dpt_layers, evaluate_head, predict, train_head
from geodino.heads.sources import cube_training_data

__all__ = ["LogRegProtocol", "c_grid", "class_problem", "knn_predict", "LinearHead", "DPTHead", "dpt_layers",
           "train_head", "evaluate_head", "predict", "accuracy", "f1_micro", "f1_counts", "f1_from_counts",
           "mean_average_precision", "confusion_matrix", "miou", "bootstrap_ci", "aggregate", "iqm", "normalize",
           "cube_training_data"]
