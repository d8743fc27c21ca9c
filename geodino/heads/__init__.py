"""Heads on frozen features (classification probes, segmentation decoders), their metrics and aggregation.

The heads take plain arrays, so they train on features from the GEO-Bench cache
(:mod:`geodino.geobench.features`) or from zarr feature cubes.

On cubes: :mod:`~geodino.heads.labels` (the one label path) aligns label rasters, points/polygons or
positive/negative points onto a cube's grid, :mod:`~geodino.heads.train` trains a head on them with the spatial
split of :mod:`~geodino.heads.split` (validation held a model window away from training),
:mod:`~geodino.heads.card` saves it (safetensors + JSON card) and checks it fits a cube, and
:mod:`~geodino.heads.mapping` streams it over a cube into class-map and probability COGs.
"""

from geodino.heads.aggregate import aggregate, iqm, normalize
from geodino.heads.classification import LogRegProtocol, c_grid, class_problem, knn_predict
from geodino.heads.metrics import (accuracy, bootstrap_ci, confusion_matrix, f1_counts, f1_from_counts, f1_micro,
                                  mean_average_precision, miou)
from geodino.heads.segmentation import DPTHead, LinearHead, dpt_layers, evaluate_head, predict, train_head
from geodino.heads.card import TrainedHead, check_head_fits, load_head, save_head
from geodino.heads.labels import LabelGrid, align_labels
from geodino.heads.mapping import PredictResult, predict_map
from geodino.heads.train import train_on_cube

__all__ = ["LogRegProtocol", "c_grid", "class_problem", "knn_predict", "LinearHead", "DPTHead", "dpt_layers",
           "train_head", "evaluate_head", "predict", "accuracy", "f1_micro", "f1_counts", "f1_from_counts",
           "mean_average_precision", "confusion_matrix", "miou", "bootstrap_ci", "aggregate", "iqm", "normalize",
           "LabelGrid", "align_labels", "train_on_cube", "TrainedHead", "save_head", "load_head",
           "check_head_fits", "predict_map", "PredictResult"]
