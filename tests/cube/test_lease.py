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
from geodino.errors import CubeLockedError


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
        with pytest.raises(CubeLockedError, match="took the cube over"):
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
