"""The notebooks run headlessly through a Jupyter kernel (nbclient), on cubes embedded from the shared real
rasters, and their outputs (figures, refusals, exported files) are checked."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import nbformat
import rasterio
from nbclient import NotebookClient
from rio_cogeo.cogeo import cog_validate

import geodino

REPO = Path(__file__).resolve().parents[1]


def execute(name: str, cwd: Path, shared_data: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    env = {"GEODINO_SHARED_DATA": str(shared_data), "GEODINO_OUT": str(cwd),
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return nb


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind
            or kind in o.get("data", {})]


def text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.output_type == "stream")


def test_explore_a_cube(tmp_path, shared_data):
    nb = execute("explore_a_cube.ipynb", tmp_path, shared_data)
    assert not outputs(nb, "error")
    assert len(outputs(nb, "image/png")) >= 4  # scene beside PCA, similarity, clusters, change
    out = text(nb)
    assert "refused:" in out and "radiometry" in out and "--force" in out
    assert out.count("valid COG: True") == 3
    ds = geodino.open_cube(tmp_path / "explore.zarr")
    with rasterio.open(tmp_path / "pca_rgb.tif") as r:
        assert r.crs == ds.rio.crs and r.transform == ds.rio.transform() and r.count == 3
        assert r.tags()["geodino_cube_id"] == ds.attrs["geodino"]["cube_id"]
    tiles = gpd.read_parquet(tmp_path / "tiles.parquet")
    assert tiles.crs == ds.rio.crs and len(tiles) == int((ds.tile_status.values == 1).sum())


def test_few_shot_search(tmp_path, shared_data):
    nb = execute("few_shot_search.ipynb", tmp_path, shared_data)
    assert not outputs(nb, "error") and len(outputs(nb, "image/png")) >= 1
    assert "COG valid: True" in text(nb)
    assert cog_validate(tmp_path / "few_shot_similarity.tif")[0]
    top = gpd.read_parquet(tmp_path / "few_shot_top.parquet")
    assert len(top) == 50 and top.crs.to_epsg() == 32618 and top.score.is_monotonic_decreasing


def test_train_and_predict(tmp_path, shared_data):
    """The worked example: a real scene embedded, NDVI labels, heads trained, a map on the scene's grid."""
    import json

    nb = execute("train_and_predict.ipynb", tmp_path, shared_data)
    assert not outputs(nb, "error") and len(outputs(nb, "image/png")) >= 1
    out = text(nb)
    assert "random weights: True" in out and "meaningless" in out
    scene = shared_data / "naip_m_3607717_sw_18_1_20160620_subset.tif"
    with rasterio.open(tmp_path / "vegetation.tif") as m, rasterio.open(scene) as src:
        # on the source's grid: same CRS and origin, 16-px patches in 4 cells each = 4 source pixels per cell
        assert m.crs == src.crs and m.transform == src.transform * src.transform.scale(4)
        assert (m.height, m.width) == (-(-src.height // 16) * 4, -(-src.width // 16) * 4)  # partial patches count
        card = json.loads(m.tags()["geodino_head_card"])
        assert card["random_weights"] and card["head"] == "linear" and m.nodata == 255
    assert cog_validate(tmp_path / "vegetation.tif")[0] and cog_validate(tmp_path / "vegetation_proba.tif")[0]
