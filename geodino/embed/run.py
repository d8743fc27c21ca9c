"""Running embed jobs: prepare (or resume) the cube, schedule the tiles on one dask graph, finalize.

A tile's features depend only on its own window (and, with blending, its neighbours' windows): the engine runs
fixed-shape micro-batches whatever the batch size, so a resumed run embeds only the windows that the missing
cores need, in batches of any size, and its cube is bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from geodino._interrupts import run_stoppable
from geodino._provenance import library_call
from geodino.embed.config import EmbedConfig
from geodino.embed.mosaic import check_one_cube, embed_mosaic
from geodino.embed.plan import ScenePlan, default_output, plan_scene
from geodino.embed.tasks import FEATURES
from geodino.errors import CubeExistsError
from geodino.job.run import JobSummary, run_job, scheduled

__all__ = ["embed", "EmbedSummary"]


EmbedSummary = JobSummary  # one summary for every product of the job (geodino.job.run)


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
    with scheduled(cfg) as sched:
        if cfg.mosaic:  # one cube per CRS on a common grid (geodino.embed.mosaic)
            return embed_mosaic(scenes, cfg, sched, command=command, progress=progress, on_plan=on_plan,
                                stop=stop)
        plans = [plan_scene(s, cfg, lambda window, spec: sched.engine_report(spec, window), len(scenes), command,
                            cfg.scheduler) for s in scenes]
        check_one_cube(plans, cfg)  # several CRSs into one -o X.zarr: refused, --mosaic is the way
        return run_job(plans, FEATURES, sched, prefetch=cfg.prefetch, progress=progress, on_plan=on_plan, stop=stop)
