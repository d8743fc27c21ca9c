"""Progress bars of the commands: within the terminal's width (80 columns included), the file name shortened in its
middle rather than cut, true rates and an ETA from them; off when stderr is not a terminal (unless ``-v``).

rich's own speed column estimates from the last few updates: tiles that arrive in a burst (a batch written at
once) read as thousands per second. The rate here is what a run has done since its bar appeared, over the time
since then: the figure the run's summary line gives at the end.
"""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["short_name", "item_progress", "add_item_task", "RateColumn", "EtaColumn"]

_FIXED = 58  # columns of everything but the name: bar 12, done/total, rate, elapsed, ETA and the gaps between


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, shortened in the middle (the start and the extension stay)."""
    if len(name) <= width:
        return name
    if width < 5:
        return name[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return f"{name[:head]}…{name[-tail:]}"


def _rate(task) -> float | None:
    done = task.completed - task.fields.get("start_done", 0)
    elapsed = time.monotonic() - task.fields.get("t0", time.monotonic())
    return done / elapsed if done > 0 and elapsed > 0 else None


class RateColumn(ProgressColumn):
    """Items done in this run over the time since the bar appeared (``unit``/s)."""

    def __init__(self, unit: str = "tiles"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        r = task.finished_speed if task.finished and task.finished_speed else _rate(task)
        if task.finished and r is not None:
            task.finished_speed = r
        unit = f" {self.unit}/s" if self.unit else "/s"
        return Text(f"{r:.2f}{unit}" if r else f"-{unit}", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the run's true rate."""

    def render(self, task) -> Text:
        if task.finished:
            return Text("ETA 0:00:00", style="progress.remaining")
        r = _rate(task)
        if not r or task.total is None:
            return Text("ETA -:--:--", style="progress.remaining")
        s = int(max(0.0, task.total - task.completed) / r)
        return Text(f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}", style="progress.remaining")


def item_progress(console: Console, unit: str = "tiles") -> tuple[Progress, int]:
    """A progress display for counted items, and the columns its names may take (``short_name`` them to it)."""
    verbose = logging.getLogger().level <= logging.INFO
    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
                        RateColumn(unit), TimeElapsedColumn(), EtaColumn(), console=console, transient=False,
                        disable=not console.is_terminal and not verbose)
    return progress, max(12, console.width - _FIXED)


def add_item_task(progress: Progress, name_width: int, name: str, total: int, done: int = 0) -> int:
    """A bar for ``name`` that has ``done`` of ``total`` items already (from an earlier run: not in the rate)."""
    return progress.add_task(short_name(name, name_width), total=total, completed=done, start_done=done,
                             t0=time.monotonic())
