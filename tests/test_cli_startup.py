"""geodino answers a wrong argument or a missing input before it imports anything heavy (torch, timm, GDAL,
xarray, dask, scikit-learn...): the commands' error paths run one after the other in one fresh interpreter, which
reports after each what it had imported (a command that imports torch there would take seconds to say a file is
missing). Timing is not asserted; what is imported decides it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "transformers", "rasterio", "osgeo", "xarray", "dask.array", "distributed", "zarr",
         "sklearn", "scipy", "pandas", "geopandas", "pyproj", "faiss", "pyarrow", "h5py", "safetensors")

RUNNER = f"""
import json, sys
from geodino.cli import main
HEAVY = {HEAVY!r}
out = []
for argv in json.loads(sys.argv[1]):
    print("@@case " + json.dumps(argv), file=sys.stderr, flush=True)
    rc = main(argv)
    out.append({{"argv": argv, "rc": rc, "heavy": sorted(m for m in HEAVY if m in sys.modules)}})
print(json.dumps(out))
"""

OFFICIAL = "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"

# argv, expected exit code, fragments of its one stderr line
CASES = [
    (["embed", "nosuch.tif", "-o", "x.zarr"], 2, ["input raster nosuch.tif does not exist"]),
    (["embed", "items.json#S2B_1", "-o", "x.zarr"], 2, ["STAC file items.json does not exist"]),
    (["embed", "scene.tif", "--precision", "fp16"], 2, ["--precision 'fp16'"]),
    (["embed", "scene.tif", "--weights", OFFICIAL], 2,
     [f"weights file {OFFICIAL} not found", "ai.meta.com", "hf download facebook/dinov3-vitl16-pretrain-sat493m",
      "--weights facebook/dinov3-vitl16-pretrain-sat493m"]),
    (["embed", "scene.tif", "--weights", "facebook/dinov3-vitl16-pretrain-sat493m"], 2,
     ["not in the local Hugging Face cache", "hf download facebook/dinov3-vitl16-pretrain-sat493m"]),
    (["canopy", "nosuch.tif", "-o", "chm.tif"], 2, ["input raster nosuch.tif does not exist"]),
    (["canopy", "scene.tif", "--weights", "dinov3_vitl16_chmv2_dpt_head-3703d643.pth"], 2,
     ["not found", "hf download facebook/dinov3-vitl16-chmv2-dpt-head"]),
    (["info", "nosuch.zarr"], 2, ["cube nosuch.zarr does not exist"]),
    (["info", "scene.tif"], 2, ["scene.tif is a file, not a cube"]),
    (["index", "nosuch.zarr", "-o", "idx"], 2, ["cube nosuch.zarr does not exist"]),
    (["search", "noindex", "--near", "0,0"], 2, ["noindex does not exist: build one with `geodino index"]),
    (["export", "cog", "nosuch.zarr", "x.tif"], 2, ["cube nosuch.zarr does not exist"]),
    (["export", "geoparquet", "nosuch.zarr", "x.parquet"], 2, ["cube nosuch.zarr does not exist"]),
    (["compress", "nosuch.zarr", "-o", "y.zarr"], 2, ["cube nosuch.zarr does not exist"]),
    (["train", "nosuch.zarr", "--labels", "l.tif", "-o", "h.safetensors"], 2, ["cube nosuch.zarr does not exist"]),
    (["train", "cube.zarr", "--labels", "nolabels.tif", "-o", "h.safetensors"], 2,
     ["label file nolabels.tif does not exist"]),
    (["predict", "cube.zarr", "--head", "h.safetensors", "-o", "m.tif"], 2, ["head file h.safetensors does not exist"]),
    (["geobench", "list"], 2, ["no GEO-Bench directory", "hf download recursix/geo-bench-1.0", "GEO_BENCH_DIR"]),
    (["geobench", "run", "--weights", "random"], 2, ["no GEO-Bench directory"]),
    (["geobench", "list", "--benchmark-dir", "nodir"], 2, ["GEO-Bench directory nodir does not exist"]),
    (["weights", "inspect", "nosuch.pth"], 2, ["weights file nosuch.pth not found"]),
    (["explore", "nosuch.zarr"], 2, ["cube nosuch.zarr does not exist"]),
    (["explore", "scene.tif"], 2, ["scene.tif is a file, not a cube"]),
    (["explore", "cube.zarr", "--vectors", "half"], 2, ["--vectors must be auto, full or compact"]),
    (["--version"], 0, []),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("startup")
    (work / "scene.tif").write_bytes(b"not read: the checks before it fail first")
    (work / "cube.zarr").mkdir()
    (work / "cube.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (work / "hf").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GEO_BENCH_DIR"}
    env |= {"PYTHONPATH": os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p),
            "HF_HUB_CACHE": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([c[0] for c in CASES])], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    stderr = {}
    for block in r.stderr.split("@@case ")[1:]:
        head, _, rest = block.partition("\n")
        stderr[head] = rest
    return {json.dumps(x["argv"]): (x, stderr[json.dumps(x["argv"])], r.stdout) for x in json.loads(
        r.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("argv,code,fragments", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_error_paths_answer_before_heavy_imports(runs, argv, code, fragments):
    res, err, out = runs[json.dumps(argv)]
    assert res["rc"] == code, err
    assert res["heavy"] == [], f"{' '.join(argv)} imported {res['heavy']} before answering"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("geodino: error: "), err
        assert all(f in lines[0] for f in fragments), lines[0]
        assert "\x1b[" not in err


def test_version(runs):
    from geodino import __version__

    *_, out = runs[json.dumps(["--version"])]
    assert f"geodino {__version__}" in out
