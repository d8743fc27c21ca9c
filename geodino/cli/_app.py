"""The ``geodino`` app and what every command module shares: the typer app with its root options, and
:func:`guarded` (damaged cubes and faults of the machine as one line). The command modules import this module,
and :mod:`geodino.cli` imports them to register them, so nothing imports back up."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DINOv3 features of satellite scenes: embed rasters into zarr cubes, evaluate on GEO-Bench.")
_STATE = {"debug": False}


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
    :class:`~geodino.errors.EnvironmentFault` naming the output (:class:`geodino.errors.output_faults`), whose
    exit code ``main`` returns; ``kept`` says what a rerun keeps."""
    import functools

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


def reports_damage(*names: str):
    """:func:`guarded` for a command that only reads the cubes ``names``."""
    return guarded(cubes=names)
