"""Running a canopy job: prepare (or resume) the height cube, schedule the tiles on the embed graph, finalize,
then convert the finished cube into a COG.

Resume works as embed's: a tile's heights depend only on its own window and its neighbours' (fixed-shape
micro-batches, blending in a fixed order), so a rerun of the same command computes only the windows that the
missing cores need and its cube is bit-identical to an uninterrupted run's; the COG is written only from a
complete cube, to a temporary name that is renamed into place once it validates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from geodino._interrupts import run_stoppable
from geodino._process import gdal_cache
from geodino._provenance import library_call
from geodino.canopy import tasks as canopy_tasks
from geodino.canopy.options import CanopyOptions
from geodino.canopy.plan import CanopyPlan, canopy_engine_spec, plan_canopy
from geodino.canopy.store import create_height_cube, open_heights
from geodino.cube.store import (PENDING, SKIPPED, STATUS_ATTR, WRITTEN, CubeLock, clean_partial_writes,
                                finalize_cube, is_cube, read_attrs, remove_cube, tile_status)
from geodino.embed.plan import describe_changes
from geodino.embed.schedule import SceneWork, Scheduler
from geodino.errors import CubeExistsError, environment_fault, output_faults
from geodino.raster.source import source_change

__all__ = ["canopy", "CanopySummary", "open_heights", "export_cog", "cog_tags"]

log = logging.getLogger(__name__)


@dataclass
class CanopySummary:
    scene: str
    output: str  # the COG ("" while incomplete)
    cube: str
    status: str  # complete | already complete | incomplete
    tiles_total: int
    tiles_written: int  # in this run
    tiles_skipped: int
    tiles_resumed: int
    seconds: float
    tiles_per_s: float
    mpx_per_s: float
    random_weights: bool
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_cube(plan: CanopyPlan) -> tuple[CubeLock, str, str]:
    """Create, resume or refuse the height cube. Returns the held lock, ``"new" | "resume" | "complete"`` and
    the cube id."""
    out = plan.cube
    lock = CubeLock(out).acquire()
    try:
        if is_cube(out):
            attrs = read_attrs(out)
            prov = attrs.get("geodino", {})
            if plan.options.overwrite:
                remove_cube(out)
            elif prov.get("fingerprint") != plan.fingerprint:
                settings = json.loads(json.dumps(plan.settings, default=str))
                changed = source_change(prov.get("settings", {}), settings)
                if changed:  # the same URL or path now holds another object
                    raise CubeExistsError(f"height cube {out} cannot be resumed: its source {changed}, and the cube "
                                          "would mix two versions of it; pass --overwrite to start again from the "
                                          "new one, or restore the original")
                changes = describe_changes(prov.get("settings", {}), plan.settings)
                raise CubeExistsError(f"height cube {out} was made with other settings ({changes}): pass "
                                      "--overwrite to start again, or choose another -o/--cube")
            else:
                clean_partial_writes(out)
                return lock, ("complete" if attrs.get(STATUS_ATTR) == "complete" else "resume"), prov["cube_id"]
        prov = {**plan.provenance, "created": _now(), "runs": []}
        try:
            cube_id = create_height_cube(out, plan.tiles.grid, plan.tiles.tile, plan.tiles.shape, prov)
        except Exception as e:  # a half-created cube (disk full, ...) is no cube: the rerun creates it again
            with contextlib.suppress(Exception):
                remove_cube(out)
            fault = _as_fault(e, out, "creating")
            if fault is not e:
                raise fault from e
            raise
        return lock, "new", cube_id
    except BaseException:
        lock.release()
        raise


def cog_tags(prov: dict, encoding: dict) -> dict[str, str]:
    """GeoTIFF tags of a canopy COG: what made it (model, weights, random or not, resolution, tiling, numerics,
    source, command) and how its values read, plus the whole provenance as JSON under ``geodino_provenance``."""
    m = prov.get("model", {})
    res = prov.get("resolution", {})
    tags = {
        "geodino_product": "canopy height (CHMv2)", "geodino_version": prov.get("geodino_version"),
        "geodino_cube_id": prov.get("cube_id"), "geodino_model": m.get("name"),
        "geodino_backbone": m.get("backbone"),
        "geodino_weights": (m.get("weights") or {}).get("source"),
        "geodino_weights_sha256": (m.get("weights") or {}).get("sha256"),
        "geodino_backbone_weights_sha256": (m.get("backbone_weights") or {}).get("sha256"),
        "geodino_random_weights": m.get("random_weights"),
        "geodino_radiometry": (prov.get("radiometry") or {}).get("kind"),
        "geodino_source": (prov.get("source") or {}).get("path"),
        "geodino_input_gsd_m": res.get("input_gsd_m"), "geodino_output_gsd_m": res.get("output_gsd_m"),
        "geodino_resampled": f"x{res.get('scale')} {res.get('resampling')}" if res.get("resampling") else "no",
        "geodino_tiling": json.dumps(prov.get("tiling", {}), sort_keys=True),
        "geodino_numerics": json.dumps(prov.get("numerics", {}), sort_keys=True),
        "geodino_command": prov.get("command"),
        "geodino_call": json.dumps(prov["call"], sort_keys=True) if prov.get("call") else None,
        "units": "m", "geodino_encoding": json.dumps(encoding, sort_keys=True),
        "geodino_provenance": json.dumps({k: v for k, v in prov.items() if k != "settings"}, sort_keys=True,
                                         default=str),
    }
    if m.get("random_weights"):
        tags["geodino_warning"] = "RANDOM WEIGHTS: these heights are meaningless (demo/test only)"
    return {k: str(v) for k, v in tags.items() if v is not None}


def export_cog(cube: str | Path, cog: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """The heights of a complete height cube as a COG with overviews (average) and provenance tags: float32
    metres with NaN nodata, or uint16 centimetres (scale 0.01, nodata 65535)."""
    from geodino.canopy.options import UINT16_NODATA, UINT16_SCALE
    from geodino.export.cog import write_cog

    da = open_heights(cube, require_complete=True)
    prov = da.attrs.pop("geodino")
    if dtype == "uint16":
        enc = {"dtype": "uint16", "scale": UINT16_SCALE, "offset": 0.0, "nodata": UINT16_NODATA}
        q = (da.astype("float64") / UINT16_SCALE).round().clip(0, UINT16_NODATA - 1)  # round(h / scale)
        q = q.where(da.notnull(), UINT16_NODATA).astype("uint16")
        q.attrs = {k: v for k, v in da.attrs.items() if k != "units"}
        return write_cog(q, cog, nodata=UINT16_NODATA, overwrite=overwrite, tags=cog_tags(prov, enc),
                         dtype="uint16", overview_resampling="average", scale=UINT16_SCALE, offset=0.0)
    enc = {"dtype": "float32", "scale": 1.0, "offset": 0.0, "nodata": "nan"}
    return write_cog(da, cog, nodata=np.nan, overwrite=overwrite, tags=cog_tags(prov, enc), dtype="float32",
                     overview_resampling="average")


def canopy(scene: str | Path, options: CanopyOptions | None = None, *, command: str | None = None,
           progress: Callable[[str, int, int], None] | None = None,
           on_plan: Callable[[CanopyPlan], None] | None = None, stop: Callable[[], int | None] | None = None,
           **kw) -> CanopySummary:
    """Map the canopy height of ``scene`` into a COG (the library behind ``geodino canopy``).

    Options come as :class:`CanopyOptions` and/or keyword arguments (``output="chm.tif"``, ``weights=...``).
    Everything is validated before anything is written; the tiles run on the embed graph (in-process dask, or
    ``scheduler``); an interrupted run (Ctrl-C from Python, or the CLI's SIGINT/SIGTERM through ``stop``:
    :class:`geodino.errors.Interrupted`, exit 130/143 in the CLI, as ``embed``) leaves a resumable height cube
    and no COG, and the process carries on. As :func:`geodino.embed.embed`: process-wide settings are left alone
    (GDAL's cache capped only during the call; malloc tuned only under :func:`geodino.memory_policy`), and from
    Python the provenance records the call and its arguments.
    """
    opts = options.replace(**kw) if options is not None and kw else (options or CanopyOptions.build(**kw))
    invocation = command if command is not None else library_call("geodino.canopy.canopy", scene=scene,
                                                                   options=opts)
    return run_stoppable(lambda stop: _canopy(scene, opts, invocation, progress, on_plan, stop), stop)


def _canopy(scene, opts: CanopyOptions, command, progress, on_plan, stop) -> CanopySummary:
    with gdal_cache(opts.gdal_cache_mb), Scheduler(opts.scheduler, threads=opts.threads, resource=opts.resource,
                                                   configure_workers=opts.configure_workers,
                                                   gdal_cache_mb=opts.gdal_cache_mb, retries=opts.retries) as sched:
        spec = canopy_engine_spec(opts)
        plan = plan_canopy(scene, opts, lambda window: sched.engine_report(spec, window), command)
        lock, state, cube_id = prepare_cube(plan)
        if on_plan:
            on_plan(plan)
        for m in plan.messages:
            log.info("%s: %s", Path(plan.scene).name, m)
        try:
            return _run(plan, sched, lock, state, cube_id, progress, stop)
        finally:
            lock.release()
            plan.source.close()


def _as_fault(e: BaseException, cube, action: str = "writing") -> BaseException:
    """A fault of the machine met while writing the height cube as its :class:`EnvironmentFault` (its exit code:
    disk full 4, permission 5, unreachable 6); anything else unchanged."""
    fault = environment_fault(e, f"the height cube {cube}", action) if isinstance(e, Exception) else None
    if fault is None or fault is e:
        return e
    fault.__cause__ = e
    return fault


def _run(plan: CanopyPlan, sched: Scheduler, lock: CubeLock, state: str, cube_id: str, progress,
         stop=None) -> CanopySummary:
    opts, cube = plan.options, plan.cube
    t0, started = time.perf_counter(), _now()
    tiles = plan.tiles.tiles()
    status = tile_status(cube)
    pending = [t for t in tiles if status[t.ty, t.tx] == PENDING] if state != "complete" else []
    resumed = done = len(tiles) - len(pending)
    counts = {"written": 0, "px": 0}
    by_key = {t.key: t for t in tiles}
    if progress:
        progress(plan.scene, done, len(tiles))

    def on_done(_i: int, key: str, st: int, _why: str | None = None) -> None:
        nonlocal done
        lock.check()  # stop writing once the lease is no longer safe to hold (exit 6)
        done += 1
        if st == WRITTEN:
            counts["written"] += 1
            counts["px"] += by_key[key].height * by_key[key].width
        if progress:
            progress(plan.scene, done, len(tiles))

    interrupted = None
    if pending:
        work = SceneWork(0, plan.source, plan.tiles, plan.engine_spec, plan.radiometry.engine_params, str(cube),
                         cube_id, "float32", 0.5, opts.batch_size, pending, ops=canopy_tasks)
        try:
            sched.run([work], on_done, prefetch=opts.prefetch, stop=stop)
        except BaseException as e:  # a signal (SIGINT/SIGTERM: Interrupted), a fault of the machine (disk full,
            # permission, an unreachable store: its EnvironmentFault) or a failure: the cube stays incomplete and
            # resumable, and no COG is written
            interrupted = _as_fault(e, cube)
    seconds = time.perf_counter() - t0
    complete = True
    if state != "complete":
        try:
            lock.check()
            prov = read_attrs(cube).get("geodino", {})
            record = {"started": started, "finished": _now(), "tiles_written": counts["written"],
                      "seconds": round(seconds, 3), "interrupted": interrupted is not None}
            complete = finalize_cube(cube, {"runs": [*prov.get("runs", []), record], "finished": record["finished"]})
        except Exception as e:  # the store broke while recording the run: its tiles are kept all the same
            if interrupted is None:
                interrupted = _as_fault(e, cube, "finishing")
    if interrupted is not None:
        raise interrupted
    if complete and (state != "complete" or opts.overwrite or not plan.cog.exists()):
        # the COG's refusal was checked in planning; a fault here leaves the complete cube, and a rerun writes
        # only the COG
        with output_faults([plan.cog], "the height cube is complete: a rerun writes only the COG"):
            export_cog(cube, plan.cog, dtype=opts.dtype, overwrite=True)
    st = tile_status(cube)
    label = "already complete" if state == "complete" else ("complete" if complete else "incomplete")
    return CanopySummary(
        scene=plan.scene, output=str(plan.cog) if complete else "", cube=str(cube), status=label,
        tiles_total=len(tiles), tiles_written=counts["written"], tiles_skipped=int(np.sum(st == SKIPPED)),
        tiles_resumed=resumed, seconds=round(seconds, 3),
        tiles_per_s=round(counts["written"] / seconds, 3) if seconds > 0 else 0.0,
        mpx_per_s=round(counts["px"] / 1e6 / seconds, 3) if seconds > 0 else 0.0,
        random_weights=bool(plan.provenance["model"]["random_weights"]), messages=plan.messages)
