"""The spatial split of a head's labelled patches into training and validation, held apart by the model's receptive
field.

Each patch's features are computed from a whole model window (the tile plus its halo on both sides: 512 + 2 x 32 px
= 576 px = 36 patches by default), so two patches closer than a window can share most of their input, and labels
are spatially autocorrelated: a validation patch beside a training patch is half seen. The split therefore

1. cuts the patch grid into ``block`` x ``block``-patch blocks (default: one model window);
2. grows one compact held-out region from a seeded random labelled block, adding the labelled blocks nearest to
   it until ``valid_fraction`` of the labelled patches are held out (one compact region loses the least training
   data to the ring below); of several such regions, it keeps one that leaves every class on both sides;
3. drops, from training, every labelled patch within ``buffer`` patches (default: one model window) of the
   held-out blocks: a ring used by neither side.

Validation metrics are then bootstrapped over the held-out blocks. On labels that are spatially autocorrelated noise,
independent of the features, this split scores near chance, where 8-patch blocks without a ring scored well above it
(tests/heads/test_split.py). A ``buffer`` smaller than the window is allowed (small areas cannot hold a ring) and the
split says so (``optimistic``), as does the head's card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geodino.errors import LabelError

__all__ = ["Split", "spatial_split", "window_patches", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 36  # patches: geodino's default tiling (512 + 2 x 32 px) when a cube does not record its own


def window_patches(ds) -> tuple[int, str]:
    """The model window of the cube's tiling, in patches (rounded up), and how it was found, for the card."""
    tiling = (ds.attrs.get("geodino") or {}).get("tiling") or {}
    patch = int(tiling.get("patch") or 16)
    window = tiling.get("window")
    if not window and tiling.get("tile") is not None:
        window = int(tiling["tile"]) + 2 * int(tiling.get("halo") or 0)
    if not window:
        return DEFAULT_WINDOW, f"not recorded in the cube: geodino's default of {DEFAULT_WINDOW} patches"
    return math.ceil(int(window) / patch), (f"window {window} px = tile {tiling.get('tile')} + 2 x halo "
                                            f"{tiling.get('halo', 0)} px, patch {patch} px")


@dataclass(frozen=True)
class Split:
    """Which labelled patches train (``train``) and validate (``valid``), ``[H, W]`` boolean masks on the patch
    grid; ``block_id`` [H, W] the split block of each patch (bootstrap and cross-validation groups); the ring of
    ``buffer`` patches around the held-out blocks is in neither. ``held_area`` marks the held-out blocks and
    ``train_area`` the patches at least ``buffer`` patches away from them (labelled or not): pixel heads see
    features from these areas only, on their side."""

    train: np.ndarray
    valid: np.ndarray
    held_area: np.ndarray
    train_area: np.ndarray
    block_id: np.ndarray
    block: int
    buffer: int
    window: int
    window_source: str
    seed: int
    valid_fraction: float
    ring_patches: int

    @property
    def optimistic(self) -> bool:
        """Whether validation patches may lie within one model window of training patches."""
        return self.buffer < self.window

    def describe(self) -> dict:
        """What the head's card records of the split."""
        return {"kind": "spatial: one held-out region of blocks, a buffer ring around it used by neither side",
                "block_patches": int(self.block), "buffer_patches": int(self.buffer),
                "window_patches": int(self.window), "window": self.window_source,
                "optimistic": bool(self.optimistic), "valid_fraction": float(self.valid_fraction),
                "seed": int(self.seed), "train_patches": int(self.train.sum()), "valid_patches": int(self.valid.sum()),
                "ring_patches": int(self.ring_patches)}


def _check_size(value, what: str, minimum: int) -> int:
    from geodino.cube.reading import is_count

    if not is_count(value, minimum):
        raise LabelError(f"{what} must be a whole number of patches >= {minimum}, got {value!r}")
    return int(value)


def _grow(ids, counts, nbx, start, target, rng) -> np.ndarray:
    """The labelled blocks nearest to block ``start`` (Chebyshev, then Euclidean, ties seeded) until they hold
    ``target`` patches (at least one block, never all)."""
    by, bx = ids // nbx, ids % nbx
    sy, sx = start // nbx, start % nbx
    cheb = np.maximum(np.abs(by - sy), np.abs(bx - sx))
    eucl = (by - sy) ** 2 + (bx - sx) ** 2
    order = np.lexsort((rng.permutation(len(ids)), eucl, cheb))
    n_take = int(np.searchsorted(np.cumsum(counts[order]), target) + 1)
    return ids[order[:min(n_take, len(ids) - 1)]]


CANDIDATES = 32  # held-out regions tried (grown from seeded random blocks); the best one is kept


def spatial_split(labels: np.ndarray, *, block: int | None, buffer: int | None, window: int,
                  window_source: str = "", valid_fraction: float = 0.25, seed: int = 0) -> Split:
    """Split the labelled patches (``labels`` [H, W]: a class per patch, -1 where unlabelled; or a boolean mask)
    as the module docstring says; ``block`` and ``buffer`` default (None) to ``window``.

    Of :data:`CANDIDATES` held-out regions grown from seeded random blocks, the one kept leaves training every class
    (then validation as many classes as it can, then training the most patches), so that large class areas do not
    leave one side with a single class. Raises :class:`LabelError` with what to do when the labels cannot hold the
    split.
    """
    from scipy.ndimage import maximum_filter

    block = window if block is None else _check_size(block, "block (--block)", 1)
    buffer = window if buffer is None else _check_size(buffer, "buffer (--buffer)", 0)
    if not 0 < valid_fraction < 1:
        raise LabelError(f"valid_fraction must lie strictly between 0 and 1, got {valid_fraction!r}")
    labels = np.where(labels, 0, -1) if labels.dtype == bool else np.asarray(labels)
    labelled = labels >= 0
    h, w = labelled.shape
    nby, nbx = -(-h // block), -(-w // block)
    rows, cols = np.nonzero(labelled)
    bid = (rows // block) * nbx + cols // block
    ids, counts = np.unique(bid, return_counts=True)
    if len(ids) < 2:
        raise LabelError(f"too few samples for the split: the labels fall in {len(ids)} block(s) of {block} x {block} "
                         "patches and a spatial split needs at least 2: label a wider area, or use smaller blocks "
                         "(--block)")
    n_classes = len(np.unique(labels[labelled]))
    rng = np.random.default_rng(seed)
    starts = rng.permutation(ids)[:CANDIDATES]
    best, best_score = None, None
    for start in starts:
        held = _grow(ids, counts, nbx, start, valid_fraction * len(rows), rng)
        held_mask = np.zeros((nby, nbx), bool)
        held_mask[held // nbx, held % nbx] = True
        area = np.repeat(np.repeat(held_mask, block, 0), block, 1)[:h, :w]
        near = maximum_filter(area.astype(np.uint8), size=2 * buffer + 1, mode="constant") > 0 if buffer else area
        train, valid = labelled & ~near, labelled & area
        score = (len(np.unique(labels[train])), len(np.unique(labels[valid])), int(train.sum()))
        if best_score is None or score > best_score:
            best, best_score = (area, near, train, valid), score
        if score[0] == n_classes and score[1] == n_classes and best is not None and score >= best_score:
            break  # every class on both sides: no candidate can do better on classes
    area, near, train, valid = best
    if not train.any():
        raise LabelError(
            f"too few samples for the split: the labelled area is too small to hold out {valid_fraction:.0%} of it "
            f"and keep a ring of {buffer} patches (one model window: {window_source or f'{window} patches'}) "
            f"free of training: label a wider area, or pass a smaller --buffer (the head's card records it, and "
            f"its scores are then optimistic)")
    block_id = np.full((h, w), -1, np.int64)
    block_id[rows, cols] = bid
    ring = int((labelled & near & ~area).sum())
    return Split(train, valid, area, ~near, block_id, block, buffer, window, window_source, seed, valid_fraction,
                 ring)
