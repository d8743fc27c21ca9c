#!/usr/bin/env python
"""Why two GEO-Bench metric paths stay hand-written (geodino/heads/metrics.py): time per call against the libraries.

* the confusion matrix of one segmentation mask (runs once per test image, head and seed): ``np.bincount`` against
  ``sklearn.metrics.confusion_matrix`` and torchmetrics' ``multiclass_confusion_matrix``;
* one bootstrap resample of a test set (runs 1000 times per CI): resampling per-item statistics (correct or not,
  per-sample F1 counts) against calling scikit-learn's metric on the resampled arrays.

Every pair is also checked to agree. Timings on a shared machine are noisy: read the ratios.

    python pipelines/bench_metrics.py                  # 512x512 masks, 1000 test items, 20 repeats
    python pipelines/bench_metrics.py --mask 256 --items 500 --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def timed(fn, repeat: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mask", type=int, default=512, help="mask side in pixels")
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--items", type=int, default=1000, help="test-set size for the bootstrap rows")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()

    import torch
    from sklearn import metrics as skm

    from geodino.heads.metrics import confusion_matrix, f1_counts, f1_from_counts

    rng = np.random.default_rng(0)
    k = a.classes
    y = rng.integers(0, k, (a.mask, a.mask))
    p = np.where(rng.random(y.shape) < 0.7, y, rng.integers(0, k, y.shape))
    rows = []
    ref = skm.confusion_matrix(y.ravel(), p.ravel(), labels=list(range(k)))
    assert np.array_equal(confusion_matrix(y, p, k), ref)
    rows.append(("confusion matrix, one mask", "np.bincount (geodino)",
                 timed(lambda: confusion_matrix(y, p, k), a.repeat)))
    rows.append(("confusion matrix, one mask", "sklearn.metrics.confusion_matrix",
                 timed(lambda: skm.confusion_matrix(y.ravel(), p.ravel(), labels=list(range(k))), a.repeat)))
    try:
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        tp, ty = torch.from_numpy(p), torch.from_numpy(y)
        assert np.array_equal(multiclass_confusion_matrix(tp, ty, k, validate_args=False).numpy(), ref)
        rows.append(("confusion matrix, one mask", "torchmetrics (validate_args=False)",
                     timed(lambda: multiclass_confusion_matrix(tp, ty, k, validate_args=False), a.repeat)))
    except ImportError:
        pass

    n = a.items
    yt = rng.integers(0, 10, n)
    yp = np.where(rng.random(n) < 0.8, yt, rng.integers(0, 10, n))
    correct = (yt == yp).astype(float)
    idx = rng.integers(0, n, n)
    assert np.isclose(correct[idx].mean(), skm.accuracy_score(yt[idx], yp[idx]))
    rows.append(("accuracy, one resample", "mean of per-item correctness (geodino)",
                 timed(lambda: correct[idx].mean(), a.repeat)))
    rows.append(("accuracy, one resample", "sklearn.metrics.accuracy_score",
                 timed(lambda: skm.accuracy_score(yt[idx], yp[idx]), a.repeat)))
    t = rng.random((n, 43)) < 0.1
    s = rng.random((n, 43))
    counts = f1_counts(t, s)
    assert np.isclose(f1_from_counts(counts[idx]), skm.f1_score(t[idx], s[idx] >= 0.5, average="micro"))
    rows.append(("F1 micro (43 labels), one resample", "sum of per-sample counts (geodino)",
                 timed(lambda: f1_from_counts(counts[idx]), a.repeat)))
    rows.append(("F1 micro (43 labels), one resample", "sklearn.metrics.f1_score",
                 timed(lambda: skm.f1_score(t[idx], s[idx] >= 0.5, average="micro"), a.repeat)))

    print(f"{'what':38s} {'implementation':42s} {'ms/call':>10s}")
    for what, impl, ms in rows:
        print(f"{what:38s} {impl:42s} {ms:10.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"what": w, "impl": i, "ms": m} for w, i, m in rows], f, indent=2)


if __name__ == "__main__":
    main()
