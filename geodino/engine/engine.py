"""Stage 3: the inference engine. Raw tiles in, per-patch features out.

Raw integers travel to the device as they are (uint8/uint16/int16, never float32); radiometry, normalisation,
nodata filling, the crop to the tile core and the cast to the cube's dtype all happen there, so the bytes moved
are the bytes stored.

On CUDA:

* bf16 autocast with matmul weights stored in bf16, while LayerNorm, LayerScale, tokens, RoPE and the residual
  stream stay fp32 (as the official model runs); SDPA picks flash attention;
* host buffers are pinned and reused; host-to-device copies, compute and device-to-host copies run on three
  streams, so with two batches in flight (``prefetch``) copies overlap compute;
* optional ``torch.compile`` (``compile=True``; CUDA graphs with ``mode="max-autotune"``) for the fixed batch shape;
* weight-only ``int8``/``int4`` quantisation and ``fp8`` through torchao, checked against bf16 features.

Out of memory halves the batch (logged) and continues; the smaller batch is remembered. Engines are cached per
process, keyed by their spec, so a dask worker loads its model once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from geodino.errors import ConfigError

__all__ = ["EngineSpec", "Engine", "get_engine", "resolve_device", "prepare_batch", "is_oom"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp8")
QUANTIZE = (None, "int8", "int4")


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
    compile: bool = False
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize {self.quantize!r}: choose int8 or int4")

    def __dask_tokenize__(self):
        return ("EngineSpec", self.model, self.weights, self.device, self.precision, self.arch, self.compile,
                self.quantize)


def prepare_batch(raw: torch.Tensor, valid: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw DNs [B, C, H, W] -> normalised float32 model input; invalid pixels become the mean colour (0)."""
    x = raw.to(torch.float32)
    x = torch.clamp(x * gain.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), 0.0, 1.0)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x * valid.unsqueeze(1).to(x.dtype)


def is_oom(e: BaseException) -> bool:
    """Out-of-memory on a GPU or the host allocator."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e))


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store Linear/Conv weights in ``dtype``; norms, LayerScale, tokens and RoPE periods stay fp32."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.to(dtype)
    return model


class _Staging:
    """Reusable pinned host buffers for one batch in flight (CUDA only)."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < int(np.prod(shape)):
            buf = self.buffers[name] = torch.empty(int(np.prod(shape)), dtype=dtype).pin_memory()
        return buf[: int(np.prod(shape))].view(shape)


class Engine:
    """A loaded backbone on a device, turning batches of raw tiles into features."""

    def __init__(self, spec: EngineSpec):
        from geodino.models import get_config, load_backbone

        self.spec = spec
        self.device = resolve_device(spec.device)
        cfg = self.cfg = get_config(spec.model)
        prec = spec.precision
        if prec == "auto":
            prec = "bf16" if self.device.type == "cuda" else "fp32"
        if prec == "fp8" and not _fp8_capable(self.device):
            raise ConfigError("--precision fp8 needs an NVIDIA GPU of compute capability >= 8.9 (H100 class); "
                              "use bf16")
        self.precision = prec
        model = load_backbone(spec.model, spec.weights, device="cpu", dtype=torch.float32,
                              allow_download=spec.allow_download, **dict(spec.arch))
        if self.device.type == "cuda" and prec in ("bf16", "fp8"):
            cast_matmul_weights(model, torch.bfloat16)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = torch.bfloat16 if (self.device.type == "cuda" and prec != "fp32") else None
        if self.device.type == "cpu" and prec == "bf16":
            self.autocast_dtype = torch.bfloat16
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device)
        self.patch_size = self.model.patch_size
        self.embed_dim = self.model.embed_dim
        self.max_batch: int | None = None  # lowered after an out-of-memory
        self.quality: dict = {}
        if spec.quantize or prec == "fp8":
            from geodino.engine.quantize import quantize_engine_model

            self.quality = quantize_engine_model(self, spec.quantize, fp8=prec == "fp8")
        self._forward = self.model.forward_features
        if spec.compile:
            mode = "max-autotune" if self.device.type == "cuda" else "default"
            self._forward = torch.compile(self.model.forward_features, mode=mode, dynamic=False)
        self._compute_lock = threading.Lock()
        self._local = threading.local()
        if self.device.type == "cuda":
            self._h2d = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)

    @property
    def weights_info(self):
        return self.model.weights_info

    def describe(self) -> dict:
        d = {"device": str(self.device), "precision": self.precision, "compile": self.spec.compile,
             "quantize": self.spec.quantize,
             "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"}
        if self.quality:
            d["quality_vs_bf16"] = self.quality
        return d

    # -- the forward pass ------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, crop: slice | None, out_dtype: torch.dtype):
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                out = self._forward(x)
        else:
            out = self._forward(x)
        patches = out["patches"]
        if crop is not None:
            patches = patches[:, crop, crop]
        return patches.to(out_dtype).contiguous(), out["cls"].to(out_dtype).contiguous()

    def _params(self, gain: tuple, bias: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(gain), tuple(bias))
        cache = getattr(self._local, "rad", None)
        if cache is None or cache[0] != key:
            g = torch.tensor(key[0], dtype=torch.float32, device=self.device)
            b = torch.tensor(key[1], dtype=torch.float32, device=self.device)
            self._local.rad = cache = (key, g, b)
        return cache[1], cache[2]

    @torch.inference_mode()
    def _run(self, raw: np.ndarray, valid: np.ndarray, gain: tuple, bias: tuple, crop, out_dtype):
        gain, bias = self._params(gain, bias)
        if self.device.type != "cuda":
            with self._compute_lock:
                x = prepare_batch(torch.from_numpy(raw), torch.from_numpy(valid), gain, bias, self.mean, self.std)
                p, c = self._features(x, crop, out_dtype)
            return p.numpy(), c.numpy()
        # CUDA: pinned staging -> H2D stream -> compute stream -> D2H stream, events between them
        st = getattr(self._local, "staging", None) or _Staging()
        self._local.staging = st
        traw = torch.from_numpy(np.ascontiguousarray(raw))
        h_raw = st.get("raw", raw.shape, traw.dtype)
        h_valid = st.get("valid", valid.shape, torch.bool)
        h_raw.copy_(traw)
        h_valid.copy_(torch.from_numpy(valid))
        with torch.cuda.stream(self._h2d):
            d_raw = h_raw.to(self.device, non_blocking=True)
            d_valid = h_valid.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._h2d)
        with self._compute_lock:  # enqueue order only; the GPU runs it asynchronously
            self._compute.wait_event(copied)
            with torch.cuda.stream(self._compute):
                d_raw.record_stream(self._compute)
                d_valid.record_stream(self._compute)
                x = prepare_batch(d_raw, d_valid, gain, bias, self.mean, self.std)
                p, c = self._features(x, crop, out_dtype)
                computed = torch.cuda.Event()
                computed.record(self._compute)
        with torch.cuda.stream(self._d2h):
            self._d2h.wait_event(computed)
            p.record_stream(self._d2h)
            c.record_stream(self._d2h)
            h_p = st.get("patches", tuple(p.shape), p.dtype)
            h_c = st.get("cls", tuple(c.shape), c.dtype)
            h_p.copy_(p, non_blocking=True)
            h_c.copy_(c, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._d2h)
        done.synchronize()
        return h_p.numpy().copy(), h_c.numpy().copy()

    def embed(self, raw: np.ndarray, valid: np.ndarray, gain: tuple, bias: tuple, crop: slice | None = None,
              out_dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
        """Features of a batch: ``patches`` [B, h, w, D] (cropped to ``crop`` on both axes) and ``cls`` [B, D].

        ``raw`` [B, C, H, W] are raw DNs, ``valid`` [B, H, W] the pixel mask; each band becomes
        ``clip(gain * DN + bias, 0, 1)`` (the scene's radiometry), then the model's mean/std.

        On out-of-memory the batch is split in halves (recursively) and the smaller size is kept for later
        batches.
        """
        n = raw.shape[0]
        step = min(n, self.max_batch or n)
        parts_p, parts_c = [], []
        i = 0
        while i < n:
            j = min(n, i + step)
            try:
                p, c = self._run(raw[i:j], valid[i:j], gain, bias, crop, out_dtype)
            except Exception as e:
                if not is_oom(e) or step == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                step = max(1, step // 2)
                self.max_batch = step
                log.warning("out of memory with a batch of %d tiles: continuing with batches of %d", j - i, step)
                continue
            parts_p.append(p)
            parts_c.append(c)
            i = j
        if len(parts_p) == 1:
            return parts_p[0], parts_c[0]
        return np.concatenate(parts_p), np.concatenate(parts_c)


def _fp8_capable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


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
