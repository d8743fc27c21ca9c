"""What every product's plan shares: the plan itself (:class:`JobPlan`, what the job runs), opening the source,
its radiometry and what planning says of them, the settings the fingerprint covers (a cube resumes only under the
same ones) and the provenance of the reading, the engine's report where inference runs, the settings' changes in
words (for refusals), and the time stamp."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from geodino.engine import EngineSpec, get_engine
from geodino.raster import Radiometry, RasterSource, resolve_radiometry
from geodino.raster.bands import describe_bands, warn_rgb_order
from geodino.tiling import TileGrid

__all__ = ["JobPlan", "NUMERICS", "fingerprint", "open_source", "plan_radiometry", "shrunk", "job_settings",
           "read_provenance", "engine_report", "describe_numerics", "describe_changes", "now"]

NUMERICS = "numerics"  # the settings key holding what decides the output's bits


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprint(settings: dict) -> str:
    """The short hash of a plan's settings (sorted JSON; frozen by tests/job/test_frozen_fingerprints.py)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class JobPlan:
    """One output of a job, everything validated, as :func:`geodino.job.run.run_job` runs it: ``scene`` (a label),
    ``output`` (the store it writes: a path or URL), the source and its tile grid, the radiometry, the engine, the
    product's ``options``, the ``settings`` the fingerprint covers, the ``provenance`` and what planning says."""

    scene: str
    output: str
    source: RasterSource
    tiles: TileGrid
    radiometry: Radiometry
    engine_spec: Any
    options: Any
    settings: dict
    provenance: dict
    messages: list[str]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)


def open_source(resolved, opts, scale: float = 1.0) -> RasterSource:
    """The source of a resolved scene (:func:`geodino.raster.scene.resolve_scene`) read as ``opts`` say (nodata,
    resampling), ``scale`` times its native resolution."""
    return RasterSource(resolved.path, bands=resolved.bands, nodata=opts.nodata, scale=scale,
                        resampling=opts.resampling, identity=resolved.identity)


def plan_radiometry(source: RasterSource, opts, like: dict | None = None) -> tuple[Radiometry, list[str]]:
    """The radiometry ``opts`` ask for on ``source`` (or ``like`` another cube's), and what planning says of the
    bands and of the radiometry."""
    radiometry, why = resolve_radiometry(opts.radiometry, source, s2_offset=opts.s2_offset, minmax=opts.minmax,
                                         percentiles=opts.percentiles, like=like)
    warn_rgb_order(source, radiometry.kind)
    return radiometry, [f"bands {describe_bands(source.bands, source.band_names)} read as red, green, blue", why]


def shrunk(tiles: TileGrid, requested: int) -> list[str]:
    """What planning says when the tile grid's tile is smaller than the one asked for."""
    return [f"raster is smaller than one tile: tile shrunk to {tiles.tile} px"] if tiles.tile != requested else []


def job_settings(source: RasterSource, radiometry: Radiometry, tiles: TileGrid, numerics: dict, engine: dict,
                 product: dict | None = None) -> dict:
    """What the fingerprint covers: how the source is read and scaled, the ``engine``'s identity (model,
    overrides, weights), the tiling, the ``product``'s own settings and the numerics."""
    return {"source": source.identity.to_dict(), "bands": source.bands, "nodata": source.nodata,
            "scale": source.scale, "resampling": source.resampling_name,
            "radiometry": [radiometry.kind, list(radiometry.gain), list(radiometry.bias), radiometry.levels],
            **engine, "tile": tiles.tile, "halo": tiles.halo, "blend": tiles.blend, **(product or {}),
            NUMERICS: numerics}


def read_provenance(source: RasterSource, radiometry: Radiometry) -> dict:
    """The provenance of how the source is read: the radiometry and the bands."""
    return {"radiometry": radiometry.to_dict(), "bands": {"indexes": source.bands, "names": source.band_names}}


def engine_report(spec: EngineSpec, window: int) -> dict:
    """What the engine ``spec`` is on this process (loading it): numerics (incl. the micro-batch of ``window``-px
    inputs), its description and the weights' provenance. Runs where inference runs."""
    eng = get_engine(spec)
    numerics = {**eng.numerics(), "micro_batch": eng.micro_batch(window, window)}
    return {"numerics": numerics, "describe": eng.describe(), "weights": eng.weights_info.to_dict(),
            "embed_dim": eng.embed_dim}


def describe_numerics(n: dict) -> str:
    dev = n.get("device_name") or n.get("device_type")
    extra = ["compiled" if n.get("compile") else "", f"quantized {n['quantize']}" if n.get("quantize") else ""]
    return (f"{n.get('precision')} on {n.get('device_type')} ({dev}), torch {n.get('torch')}"
            + "".join(f", {e}" for e in extra if e))


# a setting's name in words where it is not its key with spaces (weights_sha256 -> "weights sha256")
_SETTING_WORDS = {"scale": "read scale", "canopy_model": "model", "arch": "architecture overrides",
                  "head_arch": "head architecture overrides", "min_valid": "min-valid"}


def _words(key: str, v) -> str:
    """A setting's value as a user reads it (no Python dicts or lists)."""
    if v is None or v == {} or v == []:
        return "none"
    if key == "source" and isinstance(v, dict):
        when = v.get("mtime")
        when = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds") \
            if isinstance(when, (int, float)) else when
        return f"{v.get('path')} ({v.get('size')} bytes, modified {when})"
    if key == "radiometry" and isinstance(v, list) and len(v) >= 3:
        def one(xs):
            xs = [float(x) + 0.0 for x in xs]  # + 0.0: no "-0"
            return f"{xs[0]:.6g}" if len(set(xs)) == 1 else "/".join(f"{x:.6g}" for x in xs)
        return f"{v[0]} (gain {one(v[1])}, bias {one(v[2])}{', ' + str(v[3]) + ' levels' if v[3] else ''})"
    if key == NUMERICS and isinstance(v, dict):
        return describe_numerics(v)
    if key.endswith("sha256") and isinstance(v, str) and len(v) > 16:
        return v[:12] + "..."
    if isinstance(v, dict):
        return ", ".join(f"{k}={_words(k, x)}" for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return ",".join(_words(key, x) for x in v)
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def describe_changes(old: dict, new: dict, limit: int = 4) -> str:
    """The settings that differ between a cube's and this run's, in words: ``halo 16 -> 32; bands 3,2,1 -> 4,3,2``
    (the first ``limit``, then how many more)."""
    new = json.loads(json.dumps(new, default=str))  # as stored (tuples become lists)
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = [f"{_SETTING_WORDS.get(k, k.replace('_', ' '))} {_words(k, old.get(k))} -> {_words(k, new.get(k))}"
             for k in keys[:limit]]
    return "; ".join(parts) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")
