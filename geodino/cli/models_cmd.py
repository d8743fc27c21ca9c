"""``geodino models`` and ``geodino weights convert|inspect``."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from geodino.cli._app import app, guarded

weights_app = typer.Typer(no_args_is_help=True, help="Inspect and convert checkpoints (official, HF, timm, geodino).")
app.add_typer(weights_app, name="weights")
console = Console()


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the registered backbones with parameter counts and normalisation."""
    from geodino.models import get_config, list_models

    rows = []
    for name in list_models():
        cfg = get_config(name)
        n = cfg.arch.num_params  # the official checkpoint's count, as the model cards give it
        rows.append({"name": name, "params": n, "dim": cfg.arch.embed_dim, "depth": cfg.arch.depth,
                     "ffn": cfg.arch.ffn, "normalization": cfg.normalization, "mean": cfg.mean, "std": cfg.std,
                     "hf_repo": cfg.hf_repo, "timm": cfg.timm_name})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # 80 columns: mean/std belong to the normalisation named here, and --json has them with the hub ids
    t = Table(title="DINOv3 backbones (--json: hub ids, mean/std)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (("name", "left"), ("params", "right"), ("dim/depth", "right"), ("ffn", "left"),
                      ("normalisation", "left")):
        t.add_column(col, no_wrap=True, justify=just)
    for r in rows:
        t.add_row(r["name"], f"{r['params'] / 1e6:,.1f} M", f"{r['dim']}/{r['depth']}", r["ffn"], r["normalization"])
    console.print(t)


@weights_app.command("inspect")
def inspect_cmd(file: str = typer.Argument(..., help="Checkpoint file, HF snapshot dir or cached hub id."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a checkpoint's layout, the registered model it matches and its sha256."""
    from geodino.checks import require_weights

    require_weights(file)

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

    from geodino.checks import require_weights
    from geodino.errors import ConfigError, OutputExistsError
    from geodino.export.cog import check_folder

    if to not in ("geodino", "hf", "timm", "official"):
        raise ConfigError(f"--to {to!r}: choose geodino, hf, timm or official")
    require_weights(src)
    if Path(dst).exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists: choose another output or pass --overwrite")
    check_folder(Path(dst).parent, "the output's folder")

    from geodino.models import convert_weights
    out = convert_weights(src, dst, to=to, model=model)
    console.print(f"wrote {out} ({to} layout)")
