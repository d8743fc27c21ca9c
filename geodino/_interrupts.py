"""Ctrl-C in a library call (a notebook's interrupt): the job stops as the CLI's signal handling stops it, without
touching the process's signal handlers.

The CLI owns signals (:mod:`geodino.cli._signals`): it installs SIGINT/SIGTERM handlers and passes the job a
``stop()`` to poll. A library call has no handler of its own; in Python an interrupt is a ``KeyboardInterrupt``
raised on the main thread at any bytecode, which could land in the middle of creating a cube, writing its
attributes or releasing its lease. So :func:`run_stoppable` runs the job on a helper thread (where no
``KeyboardInterrupt`` is ever raised) and waits for it on the main thread: the first interrupt becomes a stop
request (the job submits no new batch, drops what is queued, waits for the model call in flight, records the run
and releases the cube), further interrupts only say that it is stopping, and the caller then gets
:class:`geodino.errors.Interrupted` (``signum`` 2, the cube resumable). The process, a Jupyter kernel included,
carries on.
"""

from __future__ import annotations

import contextvars
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_stoppable"]

T = TypeVar("T")


def run_stoppable(job: Callable[[Callable[[], int | None]], T], stop: Callable[[], int | None] | None = None) -> T:
    """``job(stop)``, stoppable by Ctrl-C. With ``stop`` given (the CLI's signal handlers), or off the main thread
    (where Python raises no ``KeyboardInterrupt``), ``job`` simply runs here."""
    if stop is not None or threading.current_thread() is not threading.main_thread():
        return job(stop or (lambda: None))
    requested: dict[str, int | None] = {"signum": None}
    outcome: dict[str, object] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = job(lambda: requested["signum"])
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e
        finally:
            done.set()

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(target,), name="geodino-job", daemon=True).start()
    # An Event, not Thread.join: before Python 3.13 a KeyboardInterrupt inside join() can mark a running thread
    # as stopped (bpo-45274's handling releases the thread's state lock), and the wait would end early.
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt:
            if requested["signum"] is None:
                requested["signum"] = int(signal.SIGINT)
                _say("interrupted: finishing the tiles in flight, the cube stays resumable (rerun the same call "
                     "to resume)")
            else:
                _say("still stopping: waiting for the model call in flight to end")
    if "error" in outcome:
        e = outcome.pop("error")
        raise e  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _say(msg: str) -> None:
    print(f"geodino: {msg}", file=sys.stderr, flush=True)
