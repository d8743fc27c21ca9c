"""The canopy-height engine: the CHMv2 head on the engine's backbone, raw tiles in, heights in metres out.

Everything but the model is the embed engine's (:class:`~geodino.engine.engine.Engine`): the model-input contract
(radiometry, then CHMv2's own mean/std), the precision policy (bf16 matmuls with fp32 norms/RoPE/residuals
where ``auto`` picks bf16; the head's convolutions follow autocast, its bin arithmetic stays fp32), fixed-shape
micro-batches chosen from the window size and the device only (so a tile's heights do not depend on the batch
size), the CUDA stream pipeline and out-of-memory halving. One backbone pass gives the head every layer it reads
(:meth:`CanopyHeightModel.features`); the heights map is cropped on the device to what the caller keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from geodino.engine.engine import Engine, EngineSpec, cast_matmul_weights
from geodino.errors import ConfigError, InputSizeError

__all__ = ["CanopyEngineSpec", "CanopyEngine"]


@dataclass(frozen=True)
class CanopyEngineSpec(EngineSpec):
    """An :class:`EngineSpec` whose ``model`` is the backbone and ``weights`` the CHMv2 checkpoint (or
    ``"random"``); ``canopy_model`` names the registered canopy model, ``head_arch`` overrides head fields (small
    test models) and ``backbone_weights`` gives the backbone of a head-only checkpoint."""

    canopy_model: str = "chmv2-vitl16-sat493m"
    head_arch: tuple[tuple[str, object], ...] = field(default=())
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantize or self.compile or self.precision == "fp8":
            raise ConfigError("canopy runs in fp32 or bf16, without --quantize, --compile or fp8")

    def engine_class(self) -> type:
        return CanopyEngine

    def __dask_tokenize__(self):
        return ("CanopyEngineSpec", *super().__dask_tokenize__()[1:], self.canopy_model, self.head_arch,
                self.backbone_weights)


class CanopyEngine(Engine):
    """A loaded :class:`~geodino.models.CanopyHeightModel` on a device (``self.model`` is its backbone)."""

    def _load_model(self, low: bool) -> torch.nn.Module:
        from geodino.models import load_canopy_model

        spec = self.spec
        m = load_canopy_model(spec.weights, model=spec.canopy_model, backbone=spec.model,
                              backbone_weights=spec.backbone_weights, device=self.device, dtype=torch.float32,
                              allow_download=spec.allow_download, arch=dict(spec.arch) or None,
                              head_arch=dict(spec.head_arch) or None)
        if low:  # the backbone as embed runs it; the head's convolutions run under autocast
            cast_matmul_weights(m.backbone, torch.bfloat16)
        self.canopy = m.eval()
        self.head = m.head
        return m.backbone

    def __init__(self, spec: CanopyEngineSpec):
        super().__init__(spec)
        self.mean = torch.tensor(self.canopy.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(self.canopy.std, dtype=torch.float32, device=self.device)
        self.size_multiple = self.canopy.size_multiple

    @property
    def weights_info(self):
        """The CHMv2 checkpoint's provenance (the backbone's is in :meth:`describe`)."""
        return self.canopy.weights_info

    def describe(self) -> dict:
        d = super().describe()
        bw = self.canopy.backbone.weights_info
        d["backbone_weights"] = bw.to_dict() if bw is not None else None
        d["head"] = self.head.arch.to_dict()
        return d

    def _features(self, x: torch.Tensor, want: dict) -> dict[str, torch.Tensor]:
        with self.autocast():
            logits = self.head.bin_logits(self.canopy.features(x))
        rs, cs = want["crop"]
        from geodino.models.chmv2 import logits_to_heights

        # the bins on the cropped logits only: what the caller keeps (fp32 whatever the model dtype)
        return {"heights": logits_to_heights(logits[:, :, rs, cs], self.head.arch).contiguous()}

    @torch.inference_mode()
    def run(self, raw: np.ndarray, valid: np.ndarray | None, radiometry: tuple, *,
            crop: tuple[slice, slice] | None = None, **_) -> dict[str, np.ndarray]:
        """Heights of a batch of raw tiles: ``raw`` [N, C, H, W] (H, W multiples of 32), ``valid`` [N, H, W],
        ``radiometry`` ``(gain, bias, levels)``. Returns ``heights`` [N, h, w] float32 metres, cropped to
        ``crop`` = (rows, cols) pixel slices."""
        n, side = raw.shape[0], tuple(raw.shape[-2:])
        m = self.size_multiple
        if side[0] % m or side[1] % m:
            raise InputSizeError(f"CHMv2 windows must be multiples of {m} px, got {side[0]}x{side[1]}: choose "
                                 "--tile and --halo so that tile + 2 * halo is a multiple of 32")
        rs, cs = crop if crop is not None else (slice(0, side[0]), slice(0, side[1]))
        want = {"crop": (rs, cs)}
        h, w = len(range(side[0])[rs]), len(range(side[1])[cs])
        out = {"heights": np.empty((n, h, w), np.float32)}
        params = (*self._params(radiometry), self.mean, self.std)
        with self._lock:
            if self.device.type == "cuda":
                self._run_cuda(raw, valid, params, None, want, out)
            else:
                self._run_host(raw, valid, params, None, want, out)
        return out
