"""Graceful stops of long runs on SIGINT and SIGTERM: the CLI's (``geodino embed`` and ``geodino canopy`` wrap
the library call in :func:`graceful_stop` and pass it ``stop=``). The library installs no signal handler: from
Python, Ctrl-C stops a job through :mod:`geodino._interrupts` and the process carries on.

The first signal only records a stop request: the run's loop polls it, submits no new work, drops what is
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

__all__ = ["graceful_stop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_AT_ONCE = b"geodino: interrupted again: stopped at once; rerun the same command to resume\n"


@contextlib.contextmanager
def graceful_stop() -> Iterator[Callable[[], int | None]]:
    """Within the block, SIGINT/SIGTERM request a stop; yields ``stop()``, the pending signal's number or None."""
    state: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum, frame):
        if state["signum"] is not None:
            os.write(2, _AT_ONCE)
            os._exit(128 + signum)
        state["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield lambda: state["signum"]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
