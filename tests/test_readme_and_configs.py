"""README.md stays true: its set-up commands match .ci/run, its demo command runs; shipped configs validate."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from geodino.cube import read_attrs
from geodino.embed import EmbedConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_setup_commands():
    ci = (REPO / ".ci" / "run").read_text()
    blocks = code_blocks(README)
    assert "pip install -e '.[dev]'" in blocks[0] and "pip install -e '.[dev]'" in ci
    assert blocks[1].strip() == "pytest" and "\npytest" in ci


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "embed").glob("*.yaml")), ids=lambda p: p.name)
def test_embed_configs_validate(path):
    cfg = EmbedConfig.build(path)
    assert cfg.tile % 16 == 0


def test_readme_demo_command_runs(shared_data, tmp_path):
    block = next(b for b in code_blocks(README) if "cpu-demo.yaml" in b)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["geodino", "embed"]
    out = tmp_path / "demo.zarr"
    argv[argv.index("-o") + 1] = str(out)
    r = subprocess.run([sys.executable, "-m", "geodino", *argv[1:]], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    prov = read_attrs(out)["geodino"]
    assert read_attrs(out)["geodino_status"] == "complete" and prov["model"]["random_weights"] is True


def test_readme_analysis_commands_run(shared_data, tmp_path, monkeypatch):
    """The demo cube, then every command of README's "Analysis" section on it (in-process: same entry point)."""
    from geodino.cli import main

    demo = next(b for b in code_blocks(README) if "cpu-demo.yaml" in b)
    argv = shlex.split(demo.replace("\\\n", " "))
    argv[argv.index("-o") + 1] = str(tmp_path / "demo.zarr")
    monkeypatch.chdir(REPO)
    assert main(argv[1:]) == 0
    monkeypatch.chdir(tmp_path)
    block = next(b for b in code_blocks(README) if "geodino compress" in b)
    for line in block.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "geodino" and main(argv[1:]) == 0, line
    for name in ("demo_pca.tif", "demo_sim.tif", "demo_top.parquet", "demo_tiles.parquet", "demo_64.zarr"):
        assert (tmp_path / name).exists(), name


def test_readme_train_and_predict_commands_run(shared_data, tmp_path, monkeypatch):
    """README's "Labels in, maps out": the label snippet, then train and predict on the demo cube."""
    import rasterio

    from geodino.cli import main

    demo = next(b for b in code_blocks(README) if "cpu-demo.yaml" in b)
    argv = shlex.split(demo.replace("\\\n", " "))
    argv[argv.index("-o") + 1] = str(tmp_path / "demo.zarr")
    monkeypatch.chdir(REPO)
    assert main(argv[1:]) == 0
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "demo_ndvi.tif" in b)
    exec(snippet.replace("../shared/data", str(shared_data)).replace('"demo_ndvi.tif"',
                                                                      repr(str(tmp_path / "demo_ndvi.tif"))), {})
    monkeypatch.chdir(tmp_path)
    block = next(b for b in code_blocks(README) if "geodino train" in b)
    for line in block.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "geodino" and main(argv[1:]) == 0, line
    with rasterio.open(tmp_path / "demo_map.tif") as m, rasterio.open(tmp_path / "demo_ndvi.tif") as lab:
        assert m.crs == lab.crs and m.transform == lab.transform * lab.transform.scale(4)  # 16 px / 4 cells
    assert (tmp_path / "demo_map_proba.tif").exists() and (tmp_path / "demo_head.json").exists()
