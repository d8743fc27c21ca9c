"""``geodino geobench list|run``."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from geodino.cli._app import _STATE, app, command_line, err, guarded, parse_arch, warn_random_weights
from geodino.cli._progress import add_item_task, item_progress

geobench_app = typer.Typer(no_args_is_help=True, help="GEO-Bench v1 evaluation of frozen backbones.")
app.add_typer(geobench_app, name="geobench")

BENCH = typer.Option(None, "--benchmark-dir", help="GEO-Bench root (default: $GEO_BENCH_DIR).")


@geobench_app.command("list")
def list_cmd(benchmark_dir: str = BENCH, as_json: bool = typer.Option(False, "--json"),
             config_dir: str = typer.Option(None, "--config-dir", help="Folder of <task>.yaml whose bands are "
                                            "checked (default configs/geobench).")) -> None:
    """Every task folder with its sizes and status: ok, or the one-line reason it cannot be evaluated."""
    from geodino.checks import geobench_root

    root = geobench_root(benchmark_dir)

    from geodino.geobench import scan_tasks

    rows = [st.to_dict() for st in scan_tasks(root, config_dir)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # 80 columns: one short row per task; the reasons of errors on their own lines below; patch sizes and
    # partitions in --json
    t = Table(title=f"GEO-Bench tasks in {root}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (("task", "left"), ("kind", "left"), ("classes", "right"), ("bands", "right"),
                      ("train/valid/test", "right"), ("status", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        status = "[green]ok[/green]" if r["status"] == "ok" else "[red]error[/red]"
        t.add_row(r["task"], r["kind"] or "?", str(r.get("classes", "")), str(r.get("bands", "")),
                  "/".join(str(r.get(s, "?")) for s in ("train", "valid", "test")), status)
    Console().print(t)
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        Console().print(escape(r["reason"]), highlight=False)
    if not rows:
        err.print("no GEO-Bench task found")
    elif bad:
        err.print(f"{len(bad)} of {len(rows)} task folder(s) cannot be evaluated; `geodino geobench run --tasks all` "
                  "runs the others and reports these")


@geobench_app.command("run")
@guarded(outputs=("out", "cache_dir"), kept="finished tasks and cached features are kept")
def run_cmd(
    tasks: str = typer.Option("all", "--tasks", help="Comma-separated tasks (m-eurosat,m-cashew-plant), 'all', "
                                                      "'classification' or 'segmentation'."),
    model: str = typer.Option("dinov3-vitl16-sat493m", "--model"),
    weights: str = typer.Option(None, "--weights", help="Checkpoint, HF dir or cached hub id; 'random' for tests."),
    budget: str = typer.Option("full", "--budget", help="full: the paper's protocol; quick: a smaller schedule "
                                                        "for CPUs (configs/geobench/budgets/quick.yaml)."),
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
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPUs and CPUs with native bf16) | "
                                                              "fp32 | bf16: the embed engine's policy"),
    cache_dir: str = typer.Option("geobench-cache", "--cache-dir", help="Feature cache."),
    out: str = typer.Option("geobench-results", "-o", "--out", help="Folder for results.json and results.md."),
) -> None:
    """Evaluate a backbone on GEO-Bench tasks with DINOv3's protocols.

    Every task runs on its own: one that cannot be read or evaluated is reported (here, in results.md and in
    results.json) and the others still run; the exit code is 2 if any task failed.
    """
    from geodino.checks import geobench_root, require_weights
    from geodino.errors import ConfigError
    from geodino.export.cog import check_folder
    from geodino.geobench.protocol import load_budget, parse_overrides
    from geodino.geobench.reader import TASKS, find_tasks

    root = geobench_root(benchmark_dir)
    require_weights(weights)
    check_folder(out, "the results folder (-o)")
    check_folder(cache_dir, "the feature cache (--cache-dir)")
    if size is not None and size != "native" and not size.isdigit():
        raise ConfigError(f"--size takes native or a number of pixels (224, 512), got {size!r}")
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {seeds!r}") from None
    present = [i.name for i, _ in find_tasks(root)]
    if tasks in ("all", "classification", "segmentation"):
        names = [n for n in present if tasks == "all" or (TASKS[n].kind == "segmentation") == (tasks == "segmentation")]
    else:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"no GEO-Bench task to run under {root}")
    load_budget(budget, config_dir)  # an unknown budget fails before the model loads
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

    from geodino.geobench import markdown_table, run_geobench  # features, heads: torch, scikit-learn

    warn_random_weights(weights, "scores are MEANINGLESS (pipeline check only); results.json records it")
    if budget != "full":
        err.print(f"budget {budget}: a smaller schedule than the paper's protocol (results.md says so); "
                  "use --budget full for numbers to compare with the model card")
    progress, name_width = item_progress(err, unit="")
    overall = add_item_task(progress, name_width, "tasks", len(names))
    bars: dict = {}

    def on_progress(task, stage, done, total):
        key = (task, stage)
        if key not in bars:
            bars[key] = add_item_task(progress, name_width, f"{task} {stage}", total)
        progress.update(bars[key], completed=done, total=total)

    def on_task(name, rec):
        for key in [k for k in bars if k[0] == name]:
            progress.remove_task(bars.pop(key))
        progress.advance(overall)
        w = rec["wall_s"]
        parts = ", ".join(f"{k} {w[k]:.1f} s" for k in ("features", "heads") if k in w)
        colour = {"ok": "green", "partial": "yellow"}.get(rec["status"], "red")
        progress.console.print(f"{name}: [{colour}]{rec['status']}[/{colour}] in {w['total']:.1f} s"
                               + (f" ({parts})" if parts else ""))

    with progress:
        res = run_geobench(names, model, weights, benchmark_dir=root, config_dir=config_dir, overrides=over,
                           budget=budget, cache_dir=cache_dir, out_dir=out, device=device, precision=precision, seeds=seed_list,
                           partition=partition, arch=parse_arch(arch), progress=on_progress, on_task=on_task,
                           raise_errors=_STATE["debug"], command=command_line())
    print(markdown_table(res))
    err.print(f"wrote {out}/results.json and {out}/results.md")
    problems = [(t, p) for t, r in res["tasks"].items() for p in r.get("problems", [])]
    for _, line in problems:
        err.print(f"geodino: error: {escape(line)}", highlight=False)
    if res["failed"]:
        internal = any(res["tasks"][t].get("error") == "internal" for t in res["failed"])
        err.print(f"{len(res['failed'])} of {len(res['tasks'])} task(s) did not run every protocol: "
                  f"{', '.join(res['failed'])}", highlight=False)
        raise typer.Exit(1 if internal else 2)
