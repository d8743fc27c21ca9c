"""Classification heads on frozen features: DINOv3's logistic-regression protocol, kNN, multi-label.

Logistic regression (DINOv3's protocol): standardise with train statistics, L2-regularised lbfgs in float64,
C swept over a log grid and chosen on ``valid``, refit on train+valid with that C, scored on ``test``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from geodino.heads.metrics import accuracy, f1_micro

__all__ = ["LogRegProtocol", "knn_predict", "c_grid"]

log = logging.getLogger(__name__)


def c_grid(start: float = 1e-6, stop: float = 1e5, num: int = 45) -> np.ndarray:
    return np.logspace(np.log10(start), np.log10(stop), num)


def _scaler(x: np.ndarray):
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(x.astype(np.float64))


def _logreg(c: float, max_iter: int, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs", tol=1e-4)
    return OneVsRestClassifier(lr) if multilabel else lr


@dataclass
class LogRegProtocol:
    """Sweep C on valid, refit on train+valid, score test. ``multilabel`` uses one-vs-rest and F1 (micro)."""

    grid: np.ndarray = field(default_factory=c_grid)
    max_iter: int = 1000
    multilabel: bool = False
    history: list = field(default_factory=list)

    def _score(self, model, x, y) -> float:
        if self.multilabel:
            return f1_micro(y, model.predict_proba(x))
        return accuracy(y, model.predict(x))

    def select(self, x_train, y_train, x_valid, y_valid) -> float:
        sc = _scaler(x_train)
        xt, xv = sc.transform(x_train.astype(np.float64)), sc.transform(x_valid.astype(np.float64))
        best_c, best = None, -1.0
        self.history = []
        for c in self.grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings at extreme C are expected
                m = _logreg(float(c), self.max_iter, self.multilabel).fit(xt, y_train)
            s = self._score(m, xv, y_valid)
            self.history.append((float(c), s))
            if s > best + 1e-12:
                best_c, best = float(c), s
        log.info("logistic regression: best C=%.3g (valid %.4f)", best_c, best)
        return best_c

    def fit_predict(self, x_train, y_train, x_valid, y_valid, x_test) -> dict:
        """Returns the chosen C, the valid score, and test predictions (labels, or probabilities if multilabel)."""
        c = self.select(x_train, y_train, x_valid, y_valid)
        x_all = np.concatenate([x_train, x_valid])
        y_all = np.concatenate([y_train, y_valid])
        sc = _scaler(x_all)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = _logreg(c, self.max_iter, self.multilabel).fit(sc.transform(x_all.astype(np.float64)), y_all)
        xt = sc.transform(x_test.astype(np.float64))
        pred = m.predict_proba(xt) if self.multilabel else m.predict(xt)
        return {"C": c, "valid": dict(self.history)[c], "pred": pred}


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int,
                n_classes: int | None = None, multilabel: bool = False, chunk: int = 4096) -> np.ndarray:
    """Cosine kNN: majority vote (ties to the nearest neighbour's class), or the mean of multi-hot labels."""
    import torch

    tr = torch.nn.functional.normalize(torch.as_tensor(x_train, dtype=torch.float32), dim=1)
    te = torch.nn.functional.normalize(torch.as_tensor(x_test, dtype=torch.float32), dim=1)
    k = min(k, len(tr))
    out = []
    for i in range(0, len(te), chunk):
        sim = te[i:i + chunk] @ tr.T
        idx = sim.topk(k, dim=1).indices.numpy()
        if multilabel:
            out.append(np.asarray(y_train)[idx].mean(axis=1))
            continue
        nc = n_classes or int(np.max(y_train)) + 1
        votes = np.zeros((len(idx), nc))
        for j in range(k):  # nearer neighbours break ties: add a tiny rank bonus
            np.add.at(votes, (np.arange(len(idx)), np.asarray(y_train)[idx[:, j]]), 1.0 + 1e-6 * (k - j))
        out.append(votes.argmax(1))
    return np.concatenate(out)

