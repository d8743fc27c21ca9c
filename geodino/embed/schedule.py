"""Scheduling embed jobs: one dask.distributed graph and one back-pressure loop, in-process or on a cluster.

By default the job runs on an in-process dask cluster (one worker in this process: threads for reads and
writes, and the inference resource once, so one thread feeds the device). With ``--scheduler ADDRESS`` the very
same tasks go to an existing cluster. Per scene (``<id>`` = the cube's id and a run nonce)::

    read-<id>-<tile>             one per tile to embed (threads: GDAL releases the GIL; retried)
      -> infer-<id>-<batch>      needs one unit of the inference resource (a GPU, or INFER on CPU workers)
        -> piece-<id>-<batch>-<tile>   the part of a batch's windows that falls on one tile core (small)
          -> write-<id>-<tile>   blends its pieces and writes that core's chunks only (retried; any worker)

Batches are submitted in row-major order while fewer than ``prefetch`` (times the number of inference
workers) are being read or inferred, so reads of the next batches overlap the current inference and memory
stays bounded: what waits in memory is at most one tile row of pieces for the writes that need the next row's
windows. The model is loaded once per worker (engines are cached per process), never shipped; tasks of a worker
that dies are recomputed elsewhere by the scheduler. Nothing is changed on a cluster's workers unless
``configure_workers`` (``--configure-workers``) asks for geodino's memory settings there.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from geodino.embed import tasks
from geodino.errors import SchedulerError
from geodino.tiling import Tile, TileGrid

__all__ = ["SceneWork", "Scheduler", "connect"]

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
    infer: list[Tile] = field(default_factory=list)
    token: str = ""
    ops: object = tasks  # what the tasks run: read_tile, infer_batch, pieces_for, write_tile (canopy: canopy/tasks)

    def __post_init__(self) -> None:
        needed = {n.key for d in self.pending for n in self.tiles.neighbours(d)}
        self.infer = [t for t in self.tiles.tiles() if t.key in needed]
        self.token = f"{self.cube_id[:12]}-{uuid.uuid4().hex[:6]}"


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


def _quiet_distributed() -> None:
    """dask.distributed sets its loggers to INFO when imported: keep them at WARNING unless geodino debugs."""
    if logging.getLogger("geodino").getEffectiveLevel() <= logging.DEBUG:
        return
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _local_cluster(threads: int, resource: str):
    """This process's in-process dask cluster (kept for the process's life, so notebooks and repeated calls
    do not pay its start-up again)."""
    from distributed import LocalCluster

    _quiet_distributed()
    key = (threads, resource)
    with _LOCAL_LOCK:
        c = _LOCAL.get(key)
        if c is None or c.status.name != "running":
            with warnings.catch_warnings():
                # its scheduler still binds an HTTP port (health checks), 8787 first: harmless if taken
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                c = _LOCAL[key] = LocalCluster(n_workers=1, threads_per_worker=threads + 1, processes=False,
                                               resources={resource: 1}, memory_limit=0, dashboard_address=None,
                                               silence_logs=logging.ERROR, protocol="inproc")
        return c


@atexit.register
def _close_local() -> None:
    for c in list(_LOCAL.values()):
        try:
            c.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
    _LOCAL.clear()


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
        self.infer_workers: list[str] = []
        self._reports: dict = {}

    def __enter__(self) -> "Scheduler":
        from distributed import Client

        if self.address:
            self.client = connect(self.address)
            _quiet_distributed()
            try:
                workers = self.client.scheduler_info(n_workers=-1)["workers"]
                self.infer_workers = [a for a, w in workers.items()
                                      if w.get("resources", {}).get(self.resource, 0) > 0]
                if not self.infer_workers:
                    raise SchedulerError(
                        f"no worker of {self.address} advertises the resource {self.resource!r}: start GPU workers "
                        f"with `dask cuda worker {self.address} --resources {self.resource}=1`, or on a CPU-only "
                        f"cluster `dask worker {self.address} --resources {self.resource}=1`")
                if self.configure_workers:
                    from geodino._process import bound_memory

                    self.client.run(bound_memory, self.gdal_cache_mb)
            except BaseException:
                self.client.close()
                raise
        else:
            cluster = _local_cluster(self.threads, self.resource)
            self.client = Client(cluster, set_as_default=False)
            self.infer_workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def in_process(self) -> bool:
        return not self.address

    # -- what the engine on the inference workers gives ------------------------------------------------
    def engine_report(self, spec, window: int) -> dict:
        """Numerics, description and weights provenance of the engine ``spec`` where inference runs (loading
        it there). All inference workers of a cluster must agree on the numerics."""
        key = (spec, window)
        if key not in self._reports:
            self._reports[key] = self._engine_report(spec, window)
        return self._reports[key]

    def _engine_report(self, spec, window: int) -> dict:
        from geodino.embed.plan import engine_report

        if self.in_process:
            return engine_report(spec, window)
        futs = [self.client.submit(engine_report, spec, window, workers=[w], allow_other_workers=False,
                                   resources={self.resource: 1}, pure=False) for w in self.infer_workers]
        reports = self.client.gather(futs)
        first = reports[0]["numerics"]
        for w, r in zip(self.infer_workers, reports):
            if r["numerics"] != first:
                raise SchedulerError(f"inference workers compute differently ({w}: {r['numerics']} vs "
                                     f"{self.infer_workers[0]}: {first}): their features would not be comparable; "
                                     "use workers of one kind, or pass --device/--precision to make them agree")
        return reports[0]

    # -- running ---------------------------------------------------------------------------------------
    def run(self, scenes: list[SceneWork], on_done: Callable[[int, str, int], None], prefetch: int = 2) -> None:
        """Embed the scenes, calling ``on_done(scene index, tile key, status)`` as each core is written."""
        from distributed import as_completed

        client = self.client
        batches: list[tuple[SceneWork, int, list[Tile]]] = []
        for sw in scenes:
            for bi in range(0, len(sw.infer), sw.batch_size):
                batches.append((sw, bi // sw.batch_size, sw.infer[bi:bi + sw.batch_size]))
        batch_of = {(sw.index, t.key): gb for gb, (sw, _, chunk) in enumerate(batches) for t in chunk}
        remaining: dict[tuple[int, str], set[int]] = {}
        contributes: dict[int, list[tuple[SceneWork, Tile]]] = defaultdict(list)
        for sw in scenes:
            for d in sw.pending:
                gbs = {batch_of[(sw.index, n.key)] for n in sw.tiles.neighbours(d)}
                remaining[(sw.index, d.key)] = gbs
                for gb in sorted(gbs):
                    contributes[gb].append((sw, d))
        pieces: dict[tuple[int, str], list] = defaultdict(list)
        infers: dict = {}  # the only futures held here: the scheduler releases every other result once used
        writes: dict = {}
        ac = as_completed([], loop=client.loop)
        r = self.retries
        res = {self.resource: 1}

        def submit(gb: int) -> None:
            sw, bi, chunk = batches[gb]
            tok = sw.token
            ops = sw.ops
            reads = [client.submit(ops.read_tile, sw.source, t, sw.min_valid, key=f"read-{tok}-{t.key}",
                                   retries=r, priority=0) for t in chunk]
            inf = client.submit(ops.infer_batch, sw.spec, sw.radiometry, reads, sw.dtype,
                                key=f"infer-{tok}-{bi}", resources=res, priority=1)
            infers[inf] = gb
            ac.add(inf)
            for sw2, dest in contributes[gb]:
                k = (sw2.index, dest.key)
                pieces[k].append(client.submit(sw2.ops.pieces_for, inf, dest, sw2.tiles,
                                               key=f"piece-{tok}-{bi}-{dest.key}", retries=r, priority=2))
                remaining[k].discard(gb)
                if not remaining[k]:
                    w = client.submit(sw2.ops.write_tile, sw2.cube, sw2.cube_id, dest, *pieces.pop(k),
                                      key=f"write-{tok}-{dest.key}", retries=r, priority=3)
                    writes[w] = (sw2.index, dest.key)
                    ac.add(w)

        limit = max(1, prefetch) * max(1, len(self.infer_workers))
        nxt = 0
        try:
            while nxt < len(batches) and len(infers) < limit:
                submit(nxt)
                nxt += 1
            for fut in ac:
                if fut in infers:
                    infers.pop(fut)
                    if fut.status == "error":
                        fut.result()  # raises the task's exception here
                    while nxt < len(batches) and len(infers) < limit:
                        submit(nxt)
                        nxt += 1
                else:
                    si, key = writes.pop(fut)
                    key, status = fut.result()
                    on_done(si, key, status)
            if pieces:  # every pending core must have been written
                raise SchedulerError(f"internal scheduling error: {len(pieces)} tile cores were never written")
        except BaseException:
            held = [*infers, *writes, *(f for lst in pieces.values() for f in lst)]
            if held:
                client.cancel(held, force=True)
            raise
