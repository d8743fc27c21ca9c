"""The child process of the fault tests: runs geodino's CLI, with faults injected at the store's write.

``python -m tests.faults.child runs.json`` runs every entry of the file in this one process (the CLI's ``main``,
in-process, as ``geodino`` would run it) and prints one JSON line per run: its exit code and stderr lines. A crash
(a signal) kills the child, which the parent sees as a negative return code: so a loop of many runs costs one
interpreter start, and no signal can go unnoticed. ``python -m tests.faults.child --cli ARGS...`` runs the CLI
once and exits with its code (for tests that send signals).

A fault is injected by wrapping zarr's local-store write (``zarr.storage._local._put``, which every chunk write of
a cube goes through): ``{"errno": "ENOSPC", "after": 3}`` makes every chunk write after the third fail as a full
disk would (a partial file first, then the error), ``{"slow": 0.2}`` delays each chunk write (so that a signal
lands mid-run), ``{"rename": {...}}`` fails or pauses the renames that put outputs into place (see
``_rename_fault``), ``{"lease": {...}}`` shortens leases and makes their renewals fail (see ``_lease_fault``). An
entry ``{"sh": [...]}`` runs a command between runs (remounting a filesystem).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import io
import json
import os
import sys
import threading
import time

_FAULT: dict = {}
_COUNT = {"n": 0}
_LOCK = threading.Lock()


def _install() -> None:
    from zarr.storage import _local

    real = _local._put

    def put(path, value, exclusive=False):
        fault = _FAULT
        if fault and "/c/" in str(path).replace(os.sep, "/"):
            with _LOCK:
                _COUNT["n"] += 1
                n = _COUNT["n"]
            if "slow" in fault:
                time.sleep(float(fault["slow"]))
            if "errno" in fault and n > int(fault.get("after", 0)):
                code = getattr(errno_mod, fault["errno"])
                tmp = path.with_suffix(".injected.partial")  # what a write cut short leaves behind
                with contextlib.suppress(OSError):
                    tmp.write_bytes(b"\0" * 7)
                raise OSError(code, os.strerror(code), str(path))
        return real(path, value, exclusive)

    _local._put = put

    for name in ("replace", "rename"):  # every output is renamed into place (zarr's chunks too)
        real_move = getattr(os, name)

        def move(src, dst, *a, _real=real_move, **kw):
            _rename_fault(dst)
            return _real(src, dst, *a, **kw)

        setattr(os, name, move)


def _rename_fault(dst) -> None:
    """``{"rename": {"under": DIR, "errno": "ENOTCONN"}}``: a rename into DIR fails as an unreachable store
    would; ``{"rename": {"under": DIR, "marker": FILE, "seconds": 5}}``: the main thread's first rename into DIR
    touches FILE and waits (so that a signal lands while an output is being put into place)."""
    f = _FAULT.get("rename")
    if not f or not os.path.abspath(str(dst)).startswith(f["under"]):
        return
    if "errno" in f:
        code = getattr(errno_mod, f["errno"])
        raise OSError(code, os.strerror(code), str(dst))
    if "marker" in f and threading.current_thread() is threading.main_thread() and not os.path.exists(f["marker"]):
        open(f["marker"], "w").close()
        time.sleep(float(f.get("seconds", 5)))


def set_fault(fault: dict | None) -> None:
    _FAULT.clear()
    _FAULT.update(fault or {})
    _COUNT["n"] = 0
    _lease_fault(_FAULT.get("lease"))


_REAL: dict = {}


def _lease_fault(lease: dict | None) -> None:
    """``{"lease": {"ttl": 0.8, "renew": "unreachable"}}``: leases live ``ttl`` seconds, and every renewal fails as
    an unreachable store would (the writer must stop, exit 6)."""
    if not lease and not _REAL:  # nothing asked, nothing patched
        return
    from geodino.cube import storage

    if not _REAL:
        _REAL.update(ttl=storage.LEASE_TTL, renew=storage.CubeLease.renew)
    storage.LEASE_TTL = float((lease or {}).get("ttl", _REAL["ttl"]))
    if (lease or {}).get("renew") == "unreachable":
        def renew(self):
            raise OSError(errno_mod.ENOTCONN, os.strerror(errno_mod.ENOTCONN), self.url)

        storage.CubeLease.renew = renew
    else:
        storage.CubeLease.renew = _REAL["renew"]


def run_cli(argv: list[str]) -> tuple[int, list[str], list[str]]:
    from geodino.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue().splitlines(), out.getvalue().splitlines()


def main() -> None:
    _install()
    if sys.argv[1] == "--cli":
        set_fault(json.loads(os.environ.get("GEODINO_TEST_FAULT", "{}")))
        from geodino.cli import main as cli

        sys.exit(cli(sys.argv[2:]))
    runs = json.loads(open(sys.argv[1]).read())
    for i, run in enumerate(runs):
        if "sh" in run:  # a step between runs (remounting a filesystem, ...)
            import subprocess

            p = subprocess.run(run["sh"], capture_output=True, text=True)
            print(json.dumps({"i": i, "rc": p.returncode, "stderr": p.stderr.splitlines(), "stdout": []}),
                  flush=True)
            continue
        set_fault(run.get("fault"))
        t0 = time.perf_counter()
        rc, err, out = run_cli(run["argv"])
        set_fault(None)
        print(json.dumps({"i": i, "rc": rc, "stderr": err, "stdout": out,
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)


if __name__ == "__main__":
    main()
