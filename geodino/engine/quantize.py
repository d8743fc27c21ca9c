"""int8/int4 quantisation and fp8 compute through torchao, measured against unquantised features.

``int8`` and ``int4`` quantise weights only. torchao's int8 dynamic-activation mode (int8 matmuls, AMX-INT8) is
not offered: measured on a 2-core AMX Xeon with ViT-L/16 at 512 px it ran at 0.5x bf16 eager and, compiled, at
0.77x bf16 compiled (``pipelines/bench_cpu.py`` keeps the row), so it never wins where it would be used.

The reference features of a fixed probe batch are computed before the model is changed in place (no second
copy of the weights is ever held), then compared with the quantised model's features by cosine similarity.
``--precision fp8`` is refused unless that similarity is at least 0.99.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from geodino.errors import ConfigError

__all__ = ["quantize_engine_model", "probe_batch", "feature_cosine", "FP8_MIN_COSINE"]

log = logging.getLogger(__name__)
FP8_MIN_COSINE = 0.99


def probe_batch(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    """A deterministic, image-like normalised batch (smooth multi-scale structure plus noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    imgs = torch.zeros(n, 3, size, size)
    for b in range(n):
        for c in range(3):
            for k in range(1, 5):
                f = torch.rand(2, generator=g) * 0.2 / k
                ph = torch.rand(2, generator=g) * 2 * math.pi
                imgs[b, c] += torch.sin(f[0] * yy + ph[0]) * torch.cos(f[1] * xx + ph[1]) / k
    imgs += 0.1 * torch.randn(imgs.shape, generator=g)
    return (imgs - imgs.mean()) / imgs.std()


def feature_cosine(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-token cosine similarity of two feature tensors [..., D]: mean and minimum."""
    cos = torch.nn.functional.cosine_similarity(a.float().flatten(0, -2), b.float().flatten(0, -2), dim=-1)
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def _torchao():
    try:
        import torchao.quantization as q
        from torchao.quantization import quantize_
    except ImportError as e:
        raise ConfigError("--quantize and --precision fp8 need torchao: pip install torchao") from e
    return q, quantize_


def _linear_only(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear)


def quantize_engine_model(engine, mode: str | None, fp8: bool = False) -> dict:
    """Quantise ``engine.model`` in place; returns the cosine similarity of its features to the original's."""
    q, quantize_ = _torchao()
    model = engine.model
    x = probe_batch().to(engine.device)

    def run():
        with torch.inference_mode(), engine.autocast():
            out = model.forward_features(x)
        return out["patches"].float().cpu(), out["cls"].float().cpu()

    ref_p, ref_c = run()
    for m in model.modules():
        # torchao's quantised weights take F.linear's weight positionally; timm's attention passes it by keyword
        # when it adds the q/v biases inside the call: add them after the qkv Linear instead (timm's own option)
        if hasattr(m, "qkv_bias_separate"):
            m.qkv_bias_separate = True
    if fp8:
        cfg = q.Float8DynamicActivationFloat8WeightConfig()
    elif mode == "int8":
        cfg = q.Int8WeightOnlyConfig()
    else:
        cfg = None
        if engine.device.type == "cuda":
            try:
                cfg = q.Int4WeightOnlyConfig(group_size=128)
                quantize_(model, cfg, filter_fn=_linear_only)
            except (ImportError, RuntimeError, NotImplementedError) as e:
                log.info("torchao Int4WeightOnly unavailable (%s): using IntxWeightOnly int4", e)
                cfg = None
        if cfg is None:
            from torchao.quantization.granularity import PerGroup

            cfg = q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
        else:
            cfg = "done"
    if cfg != "done":
        quantize_(model, cfg, filter_fn=_linear_only)
    p, c = run()
    quality = {"mode": "fp8" if fp8 else mode, "patches": feature_cosine(p, ref_p), "cls": feature_cosine(c, ref_c),
               "reference": "bf16" if engine.autocast_dtype is not None else "fp32"}
    log.info("quantised %s: feature cosine similarity %s", quality["mode"], quality)
    if fp8 and quality["patches"]["mean"] < FP8_MIN_COSINE:
        raise ConfigError(f"fp8 features have cosine similarity {quality['patches']['mean']:.4f} < "
                          f"{FP8_MIN_COSINE} against bf16 on this model: use --precision bf16")
    return quality
