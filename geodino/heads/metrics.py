"""Metrics of the GEO-Bench protocols, plus bootstrap confidence intervals.

* classification: top-1 accuracy (scikit-learn);
* multi-label: F1 (micro, threshold 0.5) and mAP (macro average precision over classes with positives), both
  scikit-learn;
* segmentation: mIoU from an accumulated confusion matrix, with excluded classes and an ignore index.

Two things stay hand-written because they are measurably faster where they run many times
(``python pipelines/bench_metrics.py``; three runs on 2 shared, loaded CPU cores, so read the ratios):

* :func:`confusion_matrix` of one mask: one ``np.bincount``, 0.9-7 ms for a 512x512 mask against 55-90 ms for
  ``sklearn.metrics.confusion_matrix`` and 30-64 ms for torchmetrics (even without its argument checks), i.e.
  10-90x faster; it runs once per test image, per head and per seed.
* the bootstrap CIs resample per-item statistics (correct or not; per-sample F1 counts; per-sample confusion
  matrices) instead of calling the metric on each resample: 5-60 µs against 1-2 ms (accuracy) and 9-12 ms (F1)
  per resample with scikit-learn, so 1000 resamples take milliseconds instead of seconds. The point estimates
  come from scikit-learn, and the tests check the per-item versions against it.

:func:`iou` and :func:`miou` compute IoU from a confusion matrix (3 lines): no public scikit-learn or torchmetrics
function takes an accumulated matrix, and the bootstrap needs exactly that (sums of per-sample matrices). Tests
check it against ``sklearn.metrics.jaccard_score``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["accuracy", "f1_micro", "f1_counts", "f1_from_counts", "mean_average_precision", "confusion_matrix",
           "iou", "miou", "bootstrap_ci"]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def f1_micro(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> float:
    """Micro F1 of multi-hot targets against scores thresholded at ``threshold`` (scores >= threshold are on)."""
    from sklearn.metrics import f1_score

    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_score) >= threshold
    return float(f1_score(t, p, average="micro", zero_division=0.0))


def f1_counts(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-sample (tp, fp, fn) counts [N, 3] of multi-hot targets: micro F1 of any subset is a sum of rows."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_score) >= threshold
    return np.stack([(t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)], axis=1)


def f1_from_counts(counts: np.ndarray) -> float:
    tp, fp, fn = np.asarray(counts).sum(0)
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def mean_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro mean of per-class average precision, over classes with at least one positive."""
    from sklearn.metrics import average_precision_score

    t = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    keep = t.any(0)
    if not keep.any():
        return 0.0
    return float(average_precision_score(t[:, keep], s[:, keep], average="macro"))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """[n_classes, n_classes] counts (rows: truth, cols: prediction); ``ignore_index`` pixels are dropped.

    One bincount: 10-90x faster than ``sklearn.metrics.confusion_matrix`` on a 512x512 mask (module docstring).
    """
    t = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(y_pred).ravel().astype(np.int64)
    keep = (t >= 0) & (t < n_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    return np.bincount(t[keep] * n_classes + p[keep], minlength=n_classes ** 2).reshape(n_classes, n_classes)


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``[K]`` of a confusion matrix, NaN for classes in neither the truth nor the predictions."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    return np.divide(inter, union, out=np.full(len(inter), np.nan), where=union > 0)


def miou(cm: np.ndarray, exclude: Sequence[int] = ()) -> float:
    """Mean IoU over classes (minus ``exclude``) that appear in the truth or the predictions."""
    per = iou(cm)
    classes = [c for c in range(len(per)) if c not in set(exclude) and not np.isnan(per[c])]
    return float(np.mean(per[classes])) if classes else 0.0


def bootstrap_ci(metric: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(indexes)`` over ``n`` test items resampled with replacement."""
    rng = np.random.default_rng(seed)
    vals = np.array([metric(rng.integers(0, n, n)) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))
