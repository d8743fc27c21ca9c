"""Running a streaming job for any product (:mod:`geodino.job.product`): prepare (create, resume, refuse or
overwrite) each output store, schedule the pending tiles of every output on one dask graph
(:mod:`geodino.job.schedule`), keep the run's books, finalize, and map the machine's faults to their
:class:`~geodino.errors.EnvironmentFault` (one line and its exit code in the CLI).

A tile's output depends only on its own window and its neighbours' (fixed-shape micro-batches, blending in a fixed
order), so a resumed run computes only the windows that the missing cores need, in batches of any size, and its
output is bit-identical to an uninterrupted run's.

A plan (embed's ``ScenePlan`` and ``MosaicPlan``, canopy's ``CanopyPlan``) gives the driver: ``scene`` (a label),
``output`` (the store's path or URL), ``options`` (``overwrite``, ``batch_size``, ``scheduler``), ``fingerprint``,
``settings``, ``provenance``, ``tiles``, ``source``, ``engine_spec``, ``radiometry`` and ``messages``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from geodino._process import gdal_cache
from geodino.cube.storage import store_nbytes
from geodino.cube.store import (FAILED, PENDING, SKIPPED, STATUS_ATTR, WRITTEN, CubeLease, clean_partial_writes,
                                finalize_cube, is_cube, read_attrs, remove_cube, stray_keys, tile_status)
from geodino.errors import CubeExistsError, EnvironmentFault, environment_fault
from geodino.job.plan import NUMERICS, describe_changes, describe_numerics, now
from geodino.job.product import Product
from geodino.job.schedule import Scheduler, SceneWork, check_stop
from geodino.raster.source import source_change

__all__ = ["JobSummary", "JobRun", "run_job", "scheduled", "prepare_output", "run_and_finish", "environment_guard",
           "as_environment_fault", "refusal"]

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    scene: str
    output: str
    status: str  # complete | already complete | incomplete
    tiles_total: int
    tiles_written: int  # in this run
    tiles_skipped: int  # all-nodata tiles, whole output
    tiles_resumed: int  # already present when this run started
    tiles_failed: int  # whose source windows could not be read (--on-read-error skip); retried by the next run
    failed: list[dict]  # {"tile": "ty,tx", "reason": ...} of each failed tile
    seconds: float
    tiles_per_s: float
    mpx_per_s: float
    output_bytes: int
    messages: list[str] = field(default_factory=list)
    # a product's own fields (None where it has none): the store its output is made from, when that is another
    # object (canopy: the height cube behind the COG), and whether random weights made the output
    cube: str | None = None
    random_weights: bool | None = None
    shown: tuple[str, ...] = field(default=(), repr=False, compare=False)  # what to_dict gives, in order

    def to_dict(self) -> dict:
        """The summary as ``--json`` prints it: the fields in ``shown`` (a product's choice), by default the job's
        (every field but the products' own)."""
        d = asdict(self)
        return {k: d[k] for k in self.shown or _JOB_FIELDS}


_JOB_FIELDS = tuple(f.name for f in fields(JobSummary) if f.name not in ("cube", "random_weights", "shown"))


def refusal(out: str, old: dict, new: dict) -> CubeExistsError:
    """Why an output cannot be resumed with these settings, and what to do."""
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
            f"{describe_numerics(b)}, whose outputs differ in their last bits: resume it where and how it was "
            f"begun{how}, or pass --overwrite to start again, or choose another -o")
    return CubeExistsError(f"output {out} exists and was made with different settings "
                           f"({describe_changes(old, new)}): choose another -o, or pass --overwrite to replace it")


def prepare_output(plan, product: Product) -> tuple[CubeLease, str]:
    """Create, resume or refuse the output store (a path or URL). Returns the held lease and one of
    ``"new" | "resume" | "complete"``."""
    out = plan.output
    if not is_cube(out) and stray_keys(out):
        raise CubeExistsError(f"output {out} exists and is not a geodino cube: choose another -o "
                              "(geodino never deletes data it did not write)")
    lock = CubeLease(out).acquire()
    try:
        if is_cube(out):
            attrs = read_attrs(out)
            prov = attrs.get("geodino", {})
            if plan.options.overwrite:
                remove_cube(out)
            elif prov.get("fingerprint") != plan.fingerprint:
                raise refusal(out, prov.get("settings", {}), plan.settings)
            elif attrs.get(STATUS_ATTR) == "complete":
                return lock, "complete"
            else:
                clean_partial_writes(out)
                return lock, "resume"
        prov = {**plan.provenance, "created": now(), "runs": []}
        try:
            product.create(plan, prov)
        except OSError:  # a half-created store (disk full, ...) is no cube: the rerun creates it again
            with contextlib.suppress(Exception):
                remove_cube(out)
            raise
        return lock, "new"
    except BaseException:
        lock.release()
        raise


def environment_guard(fn, where, action: str):
    """``fn()``, with an OSError of the output's environment (disk full, ...) raised as its
    :class:`EnvironmentFault`."""
    try:
        return fn()
    except OSError as e:
        fault = environment_fault(e, str(where), action)
        if fault is None:
            raise
        raise fault from e


def as_environment_fault(e: BaseException, runs: list) -> BaseException:
    """A write's fault of the machine (disk full, permission, an unreachable store: an OSError, or a library's
    error quoting one) as the :class:`EnvironmentFault` it is, naming the output (and the file) where it
    happened; anything else unchanged."""
    if not isinstance(e, Exception) or isinstance(e, EnvironmentFault):
        return e
    fname = str(getattr(e, "filename", "") or "")
    cube = next((str(r.plan.output) for r in runs if fname.startswith(str(Path(r.plan.output).resolve()))
                 or fname.startswith(str(r.plan.output))), str(runs[0].plan.output) if len(runs) == 1 else None)
    if cube is None:
        return e
    where = f"the cube {cube}" + (f" ({fname})" if fname else "")
    fault = environment_fault(e, where, "writing")
    if fault is None:
        return e
    fault.__cause__ = e
    return fault


def run_and_finish(sched, runs: list, works: list, owner: dict, prefetch: int,
                   stop) -> tuple[list, BaseException | None]:
    """Run ``works`` (``owner[work index]`` is the run whose tiles it writes), then finish every run, interrupted
    or not. Returns the summaries and what stopped the run (a signal, a fault as its :class:`EnvironmentFault`,
    a failure) or None: the caller raises it once it has written what must be written anyway."""
    interrupted = None
    try:
        sched.run(works, lambda i, key, st, why=None: owner[i].tile_done(key, st, why), prefetch=prefetch, stop=stop)
    except BaseException as e:  # a signal, a fault or a failure: outputs stay incomplete and resumable
        interrupted = as_environment_fault(e, runs)
    summaries = []
    for r in runs:
        try:
            summaries.append(r.finish(interrupted is not None))
        except OSError as e:  # the store broke while recording the run: its tiles are kept all the same
            if interrupted is None:
                interrupted = environment_fault(e, str(r.plan.output), "finishing") or e
    return summaries, interrupted


@contextlib.contextmanager
def scheduled(opts):
    """The scheduler the job options ``opts`` ask for (in-process dask, or ``opts.scheduler``), with GDAL's block
    cache capped at ``opts.gdal_cache_mb`` while it runs (restored afterwards)."""
    with gdal_cache(opts.gdal_cache_mb), Scheduler(opts.scheduler, threads=opts.threads, resource=opts.resource,
                                                   configure_workers=opts.configure_workers,
                                                   gdal_cache_mb=opts.gdal_cache_mb, retries=opts.retries) as sched:
        yield sched


def run_job(plans: list, product: Product, sched, *, prefetch: int = 2,
            progress: Callable[[str, int, int], None] | None = None, on_plan: Callable | None = None,
            stop: Callable[[], int | None] | None = None, run: type[JobRun] | None = None,
            after: Callable[[list], None] | None = None) -> list[JobSummary]:
    """Run ``plans`` (one output each) of ``product`` on the scheduler ``sched``: every output is prepared first
    (created, resumed, refused), then the pending tiles of all run on one graph. One summary per plan; what
    stopped the run (see :func:`run_and_finish`) is raised once every output has recorded its run. ``run`` is
    the book-keeping class of an output (a :class:`JobRun` whose ``works`` may split it over several sources, as
    mosaics do); ``after(runs)`` writes what the outputs share once they have recorded their runs, stopped or not
    (a mosaic's catalogue)."""
    run = run or JobRun
    runs: list[JobRun] = []
    try:
        for plan in plans:
            check_stop(stop)
            runs.append(environment_guard(lambda: run.start(plan, product, progress), plan.output, "creating"))
            if on_plan:  # once its output is created or resumed: a refused output is one line, nothing before it
                on_plan(plan)
            for m in plan.messages:
                log.debug("%s: %s", Path(plan.scene).name, m)
        works, owner = [], {}
        for r in runs:
            for w in r.works(len(works)) if r.state != "complete" else []:
                works.append(w)
                owner[w.index] = r
        summaries, interrupted = run_and_finish(sched, runs, works, owner, prefetch, stop)
        if after is not None:
            try:
                after(runs)
            except Exception as e:  # noqa: BLE001 - a stop's own error is what the caller must see
                if interrupted is None:
                    raise
                log.warning("after the stop, could not write what the outputs share (the next run writes it): %s", e)
        if interrupted is not None:
            raise interrupted
        return summaries
    finally:
        for r in runs:
            r.lock.release()


@dataclass
class JobRun:
    """Book-keeping of one output during a run: its lease, pending tiles and counters."""

    plan: object
    product: Product
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
    def start(cls, plan, product: Product, progress) -> "JobRun":
        lock, state = prepare_output(plan, product)
        try:
            return cls._begin(plan, product, progress, lock, state)
        except BaseException:  # a fault before the run owns the lease: let go of it (the same process may rerun)
            lock.release()
            raise

    @classmethod
    def _begin(cls, plan, product: Product, progress, lock, state: str) -> "JobRun":
        r = cls(plan, product, lock, state, progress, t0=time.perf_counter(), started=now())
        r.cube_id = read_attrs(plan.output)["geodino"].get("cube_id", "")
        status, tiles = tile_status(plan.output), plan.tiles.tiles()
        r.total, r._by_key = len(tiles), {t.key: t for t in tiles}
        r.pending = frozenset(t.key for t in tiles if status[t.ty, t.tx] in (PENDING, FAILED)) \
            if state != "complete" else frozenset()
        r.resumed = r.done = r.total - len(r.pending)
        if progress:
            progress(plan.scene, r.done, r.total)
        return r

    def scene_work(self, index: int, source, radiometry, pending: list) -> SceneWork:
        plan = self.plan
        t = self.product.task_options(plan)
        return SceneWork(index, source, plan.tiles, plan.engine_spec, radiometry.engine_params, str(plan.output),
                         self.cube_id, t.dtype, t.min_valid, plan.options.batch_size, pending,
                         on_read_error=t.on_read_error, shard=t.shard, product=self.product)

    def works(self, first_index: int) -> list[SceneWork]:
        """The work of this output's pending tiles, numbered from ``first_index``: one per source (here one)."""
        pending = [t for t in self.plan.tiles.tiles() if t.key in self.pending]
        return [self.scene_work(first_index, self.plan.source, self.plan.radiometry, pending)] if pending else []

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

    def finish(self, interrupted: bool) -> JobSummary:
        plan = self.plan
        self.close_sources()
        seconds = time.perf_counter() - self.t0
        self.lock.check()
        if self.state == "complete":
            return self.summary("already complete", tile_status(plan.output), 0.0)
        run_record = {"started": self.started, "finished": now(), "tiles_written": self.written,
                      "tiles_failed": len(self.failures), "seconds": round(seconds, 3), "interrupted": interrupted}
        if not plan.options.scheduler:  # numerics changes of the in-process engine (out-of-memory halvings)
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
        return self.summary("complete" if complete else "incomplete", tile_status(plan.output), seconds, failed)

    def summary(self, state: str, status: np.ndarray, seconds: float, failed: dict | None = None) -> JobSummary:
        failed = failed or {}
        written = self.written if state != "already complete" else 0
        return JobSummary(
            scene=self.plan.scene, output=str(self.plan.output), status=state, tiles_total=self.total,
            tiles_written=written, tiles_skipped=int(np.sum(status == SKIPPED)),
            tiles_resumed=self.resumed if state != "already complete" else 0,
            tiles_failed=int(np.sum(status == FAILED)),
            failed=[{"tile": k, "reason": v} for k, v in sorted(failed.items())], seconds=round(seconds, 3),
            tiles_per_s=round(written / seconds, 3) if seconds > 0 else 0.0,
            mpx_per_s=round(self.pixels / 1e6 / seconds, 3) if seconds > 0 else 0.0,
            output_bytes=store_nbytes(self.plan.output), messages=self.plan.messages)
