"""Training a head on a cube and aligned labels (:mod:`geodino.heads.labels`), validated on a spatial block split.

* patch level: logistic regression (standardised, lbfgs, C chosen by grouped cross-validation over the training
  blocks) and cosine kNN on the features of labelled valid patches;
* pixel level: the :class:`~geodino.heads.segmentation.LinearHead` and
  :class:`~geodino.heads.segmentation.DPTHead` on crops of ``crop`` x ``crop`` patches, against the labels at
  ``label_scale`` cells per patch side.

The split (:mod:`geodino.heads.split`): a compact held-out region of ``block`` x ``block``-patch blocks, and a ring
of ``buffer`` patches around it that neither side uses, both one model window by default, so that no training
patch shares a model window with a validation patch. Metrics on the validation blocks (accuracy, mIoU, per-class
IoU) come with 95 % percentile-bootstrap CIs as in GEO-Bench, resampling validation *blocks* (the independent units
here) rather than patches.

Features are read chunk by chunk (only chunks holding drawn patches, by dask's ``vindex``), at most
``max_samples`` patches or ``max_windows`` windows (seeded), so training memory does not grow with the cube.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np

from geodino.errors import ConfigError, LabelError
from geodino.heads.card import CARD_FORMAT, HEAD_KINDS, PATCH_KINDS, TrainedHead, cube_fingerprint
from geodino.heads.labels import LabelGrid
from geodino.heads.metrics import bootstrap_ci, confusion_matrix
from geodino.heads.split import Split, spatial_split, window_patches

__all__ = ["train_on_cube", "read_windows", "block_metrics", "linear_logits"]

log = logging.getLogger(__name__)


def read_windows(ds, origins: list[tuple[int, int]], window: int) -> np.ndarray:
    """Windows ``[N, 1, D, window, window]`` float32 of the features at patch ``origins``, zero past the cube's
    edges and on invalid patches."""
    f = ds["features"]
    h, w = ds.sizes["y"], ds.sizes["x"]
    out = np.zeros((len(origins), 1, ds.sizes["feature"], window, window), np.float32)
    for i, (r, c) in enumerate(origins):
        g = np.asarray(f[:, r:min(h, r + window), c:min(w, c + window)].values, np.float32)
        out[i, 0, :, :g.shape[1], :g.shape[2]] = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def block_metrics(cms: list[np.ndarray], classes: list[str], n_boot: int, seed: int) -> dict:
    """Accuracy, mIoU and per-class IoU from per-block confusion matrices, each with a block-bootstrap 95 % CI."""
    from geodino.heads.metrics import iou, miou

    stack = np.stack(cms).astype(np.int64)
    total = stack.sum(0)

    def acc(cm):
        return float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0

    out = {"blocks": len(cms), "samples": int(total.sum())}
    for name, fn in (("accuracy", acc), ("miou", miou)):
        lo, hi = bootstrap_ci(lambda idx, fn=fn: fn(stack[idx].sum(0)), len(cms), n_boot=n_boot, seed=seed)
        out[name] = {"value": fn(total), "ci95": [lo, hi]}
    out["iou"] = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou(total))}
    out["confusion_matrix"] = total.tolist()
    return out


def linear_logits(tensors: dict, x: np.ndarray) -> np.ndarray:
    """Logits ``[N, K]`` of a standardised linear classifier stored as ``mean``, ``scale``, ``weight``, ``bias``."""
    z = (np.asarray(x, np.float64) - tensors["mean"]) / tensors["scale"]
    return z @ tensors["weight"].T.astype(np.float64) + tensors["bias"]


def _logreg(x, y, groups, n_classes: int, seed: int, c_values) -> tuple[dict, dict]:
    from sklearn.model_selection import GridSearchCV, GroupKFold

    from geodino.heads.classification import _pipeline

    pipe = _pipeline(500, multilabel=False)
    n_groups = len(np.unique(groups))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at extreme C are expected
        if n_groups >= 3 and len(c_values) > 1:
            gs = GridSearchCV(pipe, {"clf__C": [float(c) for c in c_values]}, cv=GroupKFold(min(3, n_groups)),
                              scoring="accuracy", refit=True, n_jobs=1, error_score=np.nan)
            gs.fit(x.astype(np.float64), y, groups=groups)
            model = gs.best_estimator_
            info = {"C": float(gs.best_params_["clf__C"]), "cv_accuracy": float(gs.best_score_),
                    "C_grid": [float(c) for c in c_values], "cv": f"GroupKFold({min(3, n_groups)}) over blocks"}
        else:
            model = pipe.set_params(clf__C=1.0).fit(x.astype(np.float64), y)
            info = {"C": 1.0, "cv": f"none ({n_groups} training blocks)"}
    scaler, clf = model.named_steps["scale"], model.named_steps["clf"]
    weight = np.zeros((n_classes, x.shape[1]), np.float32)
    bias = np.full(n_classes, -1e4, np.float32)  # classes absent from training are never predicted
    present = clf.classes_.astype(int)
    if len(present) == 2:  # sigmoid(w.x + b) == softmax([0, w.x + b])
        weight[present[1]], bias[present[0]], bias[present[1]] = clf.coef_[0], 0.0, clf.intercept_[0]
    else:
        weight[present], bias[present] = clf.coef_, clf.intercept_
    return {"mean": scaler.mean_.astype(np.float64), "scale": scaler.scale_.astype(np.float64),
            "weight": weight, "bias": bias.astype(np.float64)}, info


def knn_proba(tensors: dict, x: np.ndarray, k: int, n_classes: int, chunk: int = 4096) -> np.ndarray:
    """Class probabilities ``[N, K]`` of cosine kNN: the share of the ``k`` nearest training patches per class."""
    import torch

    from geodino.heads.classification import cosine_neighbours

    tr = torch.as_tensor(np.asarray(tensors["features"], np.float32))
    lab = torch.as_tensor(np.asarray(tensors["labels"], np.int64))
    k = min(k, len(tr))
    out = [(torch.zeros(len(idx), n_classes).scatter_add_(1, lab[idx], torch.ones(idx.shape)) / k).numpy()
           for idx in cosine_neighbours(tr, x, k, chunk)]
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def _at_most(rng: np.random.Generator, n: int, limit: int) -> np.ndarray:
    """Sorted indexes of a seeded sample of ``limit`` of ``n`` items (all of them when there are no more)."""
    return np.sort(rng.choice(n, limit, replace=False)) if n > limit else np.arange(n)


def _patch_head(ds, labels: LabelGrid, kind: str, split: Split, seed: int, max_samples: int, k: int, n_boot: int,
                c_values) -> tuple[dict, dict]:
    from geodino.cube.reading import read_patches, unit_rows

    lab = labels.labels
    rng = np.random.default_rng(seed)
    tr_r, tr_c = np.nonzero(split.train)
    va_r, va_c = np.nonzero(split.valid)
    if len(np.unique(lab[tr_r, tr_c])) < 2:
        raise LabelError(f"too few samples for the split: the training blocks hold a single class "
                         f"({labels.classes[int(lab[tr_r[0], tr_c[0]])]!r}) once the held-out region and its "
                         f"{split.buffer}-patch ring are taken out; label more of each class, or use smaller blocks "
                         "(--block) or a smaller ring (--buffer)")
    keep = _at_most(rng, len(tr_r), max_samples)
    tr_r, tr_c = tr_r[keep], tr_c[keep]
    keep = _at_most(rng, len(va_r), max_samples)
    va_r, va_c = va_r[keep], va_c[keep]
    xs = read_patches(ds, np.concatenate([tr_r, va_r]), np.concatenate([tr_c, va_c]))[0].astype(np.float32)
    x_tr, x_va = xs[:len(tr_r)], xs[len(tr_r):]
    ok_tr, ok_va = np.isfinite(x_tr).all(1), np.isfinite(x_va).all(1)
    x_tr, tr_r, tr_c = x_tr[ok_tr], tr_r[ok_tr], tr_c[ok_tr]
    x_va, va_r, va_c = x_va[ok_va], va_r[ok_va], va_c[ok_va]
    y_tr, y_va = lab[tr_r, tr_c].astype(np.int64), lab[va_r, va_c].astype(np.int64)
    g_tr, g_va = split.block_id[tr_r, tr_c], split.block_id[va_r, va_c]
    n = labels.n_classes
    if kind == "logreg":
        tensors, info = _logreg(x_tr, y_tr, g_tr, n, seed, c_values)
        pred = linear_logits(tensors, x_va).argmax(1)
    else:
        f = unit_rows(x_tr)
        tensors = {"features": f.astype(np.float16), "labels": y_tr.astype(np.int32)}
        info = {"k": int(k), "metric": "cosine"}
        pred = knn_proba({"features": f, "labels": y_tr}, x_va, k, n).argmax(1)
    cms = [confusion_matrix(y_va[g_va == b], pred[g_va == b], n) for b in np.unique(g_va)]
    metrics = block_metrics(cms, list(labels.classes), n_boot, seed)
    info.update(train_samples=int(len(tr_r)), valid_samples=int(len(va_r)),
                train_blocks=int(len(np.unique(g_tr))), valid_blocks=int(len(np.unique(g_va))))
    return tensors, {"fit": info, "metrics": metrics}


def _pixel_head(ds, labels: LabelGrid, kind: str, split: Split, crop: int, seed: int, max_windows: int,
                iterations: int, batch_size: int, lr: float, n_boot: int, dpt_features: int,
                progress) -> tuple[dict, dict]:
    """Pixel heads train on crops of ``crop`` x ``crop`` patches holding training cells, with the features of
    patches outside the training area zeroed (they are invalid to the head), and are scored on crops of the
    held-out area likewise, so neither side sees the other's features through the head's convolutions."""
    from geodino.heads.segmentation import DPTHead, LinearHead, evaluate_head, seeded, train_head

    s = labels.scale

    def tiles(a, fill, k):  # ``a`` [H*k, W*k] padded with ``fill``, cut into crops [H/crop, W/crop, crop*k, crop*k]
        t = crop * k
        a = np.pad(a, ((0, -a.shape[0] % t), (0, -a.shape[1] % t)), constant_values=fill)
        return a.reshape(a.shape[0] // t, t, a.shape[1] // t, t).swapaxes(1, 2)

    def cells(mask):  # the labels of the cells of patches in ``mask``, cut into crops (-1 elsewhere)
        return tiles(np.where(np.repeat(np.repeat(mask, s, 0), s, 1), labels.labels, -1), -1, s)

    lab_tr, lab_va = cells(split.train), cells(split.valid)
    if len(np.unique(lab_tr[lab_tr >= 0])) < 2:
        raise LabelError("too few samples for the split: the training blocks hold a single class once the held-out "
                         f"region and its {split.buffer}-patch ring are taken out; label more of each class, or use "
                         "smaller blocks (--block) or a smaller ring (--buffer)")
    rng = np.random.default_rng(seed)
    # the crops holding a labelled cell (row-major), at most max_windows a side (seeded)
    tr, va = (np.argwhere((lab >= 0).any(axis=(2, 3))) for lab in (lab_tr, lab_va))
    tr, va = tr[_at_most(rng, len(tr), max_windows)], va[_at_most(rng, len(va), max_windows)]

    def grids(idx, area):  # the crops' features, zeroed outside ``area``
        g = read_windows(ds, [(r * crop, c * crop) for r, c in idx], crop)
        g *= tiles(area, False, 1)[tuple(idx.T)][:, None, None]
        return g

    d, n = int(ds.sizes["feature"]), labels.n_classes
    with seeded(seed):  # the initial weights: the same seed gives the same head
        head = LinearHead(d, n) if kind == "linear" else DPTHead(d, n, features=dpt_features)
    g_tr = grids(tr, split.train_area)
    head = train_head(head, g_tr, lab_tr[tuple(tr.T)].astype(np.int64), iterations=iterations, batch_size=batch_size,
                      lr=lr, ignore_index=-1, seed=seed, progress=progress)
    del g_tr
    _, cms = evaluate_head(head, grids(va, split.held_area), lab_va[tuple(va.T)].astype(np.int64), n,
                           ignore_index=-1)
    metrics = block_metrics(cms, list(labels.classes), n_boot, seed)
    tensors = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    info = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "crop_patches": crop,
            "train_crops": len(tr), "valid_crops": len(va), "dpt_features": dpt_features if kind == "dpt" else None}
    return tensors, {"fit": info, "metrics": metrics}


def train_on_cube(cube, labels: LabelGrid, *, head: str = "logreg", block: int | None = None,
                  buffer: int | None = None, valid_fraction: float = 0.25, seed: int = 0, max_samples: int = 20_000,
                  max_windows: int = 256, crop: int = 8, k: int = 20, iterations: int = 300, batch_size: int = 8,
                  lr: float = 1e-3, dpt_features: int = 64, n_boot: int = 1000,
                  c_values=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0), relax=(),
                  progress: Callable[[int, int], None] | None = None) -> TrainedHead:
    """Train a ``head`` (``logreg``, ``knn``, ``linear``, ``dpt``) on ``cube`` with ``labels`` aligned onto its
    grid (:func:`geodino.heads.labels.align_labels`; patch heads need ``scale=1``), validated on the spatial split
    of :mod:`geodino.heads.split` (blocks of ``block`` patches, a ring of ``buffer`` patches: both one model window
    by default; ``valid_fraction`` of the labelled patches held out). Pixel heads train on crops of ``crop``
    patches. ``relax`` names comparable fields (:mod:`geodino.cube.compat`) in which cubes the head is applied to
    may differ from this one. Returns a :class:`~geodino.heads.card.TrainedHead` whose card holds the classes,
    colours, the cube's fingerprint, the split (block, buffer and window sizes) and the validation metrics with
    bootstrap CIs."""
    from geodino import __version__
    from geodino.cube.reading import as_cubes, is_count
    from geodino.cube.compat import RULE, fingerprint, normalize_relax
    from geodino.export.cog import palette

    [ds], _ = as_cubes(cube)
    if head not in HEAD_KINDS:
        raise LabelError(f"unknown head {head!r}: choose one of {list(HEAD_KINDS)}")
    if not is_count(crop):
        raise LabelError(f"crop must be a positive number of patches, got {crop!r}")
    relax = normalize_relax(relax)
    for name, v in dict(k=k, max_samples=max_samples, max_windows=max_windows, iterations=iterations,
                        batch_size=batch_size, n_boot=n_boot).items():
        if not is_count(v):
            flag = {"k": "--k", "max_samples": "--max-samples", "iterations": "--iterations"}.get(name, name)
            raise ConfigError(f"{flag} must be a positive integer, got {v!r}")
    if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
        raise ConfigError(f"the learning rate (--lr) must be a positive number, got {lr!r}")
    expect = (int(ds.sizes["y"]) * labels.scale, int(ds.sizes["x"]) * labels.scale)
    if labels.labels.shape != expect:
        raise LabelError(f"the labels ({labels.labels.shape}) are not aligned on this cube's grid at scale "
                         f"{labels.scale} ({expect}): align them with align_labels(cube, ...)")
    if head in PATCH_KINDS and labels.scale != 1:
        raise LabelError(f"a {head} head predicts one class per patch: align the labels at scale 1 (--label-scale 1)")
    valid = np.asarray(ds["valid"].values, bool)
    s = labels.scale
    # a class per patch (for pixel heads, the largest class index among its cells: what the split balances)
    per_patch = labels.labels.reshape(valid.shape[0], s, valid.shape[1], s).max(axis=(1, 3))
    per_patch = np.where(valid, per_patch, -1)
    if not (per_patch >= 0).any():
        raise LabelError("no labelled patch is valid in the cube (the labels fall on nodata)")
    window, window_source = window_patches(ds)
    split = spatial_split(per_patch, block=block, buffer=buffer, window=window, window_source=window_source,
                          valid_fraction=valid_fraction, seed=seed)
    if head in PATCH_KINDS:
        tensors, res = _patch_head(ds, labels, head, split, seed, max_samples, k, n_boot, c_values)
    else:
        tensors, res = _pixel_head(ds, labels, head, split, crop, seed, max_windows, iterations, batch_size, lr,
                                   n_boot, dpt_features, progress)
    colours = labels.colours or tuple(rgba[:3] for rgba in palette(labels.n_classes).values())
    fp = cube_fingerprint(ds)
    card = {"format": CARD_FORMAT, "head": head, "level": "patch" if head in PATCH_KINDS else "pixel",
            "classes": list(labels.classes), "colours": [list(c) for c in colours], "label_kind": labels.kind,
            "detection": labels.kind == "detection", "label_source": labels.source, "label_scale": labels.scale,
            "label_counts": labels.counts(), "feature_dim": int(ds.sizes["feature"]), "cube": fp,
            "compat": {"rule": RULE, "fingerprint": fingerprint(ds), "relax": list(relax)},
            "random_weights": bool((fp.get("model") or {}).get("random_weights")),
            "split": split.describe(), "fit": res["fit"], "metrics": {"valid": res["metrics"]},
            "geodino_version": __version__}
    m = res["metrics"]
    log.info("%s head: valid accuracy %.4f [%.4f, %.4f], mIoU %.4f", head, m["accuracy"]["value"],
             *m["accuracy"]["ci95"], m["miou"]["value"])
    return TrainedHead(tensors, card)
