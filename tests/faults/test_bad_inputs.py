"""Bad input to every command besides `embed` (issue 21, point 7): one line, exit 2, no "internal error", no
traceback, and nothing written or changed at the output path (nor in the inputs).

One table, run in-process through ``geodino.cli.main`` (as the `geodino` script runs it), so that ~100 cases cost
seconds: damaged and foreign cubes (``zarr.json`` corrupt or missing, a chunk cut short, a file or an empty
folder given as a cube), garbage or truncated heads, labels without overlap or with one class, unknown maps and
bands, points outside the cube, k <= 0 and other option values, outputs inside a regular file or onto an existing
folder, and `--minmax a,b`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.geobench.conftest import MODEL as GB_MODEL
from tests.geobench.conftest import TINY as GB_TINY


@pytest.fixture(scope="module")
def bad(inputs, tmp_path_factory):
    """The inputs, and bad ones made from them."""
    import geodino
    from tests.heads.conftest import write_label_raster

    d = tmp_path_factory.mktemp("bad")
    a = {k: Path(v) if isinstance(v, (str, os.PathLike)) and k != "near" else v for k, v in inputs.items()}
    cube = a["cube"]
    ds = geodino.open_cube(cube)
    a["txt"] = d / "notes.txt"
    a["txt"].write_text("not a raster, a cube or a head\n")
    a["folder"] = d / "existing-folder"
    a["folder"].mkdir()
    (a["folder"] / "keep.txt").write_text("mine")
    a["empty"] = d / "empty.zarr"
    a["empty"].mkdir()
    a["out"] = d / "out"
    a["out"].mkdir()
    for name in ("badjson", "nojson", "cutchunk", "zeroed"):
        p = d / f"{name}.zarr"
        shutil.copytree(cube, p)
        chunks = sorted(q for q in (p / "features" / "c").rglob("*") if q.is_file())
        if name == "badjson":
            (p / "zarr.json").write_text("{garbage")
        elif name == "nojson":
            (p / "zarr.json").unlink()
        elif name == "cutchunk":  # every features chunk (whichever a command reads first)
            for c in chunks:
                c.write_bytes(c.read_bytes()[:10])
        else:
            chunks[-1].write_bytes(b"\0" * chunks[-1].stat().st_size)
        a[name] = p
    head = a["head"].read_bytes()
    a["garbage_head"], a["cut_head"] = d / "garbage.safetensors", d / "cut.safetensors"
    a["garbage_head"].write_bytes(bytes(range(256)) * 3)
    a["cut_head"].write_bytes(head[: len(head) // 2])
    a["one_class"] = write_label_raster(d / "one.tif", np.ones((24, 32), np.uint8), ds)
    far = d / "far.tif"
    with rasterio.open(far, "w", driver="GTiff", width=32, height=24, count=1, dtype="uint8", crs=ds.rio.crs,
                       transform=Affine(160, 0, 900000, 0, -160, 4000000), nodata=255) as r:
        r.write(np.ones((1, 24, 32), np.uint8))
    a["far"] = far
    a["weights_txt"] = d / "w.pth"
    a["weights_txt"].write_text("no")
    return a


def _cases():
    """(id, argv(a), words the line must hold, the output path that must stay as it was)."""
    o = "out"
    c: list[tuple[str, object, tuple[str, ...], object]] = []

    def case(name, argv, *words, out=None):
        c.append((name, argv, words, out))

    # cubes that are damaged, missing or something else, in every command that reads one
    readers = {
        "train": lambda a, p: ["train", p, "--labels", a["labels"], "-o", a[o] / "t.safetensors"],
        "predict": lambda a, p: ["predict", p, "--head", a["head"], "-o", a[o] / "p.tif"],
        "compress": lambda a, p: ["compress", p, "-o", a[o] / "cc.zarr", "--k", "4"],
        "export cog": lambda a, p: ["export", "cog", p, a[o] / "e.tif"],
        "export geoparquet": lambda a, p: ["export", "geoparquet", p, a[o] / "e.parquet", "--level", "patch"],
        "index": lambda a, p: ["index", p, "-o", a[o] / "i"],
        "info": lambda a, p: ["info", p],
        "search --cube": lambda a, p: ["search", a["index"], "--near", a["near"], "--cube", p, "-o",
                                       a[o] / "s.parquet"],
    }
    for cmd, f in readers.items():
        case(f"{cmd}: zarr.json corrupt", lambda a, f=f: f(a, a["badjson"]), "zarr.json", out=o)
        case(f"{cmd}: zarr.json missing", lambda a, f=f: f(a, a["nojson"]), "nojson.zarr", out=o)
        case(f"{cmd}: no such cube", lambda a, f=f: f(a, a["dir"] / "nope.zarr"), "nope.zarr", out=o)
        case(f"{cmd}: a text file as the cube", lambda a, f=f: f(a, a["txt"]), "notes.txt", out=o)
    for cmd in ("train", "predict", "compress", "export cog", "index"):
        f = readers[cmd]
        case(f"{cmd}: chunks cut short", lambda a, f=f: f(a, a["cutchunk"]), "damaged", "cutchunk.zarr", out=o)
    case("export cog: a chunk zeroed", lambda a: readers["export cog"](a, a["zeroed"]), "damaged", out=o)
    case("info: an empty folder as the cube", lambda a: ["info", a["empty"]], "empty.zarr")

    # train
    t = lambda a, *x: ["train", a["cube"], "-o", a[o] / "h.safetensors", *x]  # noqa: E731
    case("train: labels missing", lambda a: t(a, "--labels", a["dir"] / "nolabels.tif"), "does not exist", out=o)
    case("train: labels not a raster", lambda a: t(a, "--labels", a["txt"]), "notes.txt", out=o)
    case("train: labels of one class", lambda a: t(a, "--labels", a["one_class"]), "single class", out=o)
    case("train: labels without overlap", lambda a: t(a, "--labels", a["far"]), "does not overlap", out=o)
    case("train: no labels", lambda a: t(a), "no labels", out=o)
    case("train: unknown head", lambda a: t(a, "--labels", a["labels"], "--head", "svm"), "svm", out=o)
    case("train: --block 0", lambda a: t(a, "--labels", a["labels"], "--block", "0"), "block", out=o)
    case("train: --valid-fraction 1.5", lambda a: t(a, "--labels", a["labels"], "--valid-fraction", "1.5"),
         "valid_fraction", out=o)
    case("train: --k 0 (knn)", lambda a: t(a, "--labels", a["labels"], "--head", "knn", "--k", "0"), "--k", out=o)
    case("train: --max-samples 0", lambda a: t(a, "--labels", a["labels"], "--max-samples", "0"), "--max-samples",
         out=o)
    case("train: --iterations 0", lambda a: t(a, "--labels", a["labels"], "--head", "linear", "--iterations", "0"),
         "--iterations", out=o)
    case("train: --lr -1", lambda a: t(a, "--labels", a["labels"], "--head", "linear", "--lr", "-1"), "--lr", out=o)
    case("train: --lr nan", lambda a: t(a, "--labels", a["labels"], "--head", "linear", "--lr", "nan"), "--lr", out=o)
    case("train: --label-scale 0", lambda a: t(a, "--labels", a["labels"], "--head", "linear", "--label-scale", "0"),
         "label scale", out=o)
    case("train: --label-scale 99", lambda a: t(a, "--labels", a["labels"], "--head", "linear", "--label-scale",
                                                 "99"), "label scale", out=o)
    case("train: --label-scale with a patch head", lambda a: t(a, "--labels", a["labels"], "--label-scale", "4"),
         "label-scale", out=o)
    case("train: output inside a file", lambda a: ["train", a["cube"], "--labels", a["labels"], "-o",
                                                   a["txt"] / "h.safetensors"], "is a file", out="txt")
    case("train: output onto a folder", lambda a: ["train", a["cube"], "--labels", a["labels"], "-o", a["folder"]],
         "folder", out="folder")

    # predict
    pr = lambda a, head, out=None: ["predict", a["cube"], "--head", head, "-o", out or a[o] / "m.tif"]  # noqa: E731
    case("predict: head missing", lambda a: pr(a, a["dir"] / "nohead.safetensors"), "does not exist", out=o)
    case("predict: head is garbage", lambda a: pr(a, a["garbage_head"]), "cannot read head", out=o)
    case("predict: head cut short", lambda a: pr(a, a["cut_head"]), "cannot read head", out=o)
    case("predict: head is a text file", lambda a: pr(a, a["txt"]), "cannot read head", out=o)
    case("predict: head is a folder", lambda a: pr(a, a["folder"]), "head", out=o)
    case("predict: output inside a file", lambda a: pr(a, a["head"], a["txt"] / "m.tif"), "is a file", out="txt")
    case("predict: output onto a folder", lambda a: pr(a, a["head"], a["folder"]), "folder", out="folder")
    case("predict: output exists", lambda a: pr(a, a["head"], a["txt"]), "exists", out="txt")

    # compress
    cp = lambda a, *x: ["compress", a["cube"], "-o", a[o] / "c8.zarr", *x]  # noqa: E731
    case("compress: --k 0", lambda a: cp(a, "--k", "0"), "k must be", out=o)
    case("compress: --k larger than the features", lambda a: cp(a, "--k", "1000"), "k must be", out=o)
    case("compress: --sample 0", lambda a: cp(a, "--k", "4", "--sample", "0"), "sample", out=o)
    case("compress: output inside a file", lambda a: ["compress", a["cube"], "-o", a["txt"] / "c.zarr", "--k", "4"],
         "is a file", out="txt")
    case("compress: output onto a folder", lambda a: ["compress", a["cube"], "-o", a["folder"], "--k", "4"],
         "exists", out="folder")
    case("compress: output onto a folder, --overwrite", lambda a: ["compress", a["cube"], "-o", a["folder"], "--k",
                                                                   "4", "--overwrite"], "not a geodino cube",
         out="folder")
    case("compress: onto its own cube", lambda a: ["compress", a["cube"], "-o", a["cube"], "--k", "4", "--overwrite"],
         "replace its source", out="cube")

    # export cog
    ec = lambda a, *x: ["export", "cog", a["cube"], a[o] / "x.tif", *x]  # noqa: E731
    case("export cog: unknown map", lambda a: ec(a, "--map", "ndvi"), "ndvi", out=o)
    case("export cog: --components 0", lambda a: ec(a, "--map", "pca", "--components", "0"), "n_components", out=o)
    case("export cog: --k 0", lambda a: ec(a, "--map", "cluster", "--k", "0"), "k must", out=o)
    case("export cog: --k beyond the patches", lambda a: ec(a, "--map", "cluster", "--k", "100000"), "k=100000",
         out=o)
    case("export cog: unknown feature band", lambda a: ec(a, "--map", "features", "--bands", "99"), "out of range",
         out=o)
    case("export cog: --bands not numbers", lambda a: ec(a, "--map", "features", "--bands", "a,b"), "--bands", out=o)
    case("export cog: a point outside the cube", lambda a: ec(a, "--map", "similarity", "--positive", "100,50",
                                                              "--crs", "EPSG:4326"), "outside", out=o)
    case("export cog: points without a CRS", lambda a: ec(a, "--map", "similarity", "--positive", "500100,4499000"),
         "no CRS", out=o)
    case("export cog: unknown --crs", lambda a: ec(a, "--map", "similarity", "--positive", "1,2", "--crs",
                                                   "EPSG:999999"), "--crs", out=o)
    case("export cog: example file not vector data", lambda a: ec(a, "--map", "similarity", "--positive", a["txt"]),
         "notes.txt", out=o)
    case("export cog: similarity without examples", lambda a: ec(a, "--map", "similarity"), "--positive", out=o)
    case("export cog: change without --other", lambda a: ec(a, "--map", "change"), "--other", out=o)
    case("export cog: --other missing", lambda a: ec(a, "--map", "change", "--other", a["dir"] / "nope.zarr"),
         "nope.zarr", out=o)
    case("export cog: --other damaged", lambda a: ec(a, "--map", "change", "--other", a["badjson"]), "zarr.json",
         out=o)
    case("export cog: unknown --align", lambda a: ec(a, "--map", "change", "--other", a["cube"], "--align", "x"),
         "align", out=o)
    case("export cog: --sample 0", lambda a: ec(a, "--sample", "0"), "sample", out=o)
    case("export cog: --top-k 0", lambda a: ec(a, "--map", "similarity", "--positive", a["near"], "--crs",
                                               "EPSG:4326", "--top", a[o] / "top.parquet", "--top-k", "0"), "--top-k",
         out=o)
    case("export cog: --top with a pca map", lambda a: ec(a, "--top", a[o] / "top.parquet"), "--top", out=o)
    case("export cog: output inside a file", lambda a: ["export", "cog", a["cube"], a["txt"] / "x.tif"], "is a file",
         out="txt")
    case("export cog: output onto a folder", lambda a: ["export", "cog", a["cube"], a["folder"]], "folder",
         out="folder")
    case("export cog: output onto a folder, --overwrite", lambda a: ["export", "cog", a["cube"], a["folder"],
                                                                     "--overwrite"], "folder", out="folder")

    # export geoparquet
    eg = lambda a, *x: ["export", "geoparquet", a["cube"], a[o] / "g.parquet", *x]  # noqa: E731
    case("export geoparquet: unknown --level", lambda a: eg(a, "--level", "pixel"), "level", out=o)
    case("export geoparquet: unknown --pool", lambda a: eg(a, "--pool", "max"), "pool", out=o)
    case("export geoparquet: output inside a file", lambda a: ["export", "geoparquet", a["cube"], a["txt"] / "g.pq"],
         "is a file", out="txt")
    case("export geoparquet: output onto a folder", lambda a: ["export", "geoparquet", a["cube"], a["folder"]],
         "folder", out="folder")

    # index and search
    case("index: unknown --vectors", lambda a: ["index", a["cube"], "-o", a[o] / "i1", "--vectors", "cls"], "cls",
         out=o)
    case("index: --nprobe 0", lambda a: ["index", a["cube"], "-o", a[o] / "i2", "--nprobe", "0"], "nprobe", out=o)
    case("index: output inside a file", lambda a: ["index", a["cube"], "-o", a["txt"] / "i"], "is a file", out="txt")
    case("index: output is a file", lambda a: ["index", a["cube"], "-o", a["txt"]], "not a geodino index", out="txt")
    case("index: output a non-empty folder", lambda a: ["index", a["cube"], "-o", a["folder"]], "not a geodino index",
         out="folder")
    s = lambda a, *x, idx=None: ["search", idx or a["index"], *x]  # noqa: E731
    case("search: no such index", lambda a: s(a, "--near", "1,2", idx=a["dir"] / "noidx"), "does not exist", out=o)
    case("search: a file as the index", lambda a: s(a, "--near", "1,2", idx=a["txt"]), "not a geodino index", out=o)
    case("search: a cube as the index", lambda a: s(a, "--near", "1,2", idx=a["cube"]), "not a geodino index", out=o)
    case("search: --near outside the cubes", lambda a: s(a, "--near", "100,50", "-o", a[o] / "h.parquet"), "outside",
         out=o)
    case("search: --near not numbers", lambda a: s(a, "--near", "a,b", "-o", a[o] / "h.parquet"), "--near", out=o)
    case("search: --near out of range", lambda a: s(a, "--near", "200,95", "-o", a[o] / "h.parquet"), "within",
         out=o)
    case("search: -k 0", lambda a: s(a, "--near", a["near"], "-k", "0", "-o", a[o] / "h.parquet"), "-k", out=o)
    case("search: --nprobe 0", lambda a: s(a, "--near", a["near"], "--nprobe", "0", "-o", a[o] / "h.parquet"),
         "nprobe", out=o)
    case("search: no query", lambda a: s(a, "-o", a[o] / "h.parquet"), "--near", out=o)
    case("search: --negatives alone", lambda a: s(a, "--negatives", a["txt"], "-o", a[o] / "h.parquet"),
         "--positives", out=o)
    case("search: positives missing", lambda a: s(a, "--positives", a["dir"] / "nope.gpkg", "-o", a[o] / "h.parquet"),
         "nope.gpkg", out=o)
    case("search: positives not vector data", lambda a: s(a, "--positives", a["txt"], "-o", a[o] / "h.parquet"),
         "notes.txt", out=o)
    case("search: output inside a file", lambda a: s(a, "--near", a["near"], "-o", a["txt"] / "h.parquet"),
         "is a file", out="txt")
    case("search: output onto a folder", lambda a: s(a, "--near", a["near"], "-o", a["folder"]), "folder",
         out="folder")

    # weights
    case("weights inspect: missing", lambda a: ["weights", "inspect", a["dir"] / "nope.pth"], "not found")
    case("weights inspect: garbage", lambda a: ["weights", "inspect", a["garbage_head"]], "not a readable")
    case("weights inspect: a text file", lambda a: ["weights", "inspect", a["weights_txt"]], "w.pth")
    case("weights inspect: an empty folder", lambda a: ["weights", "inspect", a["empty"]], "no weights file")
    case("weights convert: unknown --to", lambda a: ["weights", "convert", a["gb_weights"], a[o] / "w.safetensors",
                                                     "--to", "onnx"], "onnx", out=o)
    case("weights convert: output exists", lambda a: ["weights", "convert", a["gb_weights"], a["txt"]], "exists",
         out="txt")
    case("weights convert: output inside a file", lambda a: ["weights", "convert", a["gb_weights"],
                                                             a["txt"] / "w.safetensors"], "is a file", out="txt")

    # canopy
    def cn(a, *x, scene=None, out=None):
        from tests.faults.test_other_commands import _canopy_args

        return ["canopy", scene or a["scene"], "-o", out or a[o] / "chm.tif", *_canopy_args(a, 1), *x]

    case("canopy: scene missing", lambda a: cn(a, scene=a["dir"] / "nope.tif"), "does not exist", out=o)
    case("canopy: scene not a raster", lambda a: cn(a, scene=a["txt"]), "not a raster", out=o)
    case("canopy: --tile 50", lambda a: cn(a, "--tile", "50"), "multiple of 32", out=o)
    case("canopy: --halo 7", lambda a: cn(a, "--halo", "7"), "multiple of 16", out=o)
    case("canopy: --gsd 0", lambda a: cn(a, "--gsd", "0"), "--gsd", out=o)
    case("canopy: --dtype int8", lambda a: cn(a, "--dtype", "int8"), "--dtype", out=o)
    case("canopy: --threads 0", lambda a: cn(a, "--threads", "0"), "--threads", out=o)
    case("canopy: unknown band", lambda a: cn(a, "--bands", "nir,red,green"), "'nir'", out=o)
    case("canopy: --minmax a,b", lambda a: cn(a, "--radiometry", "minmax", "--minmax", "a,b"), "--minmax", out=o)
    case("canopy: weights missing", lambda a: cn(a, "--weights", a["dir"] / "nope.safetensors"), "not found", out=o)
    case("canopy: output inside a file", lambda a: cn(a, out=a["txt"] / "chm.tif"), "notes.txt", out="txt")
    case("canopy: output onto a folder", lambda a: cn(a, out=a["folder"]), "existing-folder", out="folder")
    case("canopy: --cube onto a file", lambda a: cn(a, "--cube", a["txt"]), "--cube", out="txt")

    # embed's --minmax (issue 21: an internal error before)
    case("embed: --minmax a,b", lambda a: ["embed", a["scene"], "-o", a[o] / "e.zarr", "--weights", "random",
                                           "--radiometry", "minmax", "--minmax", "a,b"], "--minmax", out=o)

    # geobench run
    def gb(a, *x, out=None, cache=None):
        return ["geobench", "run", "--model", GB_MODEL, "--weights", a["gb_weights"],
                *[f"--arch={k}={v}" for k, v in GB_TINY.items()], "--benchmark-dir", a["bench"], "--device", "cpu",
                "--budget", "quick", "--cache-dir", cache or a[o] / "cache", "-o", out or a[o] / "gb", *x]

    case("geobench run: no benchmark folder", lambda a: ["geobench", "run", "--benchmark-dir", a["dir"] / "nobench",
                                                         "-o", a[o] / "gb"], "does not exist", out=o)
    case("geobench run: unknown task", lambda a: gb(a, "--tasks", "m-nope"), "m-nope", out=o)
    # a task that cannot be read is recorded in results.json (README: the others still run), so -o changes
    case("geobench run: task not on disk", lambda a: gb(a, "--tasks", "m-brick-kiln"), "m-brick-kiln")
    case("geobench run: unknown budget", lambda a: gb(a, "--budget", "huge"), "--budget", out=o)
    case("geobench run: unknown protocol", lambda a: gb(a, "--protocol", "svm"), "--protocol", out=o)
    case("geobench run: --size abc", lambda a: gb(a, "--tasks", "m-eurosat", "--size", "abc"), "--size", out=o)
    case("geobench run: --seeds a,b", lambda a: gb(a, "--tasks", "m-eurosat", "--seeds", "a,b"), "--seeds", out=o)
    case("geobench run: --set without =", lambda a: gb(a, "--tasks", "m-eurosat", "--set", "x"), "--set", out=o)
    case("geobench run: unknown device", lambda a: gb(a, "--tasks", "m-eurosat", "--device", "tpu"), "tpu", out=o)
    case("geobench run: -o is a file", lambda a: gb(a, "--tasks", "m-eurosat", out=a["txt"]), "is a file",
         out="txt")
    case("geobench run: cache inside a file", lambda a: gb(a, "--tasks", "m-eurosat", cache=a["txt"] / "cache"),
         "is a file", out="txt")
    return c


CASES = _cases()


def _state(p: Path):
    """What is at ``p``: None, a file's sha256, or a folder's listing with each file's sha256."""
    if not p.exists():
        return None
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return sorted((str(q.relative_to(p)), hashlib.sha256(q.read_bytes()).hexdigest() if q.is_file() else "/")
                  for q in p.rglob("*"))


def _run(argv) -> tuple[int, list[str]]:
    from geodino.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(x) for x in argv])
    return rc, err.getvalue().splitlines()


def test_the_battery_has_enough_cases():
    assert len(CASES) >= 60 and len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,words,out", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, argv, words, out, bad):
    args = argv(bad)
    watched = [bad[k] for k in {out, "cube", "head", "index", "txt", "folder"} if k]
    before = [_state(p) for p in watched]
    try:
        rc, lines = _run(args)
    finally:  # whatever a case wrote must not change the next one's
        after = [_state(p) for p in watched]
        shutil.rmtree(bad["out"], ignore_errors=True)
        bad["out"].mkdir()
    errors = [x for x in lines if x.startswith("geodino:")]
    assert rc == 2, (name, rc, lines)
    assert len(errors) == 1 and errors[0].startswith("geodino: error: "), (name, lines)
    assert not any("Traceback" in x or "internal error" in x for x in lines), (name, lines)
    for w in words:
        assert w in errors[0], (name, w, errors[0])
    assert after == before, f"{name}: an output or input changed"
