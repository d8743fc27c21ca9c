"""``geodino predict``: a trained head streamed over a cube into a class-map COG and a probability (or detection
score) COG."""

from __future__ import annotations

import typer

from geodino.cli._app import app, err, guarded


@app.command("predict")
@guarded(cubes=("cube",), outputs=("output",))
def predict_cmd(
    cube: str = typer.Argument(..., help="A geodino feature cube (.zarr)."),
    head: str = typer.Option(..., "--head", help="A head written by `geodino train` (.safetensors)."),
    output: str = typer.Option(..., "-o", "--output", help="The class map (.tif); probabilities go to "
                                                           "NAME_proba.tif (detection: NAME_score.tif)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing maps."),
    relax: list[str] = typer.Option(None, "--relax", help="A comparable field in which the cube may differ from "
                                                          "the head's (recorded in the maps' tags)."),
    force: bool = typer.Option(False, "--force", help="Apply the head however the cube differs (recorded)."),
) -> None:
    """Predict a georeferenced class map (and probabilities) from a cube, chunk by chunk."""
    from geodino.checks import require_cube, require_file
    from geodino.errors import HeadError

    require_cube(cube)
    require_file(head, "head file", "train one with `geodino train` (geodino.heads.train)", HeadError)

    from geodino._process import bound_memory
    from geodino.heads import predict_map

    bound_memory()  # the CLI's process-wide memory policy (the library leaves malloc alone)
    res = predict_map(cube, head, output, overwrite=overwrite, relax=relax or (), force=force)
    classes = ", ".join(map(str, res.classes))
    err.print(f"[bold]{res.class_map}[/bold] (classes {classes}) and [bold]{res.probabilities}[/bold]: "
              f"{res.chunks} chunks in {res.seconds:.1f} s")
