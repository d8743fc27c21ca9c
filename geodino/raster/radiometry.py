"""Radiometry: turning raw digital numbers into 0..1 reflectance-like values before the model's mean/std.

Every supported radiometry is a per-band affine map followed by a clip to [0, 1], so it can be applied on the
device to raw integers (``clip(gain * DN + bias, 0, 1)``). The parameters are resolved once per scene, never
per tile, so there are no normalisation seams between tiles.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from geodino.errors import ConfigError

__all__ = ["Radiometry", "RADIOMETRIES", "resolve_radiometry"]

log = logging.getLogger(__name__)

RADIOMETRIES = ("s2-l2a", "landsat-c2-l2", "uint8", "percentile", "minmax", "reflectance")


@dataclass(frozen=True)
class Radiometry:
    """``value = clip(gain[c] * DN + bias[c], 0, 1)`` per band c, with the parameters it came from."""

    kind: str
    gain: tuple[float, ...]
    bias: tuple[float, ...]
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Reference implementation on numpy ``[C, H, W]`` (the engine does the same on the device)."""
        g = np.asarray(self.gain, np.float32)[:, None, None]
        b = np.asarray(self.bias, np.float32)[:, None, None]
        return np.clip(raw.astype(np.float32) * g + b, 0.0, 1.0)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "gain": list(self.gain), "bias": list(self.bias), "params": self.params}

    def __dask_tokenize__(self):
        return ("Radiometry", self.kind, self.gain, self.bias)


def _s2_offset(source) -> tuple[float, str]:
    """BOA_ADD_OFFSET from the file's metadata (dataset or band tags, or GDAL offset/scale)."""
    for tags in [*source.band_tags, source.tags]:
        for k, v in tags.items():
            if re.fullmatch(r"(BOA_)?ADD_OFFSET(_B\w+)?|BOA_ADD_OFFSET.*", k.upper()):
                try:
                    return float(v), f"metadata {k}={v}"
                except ValueError:
                    pass
    if any(o not in (0.0, None) for o in source.band_offsets) and all(s not in (0.0, None) for s in source.band_scales):
        # GDAL scale/offset: reflectance = DN * scale + offset  ->  offset in DN = offset / scale
        off = source.band_offsets[0] / source.band_scales[0]
        return off, f"GDAL band offset {source.band_offsets[0]} / scale {source.band_scales[0]}"
    baseline = source.tags.get("PROCESSING_BASELINE")
    if baseline:
        try:
            if float(baseline) >= 4.0:
                return -1000.0, f"PROCESSING_BASELINE {baseline} >= 04.00"
            return 0.0, f"PROCESSING_BASELINE {baseline} < 04.00"
        except ValueError:
            pass
    return 0.0, "no BOA_ADD_OFFSET in the metadata: assumed 0 (products before 2022-01-25); pass --s2-offset -1000 for later ones"


def resolve_radiometry(kind: str | None, source, *, s2_offset: float | None = None,
                       minmax: tuple | list | None = None, percentiles: tuple[float, float] = (2.0, 98.0),
                       preview_side: int = 1024) -> tuple[Radiometry, str]:
    """The radiometry for ``source`` and a one-line message saying what was chosen and why."""
    n = len(source.bands)
    dtype = source.dtype.name
    if kind is None:
        kind = "uint8" if dtype == "uint8" else "percentile"
        why = f"radiometry not given: using '{kind}' for {dtype} data (choose with --radiometry {'|'.join(RADIOMETRIES)})"
    else:
        why = f"radiometry '{kind}'"
    if kind not in RADIOMETRIES:
        raise ConfigError(f"unknown radiometry {kind!r}; choose one of {', '.join(RADIOMETRIES)}")

    if kind == "s2-l2a":
        if s2_offset is None:
            s2_offset, src = _s2_offset(source)
        else:
            src = "given by the user"
        r = Radiometry(kind, (1e-4,) * n, (s2_offset * 1e-4,) * n,
                       {"formula": "(DN + offset) / 10000", "offset": s2_offset, "offset_source": src})
        return r, f"{why}: reflectance = (DN + {s2_offset:g}) / 10000 ({src})"
    if kind == "landsat-c2-l2":
        r = Radiometry(kind, (2.75e-5,) * n, (-0.2,) * n, {"formula": "DN * 2.75e-5 - 0.2"})
        return r, f"{why}: reflectance = DN x 2.75e-5 - 0.2"
    if kind == "uint8":
        return Radiometry(kind, (1 / 255,) * n, (0.0,) * n, {"formula": "DN / 255"}), f"{why}: DN / 255"
    if kind == "reflectance":
        return Radiometry(kind, (1.0,) * n, (0.0,) * n, {"formula": "DN"}), f"{why}: values used as they are"
    if kind == "minmax":
        if minmax is None:
            raise ConfigError("--radiometry minmax needs --minmax LO,HI (or LO1,..,LOn,HI1,..,HIn per band)")
        vals = [float(v) for v in minmax]
        if len(vals) == 2:
            lo, hi = [vals[0]] * n, [vals[1]] * n
        elif len(vals) == 2 * n:
            lo, hi = vals[:n], vals[n:]
        else:
            raise ConfigError(f"--minmax takes 2 or {2 * n} numbers, got {len(vals)}")
        return _stretch(kind, lo, hi, {"min": lo, "max": hi}), f"{why}: per-band ({lo}, {hi}) -> (0, 1)"
    # percentile: once per scene from a decimated read or an overview
    data, valid = source.read_decimated(preview_side)
    lo, hi = [], []
    for c in range(n):
        v = data[c][valid]
        if v.size == 0:
            raise ConfigError(f"{source.path} has no valid pixels in band {source.bands[c]}: nothing to embed")
        a, b = np.percentile(v.astype(np.float64), percentiles)
        lo.append(float(a))
        hi.append(float(b) if b > a else float(a) + 1.0)
    params = {"percentiles": list(percentiles), "min": lo, "max": hi, "preview_shape": list(data.shape[1:])}
    return _stretch(kind, lo, hi, params), (f"{why}: per-band {percentiles[0]:g}-{percentiles[1]:g} % bounds "
                                           f"{[round(x, 4) for x in lo]}..{[round(x, 4) for x in hi]} from a "
                                           f"{data.shape[1]}x{data.shape[2]} preview")


def _stretch(kind: str, lo: list[float], hi: list[float], params: dict) -> Radiometry:
    gain = tuple(1.0 / (h - l) if h != l else 1.0 for l, h in zip(lo, hi))
    bias = tuple(-l * g for l, g in zip(lo, gain))
    return Radiometry(kind, gain, bias, params)
