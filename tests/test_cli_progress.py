"""The commands' progress bars: true rates (items of this run over the time since the bar appeared, not rich's
estimate from the last burst of updates), the file name shortened in its middle, 80 columns."""

from __future__ import annotations

import io
import time

from rich.console import Console

from geodino.cli._progress import add_item_task, item_progress, short_name

NAME = "s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif"


def test_short_name_keeps_both_ends():
    assert short_name("scene.tif", 20) == "scene.tif"
    s = short_name(NAME, 21)
    assert len(s) == 21 and s.startswith("s2l2a_29RK") and s.endswith("rop512.tif") and "…" in s


def _render(progress, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    console.print(progress.get_renderable())
    return console.file.getvalue().rstrip("\n").splitlines()


def test_rate_is_this_runs_items_over_its_time_and_the_line_fits_80_columns(monkeypatch):
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    progress, width = item_progress(console)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    task = add_item_task(progress, width, NAME, total=100, done=40)  # 40 tiles from an earlier run
    clock[0] += 10.0
    progress.update(task, completed=60)  # 20 tiles in 10 s, written in one burst
    [line] = _render(progress, 80)
    assert len(line) <= 80, line
    assert "2.00 tiles/s" in line and "60/100" in line and "ETA 0:00:20" in line, line
    assert short_name(NAME, width) in line and line.startswith("s2l2a_")
    clock[0] += 0.001
    progress.update(task, completed=100)  # the rest in a millisecond: still the run's rate, not 40000/s
    [line] = _render(progress, 80)
    assert "6.00 tiles/s" in line and "ETA 0:00:00" in line, line  # 60 tiles in 10.001 s
