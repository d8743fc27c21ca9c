"""The other commands that read user files (issue 17, point 5): a damaged cube for `export cog`, `export
geoparquet` and `index`, a GEO-Bench sample cut short for `geobench run`. Each ends with one line naming the file
(and, for cubes, the chunk), exit 2, no signal, no traceback and no output left behind. All runs share one child.

`train`, `predict` and `canopy` are not on this branch yet (other issues build them); they join this table as they
land.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.cubes import make_cube, structured_features
from tests.faults.conftest import error_lines, run_children
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
