"""The CLI's signal handling (the library installs no signal handler: from Python, Ctrl-C stops a job through
:mod:`geodino._interrupts` and the process carries on).

Every command runs in :func:`interrupting`: SIGINT and SIGTERM raise :class:`geodino.errors.Interrupted` (exit 130,
143, one line). Outputs are renamed into place only when whole, so a command stopped anywhere leaves no
half-written output.

Long runs (``geodino embed`` and ``geodino canopy``) wrap the library call in :func:`graceful_stop` and pass it
``stop=``. The first signal only records a stop request: the run's loop polls it, submits no new work, drops what is
queued and raises :class:`geodino.errors.Interrupted` (exit 130 or 143 in the CLI), so the cube is left with whole
chunks only and a resume continues it. A second signal stops the process at once (``os._exit``), which is as safe
for the cube as ``kill -9``: chunk writes are whole or absent and a tile's status is written last. Python runs
signal handlers on the main thread only, so handlers are installed only when the run is on the main thread; from
other threads (a notebook's worker thread, a test's) the run is interruptible as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

from geodino.errors import Interrupted

__all__ = ["graceful_stop", "interrupting"]

_AT_ONCE = b"geodino: interrupted again: stopped at once; rerun the same command to resume\n"


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM within the block (on the main thread only; elsewhere nothing changes),
    the previous handlers back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupting():
    """Within the block, SIGINT and SIGTERM raise :class:`~geodino.errors.Interrupted`."""

    def handler(signum, frame):
        raise Interrupted(signum)

    return _handling(handler)


@contextlib.contextmanager
def graceful_stop() -> Iterator[Callable[[], int | None]]:
    """Within the block, SIGINT/SIGTERM request a stop; yields ``stop()``, the pending signal's number or None."""
    state: dict[str, int | None] = {"signum": None}

    def handler(signum, frame):
        if state["signum"] is not None:
            os.write(2, _AT_ONCE)
            os._exit(128 + signum)
        state["signum"] = signum

    with _handling(handler):
        yield lambda: state["signum"]
