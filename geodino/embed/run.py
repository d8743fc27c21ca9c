"""Running embed jobs: prepare (or resume) the cube, schedule the tiles on one dask graph, finalize.

A tile's features depend only on its own window (and, with blending, its neighbours' windows): the engine runs
fixed-shape micro-batches whatever the batch size, so a resumed run embeds only the windows that the missing
cores need, in batches of any size, and its cube is bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
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
from geodino.cube.storage import store_nbytes
from geodino.cube.store import (FAILED, PENDING, SKIPPED, STATUS_ATTR, WRITTEN, CubeLease, clean_partial_writes,
                                create_cube, cube_shard, finalize_cube, is_cube, read_attrs, remove_cube, stray_keys,
                                tile_status)
from geodino.embed.config import EmbedConfig
from geodino.embed.plan import (NUMERICS, ScenePlan, default_output, describe_changes, describe_numerics,
                                plan_scene)
from geodino.embed.schedule import SceneWork, Scheduler
from geodino.errors import CubeExistsError, EnvironmentFault, Interrupted, environment_fault
from geodino.raster.source import source_change

__all__ = ["embed", "EmbedSummary", "prepare_cube"]

log = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    scene: str
    output: str
    status: str  # complete | already complete | incomplete
    tiles_total: int
    tiles_written: int  # in this run
    tiles_skipped: int  # all-nodata tiles, whole cube
    tiles_resumed: int  # already present when this run started
    tiles_failed: int  # whose source windows could not be read (--on-read-error skip); retried by the next run
    failed: list[dict]  # {"tile": "ty,tx", "reason": ...} of each failed tile
    seconds: float
    tiles_per_s: float
    mpx_per_s: float
    output_bytes: int
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _refusal(out: str, old: dict, new: dict) -> CubeExistsError:
    """Why a cube cannot be resumed with these settings, and what to do."""
    changed = source_change(old, new)
    if changed:  # the same URL or path now holds another object: resuming would mix two versions
        return CubeExistsError(f"output {out} cannot be resumed: its source {changed}, and the cube would mix two "
                               "versions of it; pass --overwrite to start again from the new one, or restore the "
                               "original")
    others = {k for k in set(old) | set(new) if old.get(k) != new.get(k)} - {NUMERICS}
    if not others and old.get(NUMERICS) != new.get(NUMERICS):
        a, b = old.get(NUMERICS) or {}, new.get(NUMERICS) or {}
        hint = []
        if a.get("device_type") != b.get("device_type"):
            hint.append(f"--device {a.get('device_type')}")
        if a.get("precision") != b.get("precision"):
            hint.append(f"--precision {a.get('precision')}")
        how = f" (e.g. {' '.join(hint)})" if hint else ""
        return CubeExistsError(
            f"output {out} was begun computing {describe_numerics(a)}; this run would compute "
            f"{describe_numerics(b)}, whose features differ in their last bits: resume it where and how it was "
            f"begun{how}, or pass --overwrite to start again, or choose another -o")
    return CubeExistsError(f"output {out} exists and was made with different settings "
                           f"({describe_changes(old, new)}): choose another -o, or pass --overwrite to replace it")


def prepare_cube(plan: ScenePlan) -> tuple[CubeLease | None, str]:
    """Create, resume or refuse the output cube (a path or URL). Returns the held lease and one of
    ``"new" | "resume" | "complete"``."""
    out, cfg = plan.output, plan.config
    if not is_cube(out) and stray_keys(out):
        raise CubeExistsError(f"output {out} exists and is not a geodino cube: choose another -o "
                              "(geodino never deletes data it did not write)")
    lock = CubeLease(out).acquire()
    try:
        if is_cube(out):
            attrs = read_attrs(out)
            prov = attrs.get("geodino", {})
            same = prov.get("fingerprint") == plan.fingerprint
            if cfg.overwrite:
                remove_cube(out)
            elif not same:
                raise _refusal(out, prov.get("settings", {}), plan.settings)
            elif attrs.get(STATUS_ATTR) == "complete":
                return lock, "complete"
            else:
                clean_partial_writes(out)
                return lock, "resume"
        prov = {**plan.provenance, "created": _now(), "runs": []}
        try:
            create_cube(out, plan.layout, plan.embed_dim, cfg.dtype, prov)
        except OSError:  # a half-created cube (disk full, ...) is no cube: the rerun creates it again
            with contextlib.suppress(Exception):
                remove_cube(out)
            raise
        return lock, "new"
    except BaseException:
        lock.release()
        raise


def embed(scenes: list[str] | str, config: EmbedConfig | None = None, *, command: str | None = None,
          progress: Callable[[str, int, int], None] | None = None,
          on_plan: Callable[[ScenePlan], None] | None = None, stop: Callable[[], int | None] | None = None,
          **options) -> list[EmbedSummary]:
    """Embed one or more scenes into feature cubes (the library behind ``geodino embed``).

    All scenes are validated first (nothing is written if any input is bad), then their tiles are scheduled
    together on one dask graph (in-process, or on ``config.scheduler``). ``progress(scene, tiles_done,
    tiles_total)`` is called as tile cores are written. Options may be given as an :class:`EmbedConfig` or as
    keyword arguments.

    Faults leave the cubes incomplete and resumable: an unreadable source window raises
    :class:`~geodino.errors.RasterReadError` (or, with ``on_read_error="skip"``, marks its tiles FAILED for the
    next run to retry), a full disk, lost permission or unreachable store its
    :class:`~geodino.errors.EnvironmentFault`, and Ctrl-C (a ``KeyboardInterrupt`` on the main thread: a
    notebook's interrupt) stops the run cleanly, the tiles in flight finished and the cube resumable, with
    :class:`~geodino.errors.Interrupted` (the process, a Jupyter kernel included, carries on). The CLI passes
    ``stop()`` (its SIGINT/SIGTERM handlers' request, polled); the library installs no signal handler.

    Process-wide settings are left alone: GDAL's block cache is capped at ``gdal_cache_mb`` only while the call
    runs (restored afterwards), and malloc is not tuned unless the caller opts in with
    :func:`geodino.memory_policy` (the CLI does). ``command`` is what the provenance records as the command
    line (the CLI passes its argv); from Python it records the call and its arguments instead.

    With ``mosaic=True`` the scenes become one cube per CRS on a common grid, with a manifest and a STAC
    Collection beside them (:mod:`geodino.embed.mosaic`).
    """
    if isinstance(scenes, (str, Path)):
        scenes = [str(scenes)]
    cfg = config.replace(**options) if config is not None and options else (config or EmbedConfig.build(**options))
    invocation = command if command is not None else library_call("geodino.embed.embed", scenes=scenes, config=cfg)
    outputs = [default_output(s, cfg.output, len(scenes)) for s in scenes]
    if not cfg.mosaic and len(set(outputs)) != len(outputs):
        raise CubeExistsError("several scenes would write the same cube (same file name): give them distinct "
                              "names or embed them separately")
    return run_stoppable(lambda stop: _embed(scenes, cfg, invocation, progress, on_plan, stop), stop)


def _embed(scenes: list[str], cfg: EmbedConfig, command, progress, on_plan, stop) -> list[EmbedSummary]:
    with gdal_cache(cfg.gdal_cache_mb), Scheduler(cfg.scheduler, threads=cfg.threads, resource=cfg.resource,
                                                  configure_workers=cfg.configure_workers,
                                                  gdal_cache_mb=cfg.gdal_cache_mb, retries=cfg.retries) as sched:
        if cfg.mosaic:  # one cube per CRS on a common grid (geodino.embed.mosaic)
            from geodino.embed.mosaic import embed_mosaic

            return embed_mosaic(scenes, cfg, sched, command=command, progress=progress, on_plan=on_plan,
                                stop=stop)
        plans = [plan_scene(s, cfg, lambda window, spec: sched.engine_report(spec, window), len(scenes), command,
                            cfg.scheduler) for s in scenes]
        from geodino.embed.mosaic import check_one_cube  # mosaic builds on this module (its _SceneRun)

        check_one_cube(plans, cfg)  # several CRSs into one -o X.zarr: refused, --mosaic is the way
        runs: list[_SceneRun] = []
        try:
            for plan in plans:
                _check_stop(stop)
                if on_plan:
                    on_plan(plan)
                for m in plan.messages:
                    log.debug("%s: %s", Path(plan.scene).name, m)
                runs.append(_environment_guard(lambda: _SceneRun.start(plan, progress), plan.output, "creating"))
            works = [r.work(i) for i, r in enumerate(runs) if r.state != "complete"]
            owner = dict(enumerate(runs))
            summaries, interrupted = run_and_finish(sched, runs, [w for w in works if w.pending], owner, cfg, stop)
            if interrupted is not None:
                raise interrupted
            return summaries
        finally:
            for r in runs:
                r.lock.release()


def run_and_finish(sched, runs: list, works: list, owner: dict, cfg, stop) -> tuple[list, BaseException | None]:
    """Run ``works`` (``owner[work index]`` is the run whose tiles it writes), then finish every run, interrupted
    or not. Returns the summaries and what stopped the run (a signal, a fault as its :class:`EnvironmentFault`,
    a failure) or None: the caller raises it once it has written what must be written anyway."""
    interrupted = None
    try:
        sched.run(works, lambda i, key, st, why=None: owner[i].tile_done(key, st, why), prefetch=cfg.prefetch,
                  stop=stop)
    except BaseException as e:  # a signal, a fault or a failure: cubes stay incomplete and resumable
        interrupted = _as_environment_fault(e, runs)
    summaries = []
    for r in runs:
        try:
            summaries.append(r.finish(interrupted is not None))
        except OSError as e:  # the store broke while recording the run: its tiles are kept all the same
            if interrupted is None:
                interrupted = environment_fault(e, str(r.plan.output), "finishing") or e
    return summaries, interrupted


def _check_stop(stop) -> None:
    signum = stop()
    if signum:
        raise Interrupted(signum)


def _environment_guard(fn, where, action: str):
    """``fn()``, with an OSError of the output's environment (disk full, ...) raised as its
    :class:`EnvironmentFault`."""
    try:
        return fn()
    except OSError as e:
        fault = environment_fault(e, str(where), action)
        if fault is None:
            raise
        raise fault from e


def _as_environment_fault(e: BaseException, runs: list) -> BaseException:
    """A write's OSError (disk full, permission, an unreachable store) as the :class:`EnvironmentFault` it is,
    naming the cube (and the file) where it happened; anything else unchanged."""
    if not isinstance(e, OSError) or isinstance(e, EnvironmentFault):
        return e
    fname = str(getattr(e, "filename", "") or "")
    cube = next((str(r.plan.output) for r in runs if fname.startswith(str(Path(r.plan.output).resolve()))
                 or fname.startswith(str(r.plan.output))), None)
    if cube is None and len(runs) == 1:
        cube = str(runs[0].plan.output)
    if cube is None:
        return e
    where = f"the cube {cube}" + (f" ({fname})" if fname else "")
    fault = environment_fault(e, where, "writing")
    if fault is None:
        return e
    fault.__cause__ = e
    return fault


@dataclass
class _SceneRun:
    """Book-keeping of one scene during a run: its lock, pending tiles and counters."""

    plan: ScenePlan
    lock: CubeLease
    state: str
    progress: Callable | None
    total: int = 0
    done: int = 0
    written: int = 0
    pixels: int = 0
    resumed: int = 0
    t0: float = 0.0
    started: str = ""
    pending: frozenset = frozenset()
    cube_id: str = ""
    failures: dict = field(default_factory=dict)  # "ty,tx" -> why this run could not finish the tile
    _by_key: dict = field(default_factory=dict)

    @classmethod
    def start(cls, plan: ScenePlan, progress) -> "_SceneRun":
        lock, state = prepare_cube(plan)
        try:
            return cls._begin(plan, progress, lock, state)
        except BaseException:  # a fault before the run owns the lease: let go of it (the same process may rerun)
            lock.release()
            raise

    @classmethod
    def _begin(cls, plan: ScenePlan, progress, lock, state: str) -> "_SceneRun":
        r = cls(plan, lock, state, progress, t0=time.perf_counter(), started=_now())
        status = tile_status(plan.output)
        tiles = plan.tiles.tiles()
        r.total = len(tiles)
        r.pending = frozenset(t.key for t in tiles if status[t.ty, t.tx] in (PENDING, FAILED)) \
            if state != "complete" else frozenset()
        r.resumed = r.done = r.total - len(r.pending)
        r.cube_id = read_attrs(plan.output)["geodino"].get("cube_id", "")
        r._by_key = {t.key: t for t in tiles}
        if progress:
            progress(plan.scene, r.done, r.total)
        return r

    def work(self, index: int) -> SceneWork:
        plan = self.plan
        pending = [t for t in plan.tiles.tiles() if t.key in self.pending]
        return SceneWork(index, plan.source, plan.tiles, plan.engine_spec, plan.radiometry.engine_params,
                         str(plan.output), self.cube_id, plan.config.dtype, plan.config.min_valid,
                         plan.config.batch_size, pending, on_read_error=plan.config.on_read_error,
                         shard=cube_shard(plan.output))

    def tile_done(self, key: str, st: int, why: str | None = None) -> None:
        self.lock.check()  # stop if another writer took the lease over
        if st == FAILED:
            t = self._by_key[key]
            self.failures[f"{t.ty},{t.tx}"] = why or "read failed"
            log.info("%s: tile %s failed: %s", Path(self.plan.scene).name, key, why)
            return
        self.done += 1
        if st == WRITTEN:
            self.written += 1
            t = self._by_key[key]
            self.pixels += t.height * t.width
        if self.progress:
            self.progress(self.plan.scene, self.done, self.total)

    def close_sources(self) -> None:
        self.plan.source.close()

    def finish(self, interrupted: bool) -> EmbedSummary:
        plan = self.plan
        self.close_sources()
        seconds = time.perf_counter() - self.t0
        self.lock.check()
        if self.state == "complete":
            return _summary(plan, "already complete", self.total, 0, tile_status(plan.output), 0, 0.0)
        run_record = {"started": self.started, "finished": _now(), "tiles_written": self.written,
                      "tiles_failed": len(self.failures), "seconds": round(seconds, 3), "interrupted": interrupted}
        if not plan.config.scheduler:  # numerics changes of the in-process engine (out-of-memory halvings)
            from geodino.engine.engine import _ENGINES

            eng = _ENGINES.get(plan.engine_spec)
            if eng is not None and eng.events:
                run_record["engine_events"] = list(eng.events)
        prov = read_attrs(plan.output).get("geodino", {})
        status = tile_status(plan.output)
        failed = {k: v for k, v in {**prov.get("failed_tiles", {}), **self.failures}.items()
                  if status[tuple(int(i) for i in k.split(","))] == FAILED}  # reasons of tiles still failed
        complete = finalize_cube(plan.output, {"runs": [*prov.get("runs", []), run_record],
                                               "finished": run_record["finished"], "failed_tiles": failed})
        return _summary(plan, "complete" if complete else "incomplete", self.total, self.written,
                        tile_status(plan.output), self.resumed, seconds, self.pixels, failed)


def _summary(plan, state, total, written, status, resumed, seconds, px=0, failed=None) -> EmbedSummary:
    failed = failed or {}
    return EmbedSummary(
        scene=plan.scene, output=str(plan.output), status=state, tiles_total=total, tiles_written=written,
        tiles_skipped=int(np.sum(status == SKIPPED)), tiles_resumed=resumed, tiles_failed=int(np.sum(status == FAILED)),
        failed=[{"tile": k, "reason": v} for k, v in sorted(failed.items())], seconds=round(seconds, 3),
        tiles_per_s=round(written / seconds, 3) if seconds > 0 else 0.0,
        mpx_per_s=round(px / 1e6 / seconds, 3) if seconds > 0 else 0.0,
        output_bytes=store_nbytes(plan.output), messages=plan.messages)

