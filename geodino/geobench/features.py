"""Frozen backbone features of GEO-Bench splits, computed in batches on the best device and cached on disk.

Input preparation (logged with every result) follows what reproduces DINOv3's GEO-Bench numbers: RGB bands
selected by name, per-band min-max from ``band_stats.json`` to 0-255 (then /255), the SAT or ImageNet mean/std,
and a resize (``native`` keeps the size, cropped to whole patches as the official model does; 224; 512).

A cache entry is a zarr group per (task, partition, split, model + weights, input preparation, layers) holding
``cls`` (N, D), ``patch_mean`` (N, D), labels and, for segmentation, the normed patch grids of the requested
blocks ``patches`` (N, L, D, h, w) in float16, chunked one sample per chunk. It records its provenance and is
reused only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geodino.errors import ConfigError
from geodino.geobench.reader import GeoBenchTask
from geodino.models import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD

__all__ = ["InputPrep", "FeatureSet", "extract_features", "best_device"]

log = logging.getLogger(__name__)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class InputPrep:
    """How GEO-Bench bands become model input."""

    bands: tuple[str, ...] = ("red", "green", "blue")
    stats: tuple[str, str] = ("min", "max")
    normalization: str = "model"  # model | sat493m | imagenet
    size: str | int = "native"  # native | 224 | 512 | any multiple of 16
    date_index: int = 0

    def __post_init__(self):
        if self.normalization not in ("model", "sat493m", "imagenet"):
            raise ConfigError(f"normalization {self.normalization!r}: choose model, sat493m or imagenet")
        if self.size != "native" and (int(self.size) <= 0 or int(self.size) % 16):
            raise ConfigError(f"input size {self.size!r}: use native or a positive multiple of 16 (224, 512)")

    def mean_std(self, model_cfg) -> tuple[tuple, tuple]:
        if self.normalization == "sat493m":
            return SAT_MEAN, SAT_STD
        if self.normalization == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        return model_cfg.mean, model_cfg.std

    def to_dict(self) -> dict:
        return asdict(self)

    def tag(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def image(self, task: GeoBenchTask, sample) -> np.ndarray:
        """[C, H, W] float32 in 0..1: each band min-max stretched with its band_stats."""
        chans = []
        for want in self.bands:
            key = task.find_band(sample, want, self.date_index)
            arr = np.asarray(sample.bands[key], dtype=np.float64)
            if arr.ndim == 3:  # (H, W, 1) layouts
                arr = arr[..., 0]
            st = task.stats_for(key, sample.band_info.get(key))
            lo, hi = float(st[self.stats[0]]), float(st[self.stats[1]])
            chans.append(np.clip((arr - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0))
        shapes = {c.shape for c in chans}
        if len(shapes) > 1:  # bands of different resolution: bring all to the largest
            big = max(shapes, key=lambda s: s[0] * s[1])
            chans = [c if c.shape == big else F.interpolate(torch.from_numpy(c)[None, None], size=big,
                                                              mode="bilinear", align_corners=False)[0, 0].numpy()
                     for c in chans]
        # min-max to 0-255 then /255: the 8-bit step of the reproduced protocol
        return (np.round(np.stack(chans) * 255.0) / 255.0).astype(np.float32)

    def batch(self, images: list[np.ndarray], mean, std) -> torch.Tensor:
        """Resize/crop and normalise a list of [C, H, W] images into one [B, C, S, S] tensor."""
        out = []
        for img in images:
            t = torch.from_numpy(img)[None]
            if self.size == "native":
                h, w = t.shape[-2:]
                t = t[..., : h - h % 16, : w - w % 16]  # the official model's bottom/right crop
            else:
                s = int(self.size)
                if t.shape[-2:] != (s, s):
                    t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False,
                                      antialias=t.shape[-1] > s)
            out.append(t[0])
        x = torch.stack(out)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - m) / sd


class FeatureSet:
    """Cached features of one split (a zarr group; arrays are read lazily)."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r")
        self.attrs = dict(self.group.attrs)

    @property
    def cls(self) -> np.ndarray:
        return self.group["cls"][...]

    @property
    def patch_mean(self) -> np.ndarray:
        return self.group["patch_mean"][...]

    @property
    def labels(self) -> np.ndarray:
        return self.group["labels"][...]

    @property
    def patches(self):
        """Lazy (N, L, D, h, w) zarr array of normed intermediate patch grids (segmentation only)."""
        return self.group["patches"]

    @property
    def masks(self):
        return self.group["labels"]

    def __len__(self) -> int:
        return int(self.group["cls"].shape[0])


def _model_tag(model) -> str:
    w = model.weights_info
    arch = json.dumps(model.arch.to_dict(), sort_keys=True)
    sha = w.sha256 if w is not None else "unknown"
    return f"{model.cfg.name}-{hashlib.sha256((sha + arch).encode()).hexdigest()[:12]}"


def extract_features(task: GeoBenchTask, split: str, model, prep: InputPrep, *, partition: str = "default",
                     layers: list[int] | None = None, cache_dir: str | os.PathLike = "geobench-cache",
                     batch_size: int = 32, device: torch.device | None = None,
                     progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """Features of ``split`` (computed once, then read from the cache)."""
    import zarr

    names = task.split(split, partition)
    if not names:
        raise ConfigError(f"{task.name} split {split!r} of partition {partition!r} is empty")
    device = device or best_device()
    key = hashlib.sha256(json.dumps({"names": names, "layers": layers}, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / task.name / _model_tag(model) / f"{prep.tag()}" / f"{partition}-{split}-{key}.zarr"
    if (path / "zarr.json").is_file():
        fs = FeatureSet(path)
        if fs.attrs.get("complete"):
            log.info("%s %s: features from the cache %s", task.name, split, path)
            return fs
    model = model.to(device).eval()
    mean, std = prep.mean_std(model.cfg)
    root = zarr.open_group(str(path), mode="w")
    n, d = len(names), model.embed_dim
    cls = root.create_array("cls", shape=(n, d), chunks=(min(n, 1024), d), dtype="float32")
    pmean = root.create_array("patch_mean", shape=(n, d), chunks=(min(n, 1024), d), dtype="float32")
    labels = patches = None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for i in range(0, n, batch_size):
        chunk = names[i:i + batch_size]
        samples = [task.load_sample(s) for s in chunk]
        x = prep.batch([prep.image(task, s) for s in samples], mean, std).to(device)
        with torch.inference_mode(), autocast:
            out = model.forward_features(x)
            grids = model.get_intermediate_layers(x, layers, norm=True) if layers else None
        cls[i:i + len(chunk)] = out["cls"].float().cpu().numpy()
        pmean[i:i + len(chunk)] = out["patches"].float().mean(dim=(1, 2)).cpu().numpy()
        ys = [np.asarray(s.label) for s in samples]
        if labels is None:
            shape = (n, *ys[0].shape)
            dtype = "int64" if task.kind != "multilabel" else "uint8"
            labels = root.create_array("labels", shape=shape, chunks=(1, *ys[0].shape) if ys[0].ndim == 2 else
                                       (min(n, 4096), *ys[0].shape), dtype=dtype)
        labels[i:i + len(chunk)] = np.stack(ys).astype(labels.dtype)
        if grids:
            g = torch.stack(grids, dim=1).to(torch.float16).cpu().numpy()  # [B, L, D, h, w]
            if patches is None:
                patches = root.create_array("patches", shape=(n, *g.shape[1:]), chunks=(1, *g.shape[1:]),
                                            dtype="float16")
            patches[i:i + len(chunk)] = g
        if progress:
            progress(min(i + batch_size, n), n)
    w = model.weights_info
    root.attrs.update({
        "task": task.name, "split": split, "partition": partition, "n": n, "layers": layers,
        "model": model.cfg.name, "arch": model.arch.to_dict(),
        "weights": w.to_dict() if w is not None else None, "random_weights": bool(w is not None and w.random),
        "prep": prep.to_dict(), "mean": list(mean), "std": list(std), "device": str(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": True,
    })
    return FeatureSet(path)
