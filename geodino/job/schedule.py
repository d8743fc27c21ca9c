"""Scheduling streaming jobs (every dense product: features, heights, ...): one dask.distributed graph and one
back-pressure loop, in-process or on a cluster.

By default the job runs on an in-process dask cluster (one worker in this process: threads for reads and
writes, and the inference resource once, so one thread feeds the device). With ``--scheduler ADDRESS`` the very
same tasks go to an existing cluster. Per scene (``<id>`` = the cube's id and a run nonce)::

    read-<id>-<tile>             one per tile to embed (threads: GDAL releases the GIL; retried)
      -> infer-<id>-<batch>      needs one unit of the inference resource (a GPU, or INFER on CPU workers)
        -> piece-<id>-<batch>-<tile>   the part of a batch's windows that falls on one tile core (small)
          -> write-<id>-s<row>-<col>     blends the pieces of the pending tile cores of ONE shard and writes
                                         that shard (retried; any worker)

One write task per shard is what guarantees one writer per shard object (zarr's sharding codec puts a shard as
one object: two tasks writing tiles of one shard would race on it). In an unsharded cube a shard is one tile.

Batches are submitted in row-major order while fewer than ``prefetch`` (times the number of inference
workers) are being read or inferred, so reads of the next batches overlap the current inference and memory
stays bounded: what waits in memory is at most one tile row plus one shard of pieces (shards are bands of
one tile row), for the writes that need the next row's windows. The model is loaded once per worker (engines
are cached per process), never shipped; tasks of a worker that dies are recomputed elsewhere by the scheduler. Nothing is changed on a cluster's workers unless
``configure_workers`` (``--configure-workers``) asks for geodino's memory settings there.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import dask

from geodino.job import tasks
from geodino.errors import Interrupted, SchedulerError
from geodino.job.product import Product
from geodino.tiling import Tile, TileGrid

__all__ = ["SceneWork", "Scheduler", "connect", "check_stop"]

log = logging.getLogger(__name__)


@dataclass
class SceneWork:
    """What one scene's run must do: embed ``infer`` (tiles, row-major) so that ``pending`` cores can be written."""

    index: int
    source: object  # RasterSource
    tiles: TileGrid
    spec: object  # EngineSpec
    radiometry: tuple  # engine parameters (gain, bias, levels)
    cube: str
    cube_id: str
    dtype: str
    min_valid: float
    batch_size: int
    pending: list[Tile]
    on_read_error: str = "fail"  # "skip": a tile whose window cannot be read is marked failed, the run goes on
    shard: tuple[int, int] = (1, 1)  # tiles per shard of the cube (rows, cols)
    product: Product | None = None  # what the engine gives per window and how a shard is written (job.product)
    infer: list[Tile] = field(default_factory=list)
    token: str = ""

    def __post_init__(self) -> None:
        needed = {n.key for d in self.pending for n in self.tiles.neighbours(d)}
        self.infer = [t for t in self.tiles.tiles() if t.key in needed]
        self.token = f"{self.cube_id[:12]}-{uuid.uuid4().hex[:6]}"

    def shard_of(self, tile: Tile) -> str:
        return f"s{tile.ty // self.shard[0]}-{tile.tx // self.shard[1]}"


def check_stop(stop: Callable[[], int | None] | None) -> None:
    """Raise :class:`Interrupted` once ``stop()`` returns a signal number (a stop was asked for)."""
    signum = stop() if stop is not None else None
    if signum:
        raise Interrupted(signum)


def connect(address: str, timeout: float = 10.0):
    """A client of an existing dask.distributed scheduler, or a one-line error saying what to do."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SchedulerError(f"cannot reach the dask scheduler at {address} ({type(e).__name__}): is it running? "
                             "Start one with `dask scheduler` and workers with `dask cuda worker ADDRESS` "
                             "(see README), or drop --scheduler to run in-process") from e
    except ValueError as e:
        raise SchedulerError(f"invalid dask scheduler address {address!r}: {e}") from e


_LOCAL: dict[tuple, object] = {}
_LOCAL_LOCK = threading.Lock()


def _quiet_distributed(saved: dict | None = None) -> dict:
    """dask.distributed sets its loggers to INFO when imported: keep them quiet unless geodino debugs. A failed
    task is re-raised here as geodino's own one-line error, so dask's "Compute Failed" report (with its
    traceback) is not shown as well. Logger levels are process-wide: the previous level of each logger changed is
    recorded in ``saved`` (returned), and :class:`Scheduler` puts them back when the job ends."""
    saved = {} if saved is None else saved
    if logging.getLogger("geodino").getEffectiveLevel() <= logging.DEBUG:
        return saved
    names = [n for n in list(logging.root.manager.loggerDict) if n == "distributed" or n.startswith("distributed.")]
    for name in {*names, "distributed.worker"}:
        lg = logging.getLogger(name)
        saved.setdefault(name, lg.level)
        lg.setLevel(logging.CRITICAL if name == "distributed.worker" else logging.WARNING)
    return saved


def _restore_levels(saved: dict) -> None:
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


# The in-process cluster shares this machine's cores with the model, and on a CPU every cycle its event loop
# spends is a cycle the model loses. distributed's defaults suit a dashboard-watched cluster: a statistical
# profiler sampling every worker thread each 10 ms, a psutil system monitor (disk, net, fds) twice a second, a GIL
# monitor and a 20 ms event-loop tick. Profiled on 2 cores (py-spy, ViT-L/16 at 512 px), they kept the IO loop
# busy for about a fifth of the inference thread's samples; here they are off or slowed down. Only this process's
# own cluster is configured so: a user's cluster (``--scheduler``) is left as it is.
_LOCAL_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "30s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "5s",
}


def _local_cluster(threads: int, resource: str, saved_levels: dict | None = None):
    """This process's in-process dask cluster (kept for the process's life, so notebooks and repeated calls
    do not pay its start-up again)."""
    from distributed import LocalCluster

    _quiet_distributed(saved_levels)
    key = (threads, resource)
    with _LOCAL_LOCK:
        c = _LOCAL.get(key)
        if c is None or c.status.name != "running":
            if not _LOCAL:
                atexit.unregister(_close_local)
                atexit.register(_close_local)
            with warnings.catch_warnings(), dask.config.set(_LOCAL_CONFIG):
                # its scheduler still binds an HTTP port (health checks), 8787 first: harmless if taken
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                c = _LOCAL[key] = LocalCluster(n_workers=1, threads_per_worker=threads + 1, processes=False,
                                               resources={resource: 1}, memory_limit=0, dashboard_address=None,
                                               silence_logs=logging.ERROR, protocol="inproc")
        return c


def _close_local() -> None:
    # distributed logs its shutdown at INFO (nine lines per cluster); the levels a job quietened are restored when
    # the job ends, so they are quietened again for the close, then put back. Registered with atexit once
    # distributed is imported, so it runs before distributed's own atexit close of every cluster (LIFO).
    saved = _quiet_distributed()
    try:
        for c in list(_LOCAL.values()):
            with contextlib.suppress(Exception):  # interpreter shutdown
                c.close()
        _LOCAL.clear()
    finally:
        _restore_levels(saved)


class Scheduler:
    """The dask client an embed job runs on (a context manager)."""

    def __init__(self, address: str | None = None, *, threads: int = 4, resource: str = "GPU",
                 configure_workers: bool = False, gdal_cache_mb: int = 64, retries: int = 2):
        self.address = address
        self.threads = threads
        self.resource = resource if address else "geodino-infer"
        self.configure_workers = configure_workers
        self.gdal_cache_mb = gdal_cache_mb
        self.retries = retries
        self.client = None
        self._cluster = None
        self.infer_workers: list[str] = []
        self._reports: dict = {}
        self._log_levels: dict = {}

    def __enter__(self) -> "Scheduler":
        from distributed import Client

        try:
            if not self.address:
                self._cluster = _local_cluster(self.threads, self.resource, self._log_levels)
                self.client = Client(self._cluster, set_as_default=False)
                self.infer_workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
                return self
            self.client = connect(self.address)
            _quiet_distributed(self._log_levels)
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            self.infer_workers = [a for a, w in workers.items() if w.get("resources", {}).get(self.resource, 0) > 0]
            if not self.infer_workers:
                raise SchedulerError(
                    f"no worker of {self.address} advertises the resource {self.resource!r}: start GPU workers "
                    f"with `dask cuda worker {self.address} --resources {self.resource}=1`, or on a CPU-only "
                    f"cluster `dask worker {self.address} --resources {self.resource}=1`")
            if self.configure_workers:
                from geodino._process import bound_memory

                self.client.run(bound_memory, self.gdal_cache_mb)
            return self
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
        finally:
            _restore_levels(self._log_levels)
            self._log_levels = {}

    def drain(self, timeout: float = 120.0) -> bool:
        """Wait until this process's own worker runs no model call (a released task that already started runs on
        to its end: a thread cannot be stopped). Called when a run stops early: an interpreter that exits while
        torch's native threads still compute aborts ("terminate called without an active exception", exit -6
        instead of 130/143), and the next run should not share the cores with a ghost batch. Reads and writes
        are not waited for (a chunk write is whole or absent). A cluster's workers (``--scheduler``) finish on
        their own. True once no inference runs, False after ``timeout``."""
        if self._cluster is None:
            return True
        end = time.monotonic() + timeout
        while self._inferring():
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def _inferring(self) -> bool:
        for w in list(self._cluster.workers.values()):
            for _ in range(10):  # the worker's event loop changes the set while it is read
                try:
                    if any(str(ts.key).startswith("infer-") for ts in list(w.state.executing)):
                        return True
                    break
                except RuntimeError:
                    continue
        return False

    # -- what the engine on the inference workers gives ------------------------------------------------
    def engine_report(self, spec, window: int) -> dict:
        """Numerics, description and weights provenance of the engine ``spec`` where inference runs (loading
        it there; asked once per spec and window). All inference workers of a cluster must agree on the
        numerics."""
        from geodino.job.plan import engine_report

        key = (spec, window)
        if key in self._reports:
            return self._reports[key]
        if not self.address:
            reports = [engine_report(spec, window)]
        else:
            reports = self.client.gather([self.client.submit(engine_report, spec, window, workers=[w],
                                                             allow_other_workers=False, resources={self.resource: 1},
                                                             pure=False) for w in self.infer_workers])
        first = reports[0]["numerics"]
        for w, r in zip(self.infer_workers, reports):
            if r["numerics"] != first:
                raise SchedulerError(f"inference workers compute differently ({w}: {r['numerics']} vs "
                                     f"{self.infer_workers[0]}: {first}): their features would not be comparable; "
                                     "use workers of one kind, or pass --device/--precision to make them agree")
        self._reports[key] = reports[0]
        return reports[0]

    # -- running ---------------------------------------------------------------------------------------
    def run(self, scenes: list[SceneWork], on_done: Callable[[int, str, int, str | None], None], prefetch: int = 2,
            stop: Callable[[], int | None] | None = None) -> None:
        """Embed the scenes, calling ``on_done(scene index, tile key, status, why it failed)`` as each core is
        written. ``stop()`` is polled (every 50 ms at most): once it returns a signal number no new batch is
        submitted, what is queued is dropped and :class:`Interrupted` is raised. Writes are whole or absent
        per chunk and a tile's status is written last, so a dropped or killed write leaves nothing that a
        resume would keep half-written."""
        from distributed import as_completed

        client = self.client
        batches: list[tuple[SceneWork, int, list[Tile]]] = []
        for sw in scenes:
            for bi in range(0, len(sw.infer), sw.batch_size):
                batches.append((sw, bi // sw.batch_size, sw.infer[bi:bi + sw.batch_size]))
        batch_of = {(sw.index, t.key): gb for gb, (sw, _, chunk) in enumerate(batches) for t in chunk}
        # per shard: the batches its pending tiles still wait for, its tiles, and their piece futures
        remaining: dict[tuple[int, str], set[int]] = defaultdict(set)
        members: dict[tuple[int, str], list[Tile]] = defaultdict(list)
        contributes: dict[int, list[tuple[SceneWork, Tile]]] = defaultdict(list)
        for sw in scenes:
            for d in sw.pending:
                gbs = {batch_of[(sw.index, n.key)] for n in sw.tiles.neighbours(d)}
                sk = (sw.index, sw.shard_of(d))
                remaining[sk] |= gbs
                members[sk].append(d)
                for gb in sorted(gbs):
                    contributes[gb].append((sw, d))
        pieces: dict[tuple[int, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
        infers: dict = {}  # the only futures held here: the scheduler releases every other result once used
        writes: dict = {}
        ac = as_completed([], loop=client.loop)
        r = self.retries
        res = {self.resource: 1}

        def submit(gb: int) -> None:
            sw, bi, chunk = batches[gb]
            tok = sw.token
            reads = [client.submit(tasks.read_tile, sw.source, t, sw.min_valid, sw.on_read_error,
                                   key=f"read-{tok}-{t.key}", retries=r, priority=0) for t in chunk]
            inf = client.submit(sw.product.infer_batch, sw.spec, sw.radiometry, reads, sw.dtype,
                                key=f"infer-{tok}-{bi}", resources=res, priority=1)
            infers[inf] = gb
            ac.add(inf)
            touched = []
            for sw2, dest in contributes[gb]:
                sk = (sw2.index, sw2.shard_of(dest))
                pieces[sk][dest.key].append(client.submit(tasks.pieces_for, inf, dest, sw2.tiles,
                                                          key=f"piece-{tok}-{bi}-{dest.key}", retries=r,
                                                          priority=2))
                if sk not in touched:
                    touched.append(sk)
            for sk in touched:
                remaining[sk].discard(gb)
                if not remaining[sk]:
                    sw2 = scenes_by_index[sk[0]]
                    dests = members.pop(sk)
                    got = pieces.pop(sk)
                    counts = [len(got[d.key]) for d in dests]
                    flat = [f for d in dests for f in got[d.key]]
                    w = client.submit(sw2.product.write_shard, sw2.cube, sw2.cube_id, dests, counts, *flat,
                                      key=f"write-{sw2.token}-{sk[1]}", retries=r, priority=3)
                    writes[w] = sk[0]
                    ac.add(w)

        scenes_by_index = {sw.index: sw for sw in scenes}
        limit = max(1, prefetch) * max(1, len(self.infer_workers))
        nxt = 0
        try:
            while nxt < len(batches) and len(infers) < limit:
                submit(nxt)
                nxt += 1
            while not ac.is_empty():
                # the main thread polls (rather than blocking in as_completed) so that a signal's stop request,
                # set by its handler on this thread, is seen within 50 ms
                check_stop(stop)
                done = ac.next_batch(block=False)
                if not done:
                    with ac.thread_condition:
                        ac.thread_condition.wait(timeout=0.05)
                    continue
                halt = None
                for fut in done:
                    if fut in infers:
                        infers.pop(fut)
                        if fut.status == "error":
                            fut.result()  # raises the task's exception here
                        # asked again before each new batch: a completion may have met the stop condition within
                        # this loop (all writes of the loop are still recorded before Interrupted is raised)
                        halt = halt or (stop() if stop is not None else None)
                        while not halt and nxt < len(batches) and len(infers) < limit:
                            submit(nxt)
                            nxt += 1
                    else:
                        si = writes.pop(fut)
                        for key, status, why in fut.result():
                            on_done(si, key, status, why)
                if halt:
                    raise Interrupted(halt)
            if members:  # every pending core must have been written
                raise SchedulerError(f"internal scheduling error: {len(members)} shards were never written")
        except BaseException:
            # Release (not cancel) what is still held: tasks nobody wants are dropped by the scheduler, queued ones
            # never start. client.cancel(force=True) recursed into dependents whose futures were already let go
            # (pieces handed to a write, a failed write) and tripped an assertion in the scheduler's stream handler.
            held = [*infers, *writes, *(f for by in pieces.values() for lst in by.values() for f in lst)]
            infers.clear()
            writes.clear()
            pieces.clear()
            for f in held:
                f.release()
            self.drain()
            raise
