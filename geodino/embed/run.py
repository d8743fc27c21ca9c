"""Running embed jobs: prepare (or resume) the cube, schedule the batch graphs, finalize.

Tiles are grouped into batches by a fixed partition of the row-major tile list, so a tile is always embedded
together with the same neighbours: a resumed run recomputes whole batches and writes only their missing tiles,
and its cube is bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from geodino._process import bound_memory
from geodino.cube.store import (PENDING, SKIPPED, STATUS_ATTR, WRITTEN, CubeLock, create_cube, finalize_cube,
                                is_cube, read_attrs, remove_cube, tile_status)
from geodino.embed.config import EmbedConfig
from geodino.embed.plan import ScenePlan, default_output, plan_scene
from geodino.errors import CubeExistsError
from geodino.tiling import Tile

__all__ = ["embed", "EmbedSummary", "batch_partition", "prepare_cube"]

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
    seconds: float
    tiles_per_s: float
    mpx_per_s: float
    output_bytes: int
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def batch_partition(tiles: list[Tile], batch_size: int) -> list[list[Tile]]:
    """The fixed grouping of tiles into batches (depends only on the tile grid and the batch size)."""
    return [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]


def _settings_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


def prepare_cube(plan: ScenePlan) -> tuple[CubeLock | None, str]:
    """Create, resume or refuse the output cube. Returns the held lock and one of
    ``"new" | "resume" | "complete"``."""
    out, cfg = plan.output, plan.config
    if out.exists() and not is_cube(out):
        stray = [p for p in out.iterdir() if p.name != ".geodino.lock"] if out.is_dir() else [out]
        if stray:
            raise CubeExistsError(f"output {out} exists and is not a geodino cube: choose another -o "
                                  "(geodino never deletes data it did not write)")
    lock = CubeLock(out).acquire()
    try:
        if is_cube(out):
            attrs = read_attrs(out)
            prov = attrs.get("geodino", {})
            same = prov.get("fingerprint") == plan.fingerprint
            if cfg.overwrite:
                remove_cube(out)
            elif not same:
                raise CubeExistsError(f"output {out} exists and was made with different settings "
                                      f"({_settings_diff(prov.get('settings', {}), plan.settings)}): "
                                      "choose another -o, or pass --overwrite to replace it")
            elif attrs.get(STATUS_ATTR) == "complete":
                return lock, "complete"
            else:
                return lock, "resume"
        prov = {**plan.provenance, "created": _now(), "runs": []}
        create_cube(out, plan.tiles, plan.embed_dim, cfg.dtype, prov)
        return lock, "new"
    except BaseException:
        lock.release()
        raise


def _graph_for_batch(plan: ScenePlan, batch: list[Tile], pending: set[str], token: str, index: int):
    """Delayed values writing the pending tiles of one batch: reads -> inference -> one write per tile."""
    import dask

    from geodino.embed import tasks

    reads = [dask.delayed(tasks.read_tile, pure=True)(plan.source, t, plan.config.min_valid,
                                                      dask_key_name=f"read-{token}-{t.key}") for t in batch]
    inferred = dask.delayed(tasks.infer_batch, pure=True)(plan.engine_spec, plan.radiometry, reads,
                                                          dask_key_name=f"infer-{token}-{index}")
    return [dask.delayed(tasks.write_tile, pure=True)(str(plan.output), inferred, j,
                                                      dask_key_name=f"write-{token}-{t.key}")
            for j, t in enumerate(batch) if t.key in pending]


def _run_local(plan: ScenePlan, batches: list[list[Tile]], pending: set[str],
               on_batch: Callable[[list], None]) -> None:
    """In-process: each batch is a dask graph on the threaded scheduler; ``prefetch`` batches are in flight
    at once (reads of the next batches overlap the current inference, memory stays bounded)."""
    import dask
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    token = plan.fingerprint
    cfg = plan.config

    def run(i, batch):
        writes = _graph_for_batch(plan, batch, pending, token, i)
        return dask.compute(*writes, scheduler="threads", num_workers=cfg.threads)

    pool = ThreadPoolExecutor(max_workers=cfg.prefetch, thread_name_prefix="geodino-batch")
    inflight = set()
    try:
        for i, batch in enumerate(batches):
            if len(inflight) >= cfg.prefetch:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    on_batch(list(f.result()))
            inflight.add(pool.submit(run, i, batch))
        for f in inflight:
            on_batch(list(f.result()))
        inflight = set()
    finally:
        for f in inflight:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def embed(scenes: list[str] | str, config: EmbedConfig | None = None, *, command: str | None = None,
          progress: Callable[[str, int, int], None] | None = None,
          on_plan: Callable[[ScenePlan], None] | None = None, **options) -> list[EmbedSummary]:
    """Embed one or more scenes into feature cubes (the library behind ``geodino embed``).

    ``progress(scene, tiles_done, tiles_total)`` is called as batches finish. Options may be given as an
    :class:`EmbedConfig` or as keyword arguments.
    """
    if isinstance(scenes, (str, Path)):
        scenes = [str(scenes)]
    cfg = config.replace(**options) if config is not None and options else (config or EmbedConfig.build(**options))
    if command is None:
        command = shlex.join(sys.argv)
    bound_memory(cfg.gdal_cache_mb)
    outputs = [default_output(s, cfg.output, len(scenes)) for s in scenes]
    if len(set(outputs)) != len(outputs):
        raise CubeExistsError("several scenes would write the same cube (same file name): give them distinct "
                              "names or embed them separately")
    return [_embed_scene(plan_scene(s, cfg, len(scenes), command), progress, on_plan) for s in scenes]


def _embed_scene(plan: ScenePlan, progress, on_plan) -> EmbedSummary:
    if on_plan:
        on_plan(plan)
    for m in plan.messages:
        log.debug("%s: %s", Path(plan.scene).name, m)
    lock, state = prepare_cube(plan)
    t0 = time.perf_counter()
    started = _now()
    try:
        status = tile_status(plan.output)
        all_tiles = plan.tiles.tiles()
        total = len(all_tiles)
        if state == "complete":
            return _summary(plan, "already complete", total, 0, status, 0, 0.0)
        pending = {t.key for t in all_tiles if status[t.ty, t.tx] == PENDING}
        resumed = total - len(pending)
        batches = [b for b in batch_partition(all_tiles, plan.config.batch_size) if any(t.key in pending for t in b)]
        done = [resumed]
        written = [0]
        px = [0]
        by_key = {t.key: t for t in all_tiles}
        if progress:
            progress(plan.scene, done[0], total)

        def on_batch(results):
            for key, st in results:
                done[0] += 1
                if st == WRITTEN:
                    written[0] += 1
                    t = by_key[key]
                    px[0] += t.height * t.width
            if progress:
                progress(plan.scene, done[0], total)

        interrupted = None
        try:
            _run_local(plan, batches, pending, on_batch)
        except BaseException as e:  # Ctrl-C or a failure: the cube stays incomplete and resumable
            interrupted = e
        seconds = time.perf_counter() - t0
        run_record = {"started": started, "finished": _now(), "tiles_written": written[0],
                      "seconds": round(seconds, 3), "interrupted": interrupted is not None}
        prov = read_attrs(plan.output).get("geodino", {})
        complete = finalize_cube(plan.output, {"runs": [*prov.get("runs", []), run_record],
                                               "finished": run_record["finished"]})
        if interrupted is not None:
            raise interrupted
        status = tile_status(plan.output)
        return _summary(plan, "complete" if complete else "incomplete", total, written[0], status, resumed,
                        seconds, px[0])
    finally:
        lock.release()


def _summary(plan, state, total, written, status, resumed, seconds, px=0) -> EmbedSummary:
    return EmbedSummary(
        scene=plan.scene, output=str(plan.output), status=state, tiles_total=total, tiles_written=written,
        tiles_skipped=int(np.sum(status == SKIPPED)), tiles_resumed=resumed, seconds=round(seconds, 3),
        tiles_per_s=round(written / seconds, 3) if seconds > 0 else 0.0,
        mpx_per_s=round(px / 1e6 / seconds, 3) if seconds > 0 else 0.0,
        output_bytes=_du(plan.output), messages=plan.messages)

