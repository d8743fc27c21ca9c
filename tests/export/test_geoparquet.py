"""GeoParquet exports of tile and patch embeddings: footprints in the cube's CRS, read by geopandas and DuckDB."""

from __future__ import annotations

import json

import duckdb
import geopandas as gpd
import numpy as np
import pytest
import shapely

import geodino
from geodino.errors import OutputExistsError
from geodino.export import write_embeddings, write_geoparquet
from tests.cubes import make_cube, structured_features


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    f = structured_features((20, 28), 12, seed=3)
    v = np.ones((20, 28), bool)
    v[:8, :8] = False  # tile (0, 0) skipped
    v[10, 3] = False
    path = make_cube(tmp_path_factory.mktemp("gpq") / "c.zarr", f, v, chunk=8)
    return geodino.open_cube(path), f.astype(np.float16).astype(np.float32), v


def test_tile_embeddings_cls_and_mean(tmp_path, cube):
    ds, f, v = cube
    out = write_embeddings(ds, tmp_path / "tiles.parquet")
    g = gpd.read_parquet(out)
    assert g.crs == ds.rio.crs and len(g) == 3 * 4 - 1
    assert (0, 0) not in set(zip(g.tile_y, g.tile_x))
    cls = ds["cls"].values.astype(np.float32)
    for row in g.itertuples():
        np.testing.assert_array_equal(np.asarray(row.embedding, np.float32), cls[row.tile_y, row.tile_x])
        ty, tx = row.tile_y, row.tile_x
        yb, xb = ds.tile_y_bounds.values[ty], ds.tile_x_bounds.values[tx]
        assert row.geometry.equals(shapely.box(min(xb), min(yb), max(xb), max(yb)))
        assert row.n_valid == v[ty * 8:(ty + 1) * 8, tx * 8:(tx + 1) * 8].sum()
    mean = gpd.read_parquet(write_embeddings(ds, tmp_path / "mean.parquet", pool="mean"))
    r = mean[(mean.tile_y == 1) & (mean.tile_x == 0)].iloc[0]
    np.testing.assert_allclose(r.embedding, f[:, 8:16, 0:8][:, v[8:16, 0:8]].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_patch_embeddings_stream_into_row_groups(tmp_path, cube):
    ds, f, v = cube
    out = write_embeddings(ds, tmp_path / "patches.parquet", level="patch")
    g = gpd.read_parquet(out)
    assert len(g) == v.sum() and g.crs == ds.rio.crs
    t = ds.rio.transform()
    for row in g.sample(20, random_state=0).itertuples():
        np.testing.assert_array_equal(np.asarray(row.embedding), f[:, row.row, row.col])
        assert row.geometry.contains(shapely.Point(row.x, row.y)) and abs(row.geometry.area - t.a * -t.e) < 1e-6
    con = duckdb.connect()
    n, dim, first = con.execute(f"SELECT count(*), max(len(embedding)), min(row) FROM '{out}'").fetchone()
    assert (n, dim, first) == (v.sum(), 12, 0)
    emb, wkb = con.execute(f"SELECT embedding, geometry FROM '{out}' WHERE row = 10 AND col = 4").fetchone()
    np.testing.assert_allclose(emb, f[:, 10, 4])
    assert shapely.from_wkb(wkb).equals(g[(g.row == 10) & (g.col == 4)].geometry.iloc[0])
    geo = con.execute(f"SELECT decode(value) FROM parquet_kv_metadata('{out}') WHERE key = 'geo'").fetchone()[0]
    geo = json.loads(geo)
    col = geo["columns"][geo["primary_column"]]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"] and col["crs"]["id"]["code"] == 32633


def test_geodataframes_and_overwrite(tmp_path, cube):
    ds, *_ = cube
    res = ds.geodino.similarity(vector=np.ones(12), top_k=7)
    out = write_geoparquet(res.top, tmp_path / "top.parquet")
    assert out == str(tmp_path / "top.parquet")  # a string for a path as for a URL
    back = gpd.read_parquet(out)
    assert len(back) == 7 and back.crs == ds.rio.crs and back["rank"].tolist() == list(range(1, 8))
    with pytest.raises(OutputExistsError):
        write_geoparquet(res.top, out)
    with pytest.raises(OutputExistsError):
        write_embeddings(ds, out)
    assert len(gpd.read_parquet(out)) == 7


def test_tile_states_are_named_not_numbered():
    """Readers compare tile states with the named constants of geodino.cube.store (PENDING, WRITTEN, SKIPPED,
    FAILED), never with bare numbers that would silently go wrong if the states were renumbered."""
    import ast
    from pathlib import Path

    import geodino

    found = []
    for path in Path(geodino.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Name) and "status" in n.id]
                numbers = [n for n in [node.left, *node.comparators]
                           if isinstance(n, ast.Constant) and type(n.value) is int]
                if names and numbers:
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, found
