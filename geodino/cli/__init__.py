"""The ``geodino`` command line: a thin layer over the library API.

Errors meant for the user (:class:`geodino.errors.GeodinoError`) print one line on stderr and exit with their
code (2 for bad input; faults of the environment and signals have their own, listed in README); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer

from geodino.errors import GeodinoError, Interrupted

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DINOv3 features of satellite scenes: embed rasters into zarr cubes, evaluate on GEO-Bench.")
_STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    _STATE["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("geodino").setLevel(level)


def reports_damage(*names: str):
    """Decorate a command whose parameters ``names`` are cube paths: a damaged chunk met while it reads them is one
    line naming the cube and the chunk (:func:`geodino.cube.damage.reading_cubes`), not an internal error."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from geodino.cube.damage import reading_cubes

            paths = []
            for n in names:
                v = kwargs.get(n)
                paths.extend(v if isinstance(v, (list, tuple)) else [v] if v else [])
            with reading_cubes(paths):
                return fn(*args, **kwargs)

        return wrapper

    return deco


def _register() -> None:
    from geodino.cli import (canopy_cmd, compress_cmd, embed_cmd, export_cmd,  # noqa: F401  (attach to `app`)
                             geobench_cmd, index_cmd, models_cmd, predict_cmd, train_cmd)


def _format_warning(message, category, filename, lineno, line=None):
    return f"geodino: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``geodino`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        warnings.formatwarning = _format_warning
    _register()
    try:
        app(args=argv, prog_name="geodino")  # standalone: usage errors print and exit 2 by themselves
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print("geodino: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"geodino: {e}", file=sys.stderr)
        return e.exit_code
    except GeodinoError as e:
        if debug:
            raise
        print(f"geodino: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug, not a user error: still one line unless --debug
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"geodino: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
