"""Stage 3: the inference engine. Raw tiles in, per-patch features out.

Raw integers travel to the device as they are (uint8/uint16/int16, not float32); radiometry, normalisation and
nodata filling happen there. On CUDA the model runs under bf16 autocast with SDPA (flash) attention while RoPE
and LayerNorm stay fp32; on the CPU it runs in fp32. Engines are cached per process, keyed by their spec, so a
dask worker loads its model once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from geodino.errors import ConfigError
from geodino.raster.radiometry import Radiometry

__all__ = ["EngineSpec", "Engine", "get_engine", "resolve_device", "prepare_batch"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU when present, else the CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but no CUDA GPU is visible: use --device cpu or auto")
    return dev


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build an engine on any process (small, hashable, picklable)."""

    model: str
    weights: str
    device: str = "auto"
    precision: str = "auto"
    arch: tuple[tuple[str, object], ...] = field(default=())
    allow_download: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def __dask_tokenize__(self):
        return ("EngineSpec", self.model, self.weights, self.device, self.precision, self.arch)


def prepare_batch(raw: torch.Tensor, valid: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw DNs [B, C, H, W] -> normalised float32 model input; invalid pixels become the mean colour (0)."""
    x = raw.to(torch.float32)
    x = torch.clamp(x * gain.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), 0.0, 1.0)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x * valid.unsqueeze(1).to(x.dtype)


class Engine:
    """A loaded backbone on a device, turning batches of raw tiles into features."""

    def __init__(self, spec: EngineSpec):
        from geodino.models import get_config, load_backbone

        self.spec = spec
        self.device = resolve_device(spec.device)
        cfg = get_config(spec.model)
        self.cfg = cfg
        self.model = load_backbone(spec.model, spec.weights, device=self.device, dtype=torch.float32,
                                   allow_download=spec.allow_download, **dict(spec.arch))
        prec = spec.precision
        if prec == "auto":
            prec = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = prec
        self.autocast_dtype = torch.bfloat16 if prec == "bf16" else None
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device)
        self.patch_size = self.model.patch_size
        self.embed_dim = self.model.embed_dim
        self._lock = threading.Lock()  # one batch at a time per engine (threads share it)

    @property
    def weights_info(self):
        return self.model.weights_info

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision,
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"}

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    @torch.inference_mode()
    def embed(self, raw: np.ndarray, valid: np.ndarray, radiometry: Radiometry) -> tuple[np.ndarray, np.ndarray]:
        """Features of a batch: ``patches`` [B, h, w, D] and ``cls`` [B, D], float32 numpy on the host."""
        with self._lock:
            x_raw, m = self._to_device(raw), self._to_device(valid)
            gain = torch.tensor(radiometry.gain, dtype=torch.float32, device=self.device)
            bias = torch.tensor(radiometry.bias, dtype=torch.float32, device=self.device)
            x = prepare_batch(x_raw, m, gain, bias, self.mean, self.std)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    out = self.model.forward_features(x)
            else:
                out = self.model.forward_features(x)
            patches = out["patches"].float().cpu().numpy()
            cls = out["cls"].float().cpu().numpy()
        return patches, cls


_ENGINES: dict[EngineSpec, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(spec: EngineSpec) -> Engine:
    """The process-wide engine for ``spec``, loaded on first use (model weights are never shipped)."""
    with _ENGINES_LOCK:
        eng = _ENGINES.get(spec)
        if eng is None:
            log.info("loading %s (%s) on %s", spec.model, spec.weights, spec.device)
            eng = _ENGINES[spec] = Engine(spec)
        return eng
