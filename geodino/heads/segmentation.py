"""Segmentation heads on frozen patch features: a linear head and a DPT-style head, their training and evaluation.

* :class:`LinearHead`: BatchNorm + 1x1 conv over the last block's patch tokens, bilinear upsampling to the label;
* :class:`DPTHead`: reassemble 4 intermediate layers at 4x, 2x, 1x and 1/2x of the patch grid, fuse them
  coarse-to-fine with residual conv units (DPT, Ranftl et al. 2021), then classify and upsample.

Both take patch grids ``[B, L, D, h, w]`` (the ``L`` requested blocks) from any source: the GEO-Bench feature
cache or tiles of a zarr feature cube. Training: AdamW, cross-entropy with an ignore index, warmup + cosine.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodino.heads.metrics import confusion_matrix

__all__ = ["LinearHead", "DPTHead", "dpt_layers", "train_head", "evaluate_head", "predict", "take", "seeded",
           "head_threads"]

log = logging.getLogger(__name__)

KNOWN_DPT_LAYERS = {24: [4, 11, 17, 23], 40: [9, 19, 29, 39]}  # ViT-L, 7B (official dense heads)


def dpt_layers(depth: int) -> list[int]:
    """The 4 blocks a DPT head reads: the official ones for ViT-L/7B, else evenly spaced, ending at the last."""
    if depth in KNOWN_DPT_LAYERS:
        return list(KNOWN_DPT_LAYERS[depth])
    if depth < 4:
        return list(range(depth))
    return sorted({round((i + 1) * depth / 4) - 1 for i in range(4)})


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.drop = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(in_dim, n_classes, 1)

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        """``grids`` [B, L, D, h, w] -> logits [B, K, h, w] from the last block."""
        return self.conv(self.drop(self.bn(grids[:, -1])))


class _RCU(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(F.relu(x))))


class _Fusion(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.skip = _RCU(c)
        self.rcu = _RCU(c)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.skip(skip)
        x = self.rcu(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """DPT decoder over 4 patch grids; logits come out at 8x the patch-grid resolution (half a patch)."""

    def __init__(self, in_dim: int, n_classes: int, features: int = 256, dropout: float = 0.1,
                 channels: Sequence[int] | None = None):
        super().__init__()
        ch = list(channels or [features // 2, features, features * 2, features * 2])
        self.proj = nn.ModuleList(nn.Conv2d(in_dim, c, 1) for c in ch)
        self.resample = nn.ModuleList([
            nn.ConvTranspose2d(ch[0], ch[0], 4, stride=4),
            nn.ConvTranspose2d(ch[1], ch[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(ch[3], ch[3], 3, stride=2, padding=1),
        ])
        self.to_feat = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in ch)
        self.fuse = nn.ModuleList(_Fusion(features) for _ in range(4))
        self.head = nn.Sequential(nn.Conv2d(features, features // 2, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                  nn.Conv2d(features // 2, n_classes, 1))

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        levels = [grids[:, min(i, grids.shape[1] - 1)] for i in range(4)]
        feats = [self.to_feat[i](self.resample[i](self.proj[i](x))) for i, x in enumerate(levels)]
        out = self.fuse[3](feats[3])
        for i in (2, 1, 0):
            skip = feats[i]
            if out.shape[-2:] != skip.shape[-2:]:
                out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            out = self.fuse[i](out, skip)
        return self.head(out)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu"):
    """torch's random generator seeded with ``seed`` inside the block (a head's initial weights, its dropout) and
    restored after it, so that the same seed gives the same head without seeding the whole process. (torch seeds
    a new process at random: an unseeded head differed from run to run.)"""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# Below this many input values per batch, one intra-op thread: a head on the demo cube (8 windows of 8x8 patches of
# 384 features) took 4.5-6.8 ms an iteration on one thread and 17-76 ms on two, on the project's 2-core Xeon under
# load (a DPT head there: 0.6-0.7 s against 4.6-5.5 s); above it, torch's own thread count.
SMALL_BATCH = 1 << 22


@contextlib.contextmanager
def head_threads(batch_values: int):
    """One intra-op thread for small heads (see :data:`SMALL_BATCH`), torch's setting restored afterwards."""
    before = torch.get_num_threads()
    if batch_values < SMALL_BATCH and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def take(a, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted) of a numpy array or a lazy zarr array."""
    if hasattr(a, "oindex"):
        return np.asarray(a.oindex[idx.tolist()])
    return np.asarray(a)[idx]


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield np.sort(order[i:i + batch_size])


def train_head(head: nn.Module, grids, masks, *, iterations: int = 2000, batch_size: int = 8, lr: float = 1e-3,
               weight_decay: float = 1e-4, warmup: int = 100, ignore_index: int = -100, seed: int = 0,
               device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train ``head`` on patch grids [N, L, D, h, w] (array-like, read lazily per batch) and masks [N, H, W].

    ``seed`` fixes the batches and the dropout (build the head itself under :func:`seeded` for its initial weights);
    the same seed gives the same head, bit for bit, on one machine. ``progress(done, total)`` is called after every
    iteration (cheap: a progress bar's update)."""
    device = torch.device(device)
    with seeded(seed, device), head_threads(batch_size * int(np.prod(grids.shape[1:]))):
        head = head.to(device).train()
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        warmup = min(warmup, max(1, iterations // 10))

        def lr_at(it):
            if it < warmup:
                return (it + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, iterations - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        rng = np.random.default_rng(seed)
        epochs = (idx for _ in itertools.count() for idx in _batches(int(masks.shape[0]), batch_size, rng))
        for it, idx in zip(range(iterations), epochs):
            x = torch.as_tensor(take(grids, idx), device=device).float()
            y = torch.as_tensor(take(masks, idx), device=device).long()
            logits = F.interpolate(head(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if it % max(1, iterations // 10) == 0:
                log.debug("iteration %d/%d loss %.4f", it, iterations, loss.item())
            if progress:
                progress(it + 1, iterations)
    return head.eval()


@torch.inference_mode()
def predict(head: nn.Module, grids, size: tuple[int, int], batch_size: int = 16,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Class maps [N, H, W] for patch grids [N, L, D, h, w]."""
    device = torch.device(device)
    head = head.to(device).eval()
    out = []
    for idx in _batches(int(grids.shape[0]), batch_size, None):
        logits = head(torch.as_tensor(take(grids, idx), device=device).float())
        out.append(F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).cpu().numpy())
    return np.concatenate(out)


def evaluate_head(head: nn.Module, grids, masks, n_classes: int, *, ignore_index: int | None = None,
                  batch_size: int = 16, device: torch.device | str = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Accumulated confusion matrix over all pixels, and per-sample matrices (for bootstrap CIs)."""
    total = np.zeros((n_classes, n_classes), np.int64)
    per_sample: list[np.ndarray] = []
    n = int(masks.shape[0])
    with head_threads(batch_size * int(np.prod(grids.shape[1:]))):
        for idx in _batches(n, batch_size, None):
            y = take(masks, idx)
            pred = predict(head, take(grids, idx), size=y.shape[-2:], batch_size=batch_size, device=device)
            for t, p in zip(y, pred):
                cm = confusion_matrix(t, p, n_classes, ignore_index)
                per_sample.append(cm)
                total += cm
            if progress:
                progress(len(per_sample), n)
    return total, per_sample
