"""Heads on frozen features (classification probes, segmentation decoders), their metrics and aggregation.

The heads take plain arrays, so they train on features from the GEO-Bench cache
(:mod:`geodino.geobench.features`) or from zarr feature cubes.

On cubes: :mod:`~geodino.heads.labels` (the one label path) aligns label rasters, points/polygons or
positive/negative points onto a cube's grid, :mod:`~geodino.heads.train` trains a head on them with the spatial
split of :mod:`~geodino.heads.split` (validation held a model window away from training),
:mod:`~geodino.heads.card` saves it (safetensors + JSON card) and checks it fits a cube, and
:mod:`~geodino.heads.mapping` streams it over a cube into class-map and probability COGs.
"""

from geodino._lazy import lazy_exports
from geodino.heads.aggregate import aggregate, iqm, normalize  # eager: `aggregate` is also its module's name

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, _lazy = lazy_exports(__name__, {
    "classification": ["LogRegProtocol", "c_grid", "class_problem", "knn_predict"],
    "metrics": ["accuracy", "bootstrap_ci", "confusion_matrix", "f1_counts", "f1_from_counts", "f1_micro",
                "mean_average_precision", "miou"],
    "segmentation": ["DPTHead", "LinearHead", "dpt_layers", "evaluate_head", "predict", "train_head", "seeded"],
    "card": ["TrainedHead", "check_head_fits", "load_head", "save_head"],
    "labels": ["LabelGrid", "align_labels"],
    "mapping": ["PredictResult", "predict_map", "predict_proba"],
    "train": ["train_on_cube"],
})
__all__ = ["aggregate", "iqm", "normalize", *_lazy]
