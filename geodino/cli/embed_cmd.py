"""``geodino embed`` and ``geodino info``."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from geodino.cli._app import app, err, guarded, parse_arch, run_streaming, warn_random_weights

out = Console(soft_wrap=True)

_LISTED = 10  # failed tiles listed in a summary


@app.command("embed")
def embed_cmd(
    scenes: list[str] = typer.Argument(..., help="Input rasters (GeoTIFF, COG, VRT, any GDAL raster; https:// and "
                                                 "s3:// URLs) or STAC Items/ItemCollections (JSON files or URLs)."),
    output: str = typer.Option(None, "-o", "--output", help="Output cube (.zarr); a directory with several scenes. "
                                                            "Default: beside the input."),
    config: str = typer.Option(None, "--config", help="YAML file of options; flags given here override it."),
    model: str = typer.Option(None, "--model", help="Backbone name (geodino models). Default dinov3-vitl16-sat493m."),
    weights: str = typer.Option(None, "--weights", help="Checkpoint file, HF snapshot dir, cached hub id, or "
                                                        "'random' (demos/tests only). Default: the model's hub id."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option(None, "--precision", help="auto (bf16 on GPUs and on CPUs with native bf16, else "
                                                            "fp32) | fp32 | bf16 | fp8 (H100 class; refused unless "
                                                            "cosine to bf16 >= 0.99)"),
    quantize: str = typer.Option(None, "--quantize", help="int8 | int4 weight-only (torchao), e.g. the 7B on 16 GB."),
    micro_batch: int = typer.Option(None, "--micro-batch", help="Tiles per model call (default: chosen from the "
                                                                "window size and device; it fixes the numerics)."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (CUDA graphs on GPU). "
                                                                      "Default: on the CPU for scenes of at least "
                                                                      "300 tiles, where the compile time pays back; "
                                                                      "off otherwise."),
    scheduler: str = typer.Option(None, "--scheduler", help="Address of an existing dask.distributed scheduler "
                                                            "(default: an in-process dask cluster)."),
    configure_workers: bool = typer.Option(None, "--configure-workers", help="Apply geodino's memory settings "
                                                                             "(GDAL cache, malloc) on the cluster's "
                                                                             "workers too."),
    retries: int = typer.Option(None, "--retries", help="Retries of a failed read or write task (default 2)."),
    resource: str = typer.Option(None, "--resource", help="Worker resource that inference needs on a cluster "
                                                          "(default GPU)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Tiles per inference task (default 8); features do "
                                                              "not depend on it."),
    tile: int = typer.Option(None, "--tile", help="Tile core in px, a multiple of 16 (default 512)."),
    halo: int = typer.Option(None, "--halo", help="Context read around each tile, multiple of 16 (default 32)."),
    blend: int = typer.Option(None, "--blend", help="Patches across each core boundary whose features blend the "
                                                    "neighbouring windows (<= halo/16; default 1)."),
    bands: str = typer.Option(None, "--bands", help="Three bands, 1-based or by description: 4,3,2 or red,green,blue; "
                                               "for STAC items asset keys, eo:bands names or common names."),
    nodata: float = typer.Option(None, "--nodata", help="Nodata value (overrides the file's)."),
    radiometry: str = typer.Option(None, "--radiometry", help="s2-l2a | landsat-c2-l2 | reflectance | uint8 | minmax "
                                                              "| percentile (default: from the file's metadata)."),
    radiometry_like: str = typer.Option(None, "--radiometry-like", help="Reuse another cube's exact radiometry "
                                                                        "(comparable multi-date cubes)."),
    s2_offset: float = typer.Option(None, "--s2-offset", help="BOA_ADD_OFFSET for s2-l2a (e.g. -1000)."),
    minmax: str = typer.Option(None, "--minmax", help="LO,HI (or per band) for --radiometry minmax."),
    scale: float = typer.Option(None, "--scale", help="Resample by this factor in the read (e.g. 4: 10 m -> 2.5 m)."),
    resampling: str = typer.Option(None, "--resampling", help="nearest | bilinear | cubic | average"),
    dtype: str = typer.Option(None, "--dtype", help="float16 (default) | float32"),
    min_valid: float = typer.Option(None, "--min-valid", help="Fraction of valid pixels for a valid patch (0.5)."),
    overwrite: bool = typer.Option(None, "--overwrite", help="Replace an existing cube made with other settings."),
    arch: list[str] = typer.Option(None, "--arch", help="Architecture override KEY=VALUE (tests/experiments)."),
    threads: int = typer.Option(None, "--threads", help="Reader threads (default 4)."),
    prefetch: int = typer.Option(None, "--prefetch", help="Batches in flight (default 2)."),
    allow_download: bool = typer.Option(None, "--allow-download", help="Let a hub id download weights."),
    on_read_error: str = typer.Option(None, "--on-read-error", help="fail (default): stop at the first window "
                                                                   "that cannot be read, exit 2 | skip: mark its "
                                                                   "tile failed and go on (exit 3; a rerun "
                                                                   "retries those tiles)."),
    mosaic: bool = typer.Option(None, "--mosaic", help="Mosaic the scenes: one cube per CRS (UTM zone) on a common "
                                                       "grid in -o DIR (a path or s3:// URL), overlaps filled by "
                                                       "the scene with the most valid pixels per tile (ties: most "
                                                       "recent), with manifest.parquet and a STAC collection.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries as JSON on stdout."),
) -> None:
    """Embed scenes into georeferenced zarr cubes of DINOv3 patch features."""
    from geodino.checks import require_scene, require_weights
    from geodino.embed.config import EmbedConfig

    cli = dict(output=output, model=model, weights=weights, device=device, precision=precision, quantize=quantize,
               micro_batch=micro_batch, compile=compile, scheduler=scheduler, resource=resource,
               configure_workers=configure_workers, retries=retries,
               batch_size=batch_size, tile=tile, halo=halo, blend=blend, bands=bands, nodata=nodata,
               radiometry=radiometry, radiometry_like=radiometry_like,
               s2_offset=s2_offset, minmax=minmax, scale=scale, resampling=resampling, dtype=dtype,
               min_valid=min_valid, overwrite=overwrite, arch=parse_arch(arch), threads=threads, prefetch=prefetch,
               allow_download=allow_download, on_read_error=on_read_error, mosaic=mosaic)
    cfg = EmbedConfig.build(config, **cli)
    for s in scenes:
        require_scene(s)
    require_weights(cfg.weights, cfg.allow_download)

    from geodino.embed import embed  # the job: dask, GDAL, torch
    from geodino.raster.scene import expand_scenes

    scenes = expand_scenes(scenes)  # one scene per item of a STAC ItemCollection
    warn_random_weights(cfg.weights, "features are MEANINGLESS (demo/test only); the cube records it")
    summaries = run_streaming(embed, scenes, cfg)
    if as_json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
    for s in summaries:
        err.print(f"[bold]{s.output}[/bold]: {s.status}; {s.tiles_written} tiles written, {s.tiles_skipped} skipped "
                  f"(nodata), {s.tiles_resumed} already present, of {s.tiles_total}; {s.seconds:.1f} s, "
                  f"{s.tiles_per_s:.2f} tiles/s, {s.mpx_per_s:.2f} Mpx/s; {s.output_bytes / 1e6:.1f} MB")
        if s.tiles_failed:
            err.print(f"[bold]{s.output}[/bold]: {s.tiles_failed} tiles FAILED (unreadable source windows); the cube "
                      "is incomplete; rerun the same command to retry only those tiles (geodino info lists them):")
            for f in s.failed[:_LISTED]:
                err.print(f"  tile {f['tile']}: {f['reason']}", markup=False)
            if len(s.failed) > _LISTED:
                err.print(f"  ... and {len(s.failed) - _LISTED} more")
    if cfg.mosaic:
        err.print(f"[bold]{cfg.output}[/bold]: manifest.parquet, collection.json and items/ describe the cubes")
    if any(s.tiles_failed for s in summaries):
        raise typer.Exit(3)
    if any(s.status == "incomplete" for s in summaries):
        raise typer.Exit(1)


@app.command("info")
@guarded(cubes=("cube",))
def info_cmd(cube: str = typer.Argument(..., help="A geodino feature cube."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a cube's grid, provenance and completeness (feature cubes and canopy height cubes)."""
    from geodino.checks import require_cube

    require_cube(cube)

    from geodino.cube.info import cube_info
    from geodino.raster.bands import describe_bands

    info = cube_info(cube)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    g, p, c = info["grid"], info["provenance"], info["completeness"]

    def numbers(values) -> str:
        return ", ".join(f"{v:.10g}" for v in values) if values else "none"

    out.print(f"[bold]{cube}[/bold]  ({c['status'].upper() if c.get('problem') else c['status']})", highlight=False)
    if c.get("problem"):
        out.print(f"  DAMAGED   : {c['problem']}", markup=False)
    if info["product"] == "features":
        out.print(f"  grid      : {g['shape'][1]} x {g['shape'][0]} patches, {g['features']} features "
                  f"({g['dtype']}), {g['crs']}", highlight=False)
    else:
        out.print(f"  grid      : {g['shape'][1]} x {g['shape'][0]} px of canopy heights in "
                  f"{p.get('units', 'm')} ({g['dtype']}), {g['crs']}", highlight=False)
    out.print(f"  transform : {numbers(g['transform'])}", highlight=False)
    out.print(f"  bounds    : {numbers(g['bounds'])}", highlight=False)
    out.print(f"  tiles     : {c['written']} written, {c['skipped']} skipped, {c['pending']} pending"
              f"{', ' + str(c['failed']) + ' FAILED' if c['failed'] else ''} of {c['total']}")
    for f in c["failed_tiles"]:
        out.print(f"  failed    : tile {f['tile']}: {f['reason']}", markup=False)
    m = p.get("model", {})
    w = m.get("weights", {})
    out.print(f"  model     : {m.get('name')}  weights {w.get('source')} sha256 {w.get('sha256')}"
              + ("  [red]RANDOM WEIGHTS[/red]" if m.get("random_weights") else ""))
    b = p.get("bands", {})
    out.print(f"  bands     : {describe_bands(b.get('indexes') or [], b.get('names'))} (as red, green, blue)",
              highlight=False)
    out.print(f"  radiometry: {p.get('radiometry', {}).get('kind')}  normalisation "
              f"{p.get('normalization', {}).get('name')}", highlight=False)
    t = p.get("tiling", {})
    blend = f"{t['blend_px']} px" if "blend_px" in t else f"{t.get('blend', 0)} patches"
    out.print(f"  tiling    : tile {t.get('tile')} px, halo {t.get('halo')} px, blend {blend}, "
              f"window {t.get('window')} px")
    n = p.get("numerics") or {}
    if n:
        out.print(f"  numerics  : {n.get('precision')} on {n.get('device_type')} ({n.get('device_name')}), "
                  f"torch {n.get('torch')}, micro-batch {n.get('micro_batch')}")
    s = p.get("source", {})
    out.print(f"  source    : {s.get('path')} ({s.get('size_bytes')} bytes)")
    if p.get("command") is None and p.get("call"):  # made from Python: the call and its arguments
        c = p["call"]
        args = ", ".join(f"{k}={v!r}" for k, v in c.get("args", {}).items())
        out.print(f"  call      : {c.get('function')}({args})", highlight=False, markup=False)
    else:
        out.print(f"  command   : {p.get('command')}")
    out.print(f"  created   : {p.get('created')}  finished {p.get('finished')}")
