"""``geodino canopy``: canopy height maps (CHMv2) of whole scenes as COGs."""

from __future__ import annotations

import json

import typer

from geodino.cli._app import app, err, guarded, parse_arch, run_streaming, warn_random_weights


@app.command("canopy")
@guarded(outputs=("output", "cube"), kept="finished tiles are kept")
def canopy_cmd(
    scene: str = typer.Argument(..., help="Input raster (GeoTIFF, COG, VRT, URL) or STAC Item, RGB of about 0.6 m "
                                          "(other resolutions are resampled in the read)."),
    output: str = typer.Option(None, "-o", "--output", help="Output COG of heights (.tif; a path or a URL such as s3://bucket/x.tif). Default: "
                                                            "<scene>.chm.tif beside the input."),
    cube: str = typer.Option(None, "--cube", help="The resumable zarr height cube (default: <output "
                                                  "stem>.heights.zarr beside the COG)."),
    config: str = typer.Option(None, "--config", help="YAML file of options; flags given here override it."),
    model: str = typer.Option(None, "--model", help="Canopy model (default chmv2-vitl16-sat493m)."),
    backbone: str = typer.Option(None, "--backbone", help="Backbone name (default: the canopy model's, "
                                                          "dinov3-vitl16-sat493m)."),
    weights: str = typer.Option(None, "--weights", help="CHMv2 checkpoint: HF snapshot dir, safetensors, cached hub "
                                                        "id, the official head .pth, or 'random' (demos only)."),
    backbone_weights: str = typer.Option(None, "--backbone-weights", help="Backbone of a head-only checkpoint."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option(None, "--precision", help="auto (bf16 on GPUs and CPUs with native bf16, else "
                                                            "fp32) | fp32 | bf16"),
    micro_batch: int = typer.Option(None, "--micro-batch", help="Tiles per model call (default: from the window "
                                                                "size and device)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Address of an existing dask.distributed scheduler "
                                                            "(default: an in-process dask cluster)."),
    resource: str = typer.Option(None, "--resource", help="Worker resource inference needs on a cluster (GPU)."),
    configure_workers: bool = typer.Option(None, "--configure-workers", help="Apply geodino's memory settings "
                                                                             "on the cluster's workers too."),
    retries: int = typer.Option(None, "--retries", help="Retries of a failed read or write task (default 2)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Tiles per inference task (default 4)."),
    tile: int = typer.Option(None, "--tile", help="Tile core in px, a multiple of 32 (default 512)."),
    halo: int = typer.Option(None, "--halo", help="Context read around each tile, multiple of 16 (default 32)."),
    blend: int = typer.Option(None, "--blend", help="Px each side of a core boundary over which neighbouring "
                                                    "windows' heights are ramped together (0..halo; default halo)."),
    bands: str = typer.Option(None, "--bands", help="R,G,B bands: 1,2,3 or red,green,blue (default: from the file)."),
    nodata: float = typer.Option(None, "--nodata", help="Nodata value (overrides the file's)."),
    radiometry: str = typer.Option(None, "--radiometry", help="uint8 (8-bit RGB; the default for 8-bit data) | "
                                                              "s2-l2a | reflectance | minmax | percentile ..."),
    s2_offset: float = typer.Option(None, "--s2-offset", help="BOA_ADD_OFFSET for s2-l2a."),
    minmax: str = typer.Option(None, "--minmax", help="LO,HI (or per band) for --radiometry minmax."),
    gsd: float = typer.Option(None, "--gsd", help="Ground resolution (m) to resample to (default: the model's, "
                                                  "0.6 m)."),
    resampling: str = typer.Option(None, "--resampling", help="nearest | bilinear (default) | cubic | average"),
    dtype: str = typer.Option(None, "--dtype", help="float32 (metres, NaN nodata; default) | uint16 (centimetres: "
                                                    "scale 0.01, nodata 65535)."),
    overwrite: bool = typer.Option(None, "--overwrite", help="Replace an existing COG and height cube."),
    arch: list[str] = typer.Option(None, "--arch", help="Backbone architecture override KEY=VALUE (tests)."),
    head_arch: list[str] = typer.Option(None, "--head-arch", help="Head architecture override KEY=VALUE (tests)."),
    threads: int = typer.Option(None, "--threads", help="Reader threads (default 4)."),
    prefetch: int = typer.Option(None, "--prefetch", help="Batches in flight (default 2)."),
    allow_download: bool = typer.Option(None, "--allow-download", help="Let a hub id download weights."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Map canopy height (metres) with Meta's CHMv2 head on the SAT-493M ViT-L, streamed over the whole scene."""
    from geodino.canopy.options import CanopyOptions
    from geodino.checks import require_scene, require_weights

    cli = dict(output=output, cube=cube, model=model, backbone=backbone, weights=weights,
               backbone_weights=backbone_weights, device=device, precision=precision, micro_batch=micro_batch,
               scheduler=scheduler, resource=resource, configure_workers=configure_workers, retries=retries,
               batch_size=batch_size, tile=tile, halo=halo, blend=blend, bands=bands, nodata=nodata,
               radiometry=radiometry, s2_offset=s2_offset, minmax=minmax, gsd=gsd, resampling=resampling,
               dtype=dtype, overwrite=overwrite, arch=parse_arch(arch), head_arch=parse_arch(head_arch),
               threads=threads, prefetch=prefetch, allow_download=allow_download)
    opts = CanopyOptions.build(config, **cli)
    require_scene(scene)
    require_weights(opts.weights, opts.allow_download)
    require_weights(opts.backbone_weights, opts.allow_download)

    from geodino.canopy import canopy  # the job: dask, GDAL, torch

    warn_random_weights(opts.weights, "heights are MEANINGLESS (demo/test only); the COG and the cube record it")
    s = run_streaming(canopy, scene, opts, said="--weights random")
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    where = s.output or f"{s.cube} (incomplete: rerun the same command to finish it)"
    err.print(f"[bold]{where}[/bold]: {s.status}; {s.tiles_written} tiles written, {s.tiles_skipped} skipped "
              f"(nodata), {s.tiles_resumed} already present, of {s.tiles_total}; {s.seconds:.1f} s, "
              f"{s.tiles_per_s:.2f} tiles/s, {s.mpx_per_s:.2f} Mpx/s"
              + ("; RANDOM WEIGHTS" if s.random_weights else ""))
    if s.status == "incomplete":
        raise typer.Exit(1)
