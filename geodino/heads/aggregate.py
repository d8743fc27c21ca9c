"""Aggregating scores across tasks as GEO-Bench does: means, interquartile means, optional normalisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["iqm", "normalize", "aggregate"]


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (scipy's 25 % trimmed mean)."""
    from scipy import stats  # 0.5-3 s to import: only here, so that importing geodino.heads stays cheap

    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def normalize(score: float, lo: float, hi: float) -> float:
    """Per-task min-max normalisation over baselines (GEO-Bench): 0 at ``lo``, 1 at ``hi``."""
    return (score - lo) / (hi - lo) if hi != lo else 0.0


def aggregate(scores: Mapping[str, Sequence[float]], bounds: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """``scores``: task -> per-seed scores. Returns the mean and IQM over tasks (of per-task seed means) and over
    all (task, seed) scores; with ``bounds`` (task -> (lo, hi)) the scores are normalised first."""
    if bounds:
        scores = {t: [normalize(v, *bounds[t]) for v in vs] for t, vs in scores.items() if t in bounds}
    per_task = {t: float(np.mean(v)) for t, v in scores.items()}
    flat = [v for vs in scores.values() for v in vs]
    return {"tasks": len(per_task), "mean": float(np.mean(list(per_task.values()))) if per_task else float("nan"),
            "iqm": iqm(flat) if flat else float("nan"), "normalized": bool(bounds)}
