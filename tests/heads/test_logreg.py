"""DINOv3's logistic-regression protocol as GridSearchCV equals an independent hand-rolled sweep."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from geodino.errors import LabelError
from geodino.heads import LogRegProtocol, c_grid


def _hand_sweep(xtr, ytr, xva, yva, xte, grid, multilabel):
    """Fit each C on train (scaler fitted on train), score valid, keep the first best; refit on train+valid."""

    def model(c):
        lr = LogisticRegression(C=c, max_iter=200, solver="lbfgs", tol=1e-4)
        return OneVsRestClassifier(lr) if multilabel else lr

    def score(m, x, y):
        if multilabel:
            return f1_score(y.astype(bool), m.predict_proba(x) >= 0.5, average="micro", zero_division=0.0)
        return float(np.mean(m.predict(x) == y))

    sc = StandardScaler().fit(xtr)
    best_c, best = None, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in grid:
            s = score(model(float(c)).fit(sc.transform(xtr), ytr), sc.transform(xva), yva)
            if s > best:
                best_c, best = float(c), s
        x_all, y_all = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
        sc = StandardScaler().fit(x_all)
        m = model(best_c).fit(sc.transform(x_all), y_all)
    xt = sc.transform(xte)
    return best_c, best, (m.predict_proba(xt) if multilabel else m.predict(xt))


def _data(rng, n, d, k, multilabel):
    centers = rng.normal(0, 1, (k, d))
    if multilabel:
        y = (rng.random((n, k)) < 0.3).astype(np.int64)
        x = y @ centers * 0.4 + rng.normal(0, 1, (n, d))
    else:
        y = rng.integers(0, k, n)
        x = centers[y] * 0.5 + rng.normal(0, 1, (n, d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("multilabel", [False, True], ids=["multiclass", "multilabel"])
def test_gridsearch_equals_a_hand_rolled_sweep_refit_on_train_plus_valid(multilabel):
    rng = np.random.default_rng(1)
    x, y = _data(rng, 180, 12, 4, multilabel)
    xtr, ytr, xva, yva, xte = x[:90], y[:90], x[90:140], y[90:140], x[140:]
    grid = c_grid(1e-4, 1e2, 5)
    proto = LogRegProtocol(grid, max_iter=200, multilabel=multilabel, n_jobs=1 if multilabel else 2)
    res = proto.fit_predict(xtr, ytr, xva, yva, xte)
    c, valid, pred = _hand_sweep(xtr.astype(np.float64), ytr, xva.astype(np.float64), yva, xte.astype(np.float64),
                                 grid, multilabel)
    assert res["C"] == c and res["valid"] == pytest.approx(valid)
    if multilabel:
        np.testing.assert_allclose(res["pred"], pred, rtol=1e-6, atol=1e-9)
    else:
        np.testing.assert_array_equal(res["pred"], pred)
    assert len(proto.history) == len(grid) and max(s for _, s in proto.history) == pytest.approx(valid)
    # refit on train+valid really differs from a refit on train only (the check would pass vacuously otherwise)
    sc = StandardScaler().fit(xtr.astype(np.float64))
    lr = LogisticRegression(C=c, max_iter=200)
    only_train = (OneVsRestClassifier(lr) if multilabel else lr).fit(sc.transform(xtr.astype(np.float64)), ytr)
    refit = res["model"]
    assert refit[0].n_samples_seen_ == len(xtr) + len(xva)
    xt = xte.astype(np.float64)
    assert not np.allclose(only_train.predict_proba(sc.transform(xt)), refit.predict_proba(xt))


def test_degenerate_labels_raise_label_error():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(LabelError, match="single class"):
        LogRegProtocol(c_grid(1e-2, 1, 2), n_jobs=1).fit_predict(x, np.zeros(10, int), x, np.zeros(10, int), x)
    with pytest.raises(LabelError, match="empty"):
        LogRegProtocol(c_grid(1e-2, 1, 2), n_jobs=1).fit_predict(x[:0], np.zeros(0, int), x, np.zeros(10, int), x)
