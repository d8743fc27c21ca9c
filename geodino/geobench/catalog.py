"""Which task folders a GEO-Bench root holds, and whether each can be evaluated (``geodino geobench list``).

Every folder under ``classification_v1.0/`` and ``segmentation_v1.0/`` is reported: ``ok``, or the one-line
reason it cannot be used (an unknown name, a file that is missing or unreadable, a band the protocol needs...).
One broken task never hides the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from geodino.errors import GeodinoError
from geodino.geobench.reader import (CLASSIFICATION_DIR, REDOWNLOAD, SEGMENTATION_DIR, SPLITS, TASKS, GeoBenchTask,
                                     _task_dir, resolve_task_name)

__all__ = ["TaskStatus", "scan_tasks", "check_task"]


@dataclass(frozen=True)
class TaskStatus:
    """One task folder: its task (None when the name is not a GEO-Bench v1 task), ``ok`` or the reason not."""

    folder: Path
    task: str | None
    kind: str | None
    ok: bool
    reason: str | None = None
    facts: dict = field(default_factory=dict)  # GeoBenchTask.describe() when the specs could be read

    @property
    def status(self) -> str:
        return "ok" if self.ok else self.reason or "unreadable"

    def to_dict(self) -> dict:
        return {"task": self.task or self.folder.name, "folder": str(self.folder), "kind": self.kind,
                "status": "ok" if self.ok else "error", "reason": self.reason, **self.facts}


def check_task(task: GeoBenchTask, bands=None) -> None:
    """Raise the first problem that would stop an evaluation of ``task``: a broken partition file, sample files
    missing, a first sample that cannot be read, a band of ``bands`` the task lacks."""
    for name in sorted(task.partition_errors):
        task.partition(name)  # raises its SplitError
    default = task.partition("default")
    for part in sorted(task.partitions, key=lambda p: p != "default"):  # default first: its file is named
        task.check_samples([n for s in task.partitions[part].values() for n in s], part)
    if bands:
        task.check_bands(bands)
    first = next((default[s][0] for s in SPLITS if default.get(s)), None)
    if first is not None:
        sample = task.load_sample(first)
        for b in bands or ():
            task.find_band(sample, b)


def scan_tasks(root: str | os.PathLike, config_dir=None) -> list[TaskStatus]:
    """The status of every folder under the root's classification and segmentation directories, checked against
    each task's protocol (its bands) from ``config_dir``."""
    root = Path(root)
    return [_folder_status(root, kind_dir, folder, config_dir) for kind_dir in (CLASSIFICATION_DIR, SEGMENTATION_DIR)
            if (root / kind_dir).is_dir()
            for folder in sorted(p for p in (root / kind_dir).iterdir() if p.is_dir() and not p.name.startswith("."))]


def _folder_status(root: Path, kind_dir: str, folder: Path, config_dir) -> TaskStatus:
    from geodino.geobench.protocol import load_protocol

    try:
        info = resolve_task_name(folder.name)
    except GeodinoError:
        return TaskStatus(folder, None, None, False, f"{folder.name}: not a GEO-Bench v1 task name (known: "
                          f"{', '.join(TASKS)}); rename the folder or remove it")
    if info.folder != kind_dir:
        return TaskStatus(folder, info.name, info.kind, False, f"{info.name}: {folder} belongs under "
                          f"{root / info.folder}; move it there")
    used = _task_dir(root, info)
    if used != folder:
        return TaskStatus(folder, info.name, info.kind, False, f"{info.name}: {used} is used for this task; remove "
                          f"the second folder {folder}")
    facts: dict = {}
    try:
        task = GeoBenchTask(root, info.name)
        facts = task.describe()
        facts.pop("task", None)
        facts.pop("kind", None)
        check_task(task, load_protocol(info.name, config_dir)["input"]["bands"])
    except GeodinoError as e:
        return TaskStatus(folder, info.name, info.kind, False, str(e), facts)
    except Exception as e:  # content no reader check foresaw: still one line, and the listing goes on
        return TaskStatus(folder, info.name, info.kind, False, f"{info.name}: unexpected content in {folder} "
                          f"({type(e).__name__}: {e}); {REDOWNLOAD}", facts)
    return TaskStatus(folder, info.name, info.kind, True, None, facts)
