"""Classification heads on frozen features: DINOv3's logistic-regression protocol, kNN, multi-label.

Logistic regression (DINOv3's protocol): standardise, L2-regularised lbfgs in float64, C swept over a log grid
and chosen on ``valid``, refit on train+valid with that C, scored on ``test``. The sweep is scikit-learn's
``GridSearchCV`` over a ``PredefinedSplit`` (train = fold -1, valid = fold 0) of a scaler + logistic-regression
pipeline: its fits run in parallel (``n_jobs``), the scaler is fitted on train while choosing C, and ``refit``
fits the chosen pipeline on everything passed in, train+valid.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from geodino.errors import LabelError
from geodino.heads.metrics import f1_micro

__all__ = ["LogRegProtocol", "knn_predict", "cosine_neighbours", "c_grid", "class_problem"]

log = logging.getLogger(__name__)


def c_grid(start: float = 1e-6, stop: float = 1e5, num: int = 45) -> np.ndarray:
    return np.logspace(np.log10(start), np.log10(stop), num)


def class_problem(y: np.ndarray, multilabel: bool) -> str | None:
    """Why labels ``y`` cannot train a classifier ("is empty", "holds a single class (3)"), or None."""
    y = np.asarray(y)
    if len(y) == 0:
        return "is empty"
    if not multilabel:
        classes = np.unique(y)
        if len(classes) < 2:
            return f"holds a single class ({classes[0]})"
    return None


def _pipeline(max_iter: int, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(max_iter=max_iter, solver="lbfgs", tol=1e-4)
    return Pipeline([("scale", StandardScaler()), ("clf", OneVsRestClassifier(lr) if multilabel else lr)])


def _f1_scorer(estimator, x, y) -> float:
    return f1_micro(y, estimator.predict_proba(x))


@dataclass
class LogRegProtocol:
    """Sweep C on valid, refit on train+valid, score test. ``multilabel`` uses one-vs-rest and F1 (micro).

    ``n_jobs``: parallel fits of the sweep (scikit-learn/joblib semantics: -1 = all cores).
    """

    grid: np.ndarray = field(default_factory=c_grid)
    max_iter: int = 1000
    multilabel: bool = False
    n_jobs: int | None = -1
    history: list = field(default_factory=list)

    def search(self, x_train, y_train, x_valid, y_valid):
        """The fitted ``GridSearchCV``: C chosen on valid, ``best_estimator_`` refitted on train+valid."""
        from sklearn.model_selection import GridSearchCV, PredefinedSplit

        problem = class_problem(y_train, self.multilabel)
        if problem:
            raise LabelError(f"the training set {problem}: logistic regression needs at least 2 classes")
        if len(y_valid) == 0:
            raise LabelError("the validation split is empty: C cannot be chosen")
        x = np.concatenate([x_train, x_valid]).astype(np.float64)
        y = np.concatenate([y_train, y_valid])
        fold = np.r_[np.full(len(x_train), -1), np.zeros(len(x_valid), int)]
        key = "clf__estimator__C" if self.multilabel else "clf__C"
        gs = GridSearchCV(_pipeline(self.max_iter, self.multilabel), {key: [float(c) for c in self.grid]},
                          scoring=_f1_scorer if self.multilabel else "accuracy", cv=PredefinedSplit(fold),
                          refit=True, n_jobs=self.n_jobs, error_score="raise")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at extreme C are expected
            gs.fit(x, y)
        self.history = [(float(p[key]), float(s)) for p, s in zip(gs.cv_results_["params"],
                                                                   gs.cv_results_["mean_test_score"])]
        log.info("logistic regression: best C=%.3g (valid %.4f)", gs.best_params_[key], gs.best_score_)
        return gs

    def select(self, x_train, y_train, x_valid, y_valid) -> float:
        """The C with the best valid score (the first of equals)."""
        gs = self.search(x_train, y_train, x_valid, y_valid)
        return float(gs.best_params_["clf__estimator__C" if self.multilabel else "clf__C"])

    def fit_predict(self, x_train, y_train, x_valid, y_valid, x_test) -> dict:
        """The chosen C, its valid score, the test predictions (labels, or probabilities if multilabel) and the
        model refitted on train+valid (a scaler + logistic-regression pipeline)."""
        gs = self.search(x_train, y_train, x_valid, y_valid)
        key = "clf__estimator__C" if self.multilabel else "clf__C"
        xt = np.asarray(x_test, dtype=np.float64)
        pred = gs.predict_proba(xt) if self.multilabel else gs.predict(xt)
        return {"C": float(gs.best_params_[key]), "valid": float(gs.best_score_), "pred": pred,
                "model": gs.best_estimator_}


def cosine_neighbours(train_unit, x, k: int, chunk: int = 4096):
    """Indices ``[n, k]`` (torch) of the ``k`` rows of ``train_unit`` (a tensor of unit rows) nearest to the rows of
    ``x`` by cosine similarity, ``chunk`` query rows at a time."""
    import torch

    for i in range(0, len(x), chunk):
        te = torch.nn.functional.normalize(torch.as_tensor(np.asarray(x[i:i + chunk], np.float32)), dim=1)
        yield (te @ train_unit.T).topk(k, dim=1).indices


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int,
                n_classes: int | None = None, multilabel: bool = False, chunk: int = 4096) -> np.ndarray:
    """Cosine kNN: majority vote (ties to the nearest neighbour's class), or the mean of multi-hot labels."""
    import torch

    tr = torch.nn.functional.normalize(torch.as_tensor(x_train, dtype=torch.float32), dim=1)
    k = min(k, len(tr))
    out = []
    for idx in cosine_neighbours(tr, x_test, k, chunk):
        idx = idx.numpy()
        if multilabel:
            out.append(np.asarray(y_train)[idx].mean(axis=1))
            continue
        nc = n_classes or int(np.max(y_train)) + 1
        votes = np.zeros((len(idx), nc))
        for j in range(k):  # nearer neighbours break ties: add a tiny rank bonus
            np.add.at(votes, (np.arange(len(idx)), np.asarray(y_train)[idx[:, j]]), 1.0 + 1e-6 * (k - j))
        out.append(votes.argmax(1))
    return np.concatenate(out)
