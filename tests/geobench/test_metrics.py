"""Metrics and aggregation cross-checked against scikit-learn, torchmetrics and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from geodino.heads import (accuracy, aggregate, bootstrap_ci, confusion_matrix, f1_micro, iqm,
                           mean_average_precision, miou)

rng = np.random.default_rng(0)


def test_accuracy_and_f1_micro_match_sklearn():
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    t = rng.random((100, 43)) < 0.1
    s = rng.random((100, 43))
    assert f1_micro(t, s) == pytest.approx(skm.f1_score(t, s >= 0.5, average="micro"))


def test_f1_micro_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification", reason="torchmetrics not installed")
    t = rng.random((64, 43)) < 0.1
    s = rng.random((64, 43))
    ref = tm.multilabel_f1_score(torch.tensor(s), torch.tensor(t.astype(int)), num_labels=43, average="micro")
    assert f1_micro(t, s) == pytest.approx(float(ref), abs=1e-6)


def test_map_matches_sklearn_with_ties():
    t = rng.random((80, 10)) < 0.3
    s = np.round(rng.random((80, 10)), 1)  # many ties
    t[:, 9] = False  # a class without positives is left out, as sklearn warns and we skip
    keep = t.any(0)
    assert mean_average_precision(t, s) == pytest.approx(skm.average_precision_score(t[:, keep], s[:, keep],
                                                                                     average="macro"))


def test_miou_matches_sklearn_jaccard_with_exclusions_and_ignore():
    y = rng.integers(0, 7, (4, 32, 32))
    p = np.where(rng.random(y.shape) < 0.7, y, rng.integers(0, 7, y.shape))
    cm = confusion_matrix(y, p, 7)
    assert cm.sum() == y.size
    assert miou(cm) == pytest.approx(skm.jaccard_score(y.ravel(), p.ravel(), average="macro"))
    # class 0 excluded from the mean (m-cashew), ignore index 6 dropped from the matrix
    cm = confusion_matrix(y, p, 7, ignore_index=6)
    keep = y.ravel() != 6
    ref = skm.jaccard_score(y.ravel()[keep], p.ravel()[keep], labels=[1, 2, 3, 4, 5], average="macro")
    assert miou(cm, exclude=[0, 6]) == pytest.approx(ref)


def test_iqm_and_aggregate_by_hand():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(np.mean([3, 4, 5, 6]))
    agg = aggregate({"a": [80.0], "b": [60.0], "c": [90.0], "d": [70.0]})
    assert agg["mean"] == pytest.approx(75.0) and agg["iqm"] == pytest.approx(75.0)
    norm = aggregate({"a": [80.0], "b": [60.0]}, {"a": (60.0, 100.0), "b": (50.0, 70.0)})
    assert norm["mean"] == pytest.approx((0.5 + 0.5) / 2) and norm["normalized"]


def test_bootstrap_ci_brackets_the_estimate():
    correct = (rng.random(500) < 0.8).astype(float)
    lo, hi = bootstrap_ci(lambda i: correct[i].mean(), 500, n_boot=500)
    assert lo < correct.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 500), rel=0.3)


def test_bootstrap_statistics_equal_sklearn_on_resamples():
    from geodino.heads import f1_counts, f1_from_counts

    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    correct = (y == p).astype(float)
    t = rng.random((300, 43)) < 0.1
    s = rng.random((300, 43))
    s[:5, :5] = 0.5  # exactly at the threshold: on
    counts = f1_counts(t, s)
    for _ in range(5):
        i = rng.integers(0, 300, 300)
        assert correct[i].mean() == pytest.approx(skm.accuracy_score(y[i], p[i]))
        assert f1_from_counts(counts[i]) == pytest.approx(skm.f1_score(t[i], s[i] >= 0.5, average="micro"))
    assert f1_from_counts(counts) == pytest.approx(f1_micro(t, s))
