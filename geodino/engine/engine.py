"""Stage 3: the inference engine. Raw tiles in, per-patch features out.

Raw values travel to the device as they are (uint8/uint16/int16/float, never converted on the host); the
model-input contract (radiometry, 8-bit steps, normalisation, nodata filling, see :func:`prepare_batch`), an
optional resize, the crop to what the caller keeps and the cast to the output dtype all happen there, so the
bytes moved are the bytes stored.

Numerics:

* precision ``auto`` is bf16 on CUDA and on CPUs that compute bf16 natively (AMX or AVX512-BF16, from torch's
  own CPU capability queries), fp32 elsewhere. bf16 means matmul weights stored in bf16 under bf16 autocast,
  while LayerNorm, LayerScale, the tokens entering block 0, RoPE and the residual stream stay fp32, as the
  official autocast inference runs;
* the model always runs on micro-batches of one fixed shape per input size (partial ones are padded), chosen
  from the input size and the device only (:meth:`Engine.micro_batch`), never from the caller's batch size: a
  tile's features do not depend on which tiles it was batched with, how many reader threads ran or how many
  batches were in flight, and compiled graphs (CUDA graphs) see one shape per run;
* one inference at a time per engine (a lock), so one thread feeds the device.

On CUDA, host buffers are pinned and reused; host-to-device copies, compute and device-to-host copies of
consecutive micro-batches run on three streams and overlap. Optional ``torch.compile`` (``compile=True``;
``mode="max-autotune"`` with CUDA graphs on GPU), weight-only ``int8``/``int4`` quantisation and ``fp8`` through
torchao, checked against unquantised features.

Out of memory halves the micro-batch (logged, and recorded in :attr:`Engine.events`: a smaller shape may change
the last bits of later features on a GPU) and continues. Engines are cached per process, keyed by their spec, so
a dask worker loads its model once.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from geodino._process import model_allocations
from geodino.errors import ConfigError

__all__ = ["EngineSpec", "Engine", "get_engine", "resolve_device", "resolve_precision", "prepare_batch", "is_oom",
           "cpu_has_native_bf16", "cast_matmul_weights", "cuda_determinism"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp8")
QUANTIZE = (None, "int8", "int4")
_TOKENS_PER_CALL = {"cpu": 1024, "cuda": 32768}  # micro-batch target: the shapes that keep each device busy


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
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: geodino runs on cpu or cuda")
    return dev


def cuda_determinism(device: torch.device) -> dict | None:
    """On a CUDA device, ask for the same bits on every run (README: a resumed cube is bit-identical): cuDNN's
    deterministic algorithms and no autotuning (``benchmark`` would pick kernels by timing, run to run), torch's
    deterministic algorithms (warning, not failing, where an op has none: inference uses few such ops), and the
    cuBLAS workspace setting those need (``CUBLAS_WORKSPACE_CONFIG``, unless set; it must precede cuBLAS's first
    use in the process, so engines call this before loading their model). Process-wide settings of torch, made
    only when an engine runs on CUDA; returns what was set (recorded in the cube's numerics), or None elsewhere."""
    import os

    if device.type != "cuda":
        return None
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic_algorithms": "warn_only" if torch.is_deterministic_algorithms_warn_only_enabled()
            else bool(torch.are_deterministic_algorithms_enabled()),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix multiplies natively (Intel AMX-BF16 or AVX512-BF16)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


# ``compile: auto``. Measured on a 2-core AMX Xeon (pipelines/bench_cpu.py, ViT-L/16 bf16, 512-px tiles):
# torch.compile (inductor) costs about 55 s before the first tile with a cold cache and then saves about 0.2 s
# per tile (1.87 -> 1.67 s), so it pays back after roughly 270 tiles: on for scenes of at least this many tiles
# (a 10980² px Sentinel-2 tile has 484). On CUDA it stays off until measured on a GPU.
COMPILE_MIN_TILES_CPU = 300


def compile_pays_back(device: torch.device, tiles: int) -> bool:
    """Whether ``compile: auto`` compiles for a scene of ``tiles`` tiles on ``device``."""
    return device.type == "cpu" and tiles >= COMPILE_MIN_TILES_CPU


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision ``precision`` means on ``device``, and why."""
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        return "bf16", "auto: bf16 on CUDA"
    if cpu_has_native_bf16():
        return "bf16", "auto: this CPU computes bf16 natively (AMX/AVX512-BF16)"
    return "fp32", "auto: this CPU has no native bf16 (no AMX/AVX512-BF16)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    micro_batch: int | None = None  # model call shape; None: chosen from the input size and device

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize {self.quantize!r}: choose int8 or int4")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise ConfigError(f"micro-batch must be a positive integer, got {self.micro_batch!r}")

    def engine_class(self) -> type:
        """The engine this spec builds (a product's spec subclass returns its own engine)."""
        return Engine

    def __dask_tokenize__(self):
        return ("EngineSpec", self.model, self.weights, self.device, self.precision, self.arch, self.compile,
                self.quantize, self.micro_batch)


def prepare_batch(raw: torch.Tensor, valid: torch.Tensor | None, gain: torch.Tensor, bias: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor, levels: int | None = None,
                  size: int | None = None) -> torch.Tensor:
    """The model-input contract: raw values [B, C, H, W] -> normalised float32 model input.

    ``display = clip(gain * raw + bias, 0, 1)`` per band (then ``round(display * levels) / levels`` if
    ``levels``), an optional bilinear resize to ``size`` x ``size`` (antialiased when shrinking), then
    ``(display - mean) / std``; pixels where ``valid`` is False become 0, the mean colour.
    """
    x = raw.to(torch.float32)
    x = torch.clamp(x * gain.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), 0.0, 1.0)
    if levels:
        x = torch.round(x * levels) / levels
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
        if valid is not None:
            valid = F.interpolate(valid[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if valid is not None:
        x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x


def is_oom(e: BaseException) -> bool:
    """Out-of-memory on a GPU or the host allocator."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e))


def cast_matmul_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store Linear/Conv weights in ``dtype``; norms, LayerScale, tokens and RoPE periods stay fp32."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.to(dtype)
    return model


class Engine:
    """A loaded backbone on a device, turning batches of raw tiles into features."""

    def __init__(self, spec: EngineSpec):
        from geodino.models import get_config

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.determinism = cuda_determinism(self.device)  # before any CUDA work (cuBLAS reads its setting once)
        cfg = self.cfg = get_config(spec.model)
        self.precision, self.precision_why = resolve_precision(spec.precision, self.device)
        if self.precision == "fp8" and not _fp8_capable(self.device):
            raise ConfigError("--precision fp8 needs an NVIDIA GPU of compute capability >= 8.9 (H100 class); "
                              "use bf16")
        low = self.precision in ("bf16", "fp8")
        self.model = self._load_model(low)
        self.autocast_dtype = torch.bfloat16 if low else None
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device)
        self.patch_size = self.model.patch_size
        self.embed_dim = self.model.embed_dim
        self.events: list[str] = []  # numerics changes during the run (OOM halvings)
        self._micro: dict[tuple[int, int], int] = {}  # input (H, W) -> micro-batch (lowered after an OOM)
        self.quality: dict = {}
        if spec.quantize or self.precision == "fp8":
            from geodino.engine.quantize import quantize_engine_model

            self.quality = quantize_engine_model(self, spec.quantize, fp8=self.precision == "fp8")
        self._forward = self.model.forward_features
        self._graphs0 = None
        if spec.compile:
            import torch._dynamo.utils as dutils

            mode = "max-autotune" if self.device.type == "cuda" else "default"
            self._graphs0 = int(dutils.counters["stats"]["unique_graphs"])
            self._forward = torch.compile(self.model.forward_features, mode=mode, dynamic=False)
        self._lock = threading.Lock()
        self._pinned: dict[tuple, torch.Tensor] = {}  # reusable pinned host buffers (CUDA), per name and slot
        if self.device.type == "cuda":
            self._h2d = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)

    def _load_model(self, low: bool) -> torch.nn.Module:
        """The backbone the engine runs (products that add a head override this; see ``engine/canopy.py``)."""
        from geodino.models import load_backbone

        spec = self.spec
        return load_backbone(spec.model, spec.weights, device=self.device, dtype=torch.float32,
                             matmul_dtype=torch.bfloat16 if low else None,
                             allow_download=spec.allow_download, **dict(spec.arch)).eval()

    # -- description -------------------------------------------------------------------------------------
    @property
    def weights_info(self):
        return self.model.weights_info

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()

    def numerics(self) -> dict:
        """What decides the bits of the features: recorded in every cube and compared on resume."""
        d = {"precision": self.precision, "device_type": self.device.type, "device_name": self.device_name,
             "torch": torch.__version__, "compile": self.spec.compile, "quantize": self.spec.quantize}
        if self.device.type == "cpu":
            d["cpu_capability"] = torch.backends.cpu.get_cpu_capability() + ("+AMX" if cpu_has_native_bf16() and
                                                                              self.precision == "bf16" else "")
        if getattr(self, "determinism", None):
            d["determinism"] = dict(self.determinism)
        return d

    def describe(self) -> dict:
        d = {"device": str(self.device), **self.numerics(), "precision_why": self.precision_why}
        if self.quality:
            d["quality_vs_unquantised"] = self.quality
        if self.events:
            d["events"] = list(self.events)
        return d

    def compiled_graphs(self) -> int | None:
        """Graphs torch.compile built since this engine was made (1 per input shape when nothing recompiles)."""
        if self._graphs0 is None:
            return None
        import torch._dynamo.utils as dutils

        return int(dutils.counters["stats"]["unique_graphs"]) - self._graphs0

    def micro_batch(self, height: int, width: int) -> int:
        """The fixed model-call batch for inputs of this size on this device (a power of two, 1 to 64)."""
        key = (int(height), int(width))
        if key not in self._micro:
            if self.spec.micro_batch:
                self._micro[key] = self.spec.micro_batch
            else:
                tokens = (height // self.patch_size) * (width // self.patch_size) + 1 + self.model.n_registers
                per_call = int(_TOKENS_PER_CALL[self.device.type] / tokens)  # as many, rounded down to 2^k
                self._micro[key] = min(64, 1 << max(0, per_call.bit_length() - 1))
        return self._micro[key]

    # -- the forward pass ---------------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast on the engine's device where its precision is low, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _pinned_buffer(self, name: str, slot: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n = int(np.prod(shape))
        buf = self._pinned.get((name, slot))
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._pinned[(name, slot)] = torch.empty(n, dtype=dtype).pin_memory()
        return buf[:n].view(shape)

    def _features(self, x: torch.Tensor, want: dict) -> dict[str, torch.Tensor]:
        with self.autocast():
            out = self._forward(x, layers=want["layers"]) if want["layers"] else self._forward(x)
        dt = want["dtype"]
        res = {}
        patches = out["patches"]
        if want["patch_mean"]:
            res["patch_mean"] = patches.float().mean(dim=(1, 2))
        rs, cs = want["crop"]
        res["patches"] = patches[:, rs, cs].to(dt).contiguous()
        res["cls"] = out["cls"].to(dt).contiguous()
        if want["layers"]:
            res["layers"] = torch.stack(out["layers"], dim=1).to(dt).contiguous()
        return res

    def _params(self, radiometry) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        gain, bias, levels = radiometry
        g = torch.tensor(tuple(gain), dtype=torch.float32, device=self.device)
        b = torch.tensor(tuple(bias), dtype=torch.float32, device=self.device)
        return g, b, levels

    @torch.inference_mode()
    def run(self, raw: np.ndarray, valid: np.ndarray | None, radiometry: tuple, *,
            crop: tuple[slice, slice] | None = None, size: int | None = None, out_dtype=np.float32,
            layers: list[int] | None = None, patch_mean: bool = False,
            mean_std: tuple | None = None) -> dict[str, np.ndarray]:
        """Features of a batch of raw tiles.

        ``raw`` [N, C, H, W] raw values, ``valid`` [N, H, W] (False: nodata, filled with the mean colour),
        ``radiometry`` ``(gain, bias, levels)`` of the model-input contract. Returns numpy arrays:
        ``patches`` [N, h, w, D] (cropped to ``crop`` = (rows, cols) slices of the patch grid), ``cls`` [N, D],
        with ``layers`` also ``layers`` [N, L, D, h', w'] (normed grids after those blocks, uncropped), with
        ``patch_mean`` the mean patch feature [N, D] (float32, uncropped); all from one pass.
        """
        n = raw.shape[0]
        side = (size, size) if size else tuple(raw.shape[-2:])
        p = self.patch_size
        if side[0] % p or side[1] % p:
            from geodino.errors import InputSizeError

            raise InputSizeError(f"input size {side[0]}x{side[1]} px is not a multiple of the patch size {p}")
        gh, gw = side[0] // p, side[1] // p
        rs, cs = crop if crop is not None else (slice(0, gh), slice(0, gw))
        want = {"crop": (rs, cs), "layers": list(layers) if layers else None, "patch_mean": patch_mean,
                "dtype": _torch_dtype(out_dtype)}
        h, w = len(range(gh)[rs]), len(range(gw)[cs])
        d = self.embed_dim
        np_dt = np.dtype(out_dtype)
        out = {"patches": np.empty((n, h, w, d), np_dt), "cls": np.empty((n, d), np_dt)}
        if layers:
            out["layers"] = np.empty((n, len(layers), d, gh, gw), np_dt)
        if patch_mean:
            out["patch_mean"] = np.empty((n, d), np.float32)
        mean, std = (self.mean, self.std) if mean_std is None else \
            (torch.tensor(m, dtype=torch.float32, device=self.device) for m in mean_std)
        params = (*self._params(radiometry), mean, std)
        with self._lock:
            if self.device.type == "cuda":
                self._run_cuda(raw, valid, params, size, want, out)
            else:
                with model_allocations():
                    self._run_host(raw, valid, params, size, want, out)
        return out

    def _halve(self, side, mb: int, e: BaseException) -> None:
        if mb == 1:
            raise e
        new = max(1, mb // 2)
        self._micro[side] = new
        msg = f"out of memory with a micro-batch of {mb} tiles of {side[0]}x{side[1]} px: continuing with {new}"
        self.events.append(msg)
        log.warning(msg)

    def _padded(self, a: np.ndarray | None, i: int, j: int, mb: int):
        """``a[i:j]`` as a full micro-batch of ``mb`` (zeros after a partial one's last item)."""
        if a is None or j - i == mb:
            return None if a is None else np.ascontiguousarray(a[i:j])
        return np.pad(a[i:j], [(0, mb - (j - i))] + [(0, 0)] * (a.ndim - 1))

    def _store(self, out: dict, res: dict, i: int, j: int) -> None:
        for k, v in res.items():
            out[k][i:j] = v[: j - i]

    def _run_host(self, raw, valid, params, size, want, out) -> None:
        g, b, levels, mean, std = params
        side = (size, size) if size else tuple(raw.shape[-2:])
        i, n = 0, raw.shape[0]
        while i < n:
            mb = self.micro_batch(*side)
            j = min(n, i + mb)
            try:
                r = torch.from_numpy(self._padded(raw, i, j, mb))
                v = torch.from_numpy(self._padded(valid, i, j, mb)) if valid is not None else None
                x = prepare_batch(r, v, g, b, mean, std, levels, size)
                res = {k: t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
                       for k, t in self._features(x, want).items()}
            except Exception as e:
                if not is_oom(e):
                    raise
                self._halve(side, mb, e)
                continue
            self._store(out, res, i, j)
            i = j

    def _run_cuda(self, raw, valid, params, size, want, out) -> None:
        """Micro-batches pipelined over three streams: while batch k computes, batch k+1 is copied in and
        batch k-1 copied out, through two slots of pinned buffers."""
        g, b, levels, mean, std = params
        side = (size, size) if size else tuple(raw.shape[-2:])
        pending: dict[int, tuple] = {}  # slot -> (i, j, done event, pinned results)

        def drain(slot):
            if slot in pending:
                i0, j0, ev, pinned = pending.pop(slot)
                ev.synchronize()
                self._store(out, {k: t.numpy() for k, t in pinned.items()}, i0, j0)

        i, n, k = 0, raw.shape[0], 0
        while i < n:
            mb = self.micro_batch(*side)
            j = min(n, i + mb)
            slot = k % 2
            drain(slot)  # its pinned buffers are about to be reused
            try:
                h_raw = self._pinned_buffer("raw", slot, (mb, *raw.shape[1:]), _torch_dtype(raw.dtype))
                h_raw.copy_(torch.from_numpy(self._padded(raw, i, j, mb)))
                h_val = None
                if valid is not None:
                    h_val = self._pinned_buffer("valid", slot, (mb, *valid.shape[1:]), torch.bool)
                    h_val.copy_(torch.from_numpy(self._padded(valid, i, j, mb)))
                with torch.cuda.stream(self._h2d):
                    d_raw = h_raw.to(self.device, non_blocking=True)
                    d_val = h_val.to(self.device, non_blocking=True) if h_val is not None else None
                    copied = torch.cuda.Event()
                    copied.record(self._h2d)
                self._compute.wait_event(copied)
                with torch.cuda.stream(self._compute):
                    d_raw.record_stream(self._compute)
                    if d_val is not None:
                        d_val.record_stream(self._compute)
                    x = prepare_batch(d_raw, d_val, g, b, mean, std, levels, size)
                    res = self._features(x, want)
                    computed = torch.cuda.Event()
                    computed.record(self._compute)
                self._d2h.wait_event(computed)
                with torch.cuda.stream(self._d2h):
                    pinned = {}
                    for name, t in res.items():
                        t.record_stream(self._d2h)
                        dt = torch.float32 if t.dtype == torch.bfloat16 else t.dtype
                        hp = self._pinned_buffer("out-" + name, slot, tuple(t.shape), dt)
                        hp.copy_(t, non_blocking=True)
                        pinned[name] = hp
                    done = torch.cuda.Event()
                    done.record(self._d2h)
            except Exception as e:
                if not is_oom(e):
                    raise
                torch.cuda.synchronize(self.device)
                for s in list(pending):
                    drain(s)
                torch.cuda.empty_cache()
                self._halve(side, mb, e)
                continue
            pending[slot] = (i, j, done, pinned)
            i, k = j, k + 1
        for s in sorted(pending):
            drain(s)


def _torch_dtype(dt) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dt)).dtype  # torch's own numpy -> torch dtype map


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
            eng = _ENGINES[spec] = spec.engine_class()(spec)
        return eng


def engine_numerics(spec: EngineSpec) -> dict:
    """The numerics of the engine ``spec`` gives on this process (runs on a dask worker to learn them)."""
    return get_engine(spec).numerics()
