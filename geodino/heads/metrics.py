"""Metrics of the GEO-Bench protocols, plus bootstrap confidence intervals.

* classification: top-1 accuracy;
* multi-label: F1 (micro, threshold 0.5) and mAP (macro average precision over classes with positives);
* segmentation: mIoU from an accumulated confusion matrix, with excluded classes and an ignore index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["accuracy", "f1_micro", "mean_average_precision", "confusion_matrix", "miou", "bootstrap_ci"]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def f1_micro(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> float:
    """Micro F1 of multi-hot targets against scores thresholded at ``threshold``."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_score) >= threshold
    tp = np.sum(t & p)
    fp = np.sum(~t & p)
    fn = np.sum(t & ~p)
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def _average_precision(t: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="mergesort")
    t = t[order]
    s = s[order]
    # ties share a threshold: evaluate precision/recall only at the last index of each distinct score
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t)[distinct]
    precision = tp / (distinct + 1)
    recall = tp / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro mean of per-class average precision, over classes with at least one positive."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    aps = [_average_precision(t[:, c], s[:, c]) for c in range(t.shape[1]) if t[:, c].any()]
    return float(np.mean(aps)) if aps else 0.0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """[n_classes, n_classes] counts (rows: truth, cols: prediction); ``ignore_index`` pixels are dropped."""
    t = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(y_pred).ravel().astype(np.int64)
    keep = (t >= 0) & (t < n_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    return np.bincount(t[keep] * n_classes + p[keep], minlength=n_classes ** 2).reshape(n_classes, n_classes)


def miou(cm: np.ndarray, exclude: Sequence[int] = ()) -> float:
    """Mean IoU over classes (minus ``exclude``) that appear in the truth or the predictions."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    classes = [c for c in range(cm.shape[0]) if c not in set(exclude) and union[c] > 0]
    return float(np.mean(inter[classes] / union[classes])) if classes else 0.0


def bootstrap_ci(metric: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(indexes)`` over ``n`` test items resampled with replacement."""
    rng = np.random.default_rng(seed)
    vals = np.array([metric(rng.integers(0, n, n)) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))
