"""job.run's plumbing around a run: what the outputs share is written after a stop without hiding the stop, the
writer cache lets go of a replaced store, and a file:// output folder is its path."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest

import geodino.job.run as jobrun
from geodino.cube.storage import location
from geodino.cube.store import _WRITERS, cube_writer
from geodino.errors import Interrupted


def _stopped(*_a, **_k):
    return [], Interrupted(signal.SIGINT)


def test_a_failing_after_step_does_not_hide_the_stop(monkeypatch, caplog):
    monkeypatch.setattr(jobrun, "run_and_finish", _stopped)

    def after(runs):
        raise OSError(28, "No space left on device")

    with caplog.at_level(logging.WARNING, logger=jobrun.log.name), pytest.raises(Interrupted) as e:
        jobrun.run_job([], None, None, after=after)
    assert e.value.signum == signal.SIGINT
    assert "No space left on device" in caplog.text and "next run" in caplog.text


def test_a_failing_after_step_is_the_error_when_nothing_stopped(monkeypatch):
    monkeypatch.setattr(jobrun, "run_and_finish", lambda *a, **k: ([], None))
    with pytest.raises(OSError, match="No space"):
        jobrun.run_job([], None, None, after=lambda runs: (_ for _ in ()).throw(OSError(28, "No space left")))


class _Writer:  # a writer that opens nothing: only the cache's bookkeeping is under test
    def __init__(self, url):
        self.url = url


def test_the_writer_of_a_replaced_store_is_dropped(tmp_path):
    url = str(tmp_path / "c.zarr")
    old = cube_writer(url, "old-id", _Writer)
    assert cube_writer(url, "old-id", _Writer) is old  # cached
    new = cube_writer(url, "new-id", _Writer)  # the store was replaced (--overwrite): a new cube id
    assert [k[1] for k in _WRITERS if k[0] == old.url] == ["new-id"]
    assert cube_writer(url, "new-id", _Writer) is new


def test_a_file_url_is_its_local_path(tmp_path):
    assert location(f"file://{tmp_path}/region") == tmp_path / "region"
    assert location("s3://bucket/region/") == "s3://bucket/region"
    assert location("out/region") == Path("out/region")
