"""The notebooks run: their code cells are executed in order against a freshly made cube."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geodino.embed import EmbedConfig, embed
from tests.rasters import texture, write_raster

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.filterwarnings("ignore::geodino.models.RandomWeightsWarning")
def test_explore_a_cube_notebook(tmp_path, monkeypatch):
    scene = write_raster(tmp_path / "scene.tif", texture((160, 192), seed=4, dtype="uint8"))
    [s] = embed([scene], EmbedConfig.build(model="dinov3-vits16-lvd1689m", weights="random", arch={"depth": 1},
                                           device="cpu", tile=64, halo=16, output=str(tmp_path / "demo.zarr")))
    monkeypatch.chdir(tmp_path)
    nb = json.loads((REPO / "notebooks" / "explore_a_cube.ipynb").read_text())
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "notebook", "exec"), ns)
    assert ns["X"].shape[1] == 384 and set(ns["labels"]) <= set(range(4))
    for f in ("pca_rgb.tif", "clusters.tif", "similarity.tif"):
        assert os.path.getsize(tmp_path / f) > 0
    import rasterio

    with rasterio.open(tmp_path / "pca_rgb.tif") as r:
        assert r.crs == ns["ds"].rio.crs and r.transform == ns["ds"].rio.transform()
