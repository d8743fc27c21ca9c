"""Frozen backbone features of GEO-Bench splits, computed by the embed engine and cached on disk.

Input preparation (logged with every result) follows what reproduces DINOv3's GEO-Bench numbers: RGB bands
selected by name, per-band min-max from ``band_stats.json`` to 0-255 (then /255), the SAT or ImageNet mean/std,
and a resize (``native`` keeps the size, cropped to whole patches as the official model does; 224; 512).
It is the ``geobench`` preset of the one model-input contract (:func:`geodino.raster.geobench_radiometry`):
raw band values go to the same engine as ``geodino embed`` (same precision policy, fixed-shape micro-batches),
which applies the min-max, the 8-bit steps, the resize and the normalisation on the device, and returns the CLS
token, the mean patch feature and, for segmentation, the normed grids of the DPT blocks from one forward pass.
:meth:`InputPrep.image` keeps the same preparation in numpy as a reference.

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

__all__ = ["InputPrep", "FeatureSet", "extract_features"]

log = logging.getLogger(__name__)


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

    def _bands(self, task: GeoBenchTask, sample, dtype) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
        """Each selected band [H, W] as ``dtype`` and its (lo, hi) from band_stats."""
        chans, bounds = [], []
        for want in self.bands:
            key = task.find_band(sample, want, self.date_index)
            arr = np.asarray(sample.bands[key], dtype=dtype)
            st = task.stats_for(key, sample.band_info.get(key))
            chans.append(arr[..., 0] if arr.ndim == 3 else arr)  # (H, W, 1) layouts
            bounds.append((float(st[self.stats[0]]), float(st[self.stats[1]])))
        return chans, bounds

    def raw(self, task: GeoBenchTask, sample) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The selected bands' raw values [C, H, W] (float32; bands of another resolution resampled bilinearly
        to the largest) and their (lo, hi) band statistics."""
        chans, bounds = self._bands(task, sample, np.float32)
        raw = _to_largest(chans)
        if self.size == "native":
            h, w = raw.shape[-2:]
            raw = raw[..., : h - h % 16, : w - w % 16]  # the official model's bottom/right crop
        return np.ascontiguousarray(raw), [(lo, hi if hi > lo else lo + 1.0) for lo, hi in bounds]

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
        chans, bounds = self._bands(task, sample, np.float64)
        chans = [np.clip((c - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) for c, (lo, hi) in zip(chans, bounds)]
        # min-max to 0-255 then /255: the 8-bit step of the reproduced protocol
        return (np.round(_to_largest(chans) * 255.0) / 255.0).astype(np.float32)

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


def _to_largest(chans: list[np.ndarray]) -> np.ndarray:
    """[C, H, W]: bands of different resolution resampled bilinearly to the largest."""
    big = max({c.shape for c in chans}, key=lambda s: s[0] * s[1])
    return np.stack([c if c.shape == big else F.interpolate(torch.from_numpy(c)[None, None], size=big,
                                                             mode="bilinear", align_corners=False)[0, 0].numpy()
                     for c in chans])


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


def _model_tag(engine) -> str:
    w = engine.weights_info
    arch = json.dumps(engine.model.arch.to_dict(), sort_keys=True)
    numerics = json.dumps({k: v for k, v in engine.numerics().items() if k != "device_name"}, sort_keys=True)
    sha = w.sha256 if w is not None else "unknown"
    return f"{engine.cfg.name}-{hashlib.sha256((sha + arch + numerics).encode()).hexdigest()[:12]}"


def extract_features(task: GeoBenchTask, split: str, engine, prep: InputPrep, *, partition: str = "default",
                     layers: list[int] | None = None, cache_dir: str | os.PathLike = "geobench-cache",
                     batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """Features of ``split`` from ``engine`` (a :class:`geodino.engine.Engine`), computed once, then read from
    the cache."""
    import zarr

    from geodino.raster import geobench_radiometry

    names = task.split(split, partition)
    if not names:
        raise ConfigError(f"{task.name} split {split!r} of partition {partition!r} is empty")
    key = hashlib.sha256(json.dumps({"names": names, "layers": layers}, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / task.name / _model_tag(engine) / f"{prep.tag()}" / f"{partition}-{split}-{key}.zarr"
    if (path / "zarr.json").is_file():
        fs = FeatureSet(path)
        if fs.attrs.get("complete"):
            log.info("%s %s: features from the cache %s", task.name, split, path)
            return fs
    mean, std = prep.mean_std(engine.cfg)
    root = zarr.open_group(str(path), mode="w")
    n, d = len(names), engine.embed_dim
    cls = root.create_array("cls", shape=(n, d), chunks=(min(n, 1024), d), dtype="float32")
    pmean = root.create_array("patch_mean", shape=(n, d), chunks=(min(n, 1024), d), dtype="float32")
    labels = patches = None
    size = None if prep.size == "native" else int(prep.size)
    radiometry = None
    for i in range(0, n, batch_size):
        chunk = names[i:i + batch_size]
        samples = [task.load_sample(s) for s in chunk]
        raws = [prep.raw(task, s) for s in samples]
        if radiometry is None:  # band statistics are per task: one mapping for every sample
            radiometry = geobench_radiometry(raws[0][1], stats="-".join(prep.stats))
        outs = []
        for shape in dict.fromkeys(r.shape for r, _ in raws):  # samples of one shape run together
            idx = [j for j, (r, _) in enumerate(raws) if r.shape == shape]
            o = engine.run(np.stack([raws[j][0] for j in idx]), None, radiometry.engine_params, size=size,
                           out_dtype=np.float16, layers=layers, patch_mean=True, mean_std=(mean, std))
            outs.append((idx, o))
        order = np.argsort(np.concatenate([idx for idx, _ in outs]))
        cat = {k: np.concatenate([o[k] for _, o in outs])[order] for k in outs[0][1]}
        cls[i:i + len(chunk)] = cat["cls"].astype(np.float32)
        pmean[i:i + len(chunk)] = cat["patch_mean"]
        ys = [np.asarray(s.label) for s in samples]
        if labels is None:
            shape = (n, *ys[0].shape)
            dtype = "int64" if task.kind != "multilabel" else "uint8"
            labels = root.create_array("labels", shape=shape, chunks=(1, *ys[0].shape) if ys[0].ndim == 2 else
                                       (min(n, 4096), *ys[0].shape), dtype=dtype)
        labels[i:i + len(chunk)] = np.stack(ys).astype(labels.dtype)
        if layers:
            g = cat["layers"]  # [B, L, D, h, w] float16
            if patches is None:
                patches = root.create_array("patches", shape=(n, *g.shape[1:]), chunks=(1, *g.shape[1:]),
                                            dtype="float16")
            patches[i:i + len(chunk)] = g
        if progress:
            progress(min(i + batch_size, n), n)
    w = engine.weights_info
    root.attrs.update({
        "task": task.name, "split": split, "partition": partition, "n": n, "layers": layers,
        "model": engine.cfg.name, "arch": engine.model.arch.to_dict(),
        "weights": w.to_dict() if w is not None else None, "random_weights": bool(w is not None and w.random),
        "prep": prep.to_dict(), "radiometry": radiometry.to_dict() if radiometry else None,
        "mean": list(mean), "std": list(std), "numerics": engine.numerics(), "device": str(engine.device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": True,
    })
    return FeatureSet(path)
