"""Planning an embed job for one scene: source, tile grid, radiometry, engine, output and fingerprint.

Planning does all validation (raster, bands, nodata, radiometry, weights, output path) before a cube is
created, so bad input never leaves a cube behind.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from geodino.cube.storage import is_local, join
from geodino.cube.store import CubeLayout, default_shard, read_attrs
from geodino.embed.config import EmbedConfig
from geodino.engine import EngineSpec, compile_pays_back, resolve_device
from geodino.errors import ConfigError, CubeError, CubeExistsError, unwritable_folder
from geodino.job.plan import (NUMERICS, JobPlan, engine_report, fingerprint,  # noqa: F401 (re-exported)
                              job_settings, open_source, plan_radiometry, read_provenance, shrunk)
from geodino.raster.scene import resolve_scene, scene_name
from geodino.tiling import TileGrid

__all__ = ["ScenePlan", "plan_scene", "default_output", "engine_spec", "engine_report", "NUMERICS"]

log = logging.getLogger(__name__)


class NoCRSWarning(UserWarning):
    """The input has no CRS: the cube uses pixel coordinates."""


def default_output(scene: str | os.PathLike, output: str | os.PathLike | None, n_scenes: int) -> str:
    """``scene.tif`` -> ``scene.zarr`` beside it; with several scenes ``-o`` is a directory (or URL prefix) of
    cubes. The output is a path or a URL (``s3://bucket/scene.zarr``)."""
    scene = scene_name(scene)  # a URL's file name; one name per item of a STAC ItemCollection
    if output is None:
        return str(scene.with_suffix(".zarr"))
    out = os.fspath(output)
    if not is_local(out):
        return join(out, scene.stem + ".zarr") if n_scenes > 1 or out.endswith("/") else out.rstrip("/")
    p = Path(out)
    if n_scenes > 1 or (p.is_dir() and not (p / "zarr.json").exists() and p.suffix != ".zarr"):
        return str(p / (scene.stem + ".zarr"))
    return out


def check_writable(out: str) -> None:
    if not is_local(out):  # an object store: permissions show at the first write (one line, exit 2)
        return
    out = Path(out)
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CubeError(f"cannot write the cube {out}: {probe} is not a directory; choose another -o")
    fault = unwritable_folder(probe, f"the cube {out}")  # a read-only filesystem, no permission: exit 5
    if fault is not None:
        raise fault
    if out.exists() and not out.is_dir():
        raise CubeExistsError(f"output {out} exists and is not a geodino cube (it is a file): choose another -o")
    fault = unwritable_folder(out, f"the cube {out}") if out.exists() else None
    if fault is not None:
        raise fault


def engine_spec(cfg: EmbedConfig, tiles: int | None = None) -> EngineSpec:
    """The engine ``cfg`` asks for; ``compile: auto`` is decided here from the scene's number of ``tiles`` (all of
    them, not only those still pending, so that a resume decides as the first run did)."""
    from geodino.models import get_config

    weights = cfg.weights if cfg.weights is not None else get_config(cfg.model).hf_repo
    compile_ = cfg.compile
    if compile_ == "auto":
        compile_ = tiles is not None and compile_pays_back(resolve_device(cfg.device), tiles)
    return EngineSpec(cfg.model, str(weights), cfg.device, cfg.precision, tuple(sorted(cfg.arch.items())),
                      cfg.allow_download, bool(compile_), cfg.quantize, cfg.micro_batch)


def radiometry_of_cube(path: str) -> dict:
    """The recorded radiometry of another cube (``--radiometry-like``)."""
    try:
        prov = read_attrs(path).get("geodino") or {}
    except CubeError as e:
        raise ConfigError(f"--radiometry-like {path}: {e}") from None
    rad = prov.get("radiometry")
    if not rad or "gain" not in rad:
        raise ConfigError(f"--radiometry-like {path}: that cube records no radiometry (made by an older geodino?)")
    return {**rad, "copied_from": str(path)}


@dataclass
class ScenePlan(JobPlan):
    embed_dim: int

    @property
    def layout(self) -> CubeLayout:
        """The cube's shape: one chunk per tile core, bands of tiles per shard."""
        ys, xs = self.tiles.tile_bounds()
        return CubeLayout(self.tiles.patch_grid, self.tiles.tile_patches, tuple(ys), tuple(xs),
                          default_shard((len(ys), len(xs))))


def plan_scene(scene: str | os.PathLike, cfg: EmbedConfig, report_for, n_scenes: int = 1,
               command: str | dict | None = None, scheduler: str | None = None) -> ScenePlan:
    """Validate everything about one scene and describe the job. ``report_for(window, spec)`` gives
    :func:`engine_report` of the engine that will run, from the process or workers where inference runs.
    ``command``: the CLI's command line, or the library call (:func:`geodino._provenance.library_call`); it is
    provenance only, never part of the fingerprint."""
    from geodino import __version__
    from geodino._provenance import origin
    from geodino.models import get_config

    messages: list[str] = []
    out = default_output(scene, cfg.output, n_scenes)
    check_writable(out)
    resolved = resolve_scene(scene, bands=cfg.bands)  # remote rasters -> /vsi paths; STAC items -> a VRT of assets
    source = open_source(resolved, cfg, cfg.scale)
    if not source.has_crs:
        msg = f"{scene} has no CRS: the cube uses pixel coordinates (recorded as crs: none)"
        warnings.warn(msg, NoCRSWarning, stacklevel=2)
    model_cfg = get_config(cfg.model)
    if source.grid.shape != source.native_grid.shape:
        messages.append(f"resampled x{cfg.scale:g} ({cfg.resampling}): {source.native_grid.shape[1]}x"
                        f"{source.native_grid.shape[0]} -> {source.grid.shape[1]}x{source.grid.shape[0]} px")
    like = radiometry_of_cube(cfg.radiometry_like) if cfg.radiometry_like else None
    radiometry, said = plan_radiometry(source, cfg, like)
    tiles = TileGrid.fit(source.grid, cfg.tile, cfg.halo, model_cfg.arch.patch_size, cfg.blend)
    messages += said + shrunk(tiles, cfg.tile)
    spec = engine_spec(cfg, len(tiles))
    arch = model_cfg.arch.replace(**cfg.arch) if cfg.arch else model_cfg.arch
    report = report_for(tiles.window, spec)
    numerics = dict(report["numerics"])
    winfo = report["weights"]
    settings = job_settings(source, radiometry, tiles, numerics,
                            {"model": cfg.model, "arch": dict(sorted(cfg.arch.items())),
                             "weights_sha256": winfo["sha256"]},
                            {"dtype": cfg.dtype, "min_valid": cfg.min_valid})
    engine_desc = {**report["describe"], "batch_size": cfg.batch_size, "prefetch": cfg.prefetch,
                   "threads": cfg.threads, "scheduler": scheduler or "in-process dask"}
    if scheduler:
        engine_desc["resource"] = cfg.resource
    provenance = {
        "geodino_version": __version__,
        **origin(command),
        "model": {"name": cfg.model, "arch_overrides": cfg.arch, "embed_dim": arch.embed_dim,
                  "patch_size": arch.patch_size, "hf_repo": model_cfg.hf_repo,
                  "weights": {**winfo, "sha256": winfo["sha256"] if not winfo["random"] else "random-init"},
                  "random_weights": bool(winfo["random"])},
        "normalization": {"name": model_cfg.normalization, "mean": list(model_cfg.mean), "std": list(model_cfg.std)},
        **read_provenance(source, radiometry),
        "tiling": {**tiles.to_dict(), "tile_requested": cfg.tile, "min_valid": cfg.min_valid},
        "source": source.describe(),
        "stac": resolved.describe(),
        "crs": "none (pixel coordinates)" if not source.has_crs else "from source",
        "engine": engine_desc,
        NUMERICS: numerics,
        "features_dtype": cfg.dtype,
        "settings": settings,
    }
    plan = ScenePlan(str(scene), out, source, tiles, radiometry, spec, cfg, settings, provenance, messages,
                     arch.embed_dim)
    provenance["fingerprint"] = plan.fingerprint
    return plan
