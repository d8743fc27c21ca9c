"""``geodino compress``: the compact int8 product of a cube."""

from __future__ import annotations

import json

import typer

from geodino.cli._app import app, err, guarded


@app.command("compress")
@guarded(cubes=("cube",), outputs=("output",))
def compress_cmd(
    cube: str = typer.Argument(..., help="A geodino feature cube (.zarr)."),
    output: str = typer.Option(..., "-o", "--output", help="Output compact cube (.zarr): a path or a URL "
                                                            "(s3://bucket/compact.zarr; credentials from the "
                                                            "environment, as for embed -o)."),
    k: int = typer.Option(64, "--k", help="Dimensions kept (PCA components), stored as int8 unit vectors."),
    sample: int = typer.Option(10_000, "--sample", help="Patches sampled to fit the basis (a fifth, at most 2000, "
                                                        "held out to measure fidelity)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing compact cube."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Compress a cube to k-d int8 unit vectors on the same grid (geodino.open_cube decodes it transparently)."""
    from geodino.checks import require_cube

    require_cube(cube)

    from geodino._process import bound_memory
    from geodino.cube.compress import compress

    bound_memory()  # the CLI's process-wide memory policy (the library leaves malloc alone)
    s = compress(cube, output, k=k, sample=sample, seed=seed, overwrite=overwrite)
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    err.print(f"[bold]{s.output}[/bold]: {s.components}-d int8 from {s.source_features}-d; {s.bytes_per_patch} "
              f"bytes/patch vs {s.float16_bytes_per_patch} in float16 (stored {s.stored_bytes_per_patch:.1f} vs "
              f"{s.source_stored_bytes_per_patch:.1f}); cosine to the source {s.cosine_mean:.4f} mean, "
              f"{s.cosine_p01:.4f} 1st percentile (held-out sample); explained variance {s.explained_variance:.3f}")
