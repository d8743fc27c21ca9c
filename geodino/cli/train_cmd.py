"""``geodino train``: a head on a cube's features from a label raster, points/polygons, or positives and
negatives, validated on a spatial block split; saved as safetensors plus a JSON card."""

from __future__ import annotations

import json
import time

import typer

from geodino.cli._app import app, err, guarded
from geodino.cli._progress import add_item_task, item_progress


@app.command("train")
@guarded(cubes=("cube",), outputs=("output",))
def train_cmd(
    cube: str = typer.Argument(..., help="A geodino feature cube (.zarr)."),
    output: str = typer.Option(..., "-o", "--output", help="The head to write (.safetensors; its card goes beside "
                                                           "it as .json)."),
    labels: str = typer.Option(None, "--labels", help="A label raster, or points/polygons (GeoPackage, GeoParquet, "
                                                      "shapefile) with --class-column."),
    class_column: str = typer.Option(None, "--class-column", help="The vector labels' class column."),
    positives: str = typer.Option(None, "--positives", help="One-class detection: points/polygons of the class."),
    negatives: str = typer.Option(None, "--negatives", help="One-class detection: points/polygons of the rest."),
    layer: str = typer.Option(None, "--layer", help="The layer of a multi-layer vector file."),
    background: str = typer.Option(None, "--background", help="Vector labels: the class of cells outside every "
                                                              "geometry (default: unlabelled)."),
    head: str = typer.Option("logreg", "--head", help="logreg | knn (per patch) | linear | dpt (per pixel)."),
    label_scale: int = typer.Option(None, "--label-scale", help="Label cells per patch side (pixel heads; default "
                                                                "4; patch heads use 1)."),
    block: int = typer.Option(None, "--block", help="Side of the spatial split's blocks, in patches (default: "
                                                    "one model window, e.g. 36)."),
    buffer: int = typer.Option(None, "--buffer", help="Ring of patches between held-out and training blocks, used by "
                                                      "neither (default: one model window)."),
    valid_fraction: float = typer.Option(0.25, "--valid-fraction", help="Share of labelled blocks held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the subsamples and the training."),
    max_samples: int = typer.Option(20_000, "--max-samples", help="Patch heads: labelled patches used at most."),
    k: int = typer.Option(20, "--k", help="kNN: neighbours."),
    iterations: int = typer.Option(300, "--iterations", help="Pixel heads: training iterations."),
    lr: float = typer.Option(1e-3, "--lr", help="Pixel heads: AdamW learning rate."),
    relax: list[str] = typer.Option(None, "--relax", help="A comparable field in which cubes the head is applied to "
                                                          "may differ from this one (recorded in the card)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing head."),
    as_json: bool = typer.Option(False, "--json", help="Print the head's card as JSON on stdout."),
) -> None:
    """Train a head on a cube with labels aligned onto its grid, and save it with its card."""
    from geodino.checks import require_cube, require_file
    from geodino.errors import ConfigError, LabelError
    from geodino.export.cog import check_output
    from geodino.heads.card import HEAD_KINDS, PATCH_KINDS

    if head not in HEAD_KINDS:
        raise ConfigError(f"unknown --head {head!r}: choose one of {', '.join(HEAD_KINDS)}")
    scale = 1 if head in PATCH_KINDS else (4 if label_scale is None else label_scale)
    if head in PATCH_KINDS and label_scale not in (None, 1):
        raise ConfigError(f"--head {head} predicts one class per patch: drop --label-scale (or use linear/dpt)")
    require_cube(cube)
    for f in (labels, positives, negatives):
        if f:
            require_file(f, "label file", error=LabelError)
    check_output(output, overwrite)

    from geodino.heads import align_labels, save_head, train_on_cube

    t0 = time.monotonic()
    grid = align_labels(cube, labels, class_column=class_column, positives=positives, negatives=negatives,
                        scale=scale, layer=layer, background=background)
    progress, name_width = item_progress(err, unit="it")  # on a terminal: off it, the summary alone
    bar: list[int] = []

    def on_progress(done: int, total: int) -> None:
        if not bar:
            bar.append(add_item_task(progress, name_width, f"{head} head", total))
        progress.update(bar[0], completed=done, total=total)

    if head in PATCH_KINDS and not progress.disable:
        progress.console.print(f"fitting the {head} head on {sum(grid.counts().values()):,} labelled patches ...",
                               highlight=False)
    with progress:
        trained = train_on_cube(cube, grid, head=head, block=block, buffer=buffer, valid_fraction=valid_fraction,
                                seed=seed, max_samples=max_samples, k=k, iterations=iterations, lr=lr,
                                relax=relax or (), progress=on_progress)
    path = save_head(trained, output, overwrite=overwrite)
    card = trained.card
    if as_json:
        print(json.dumps(card, indent=2, default=str))
    for line in summary(card, path, time.monotonic() - t0):
        err.print(line, highlight=False)


def summary(card: dict, path, seconds: float) -> list[str]:
    """What a trained head is, what it learnt from and how it scored, in a few lines."""
    m, fit, sp = card["metrics"]["valid"], card["fit"], card["split"]

    def ci(x):
        return f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"

    what = "patches" if card.get("label_scale", 1) == 1 else f"cells ({card['label_scale']} per patch side)"
    counts = ", ".join(f"{c} {n:,}" for c, n in (card.get("label_counts") or {}).items())
    b = sp["block_patches"]
    if card["level"] == "patch":
        trained_on = f"{fit.get('train_samples', 0):,} patches"
        held = f"{m['blocks']} held-out blocks of {b}x{b} patches"
    else:
        c = fit["crop_patches"]
        trained_on = f"{fit['iterations']} iterations on {fit['train_crops']} crops of {c}x{c} patches"
        held = f"{m['blocks']} held-out crops of {c}x{c} patches in blocks of {b}x{b}"
    iou = ", ".join(f"{c} {v:.3f}" if v is not None else f"{c} -" for c, v in (m.get("iou") or {}).items())
    lines = [f"[bold]{path}[/bold]: {card['head']} head, {len(card['classes'])} classes (labelled {what}: {counts}); "
             f"trained with {trained_on} in {seconds:.1f} s",
             f"  valid ({held}, {sp['buffer_patches']}-patch ring): accuracy {ci(m['accuracy'])}, "
             f"mIoU {ci(m['miou'])}" + (f"; IoU per class: {iou}" if iou else "")]
    if sp.get("optimistic"):
        lines.append(f"  [yellow]the ring of {sp['buffer_patches']} patches is narrower than one model window of "
                     f"{sp['window_patches']}: these scores are optimistic[/yellow]")
    if card.get("random_weights"):
        lines.append("  [yellow]the cube's backbone has random weights: these scores mean nothing[/yellow]")
    return lines
