"""The ``geodino`` app and what the command modules share: the typer app with its root options, :func:`guarded`
(damaged cubes and faults of the machine as one line), the stderr console, and the run of a streaming job
(``embed``, ``canopy``) with its progress bars, memory policy and graceful stops. The command modules import this
module, and :mod:`geodino.cli` imports them to register them, so nothing imports back up."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
import warnings

import typer
from rich.console import Console

from geodino.cli._progress import add_item_task, item_progress

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DINOv3 features of satellite scenes: embed rasters into zarr cubes, evaluate on GEO-Bench.")
_STATE = {"debug": False}
err = Console(stderr=True, soft_wrap=True)  # stderr as the commands write to it: plain text off a terminal


def _version(value: bool) -> None:
    if value:
        from geodino import __version__

        print(f"geodino {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print geodino's version and exit.")) -> None:
    _STATE["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("geodino").setLevel(level)


def guarded(*, cubes: tuple[str, ...] = (), outputs: tuple[str, ...] = (), kept: str | None = None):
    """Decorate a command (one mechanism for every command): ``cubes`` and ``outputs`` name its parameters that
    hold cube paths it reads and paths it writes. A damaged chunk met while reading the cubes is one line naming
    the cube and the chunk (:func:`geodino.cube.damage.reading_cubes`), and a fault of the machine while writing
    (disk full, permission denied, an unreachable store) is raised as its
    :class:`~geodino.errors.EnvironmentFault` naming the output (:func:`geodino.errors.output_faults`), whose
    exit code ``main`` returns; ``kept`` says what a rerun keeps."""

    def values(kwargs, names):
        out = []
        for n in names:
            v = kwargs.get(n)
            out.extend(v if isinstance(v, (list, tuple)) else [v] if v else [])
        return [str(v) for v in out]

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from geodino.cube.damage import reading_cubes
            from geodino.errors import output_faults

            with output_faults(values(kwargs, outputs), kept), reading_cubes(values(kwargs, cubes)):
                return fn(*args, **kwargs)

        return wrapper

    return deco


def command_line() -> str:
    """The command as the user typed it (what a product's provenance records)."""
    return shlex.join(["geodino", *sys.argv[1:]])


def parse_arch(values: list[str] | None) -> dict:
    """``--arch KEY=VALUE`` options as a dict (values read as JSON where they are)."""
    from geodino.errors import ConfigError

    arch = {}
    for item in values or []:
        if "=" not in item:
            raise ConfigError(f"--arch takes KEY=VALUE (e.g. depth=2), got {item!r}")
        k, v = item.split("=", 1)
        try:
            arch[k.strip()] = json.loads(v)
        except ValueError:
            arch[k.strip()] = v
    return arch


def warn_random_weights(weights, what: str) -> None:
    """One warning for a run on ``--weights random`` (``what``: what that makes meaningless and what records it);
    the library's own ``RandomWeightsWarning`` is silenced."""
    from geodino.models import RandomWeightsWarning

    if weights == "random":
        err.print(f"[yellow]geodino: warning:[/yellow] --weights random: the {what}")
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)


def run_streaming(job, source, opts, said: str | None = None):
    """``job(source, opts, ...)`` (``geodino.embed.embed``, ``geodino.canopy.canopy``) as the CLI runs it: the
    plan's messages (but those starting with ``said``, which the command has said already), a progress bar per
    scene, the process-wide memory policy (the library leaves malloc alone), SIGINT/SIGTERM as graceful stops, and
    the command line as provenance."""
    from geodino._process import bound_memory
    from geodino.cli._signals import graceful_stop

    progress, name_width = item_progress(err)
    tasks: dict[str, int] = {}

    def on_plan(plan):
        for m in plan.messages:
            if said is None or not m.startswith(said):
                err.print(f"[dim]{plan.scene}:[/dim] {m}")

    def on_progress(name, done, total):
        if name not in tasks:
            tasks[name] = add_item_task(progress, name_width, name.rsplit("/", 1)[-1], total, done)
        progress.update(tasks[name], completed=done, total=total)

    bound_memory(opts.gdal_cache_mb)
    with progress, graceful_stop() as stop:
        return job(source, opts, command=command_line(), progress=on_progress, on_plan=on_plan, stop=stop)
