"""Radiometry presets: how each sensor's digital numbers become the display-referred RGB the model was trained on.

The model-input contract (applied by :func:`geodino.engine.prepare_batch`, for ``embed`` and GEO-Bench alike)::

    display = clip(gain[c] * DN + bias[c], 0, 1)          # per band c; resolved once per scene, never per tile
    display = round(display * levels) / levels            # only when the preset quantises (GEO-Bench: 255)
    x       = (display - mean[c]) / std[c]                # the weights' own normalisation (SAT-493M or ImageNet)
    x       = 0 where the pixel is nodata                 # i.e. the mean colour

A preset only chooses ``gain``, ``bias`` and ``levels``:

* ``s2-l2a``: reflectance ρ = (DN + BOA_ADD_OFFSET) / 10000, display = clip(2.25 ρ, 0, 1);
* ``landsat-c2-l2``: ρ = DN × 2.75e-5 − 0.2, display = clip(2.25 ρ, 0, 1);
* ``reflectance``: ρ = DN × scale + offset (GDAL's band scale/offset, 1 and 0 if the file declares none),
  display = clip(2.25 ρ, 0, 1);
* ``uint8``: 8-bit display-referred RGB (aerial, NAIP, Maxar-like): DN / 255;
* ``minmax``: per-band bounds given by the user, (DN − lo) / (hi − lo);
* ``percentile``: a per-scene 2–98 % stretch (only on request: two dates of one place get different gains);
* ``geobench``: GEO-Bench's protocol, per-band min–max from ``band_stats.json`` to 0–255 in whole steps.

The reflectance -> display gain 2.25 was chosen by measurement (``pipelines/measure_radiometry.py``, table in
``docs/radiometry.md``): over the real Sentinel-2 L2A and Landsat surface-reflectance scenes of the project's
test data it brings the per-channel means and stds of the model input closest to the SAT-493M statistics
(mean 0.430, 0.411, 0.296; std 0.213, 0.156, 0.143); a display gamma did not improve the fit.

Without ``--radiometry`` the preset follows what the file's metadata says the sensor is (8-bit data: ``uint8``);
data whose sensor the metadata does not name is refused with the list of presets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from geodino.errors import ConfigError

__all__ = ["Radiometry", "RADIOMETRIES", "resolve_radiometry", "geobench_radiometry", "detect_preset",
           "DISPLAY_GAIN", "resolve_s2_offset"]

RADIOMETRIES = ("s2-l2a", "landsat-c2-l2", "reflectance", "uint8", "minmax", "percentile", "geobench")


def parse_numbers(option: str, value) -> tuple[float, ...]:
    """``--minmax``/``--percentiles`` values ("LO,HI", or a YAML list) as finite floats: one line otherwise."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        out = tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"--{option} takes comma-separated numbers (e.g. --{option} 0,4000), got {value!r}") \
            from None
    if not out or not all(math.isfinite(x) for x in out):
        raise ConfigError(f"--{option} takes finite numbers (e.g. --{option} 0,4000), got {value!r}")
    return out


DISPLAY_GAIN = 2.25  # reflectance -> display RGB; measured, see the module docstring
S2_OFFSET_SINCE = date(2022, 1, 25)  # first products of processing baseline 04.00 (BOA_ADD_OFFSET = -1000)


@dataclass(frozen=True)
class Radiometry:
    """``display = clip(gain[c] * DN + bias[c], 0, 1)`` per band c (then ``levels`` steps, if set)."""

    kind: str
    gain: tuple[float, ...]
    bias: tuple[float, ...]
    levels: int | None = None
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Reference implementation on numpy ``[C, H, W]`` (the engine does the same on the device)."""
        g = np.asarray(self.gain, np.float32)[:, None, None]
        b = np.asarray(self.bias, np.float32)[:, None, None]
        x = np.clip(raw.astype(np.float32) * g + b, 0.0, 1.0)
        if self.levels:
            x = np.round(x * self.levels) / self.levels
        return x

    @property
    def engine_params(self) -> tuple:
        """What the engine needs: ``(gain, bias, levels)``."""
        return (tuple(self.gain), tuple(self.bias), self.levels)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "gain": list(self.gain), "bias": list(self.bias), "levels": self.levels,
                "params": self.params}

    @classmethod
    def from_dict(cls, d: dict) -> "Radiometry":
        return cls(d["kind"], tuple(float(v) for v in d["gain"]), tuple(float(v) for v in d["bias"]),
                   d.get("levels"), dict(d.get("params") or {}))

    def same_mapping(self, other: "Radiometry") -> bool:
        """Whether two radiometries map DNs to model input identically (what makes cubes comparable)."""
        return (self.gain, self.bias, self.levels) == (other.gain, other.bias, other.levels)

    def __dask_tokenize__(self):
        return ("Radiometry", self.kind, self.gain, self.bias, self.levels)


def _reflectance(kind: str, n: int, scale: float, offset: float, params: dict) -> Radiometry:
    """display = clip(DISPLAY_GAIN * (DN * scale + offset), 0, 1)."""
    return Radiometry(kind, (DISPLAY_GAIN * scale,) * n, (DISPLAY_GAIN * offset,) * n, None,
                      {**params, "display_gain": DISPLAY_GAIN})


# ------------------------------------------------------------------------------------- sensor metadata

_S2_DATE_KEYS = ("DATATAKE_1_DATATAKE_SENSING_START", "DATATAKE_SENSING_START", "PRODUCT_START_TIME",
                 "SENSING_TIME", "SENSING_START", "DATETIME", "START_DATETIME", "ACQUISITION_DATE")


def detect_preset(source) -> tuple[str, str] | None:
    """The preset the file's metadata names (``(kind, why)``), or None when it says nothing about the sensor."""
    meta = source.metadata
    hint = meta.get("RADIOMETRY_HINT", "").lower()  # a STAC item's platform and product (geodino.raster.stac)
    if hint in ("s2-l2a", "landsat-c2-l2"):
        return hint, f"the STAC item names a {'Sentinel-2 L2A' if hint == 's2-l2a' else 'Landsat C2 L2'} product"
    text = " ".join(f"{k}={v}" for k, v in meta.items()).upper()
    if (meta.get("PRODUCT_TYPE", "").upper().startswith("S2MSI2A") or "MSIL2A" in text
            or any(k.startswith("BOA_ADD_OFFSET") or k == "BOA_QUANTIFICATION_VALUE" for k in meta)
            or ("SENTINEL-2" in meta.get("SPACECRAFT_NAME", "").upper()
                and "2A" in meta.get("PROCESSING_LEVEL", "").upper())):
        return "s2-l2a", "the metadata names a Sentinel-2 L2A product"
    pid = meta.get("LANDSAT_PRODUCT_ID", "").upper()
    level = meta.get("PROCESSING_LEVEL", "").upper()
    if re.search(r"_L2S[PR]_", pid) or (level in ("L2SP", "L2SR") and meta.get("COLLECTION_NUMBER", "02") == "02"):
        return "landsat-c2-l2", "the metadata names a Landsat Collection 2 Level-2 product"
    if source.dtype == np.uint8:
        return "uint8", "8-bit data is display-referred RGB"
    return None


def _sensing_date(meta: dict) -> date | None:
    for k in _S2_DATE_KEYS:
        v = meta.get(k)
        m = re.match(r"(\d{4})-?(\d{2})-?(\d{2})", str(v or "").strip())
        if m:
            try:
                return date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                continue
    return None


def resolve_s2_offset(source) -> tuple[float, str]:
    """BOA_ADD_OFFSET from the metadata, the processing baseline or the sensing date; else a ConfigError."""
    meta = source.metadata
    for k, v in meta.items():
        if re.fullmatch(r"BOA_ADD_OFFSET.*|ADD_OFFSET", k):
            try:
                return float(v), f"metadata {k}={v}"
            except ValueError:
                pass
    offs, scales = source.band_offsets, source.band_scales
    if any(o not in (0.0, None) for o in offs) and all(s not in (0.0, None) for s in scales):
        # GDAL scale/offset: reflectance = DN * scale + offset  ->  offset in DN = offset / scale
        return offs[0] / scales[0], f"GDAL band offset {offs[0]} / scale {scales[0]}"
    baseline = meta.get("PROCESSING_BASELINE")
    if baseline:
        try:
            b = float(baseline)
            return (-1000.0, f"processing baseline {baseline} >= 04.00") if b >= 4.0 else \
                (0.0, f"processing baseline {baseline} < 04.00")
        except ValueError:
            pass
    when = _sensing_date(meta)
    if when is not None and when < S2_OFFSET_SINCE:
        return 0.0, (f"sensed {when.isoformat()}, before baseline 04.00 (2022-01-25): offset 0 assumed; a "
                     "reprocessed product (baseline 05.xx) needs --s2-offset -1000")
    seen = f"sensed {when.isoformat()}" if when else "no sensing date, processing baseline or BOA_ADD_OFFSET"
    raise ConfigError(f"{source.name}: cannot tell the Sentinel-2 BOA_ADD_OFFSET ({seen} in the metadata): pass "
                      "--s2-offset -1000 for products processed since 2022-01-25 (baseline 04.00 and later, "
                      "including the reprocessed archive) or --s2-offset 0 for older ones")


# ------------------------------------------------------------------------------------------ resolving

def resolve_radiometry(kind: str | None, source, *, s2_offset: float | None = None,
                       minmax: tuple | list | None = None, percentiles: tuple[float, float] = (2.0, 98.0),
                       like: dict | None = None, preview_side: int = 1024) -> tuple[Radiometry, str]:
    """The radiometry for ``source`` and a one-line message saying what was chosen and why.

    ``like`` is another cube's recorded radiometry (``--radiometry-like``): its exact gain and bias are reused,
    so that cubes of several dates are comparable.
    """
    n = len(source.bands)
    if like is not None:
        r = Radiometry.from_dict(like)
        if len(r.gain) != n:
            raise ConfigError(f"--radiometry-like gives {len(r.gain)} band(s) of gain/bias but {source.name} is read "
                              f"with {n}: use the same --bands as that cube")
        r = Radiometry(r.kind, r.gain, r.bias, r.levels, {**r.params, "copied_from": like.get("copied_from")})
        return r, f"radiometry copied from another cube ({r.kind}, gain {list(r.gain)}, bias {list(r.bias)})"
    if kind is None:
        found = detect_preset(source)
        if found is None:
            raise ConfigError(f"{source.name} holds {source.dtype} data and its metadata does not say which sensor "
                              f"made it: choose --radiometry {'|'.join(p for p in RADIOMETRIES if p != 'geobench')}"
                              " (percentile stretches each scene on its own, so scenes stop being comparable)")
        kind, why = found[0], f"radiometry '{found[0]}' ({found[1]})"
    else:
        why = f"radiometry '{kind}'"
    if kind not in RADIOMETRIES or kind == "geobench":
        raise ConfigError(f"unknown radiometry {kind!r}; choose one of "
                          f"{', '.join(p for p in RADIOMETRIES if p != 'geobench')}")

    if kind == "s2-l2a":
        s2_offset, src = resolve_s2_offset(source) if s2_offset is None else (s2_offset, "given by the user")
        r = _reflectance(kind, n, 1e-4, s2_offset * 1e-4,
                         {"formula": f"clip({DISPLAY_GAIN} * (DN + offset) / 10000, 0, 1)", "offset": s2_offset,
                          "offset_source": src})
        return r, f"{why}: display = clip({DISPLAY_GAIN} x (DN + {s2_offset:g}) / 10000, 0, 1) ({src})"
    if kind == "landsat-c2-l2":
        r = _reflectance(kind, n, 2.75e-5, -0.2, {"formula": f"clip({DISPLAY_GAIN} * (DN * 2.75e-5 - 0.2), 0, 1)"})
        return r, f"{why}: display = clip({DISPLAY_GAIN} x (DN x 2.75e-5 - 0.2), 0, 1)"
    if kind == "reflectance":
        scale = source.band_scales[0] if source.band_scales and source.band_scales[0] not in (None, 0.0) else 1.0
        offset = source.band_offsets[0] if source.band_offsets and source.band_offsets[0] is not None else 0.0
        r = _reflectance(kind, n, scale, offset,
                         {"formula": f"clip({DISPLAY_GAIN} * (DN * scale + offset), 0, 1)", "scale": scale,
                          "offset": offset})
        return r, f"{why}: display = clip({DISPLAY_GAIN} x (DN x {scale:g} + {offset:g}), 0, 1)"
    if kind == "uint8":
        return Radiometry(kind, (1 / 255,) * n, (0.0,) * n, None, {"formula": "DN / 255"}), f"{why}: DN / 255"
    if kind == "minmax":
        if minmax is None:
            raise ConfigError("--radiometry minmax needs --minmax LO,HI (or LO1,..,LOn,HI1,..,HIn per band)")
        vals = [float(v) for v in minmax]
        if len(vals) not in (2, 2 * n):
            raise ConfigError(f"--minmax takes 2 or {2 * n} numbers, got {len(vals)}")
        lo, hi = (vals[:1] * n, vals[1:] * n) if len(vals) == 2 else (vals[:n], vals[n:])
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            raise ConfigError(f"--minmax needs LO < HI for every band, got {lo} .. {hi}")
        return _stretch(kind, lo, hi, {"min": lo, "max": hi}), f"{why}: per-band ({lo}, {hi}) -> (0, 1)"
    # percentile: once per scene from a decimated read or an overview
    data, valid = source.read_decimated(preview_side)
    lo, hi = [], []
    for c in range(n):
        v = data[c][valid]
        if v.size == 0:
            raise ConfigError(f"{source.name} has no valid pixels in band {source.bands[c]}: nothing to embed")
        a, b = np.percentile(v.astype(np.float64), percentiles)
        lo.append(float(a))
        hi.append(float(b) if b > a else float(a) + 1.0)
    params = {"percentiles": list(percentiles), "min": lo, "max": hi, "preview_shape": list(data.shape[1:])}
    return _stretch(kind, lo, hi, params), (f"{why}: per-band {percentiles[0]:g}-{percentiles[1]:g} % bounds "
                                           f"{[round(x, 4) for x in lo]}..{[round(x, 4) for x in hi]} from a "
                                           f"{data.shape[1]}x{data.shape[2]} preview (this scene only)")


def geobench_radiometry(bounds: list[tuple[float, float]], stats: str = "min-max") -> Radiometry:
    """GEO-Bench's input protocol as a preset of the same contract: per-band (lo, hi) from band_stats.json to
    0-255 in whole steps (then /255)."""
    lo = [float(a) for a, _ in bounds]
    hi = [float(b) for _, b in bounds]
    return _stretch("geobench", lo, hi, {"stats": stats, "min": lo, "max": hi,
                                         "formula": "round(255 * clip((v - lo) / (hi - lo), 0, 1)) / 255"}, 255)


def _stretch(kind: str, lo: list[float], hi: list[float], params: dict, levels: int | None = None) -> Radiometry:
    gain = tuple(1.0 / (h - l) if h != l else 1.0 for l, h in zip(lo, hi))
    bias = tuple(-l * g for l, g in zip(lo, gain))
    return Radiometry(kind, gain, bias, levels, params)
