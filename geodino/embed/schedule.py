"""Scheduling embed batches as dask graphs: in-process threads by default, or an existing dask.distributed cluster.

Each batch is one small graph with deterministic keys::

    read-<job>-<tile> (one per tile, threads: GDAL releases the GIL)
        -> infer-<job>-<batch> (annotated with a worker resource on clusters)
            -> write-<job>-<tile> (one per pending tile, each touching only its own chunks)

A bounded number of batches is in flight at once (``prefetch``, times the number of inference workers on a
cluster), so reads of the next batches overlap the current inference and memory stays bounded whatever the
raster size. On a cluster the model is loaded once per worker (engines are cached per process), never shipped;
tasks of a worker that dies are recomputed elsewhere by the scheduler.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import dask

from geodino.embed import tasks
from geodino.errors import SchedulerError
from geodino.tiling import Tile

__all__ = ["BatchJob", "batch_graph", "run_batches", "connect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchJob:
    """One batch of one scene: its tiles (fixed partition) and which of them still need writing."""

    plan: object  # ScenePlan
    index: int
    tiles: tuple[Tile, ...]
    pending: frozenset[str]
    cube_id: str

    @property
    def token(self) -> str:
        return self.plan.fingerprint


def batch_graph(job: BatchJob, resource: str | None = None):
    """A delayed list of ``(tile key, status)`` for the pending tiles of one batch."""
    plan, tok = job.plan, job.token
    reads = [dask.delayed(tasks.read_tile, pure=True)(plan.source, t, plan.config.min_valid,
                                                      dask_key_name=f"read-{tok}-{t.key}") for t in job.tiles]
    with dask.annotate(resources={resource: 1}) if resource else _null():
        inferred = dask.delayed(tasks.infer_batch, pure=True)(plan.engine_spec, plan.radiometry, reads,
                                                              plan.config.dtype,
                                                              dask_key_name=f"infer-{tok}-{job.index}")
    writes = [dask.delayed(tasks.write_tile, pure=True)(str(plan.output), job.cube_id, inferred, j,
                                                        dask_key_name=f"write-{tok}-{t.key}")
              for j, t in enumerate(job.tiles) if t.key in job.pending]
    return dask.delayed(list, pure=True)(writes, dask_key_name=f"batch-{tok}-{job.index}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_batches(jobs: list[BatchJob], on_done: Callable[[BatchJob, list], None], *, scheduler: str | None,
                threads: int, prefetch: int, resource: str = "GPU", gdal_cache_mb: int = 64) -> None:
    """Run every batch, calling ``on_done(job, [(tile key, status), ...])`` as each finishes."""
    if scheduler:
        _run_distributed(jobs, on_done, scheduler, prefetch, resource, gdal_cache_mb)
    else:
        _run_local(jobs, on_done, threads, prefetch)


def _run_local(jobs, on_done, threads: int, prefetch: int) -> None:
    def run(job):
        return dask.compute(batch_graph(job), scheduler="threads", num_workers=threads)[0]

    pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="geodino-batch")
    inflight: dict = {}
    try:
        it: Iterator[BatchJob] = iter(jobs)
        for job in it:
            if len(inflight) >= prefetch:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    on_done(inflight.pop(f), f.result())
            inflight[pool.submit(run, job)] = job
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(inflight.pop(f), f.result())
    finally:
        for f in inflight:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


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


def _inference_workers(client, resource: str) -> list[str]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, w in workers.items() if w.get("resources", {}).get(resource, 0) > 0]


def _run_distributed(jobs, on_done, address: str, prefetch: int, resource: str, gdal_cache_mb: int) -> None:
    from distributed import as_completed

    from geodino._process import bound_memory

    client = connect(address)
    try:
        infer_workers = _inference_workers(client, resource)
        if not infer_workers:
            raise SchedulerError(f"no worker of {address} advertises the resource {resource!r}: start GPU workers "
                                 f"with `dask cuda worker {address} --resources {resource}=1`, or on a CPU-only "
                                 f"cluster `dask worker {address} --resources {resource}=1`")
        client.run(bound_memory, gdal_cache_mb)
        limit = prefetch * len(infer_workers)
        log.info("%d inference workers at %s; %d batches in flight", len(infer_workers), address, limit)
        queue = iter(jobs)
        inflight = {}  # future -> job

        def submit(job):
            fut = client.compute(batch_graph(job, resource), optimize_graph=False)
            inflight[fut] = job
            return fut

        first = [submit(job) for job in itertools.islice(queue, limit)]
        if not first:
            return
        ac = as_completed(first, loop=client.loop)
        for fut in ac:
            on_done(inflight.pop(fut), fut.result())
            nxt = next(queue, None)
            if nxt is not None:
                ac.add(submit(nxt))
    finally:
        client.close()
