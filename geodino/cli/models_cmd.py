"""``geodino models`` and ``geodino weights convert|inspect``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from geodino.cli import app, guarded

weights_app = typer.Typer(no_args_is_help=True, help="Inspect and convert checkpoints (official, HF, timm, geodino).")
app.add_typer(weights_app, name="weights")
console = Console()


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the registered backbones with parameter counts and normalisation."""
    from geodino.models import build_model, get_config, list_models

    rows = []
    for name in list_models():
        cfg = get_config(name)
        n = build_model(name, device="meta").num_params()
        rows.append({"name": name, "params": n, "dim": cfg.arch.embed_dim, "depth": cfg.arch.depth,
                     "ffn": cfg.arch.ffn, "normalization": cfg.normalization, "mean": cfg.mean, "std": cfg.std,
                     "hf_repo": cfg.hf_repo, "timm": cfg.timm_name})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="DINOv3 backbones (geodino models --json for hub ids)")
    for col in ("name", "params", "dim/depth", "ffn", "norm", "mean", "std"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(r["name"], f"{r['params']:,}", f"{r['dim']}/{r['depth']}", r["ffn"], r["normalization"],
                  ",".join(f"{v:.3f}" for v in r["mean"]), ",".join(f"{v:.3f}" for v in r["std"]))
    Console(width=max(console.width, 140)).print(t)


@weights_app.command("inspect")
def inspect_cmd(file: str = typer.Argument(..., help="Checkpoint file, HF snapshot dir or cached hub id."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a checkpoint's layout, the registered model it matches and its sha256."""
    from geodino.models import inspect_weights

    info = inspect_weights(file)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"[bold]{info['source']}[/bold]")
    console.print(f"  layout : {info['layout']}")
    console.print(f"  model  : {', '.join(info['models']) or 'no registered model matches'}")
    console.print(f"  tensors: {info['tensors']} ({info['numel']:,} values, {', '.join(info['dtypes'])})")
    console.print(f"  sha256 : {info['sha256']}")


@weights_app.command("convert")
@guarded(outputs=("dst",))
def convert_cmd(src: str = typer.Argument(..., help="Input checkpoint."),
                dst: str = typer.Argument(..., help="Output: .safetensors, .pth, or a directory for --to hf."),
                to: str = typer.Option("geodino", "--to", help="Target layout: geodino|hf|timm|official."),
                model: str = typer.Option(None, "--model", help="Registered model the weights belong to "
                                                                "(guessed from shapes when omitted)."),
                overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Convert a checkpoint between the official, HF, timm and geodino layouts."""
    from pathlib import Path

    from geodino.errors import ConfigError, OutputExistsError
    from geodino.export.cog import check_folder
    from geodino.models import convert_weights

    if to not in ("geodino", "hf", "timm", "official"):
        raise ConfigError(f"--to {to!r}: choose geodino, hf, timm or official")
    if Path(dst).exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists: choose another output or pass --overwrite")
    check_folder(Path(dst).parent, "the output's folder")
    out = convert_weights(src, dst, to=to, model=model)
    console.print(f"wrote {out} ({to} layout)")
