"""The lease that keeps a second writer out of a cube, on local files and on the local S3 server: a live lease
refuses, a stale one (expired, or its process on this host gone) is taken over, a holder that was overtaken
notices."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from geodino.cube.storage import LEASE_KEY, CubeLease, list_keys
from geodino.errors import CubeLockedError, StoreUnreachableError


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """A cube location on each backend (the folder or prefix need not exist)."""
    if request.param == "local":
        return str(tmp_path / "c.zarr")
    s3 = request.getfixturevalue("s3_env")
    s3.create_bucket("leases")
    return f"s3://leases/{tmp_path.name}/c.zarr"


def _put(where: str, rec: dict) -> None:
    """Plant a lease object as another writer would have left it."""
    import obstore

    from geodino.cube.storage import _obstore

    obstore.put(_obstore(where, mkdir=True), LEASE_KEY, json.dumps(rec).encode(), mode="overwrite")


def _read(where: str) -> dict:
    import obstore

    from geodino.cube.storage import _obstore

    return json.loads(bytes(obstore.get(_obstore(where), LEASE_KEY).bytes()))


def test_a_live_lease_refuses_a_second_writer(where):
    with CubeLease(where) as first:
        rec = _read(where)
        assert rec["owner"] == first.owner and rec["host"] == socket.gethostname() and rec["expires"] > time.time()
        with pytest.raises(CubeLockedError, match=r"being written by pid \d+ on ") as e:
            CubeLease(where).acquire()
        assert "\n" not in str(e.value)
    assert LEASE_KEY not in list_keys(where)  # released
    with CubeLease(where):  # free again
        pass


def test_a_foreign_live_lease_refuses_and_an_expired_one_is_taken_over(where):
    now = time.time()
    _put(where, {"owner": "x", "host": "elsewhere", "pid": 1, "expires": now + 600, "ttl": 600, "renewed": "t"})
    with pytest.raises(CubeLockedError, match="pid 1 on elsewhere"):
        CubeLease(where).acquire()
    _put(where, {"owner": "x", "host": "elsewhere", "pid": 1, "expires": now - 1, "ttl": 60})
    with CubeLease(where) as lease:
        assert _read(where)["owner"] == lease.owner
    assert not [k for k in list_keys(where) if k.startswith(LEASE_KEY)]  # nothing left behind


def test_a_lease_of_a_dead_process_on_this_host_is_free_at_once(where):
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    _put(where, {"owner": "x", "host": socket.gethostname(), "pid": dead, "expires": time.time() + 600,
                 "ttl": 600})
    assert CubeLease.stale_reason(_read(where)) == "its process is gone"
    with CubeLease(where) as lease:
        assert _read(where)["owner"] == lease.owner


def test_renewal_pushes_expiry_and_an_overtaken_holder_stops(where):
    lease = CubeLease(where, ttl=30).acquire()
    try:
        e0 = _read(where)["expires"]
        time.sleep(0.05)
        lease.renew()
        assert _read(where)["expires"] > e0 and not lease.lost
        lease.check()
        # it stalled past expiry and another writer took over
        _put(where, {"owner": "other", "host": "elsewhere", "pid": 2, "expires": time.time() + 600, "ttl": 600})
        lease.renew()
        assert lease.lost
        with pytest.raises(StoreUnreachableError, match="took the cube over"):
            lease.check()
    finally:
        lease.release()
    assert _read(where)["owner"] == "other"  # an overtaken holder never deletes the new holder's lease


def test_the_renewal_thread_keeps_a_short_lease_alive(tmp_path):
    where = str(tmp_path / "c.zarr")
    with CubeLease(where, ttl=0.4):
        time.sleep(1.0)  # longer than the ttl: renewed every ttl / 4
        rec = _read(where)
        assert CubeLease.stale_reason({**rec, "host": "elsewhere"}) is None
        with pytest.raises(CubeLockedError):
            CubeLease(where).acquire()


def test_of_several_writers_taking_over_one_stale_lease_exactly_one_wins(where):
    import threading

    _put(where, {"owner": "x", "host": "elsewhere", "pid": 1, "expires": time.time() - 1, "ttl": 60})
    won, refused, start = [], [], threading.Barrier(4)

    def contend():
        lease = CubeLease(where)
        start.wait()
        try:
            won.append(lease.acquire())
        except CubeLockedError:
            refused.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(won) == 1 and len(refused) == 3
        assert _read(where)["owner"] == won[0].owner
    finally:
        for lease in won:
            lease.release()


def test_local_renewal_and_takeover_never_interleave(tmp_path, monkeypatch):
    """Issue 21, point 6: on local files a renewal is one atomic step with the takeover (the takeover mutex). A
    contender takes a stale-looking lease over exactly between the holder's read and its write: before the fix
    the holder then overwrote the new holder's lease and both wrote; now the takeover waits for the renewal (it
    sees the renewed lease and is refused), and exactly one writer holds the cube."""
    from geodino.cube import storage

    where = str(tmp_path / "c.zarr")
    holder = CubeLease(where, ttl=600).acquire()
    holder._stop.set()  # renew by hand
    # the holder's lease looks expired to others (it stalled, say): a contender may take it over
    rec = _read(where)
    _put(where, {**rec, "expires": time.time() - 1})
    real_read, contender, outcome = storage._ObstoreIO.read, CubeLease(where), {}

    def read_then_contend(self):
        cur = real_read(self)
        if self is holder._io and "ran" not in outcome:  # the holder's renewal has read the lease: a contender
            outcome["ran"] = True  # tries to take it over now
            try:
                outcome["won"] = contender.acquire()
            except CubeLockedError as e:
                outcome["refused"] = str(e)
        return cur

    monkeypatch.setattr(storage._ObstoreIO, "read", read_then_contend)
    try:
        holder.renew()
        monkeypatch.setattr(storage._ObstoreIO, "read", real_read)
        assert outcome.get("ran")
        holders = [x for x in (holder, outcome.get("won")) if x is not None and not x.lost]
        assert len(holders) == 1, outcome
        assert _read(where)["owner"] == holders[0].owner
        assert holders[0] is holder and "refused" in outcome  # the renewal came first; the takeover waited
    finally:
        for x in (holder, outcome.get("won")):
            if x is not None:
                x.release()


def test_a_lease_that_cannot_be_renewed_stops_its_writer(tmp_path, monkeypatch):
    """Issue 21, point 6: renewals that fail (an unreachable store) are no longer swallowed until the lease runs
    out: once the lease it last wrote is about to expire, the holder's check() and every write of this process
    into the cube raise StoreUnreachableError (exit 6), naming the cube and why."""
    from geodino.cube.storage import check_lease
    from tests.cubes import make_cube, structured_features

    cube = make_cube(tmp_path / "c.zarr", structured_features((8, 8), 4), chunk=8)

    def unreachable(self):
        raise OSError(107, "Transport endpoint is not connected")

    lease = CubeLease(cube, ttl=0.5).acquire()
    try:
        lease.check()
        monkeypatch.setattr(CubeLease, "renew", unreachable)
        time.sleep(0.7)  # past the lease's expiry: renewals failed meanwhile
        with pytest.raises(StoreUnreachableError, match=r"lease expires at .* the last renewal failed: OSError") as e:
            lease.check()
        assert e.value.exit_code == 6 and str(cube) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(StoreUnreachableError):
            check_lease(cube)
        from geodino.cube.store import CubeWriter

        import numpy as np

        with pytest.raises(StoreUnreachableError):  # a writer of this process refuses to write under it
            CubeWriter(cube).write_tile(0, 0, slice(0, 8), slice(0, 8), np.zeros((8, 8, 4), np.float32),
                                        np.ones((8, 8), bool), np.zeros(4, np.float32))
    finally:
        lease.release()
    check_lease(cube)  # released: no lease of this process to check


def test_an_expired_lease_stops_the_writer_even_without_a_renewal_attempt(tmp_path, monkeypatch):
    """A renewal thread that never ran (the process was stopped, the thread starved) does not let the holder
    write past its expiry."""
    monkeypatch.setattr(CubeLease, "_renew_loop", lambda self: None)
    lease = CubeLease(str(tmp_path / "c.zarr"), ttl=0.3).acquire()
    try:
        time.sleep(0.35)
        with pytest.raises(StoreUnreachableError, match="not renewed in time"):
            lease.check()
    finally:
        lease.release()
