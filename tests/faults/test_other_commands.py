"""The commands besides `embed`: damaged inputs (issue 17, point 5) and faults of the machine and signals (issue
21, point 7), each in as few child processes as possible.

* A damaged cube for `export cog`, `export geoparquet` and `index`, a GEO-Bench sample cut short for `geobench
  run`: one line naming the file (and, for cubes, the chunk), exit 2, no signal, no traceback, no output.
* A full disk (a real tmpfs filled up), a read-only filesystem (the tmpfs remounted read-only) and an unreachable
  store (the rename that puts an output into place fails with ENOTCONN) in `train`, `predict`, `compress`, `export
  cog`, `export geoparquet`, `index`, `search`, `geobench run` and `canopy` (at 1 and 4 reader threads): exit 4, 5
  and 6 with one line naming the output, no output and nothing half-written left, an earlier output replaced with
  `--overwrite` unchanged, and the same command, once the fault is gone, finishes the job (canopy's height cube,
  faulted mid-run, resumes to an uninterrupted run's bits).
* SIGTERM and SIGINT while each command puts its output into place (canopy: mid-run, at 1 and 4 reader threads):
  exit 143 and 130 with one line, nothing half-written, and the same command then finishes.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.cubes import make_cube, structured_features
from tests.faults.conftest import error_lines, run_child_with_signals, run_children, status_of
from tests.faults.test_environment import _mount_tmpfs
from tests.geobench.conftest import MODEL as GB_MODEL
from tests.geobench.conftest import TINY as GB_TINY
from tests.geobench.synth import write_task


def _chunks(cube: Path) -> list[Path]:
    return sorted(p for p in (cube / "features" / "c").rglob("*") if p.is_file())


def test_damaged_cubes_and_a_cut_geobench_sample(tmp_path):
    good = make_cube(tmp_path / "good.zarr", structured_features((24, 32), 16, seed=7), np.ones((24, 32), bool))
    cut, zeroed = tmp_path / "cut.zarr", tmp_path / "zeroed.zarr"
    shutil.copytree(good, cut)
    shutil.copytree(good, zeroed)
    c = _chunks(cut)[0]
    c.write_bytes(c.read_bytes()[: c.stat().st_size // 2])
    z = _chunks(zeroed)[-1]
    z.write_bytes(b"\0" * z.stat().st_size)
    damaged = {cut: str(c.relative_to(cut)), zeroed: str(z.relative_to(zeroed))}

    root = tmp_path / "bench"
    task = write_task(root, "m-eurosat", "classification", n_classes=3, n_train=6, n_valid=4, n_test=4, seed=1)
    sample = task / "test_0001.hdf5"
    sample.write_bytes(sample.read_bytes()[: sample.stat().st_size // 2])

    cases, runs = [], []
    for cube, chunk in damaged.items():
        for argv, output in (
                (["export", "cog", cube, tmp_path / f"{cube.stem}.tif", "--map", "pca-rgb"], f"{cube.stem}.tif"),
                (["export", "geoparquet", cube, tmp_path / f"{cube.stem}.parquet", "--level", "patch"],
                 f"{cube.stem}.parquet"),
                (["index", cube, "-o", tmp_path / f"{cube.stem}-index"], f"{cube.stem}-index")):
            cases.append((argv[:2] if argv[0] == "export" else argv[:1], [str(cube), chunk], output))
            runs.append({"argv": [str(a) for a in argv]})
    cases.append((["geobench", "run"], ["m-eurosat", "cannot read sample file", str(sample.name)], None))
    runs.append({"argv": ["geobench", "run", "--tasks", "m-eurosat", "--budget", "quick", "--model", GB_MODEL,
                          "--weights", "random", *[f"--arch={k}={v}" for k, v in GB_TINY.items()],
                          "--benchmark-dir", str(root), "--cache-dir", str(tmp_path / "cache"),
                          "-o", str(tmp_path / "res"), "--device", "cpu",
                          "--set", "classification.logreg.c_num=2", "--set", "classification.logreg.n_jobs=1",
                          "--set", "evaluation.bootstrap=20"]})
    rc, results, err = run_children(runs, tmp_path)
    assert rc == 0, f"child died by signal {-rc}: {err[-2000:]}"
    assert len(results) == len(cases)
    for (cmd, needles, output), r in zip(cases, results):
        lines = [line for line in error_lines(r["stderr"]) if line.startswith("geodino: error:")]
        assert r["rc"] == 2, (cmd, r)
        assert lines and not any("Traceback" in x or "internal error" in x for x in r["stderr"]), (cmd, r["stderr"])
        assert all(n in lines[0] for n in needles), (cmd, lines[0])
        if output:
            assert not (tmp_path / output).exists(), f"{cmd} left {output} behind"


# -- faults of the machine and signals in every command (issue 21, point 7) ------------------------------------

FAULT_WORDS = {4: "disk full while", 5: "permission denied while", 6: "output store unreachable while"}


def _canopy_args(inp, threads: int) -> list[str]:
    from tests.canopy.conftest import TINY as CHM_TINY
    from tests.canopy.conftest import TINY_HEAD, cli_args

    return cli_args({"weights": str(inp["chm"]), "arch": dict(CHM_TINY), "head_arch": dict(TINY_HEAD),
                     "device": "cpu", "precision": "fp32", "threads": threads, "tile": 64, "halo": 32,
                     "batch_size": 2})


def commands(inp, out: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """Each command writing into ``out``: (argv, the outputs it writes)."""
    c = inp["cube"]
    gb = ["--model", GB_MODEL, "--weights", str(inp["gb_weights"]), *[f"--arch={k}={v}" for k, v in GB_TINY.items()],
          "--benchmark-dir", str(inp["bench"]), "--device", "cpu", "--tasks", "m-eurosat", "--budget", "quick",
          "--set", "classification.logreg.c_num=2", "--set", "classification.logreg.n_jobs=1",
          "--set", "evaluation.bootstrap=20"]
    cmds = {
        "train": (["train", c, "--labels", inp["labels"], "--head", "knn", "-o", out / "h.safetensors"],
                  [out / "h.safetensors", out / "h.json"]),
        "predict": (["predict", c, "--head", inp["head"], "-o", out / "map.tif"],
                    [out / "map.tif", out / "map_proba.tif"]),
        "compress": (["compress", c, "-o", out / "compact.zarr", "--k", "8", "--sample", "400"],
                     [out / "compact.zarr"]),
        "export cog": (["export", "cog", c, out / "pca.tif"], [out / "pca.tif"]),
        "export geoparquet": (["export", "geoparquet", c, out / "patches.parquet", "--level", "patch"],
                              [out / "patches.parquet"]),
        "index": (["index", c, "-o", out / "idx"], [out / "idx"]),
        "search": (["search", inp["index"], "--near", inp["near"], "-k", "5", "-o", out / "hits.parquet"],
                   [out / "hits.parquet"]),
        "geobench run": (["geobench", "run", *gb, "--cache-dir", out / "cache", "-o", out / "gb"],
                         [out / "gb" / "results.json"]),
    }
    for t in (1, 4):
        cmds[f"canopy ({t} threads)"] = (["canopy", inp["scene"], "-o", out / f"chm{t}.tif", *_canopy_args(inp, t)],
                                         [out / f"chm{t}.tif"])
    return {k: ([str(a) for a in argv], outs) for k, (argv, outs) in cmds.items()}


def _leftovers(folder: Path) -> list[str]:
    """Half-written things: staged or partial files and folders geodino renames into place."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".") and p.name != ".geodino.lease"
                  or p.name.endswith(".partial"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_fault(name: str, r: dict, want: int, folder: Path) -> str:
    lines = error_lines(r["stderr"])
    assert r["rc"] == want, (name, r)
    assert len(lines) == 1 and not any("Traceback" in x or "internal error" in x for x in r["stderr"]), \
        (name, r["stderr"])
    assert FAULT_WORDS[want] in lines[0] and "rerun the same command" in lines[0], (name, lines[0])
    assert str(folder) in lines[0], (name, lines[0])  # names the output (or the cache) it was writing
    return lines[0]


def test_disk_full_and_read_only_in_every_command_then_the_rerun_finishes(inputs, tmp_path):
    """A real tmpfs filled up (ENOSPC), then remounted read-only (EROFS): every command exits 4, then 5, with one
    line naming its output; nothing half-written is left and an earlier output given to --overwrite is unchanged;
    once space is freed (or the mount is writable again) the same command finishes."""
    mnt = tmp_path / "small"
    why = _mount_tmpfs(mnt, "24m")
    if why:
        pytest.skip(why)
    try:
        full, ro, keep = mnt / "full", mnt / "ro", mnt / "keep"
        cmds = {"full": commands(inputs, full), "ro": commands(inputs, ro)}
        keep_cmds = {k: commands(inputs, keep)[k] for k in ("export cog", "predict")}
        for d in (full, ro, keep, ro / "gb", full / "gb"):
            d.mkdir(parents=True, exist_ok=True)
        fill = ["sh", "-c", f"cat /dev/zero > {mnt}/filler 2>/dev/null; true"]
        unfill = ["rm", "-f", f"{mnt}/filler"]
        runs, plan = [], []

        def add(kind, name, argv):
            plan.append((kind, name, len(runs)))
            runs.append({"argv": argv})

        for name, (argv, _) in keep_cmds.items():  # outputs that a failed --overwrite must leave unchanged
            add("keep-setup", name, argv)
        runs.append({"sh": ["sh", "-c", f"cd {keep} && sha256sum map.tif map_proba.tif pca.tif > {tmp_path}/keep.sha"]})
        runs.append({"sh": fill})
        for name, (argv, _) in cmds["full"].items():
            add("full", name, argv)
        for name, (argv, _) in keep_cmds.items():
            add("keep-full", name, [*argv, "--overwrite"])
        runs.append({"sh": unfill})
        for name, (argv, _) in cmds["full"].items():
            add("full-rerun", name, argv)
        runs.append({"sh": ["mount", "-o", "remount,ro", str(mnt)]})
        for name, (argv, _) in cmds["ro"].items():
            add("ro", name, argv)
        runs.append({"sh": ["mount", "-o", "remount,rw", str(mnt)]})
        for name, (argv, _) in cmds["ro"].items():
            add("ro-rerun", name, argv)
        rc, results, err = run_children(runs, tmp_path, timeout=900)
        assert rc == 0, f"child died by signal {-rc}: {err[-2000:]}"
        by = {(kind, name): results[i] for kind, name, i in plan}
        table = []
        for kind, name, _ in plan:
            r = by[(kind, name)]
            if kind in ("keep-setup", "full-rerun", "ro-rerun"):
                assert r["rc"] == 0, (kind, name, r)
                continue
            want = 5 if kind == "ro" else 4
            folder = {"keep-full": keep, "full": full, "ro": ro}[kind]
            table.append((kind, name, r["rc"], _check_fault(name, r, want, folder)))
        for kind, folder in (("full", full), ("ro", ro)):
            for name, (_, outs) in cmds[kind].items():
                assert all(o.exists() for o in outs), (kind, name)  # the rerun finished the job
            assert not _leftovers(folder), _leftovers(folder)
        shas = dict(line.split()[::-1] for line in (tmp_path / "keep.sha").read_text().splitlines())
        for f, h in shas.items():
            assert _sha(keep / f) == h, f"{f}: an earlier output was changed by a failed --overwrite"
        for t in (1, 4):
            assert status_of(full / f"chm{t}.heights.zarr") == "complete"
        print("\n" + "\n".join(f"{k:10} {n:22} exit {c}: {line}" for k, n, c, line in table))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_an_unreachable_store_in_every_command_then_the_rerun_finishes(inputs, tmp_path):
    """The rename that puts each output into place (and every chunk of a zarr output) fails with ENOTCONN: exit 6,
    one line naming the output, nothing half-written left; the same command then finishes."""
    out = tmp_path / "gone"
    out.mkdir()
    (out / "gb").mkdir()
    cmds = commands(inputs, out)
    fault = {"rename": {"under": str(out), "errno": "ENOTCONN"}}
    runs = [{"argv": argv, "fault": fault} for argv, _ in cmds.values()] + [{"argv": argv} for argv, _ in cmds.values()]
    rc, results, err = run_children(runs, tmp_path, timeout=900)
    assert rc == 0, f"child died by signal {-rc}: {err[-2000:]}"
    n = len(cmds)
    for k, (name, (argv, outs)) in enumerate(cmds.items()):
        _check_fault(name, results[k], 6, out)
        assert results[n + k]["rc"] == 0, (name, results[n + k])
        assert all(o.exists() for o in outs), name
    assert not _leftovers(out), _leftovers(out)


def test_canopy_faults_mid_run_resume_to_the_same_bits(inputs, tmp_path):
    """Disk full (at 1 and 4 reader threads), permission denied and an unreachable store at a chunk write of
    canopy's height cube: exit 4, 5, 6 with one line; the same command resumes to an uninterrupted run's cube and
    COG. (The tmpfs and rename tests above fault canopy at 1 and 4 threads too, before its first tile and at its
    COG.)"""
    ref = tmp_path / "ref.tif"
    runs = [{"argv": ["canopy", str(inputs["scene"]), "-o", str(ref), *_canopy_args(inputs, 4)]}]
    cases = []
    for code, want, threads in (("ENOSPC", 4, 1), ("ENOSPC", 4, 4), ("EACCES", 5, 1), ("ENOTCONN", 6, 4)):
        out = tmp_path / f"{code}-{threads}.tif"
        argv = ["canopy", str(inputs["scene"]), "-o", str(out), *_canopy_args(inputs, threads)]
        cases.append((code, threads, want, out))
        runs += [{"argv": argv, "fault": {"errno": code, "after": 3}}, {"argv": argv}]
    rc, results, err = run_children(runs, tmp_path, timeout=900)
    assert rc == 0, f"child died by signal {-rc}: {err[-2000:]}"
    assert results[0]["rc"] == 0, results[0]
    for k, (code, threads, want, out) in enumerate(cases):
        faulty, resumed = results[1 + 2 * k], results[2 + 2 * k]
        cube = out.with_name(out.stem + ".heights.zarr")
        line = _check_fault(f"canopy {code} {threads}", faulty, want, cube)
        assert str(cube) in line and code in line, line
        assert resumed["rc"] == 0, resumed
        _same_heights(ref.with_name("ref.heights.zarr"), cube)
        assert out.exists() and not _leftovers(tmp_path)


def _same_heights(a: Path, b: Path) -> None:
    import zarr

    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ("heights", "tile_status"):
        assert np.ascontiguousarray(ra[name][...]).tobytes() == np.ascontiguousarray(rb[name][...]).tobytes(), name
    assert status_of(b) == "complete"


def test_signals_in_every_command_leave_nothing_half_written_and_the_rerun_finishes(inputs, tmp_path):
    """SIGTERM or SIGINT while each command puts its output into place (its first rename there is paused), and
    canopy's mid-run at 1 and 4 reader threads: exit 143 or 130 with one line, nothing half-written; the same
    command then finishes (canopy: to the uninterrupted cube's bits). All in one child, which survives each
    signal (the CLI's handler stops the command, not the process)."""
    out = tmp_path / "sig"
    out.mkdir()
    (out / "gb").mkdir()
    cmds = commands(inputs, out)
    runs, sigs = [], {}
    for k, (name, (argv, outs)) in enumerate(cmds.items()):
        sig = "SIGTERM" if k % 2 == 0 else "SIGINT"
        if name.startswith("canopy"):  # mid-run: chunk writes slowed, the signal after the first tile
            cube = outs[0].with_name(outs[0].stem + ".heights.zarr")
            runs.append({"argv": argv, "fault": {"slow": 0.3}, "signal": {"name": sig, "cube": str(cube)}})
        else:
            marker = tmp_path / f"marker{k}"
            runs.append({"argv": argv, "fault": {"rename": {"under": str(out), "marker": str(marker), "seconds": 8}},
                         "signal": {"name": sig, "marker": str(marker)}})
        sigs[name] = getattr(signal, sig)
    runs += [{"argv": argv} for argv, _ in cmds.values()]
    ref = tmp_path / "ref.tif"
    runs.append({"argv": ["canopy", str(inputs["scene"]), "-o", str(ref), *_canopy_args(inputs, 4)]})
    rc, results, err = run_child_with_signals(runs, tmp_path, timeout=900)
    assert rc == 0, f"the child died ({rc}): {err[-2000:]}"
    n, table = len(cmds), []
    for k, (name, (argv, outs)) in enumerate(cmds.items()):
        r, again = results[k], results[n + k]
        lines = error_lines(r["stderr"])
        table.append((name, sigs[name].name, r["rc"], lines[-1] if lines else ""))
        assert r["rc"] == 128 + sigs[name], (name, r)
        assert lines and "geodino: interrupted: rerun the same command" in lines[-1], (name, r["stderr"])
        assert not any("Traceback" in x or "internal error" in x for x in r["stderr"]), r["stderr"]
        assert again["rc"] == 0, (name, again)
        assert all(o.exists() for o in outs), name
    assert results[-1]["rc"] == 0, results[-1]
    assert not [x for x in _leftovers(out) if ".heights.zarr" not in x], _leftovers(out)
    for t in (1, 4):
        _same_heights(tmp_path / "ref.heights.zarr", out / f"chm{t}.heights.zarr")
    print("\n" + "\n".join(f"{n:22} {s}: exit {c}: {line}" for n, s, c, line in table))
