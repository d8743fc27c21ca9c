"""Planning a canopy job: outputs, source (resampled to the model's ground resolution), radiometry, pixel tile
grid, engine, fingerprint and provenance. Everything is validated here, before anything is written."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from geodino.canopy.options import CanopyOptions, cog_encoding
from geodino.canopy.resolution import GroundResolution, ground_resolution
from geodino.canopy.tasks import is_height_cube
from geodino.cube import storage
from geodino.cube.storage import join, location
from geodino.cube.store import is_cube, stray_keys
from geodino.engine.canopy import CanopyEngineSpec
from geodino.errors import ConfigError, CubeError, CubeExistsError, OutputExistsError, unwritable_folder
from geodino.job.plan import JobPlan, job_settings, open_source, plan_radiometry, read_provenance, shrunk
from geodino.raster.scene import resolve_scene, scene_name
from geodino.tiling import TileGrid

__all__ = ["CanopyPlan", "plan_canopy", "canopy_engine_spec", "default_paths", "fit_tiles"]


def default_paths(scene: str, opts: CanopyOptions) -> tuple[Path | str, Path | str]:
    """(COG, height cube): ``scene.tif`` -> ``scene.chm.tif`` beside it; the cube ``<cog stem>.heights.zarr``
    beside the COG. Each is a local :class:`~pathlib.Path` or an object-store URL (``s3://bucket/chm.tif``, kept
    as the canonical URL string)."""
    cog = location(opts.output) if opts.output else scene_name(scene).with_suffix(".chm.tif")
    if opts.cube:
        cube = location(opts.cube)
    elif isinstance(cog, Path):
        cube = cog.with_name(cog.stem + ".heights.zarr")
    else:
        parent, _, name = cog.rpartition("/")
        cube = join(parent, PurePosixPath(name).stem + ".heights.zarr")
    return cog, cube


def check_outputs(cog: Path | str, cube: Path | str, overwrite: bool) -> None:
    """Refuse an existing COG without ``overwrite``, an unwritable folder, and a cube path holding anything but
    a height cube (geodino never deletes data it did not write). On an object store permissions show at the
    first write (one line, exit 2), as for embed's cubes."""
    local = isinstance(cog, Path)
    if not local and storage.is_dir(cog):
        raise OutputExistsError(f"{cog} is a folder (a prefix holding objects): give -o a file name such as chm.tif")
    if storage.exists(cog) and not overwrite:
        raise OutputExistsError(f"{cog} exists: pass --overwrite to replace it (and its height cube), or choose "
                                "another -o")
    if local and cog.is_dir():
        raise OutputExistsError(f"{cog} is a directory: give -o a file name such as chm.tif")
    if PurePosixPath(str(cog)).suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"-o {cog}: the output is a GeoTIFF (COG); give it a .tif name")
    for p in [o.parent for o in (cog, cube) if isinstance(o, Path)]:
        if not p.is_dir():
            raise CubeError(f"cannot write {p}: not a directory; choose another -o/--cube")
        fault = unwritable_folder(p, str(cog if isinstance(cog, Path) and p == cog.parent else cube),
                                  "finished tiles are kept")
        if fault is not None:  # a read-only filesystem, no permission: exit 5
            raise fault
    if isinstance(cube, Path):
        if not cube.exists():
            return
        if not cube.is_dir():
            raise CubeExistsError(f"--cube {cube} exists and is a file: choose another --cube")
        stray = [c for c in cube.iterdir() if c.name != ".geodino.lock"]
    else:
        if storage.exists(cube):  # an object where the cube's prefix should be
            raise CubeExistsError(f"--cube {cube} exists and is a file: choose another --cube")
        stray = stray_keys(cube)
    if is_cube(cube) and not is_height_cube(cube):
        raise CubeExistsError(f"{cube} is a geodino feature cube, not a canopy height cube: choose another --cube")
    if stray and not is_cube(cube):
        raise CubeExistsError(f"{cube} exists and is not a geodino height cube: choose another --cube "
                              "(geodino never deletes data it did not write)")


def _frozen(d: dict) -> tuple:
    """Overrides as a hashable, sorted tuple (lists from YAML/JSON become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def canopy_engine_spec(opts: CanopyOptions) -> CanopyEngineSpec:
    from geodino.models.chmv2 import get_canopy_config

    cfg = get_canopy_config(opts.model)
    weights = opts.weights if opts.weights is not None else cfg.hf_repo
    return CanopyEngineSpec(opts.backbone or cfg.backbone, str(weights), opts.device, opts.precision,
                            _frozen(opts.arch), opts.allow_download, micro_batch=opts.micro_batch,
                            canopy_model=cfg.name, head_arch=_frozen(opts.head_arch),
                            backbone_weights=None if opts.backbone_weights is None else str(opts.backbone_weights))


def fit_tiles(grid, tile: int, halo: int, blend: int) -> TileGrid:
    """A pixel tile grid (``patch = 1``); the tile shrinks to the raster, rounded up to 32 px, when the raster is
    smaller than one tile."""
    side = max(grid.height, grid.width)
    small = min(tile, math.ceil(side / 32) * 32)
    return TileGrid(grid, small, halo, 1, min(blend, small // 2))


@dataclass
class CanopyPlan(JobPlan):
    """A canopy job's plan: its ``output`` is the height cube, the COG (``cog``) is made from it once complete."""

    cog: Path | str
    resolution: GroundResolution


def plan_canopy(scene: str | os.PathLike, opts: CanopyOptions, report_for,
                command: str | dict | None = None) -> CanopyPlan:
    """Validate everything about one canopy job and describe it. ``report_for(window)`` gives the engine report
    (numerics, weights) from where inference runs, loading the model there. ``command``: the CLI's command line
    or the library call (provenance only, never in the fingerprint)."""
    from geodino import __version__
    from geodino._provenance import origin
    from geodino.models import get_config
    from geodino.models.chmv2 import get_canopy_config

    scene = str(scene)
    messages: list[str] = []
    cfg = get_canopy_config(opts.model)
    cog, cube = default_paths(scene, opts)
    check_outputs(cog, cube, opts.overwrite)
    resolved = resolve_scene(scene, bands=opts.bands)
    probe = open_source(resolved, opts)
    target = float(opts.gsd or cfg.native_gsd_m)
    res = ground_resolution(probe.native_grid, target, probe.name)
    probe.close()
    source = open_source(resolved, opts, res.scale)
    if res.resampled:
        g, n = source.grid, source.native_grid
        messages.append(f"input at {res.gsd_m:.3g} m on the ground; CHMv2 expects {target:g} m: resampled in the "
                        f"read x{res.scale:.4g} ({opts.resampling}), {n.width}x{n.height} -> {g.width}x{g.height} px")
    else:
        messages.append(f"input at {res.gsd_m:.3g} m on the ground (CHMv2 expects {target:g} m): read as it is")
    radiometry, said = plan_radiometry(source, opts)
    tiles = fit_tiles(source.grid, opts.tile, opts.halo, opts.blend_px)
    messages += said + shrunk(tiles, opts.tile)
    spec = canopy_engine_spec(opts)
    report = report_for(tiles.window)
    numerics = dict(report["numerics"])
    winfo = report["weights"]
    bwinfo = report["describe"].get("backbone_weights") or {}
    random = bool(winfo.get("random"))
    if random:
        messages.append("--weights random: the heights are MEANINGLESS (demo/test only); the outputs record it")
    bcfg = get_config(spec.model)
    settings = job_settings(source, radiometry, tiles, numerics, {
        "canopy_model": cfg.name, "backbone": spec.model, "arch": dict(spec.arch), "head_arch": dict(spec.head_arch),
        "weights_sha256": winfo.get("sha256"), "backbone_weights_sha256": bwinfo.get("sha256")})
    provenance = {
        "geodino_version": __version__, "product": "canopy height (CHMv2)", **origin(command),
        "model": {"name": cfg.name, "backbone": spec.model, "hf_repo": cfg.hf_repo, "head": report["describe"]["head"],
                  "arch_overrides": dict(spec.arch), "head_overrides": dict(spec.head_arch),
                  "weights": {**winfo, "sha256": "random-init" if random else winfo.get("sha256")},
                  "backbone_weights": bwinfo, "random_weights": random},
        "normalization": {"name": "chmv2", "mean": list(cfg.mean), "std": list(cfg.std)},
        **read_provenance(source, radiometry),
        "resolution": {**res.to_dict(), "resampling": opts.resampling if res.resampled else None,
                       "output_gsd_m": round(res.gsd_m / res.scale, 4)},
        "tiling": {"tile": tiles.tile, "halo": tiles.halo, "blend_px": tiles.blend, "window": tiles.window,
                   "tiles": list(tiles.shape), "tile_requested": opts.tile,
                   "blending": "linear ramps over 2*blend px, crossing 1/2 at core boundaries"},
        "source": source.describe(), "stac": resolved.describe(),
        "engine": {**report["describe"], "batch_size": opts.batch_size, "prefetch": opts.prefetch,
                   "threads": opts.threads, "scheduler": opts.scheduler or "in-process dask"},
        "numerics": numerics, "units": "m", "cog": None, "settings": settings,
        "backbone_patch_size": bcfg.arch.patch_size,
    }
    plan = CanopyPlan(scene, str(cube), source, tiles, radiometry, spec, opts, settings, provenance, messages, cog,
                      res)
    provenance["cog"] = {"path": str(cog), **cog_encoding(opts.dtype)}
    provenance["fingerprint"] = plan.fingerprint
    return plan
