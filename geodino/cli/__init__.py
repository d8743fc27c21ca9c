"""The ``geodino`` command line: a thin layer over the library API.

Errors meant for the user (:class:`geodino.errors.GeodinoError`) print one line on stderr and exit with their
code (2 for bad input; faults of the environment and signals have their own, listed in README); ``--debug``
shows the traceback instead. Off a terminal, every line is plain text (no colour codes, no boxes).

How a command is written (every ``*_cmd.py`` follows it, so that ``geodino`` answers a wrong argument or a
missing file in about a second, before torch, timm, GDAL or xarray are imported):

1. At module level, import only the standard library, typer, rich and ``geodino.cli``: :func:`main` imports
   every command module each time ``geodino`` starts.
2. In the command, check first what the user gave: the options (validated values whose modules are light, such
   as :class:`geodino.embed.config.EmbedConfig`) and the inputs that must exist, through :mod:`geodino.checks`
   (``require_scene``, ``require_cube``, ``require_file``, ``require_weights``, ``geobench_root``). The library
   runs the same checks where it opens those inputs, so the messages are the same from Python.
3. Only then import the library (``from geodino.embed import embed``) and do the work. Progress bars come from
   :mod:`geodino.cli._progress` (true rates, names shortened to fit 80 columns, off when stderr is no terminal);
   messages go through rich consoles, which print plain text off a terminal.

Packages whose light modules the checks import have lazy ``__init__``s (:mod:`geodino._lazy`): importing
``geodino.embed.config`` does not import the job, the engine and torch. ``tests/test_cli_startup.py`` runs each
command's error paths in a fresh interpreter and fails if a heavy module was imported.
"""

from __future__ import annotations

import re
import sys
import warnings

from geodino.cli._app import app
from geodino.cli._signals import interrupting
from geodino.errors import GeodinoError, Interrupted


def _register() -> None:
    # attach to `app`, in the order `geodino --help` lists them
    from geodino.cli import (embed_cmd, canopy_cmd, compress_cmd, explore_cmd,  # noqa: F401, I001
                             export_cmd, geobench_cmd, index_cmd, models_cmd, predict_cmd, train_cmd)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal control codes (a library's message may carry some)."""
    return _ANSI.sub("", text)


def _format_warning(message, category, filename, lineno, line=None):
    return f"geodino: warning: {plain(str(message))}\n"


def _plain_usage_errors_off_a_terminal() -> None:
    """Usage errors as click's plain text (no rich box) when stderr is not a terminal."""
    if not sys.stderr.isatty():
        for t in [app, *(g.typer_instance for g in app.registered_groups)]:
            t.rich_markup_mode = None


def _unmapped_os_error(e: OSError) -> tuple[str, int] | None:
    """One line and an exit code for an ``OSError`` no command turned into a geodino error: a path that does not
    exist or is of the wrong kind (bad input, 2), or a fault of the machine (its own code); None for others."""
    import errno

    from geodino.errors import environment_fault

    where = str(e.filename) if e.filename else "a file"
    kinds = {errno.ENOENT: "does not exist", errno.ENOTDIR: "has a file where a folder is expected",
             errno.EISDIR: "is a folder where a file is expected"}
    if e.errno in kinds:
        return f"{where} {kinds[e.errno]} ({e.strerror}): check the paths given", 2
    fault = environment_fault(e, where, "accessing")
    return None if fault is None else (str(fault), fault.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``geodino`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        warnings.formatwarning = _format_warning
    _register()
    _plain_usage_errors_off_a_terminal()
    try:
        with interrupting():  # embed and canopy install their own graceful stop while they run
            app(args=argv, prog_name="geodino")  # standalone: usage errors print and exit 2 by themselves
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print("geodino: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"geodino: {plain(str(e))}", file=sys.stderr)
        return e.exit_code
    except GeodinoError as e:
        if debug:
            raise
        print(f"geodino: error: {plain(str(e))}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug, not a user error: still one line unless --debug
        mapped = _unmapped_os_error(e) if isinstance(e, OSError) and not debug else None
        if mapped is not None:
            print(f"geodino: error: {plain(mapped[0])}", file=sys.stderr)
            return mapped[1]
        if debug:
            raise
        first = plain(str(e)).splitlines()[0] if str(e) else ""
        print(f"geodino: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
