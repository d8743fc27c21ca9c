"""``geodino geobench list|run``."""

from __future__ import annotations

import json
import warnings

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from geodino.cli import app
from geodino.cli.embed_cmd import _arch

geobench_app = typer.Typer(no_args_is_help=True, help="GEO-Bench v1 evaluation of frozen backbones.")
app.add_typer(geobench_app, name="geobench")
err = Console(stderr=True, soft_wrap=True)

BENCH = typer.Option(None, "--benchmark-dir", help="GEO-Bench root (default: $GEO_BENCH_DIR).")


@geobench_app.command("list")
def list_cmd(benchmark_dir: str = BENCH, as_json: bool = typer.Option(False, "--json")) -> None:
    """The tasks found, with their sizes."""
    from geodino.geobench import GeoBenchTask, benchmark_root, find_tasks

    root = benchmark_root(benchmark_dir)
    rows = [GeoBenchTask(root, info.name).describe() for info, _ in find_tasks(root)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"GEO-Bench tasks in {root}")
    for col in ("task", "kind", "classes", "bands", "patch", "train", "valid", "test", "partitions"):
        t.add_column(col, no_wrap=col != "partitions")
    for r in rows:
        t.add_row(r["task"], r["kind"], str(r["classes"]), str(r["bands"]), "x".join(map(str, r["patch_size"])),
                  str(r["train"]), str(r["valid"]), str(r["test"]), ", ".join(r["partitions"]))
    Console(width=max(Console().width, 140)).print(t)
    if not rows:
        err.print("no GEO-Bench task found")


@geobench_app.command("run")
def run_cmd(
    tasks: str = typer.Option("all", "--tasks", help="Comma-separated tasks (m-eurosat,m-cashew-plant), 'all', "
                                                      "'classification' or 'segmentation'."),
    model: str = typer.Option("dinov3-vitl16-sat493m", "--model"),
    weights: str = typer.Option(None, "--weights", help="Checkpoint, HF dir or cached hub id; 'random' for tests."),
    protocol: str = typer.Option(None, "--protocol", help="Restrict to logreg|knn|linear|dpt (comma-separated)."),
    benchmark_dir: str = BENCH,
    config_dir: str = typer.Option(None, "--config-dir", help="Folder of <task>.yaml (default configs/geobench)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a protocol value: segmentation.iterations=500."),
    size: str = typer.Option(None, "--size", help="Input size: native | 224 | 512 (overrides input.size)."),
    normalization: str = typer.Option(None, "--normalization", help="model | sat493m | imagenet"),
    partition: str = typer.Option(None, "--partition", help="default, or a train fraction e.g. 0.10x_train."),
    seeds: str = typer.Option(None, "--seeds", help="Comma-separated seeds for the trained heads (0,1,2)."),
    arch: list[str] = typer.Option(None, "--arch", help="Architecture override KEY=VALUE (tests)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda"),
    cache_dir: str = typer.Option("geobench-cache", "--cache-dir", help="Feature cache."),
    out: str = typer.Option("geobench-results", "-o", "--out", help="Folder for results.json and results.md."),
) -> None:
    """Evaluate a backbone on GEO-Bench tasks with DINOv3's protocols."""
    from geodino.errors import ConfigError
    from geodino.geobench import TASKS, benchmark_root, find_tasks, run_geobench
    from geodino.geobench.protocol import parse_overrides
    from geodino.models import RandomWeightsWarning

    root = benchmark_root(benchmark_dir)
    present = [i.name for i, _ in find_tasks(root)]
    if tasks in ("all", "classification", "segmentation"):
        names = [n for n in present if tasks == "all" or (TASKS[n].kind == "segmentation") == (tasks == "segmentation")]
    else:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"no GEO-Bench task to run under {root}")
    over = parse_overrides(set_)
    if size:
        over.setdefault("input", {})["size"] = size if size == "native" else int(size)
        over.setdefault("segmentation", {})["input_size"] = size if size == "native" else int(size)
    if normalization:
        over.setdefault("input", {})["normalization"] = normalization
    if protocol:
        chosen = [p.strip() for p in protocol.split(",")]
        cls = [p for p in chosen if p in ("logreg", "knn")]
        seg = [p for p in chosen if p in ("linear", "dpt")]
        if len(cls) + len(seg) != len(chosen):
            raise ConfigError(f"--protocol {protocol!r}: choose from logreg, knn, linear, dpt")
        over.setdefault("classification", {})["protocols"] = cls
        over.setdefault("segmentation", {})["heads"] = seg
    if weights == "random":
        err.print("[yellow]warning:[/yellow] --weights random: the scores are MEANINGLESS (pipeline check only); "
                  "results.json records it")
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=not err.is_terminal)
    bars: dict = {}

    def on_progress(task, split, done, total):
        key = f"{task} {split}"
        if key not in bars:
            bars[key] = progress.add_task(f"features {key}", total=total)
        progress.update(bars[key], completed=done)

    with progress:
        res = run_geobench(names, model, weights, benchmark_dir=root, config_dir=config_dir, overrides=over,
                           cache_dir=cache_dir, out_dir=out, device=device, seeds=seed_list, partition=partition,
                           arch=_arch(arch), progress=on_progress)
    from geodino.geobench import markdown_table

    print(markdown_table(res))
    err.print(f"wrote {out}/results.json and {out}/results.md")
