"""Running a canopy job: the heights product (:mod:`geodino.canopy.tasks`) through the streaming job
(:func:`geodino.job.run.run_job`: prepare or resume the height cube, schedule the tiles, finalize, faults as exit
codes), then the finished cube converted into a COG.

Resume works as embed's: a tile's heights depend only on its own window and its neighbours' (fixed-shape
micro-batches, blending in a fixed order), so a rerun of the same command computes only the windows that the
missing cores need and its cube is bit-identical to an uninterrupted run's; the COG is written only from a
complete cube, to a temporary name that is renamed into place once it validates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from geodino._interrupts import run_stoppable
from geodino._provenance import library_call
from geodino.canopy.options import CanopyOptions
from geodino.canopy.plan import CanopyPlan, canopy_engine_spec, plan_canopy
from geodino.canopy.tasks import HEIGHTS, open_heights
from geodino.cube.storage import exists
from geodino.errors import output_faults
from geodino.job.run import JobSummary, run_job, scheduled

__all__ = ["canopy", "CanopySummary", "open_heights", "export_cog", "cog_tags"]


CanopySummary = JobSummary  # one summary for every product of the job (geodino.job.run)
# what a canopy summary shows (--json, to_dict): the COG as ``output`` ("" while incomplete), the height cube
SHOWN = ("scene", "output", "cube", "status", "tiles_total", "tiles_written", "tiles_skipped", "tiles_resumed",
         "seconds", "tiles_per_s", "mpx_per_s", "random_weights", "messages")


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


def export_cog(cube: str | Path, cog: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> str:
    """The heights of a complete height cube as a COG with overviews (average) and provenance tags: float32
    metres with NaN nodata, or uint16 centimetres (scale 0.01, nodata 65535). ``cube`` and ``cog`` are local
    paths or object-store URLs (``s3://bucket/chm.tif``: made and validated locally, then uploaded in one go)."""
    from geodino.canopy.options import UINT16_NODATA, UINT16_SCALE, cog_encoding
    from geodino.export.cog import write_cog

    da = open_heights(cube, require_complete=True)
    prov = da.attrs.pop("geodino")
    enc = {k: v for k, v in cog_encoding(dtype).items() if k != "units"}  # the tag gives the units apart
    if dtype == "uint16":
        q = (da.astype("float64") / UINT16_SCALE).round().clip(0, UINT16_NODATA - 1)  # round(h / scale)
        q = q.where(da.notnull(), UINT16_NODATA).astype("uint16")
        q.attrs = {k: v for k, v in da.attrs.items() if k != "units"}
        return write_cog(q, cog, nodata=UINT16_NODATA, overwrite=overwrite, tags=cog_tags(prov, enc),
                         dtype="uint16", overview_resampling="average", scale=UINT16_SCALE, offset=0.0)
    return write_cog(da, cog, nodata=np.nan, overwrite=overwrite, tags=cog_tags(prov, enc), dtype="float32",
                     overview_resampling="average")


def canopy(scene: str | Path, options: CanopyOptions | None = None, *, command: str | None = None,
           progress: Callable[[str, int, int], None] | None = None,
           on_plan: Callable[[CanopyPlan], None] | None = None, stop: Callable[[], int | None] | None = None,
           **kw) -> CanopySummary:
    """Map the canopy height of ``scene`` into a COG (the library behind ``geodino canopy``).

    Options come as :class:`CanopyOptions` and/or keyword arguments (``output="chm.tif"``, ``weights=...``); the
    COG (``output``) and the height cube (``cube``) are local paths or object-store URLs (``s3://bucket/chm.tif``).
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
    with scheduled(opts) as sched:
        spec = canopy_engine_spec(opts)
        plan = plan_canopy(scene, opts, lambda window: sched.engine_report(spec, window), command)
        try:
            [s] = run_job([plan], HEIGHTS, sched, prefetch=opts.prefetch, progress=progress, on_plan=on_plan,
                          stop=stop)
        finally:
            plan.source.close()
    complete = s.status != "incomplete"
    if complete and (s.status != "already complete" or opts.overwrite or not exists(plan.cog)):
        # the COG's refusal was checked in planning; a fault here leaves the complete cube, and a rerun writes
        # only the COG
        with output_faults([plan.cog], "the height cube is complete: a rerun writes only the COG"):
            export_cog(plan.output, plan.cog, dtype=opts.dtype, overwrite=True)
    return replace(s, output=str(plan.cog) if complete else "", cube=str(plan.output),
                   random_weights=bool(plan.provenance["model"]["random_weights"]), shown=SHOWN)
