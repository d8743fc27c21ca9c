"""Every output is a URL: a compact cube, a COG, a GeoParquet table, an index and a head written to ``s3://`` on
the local S3 server (tests/servers.py) hold what the same output written to a local path holds (byte for byte where
the format has no time or random id in it, value for value otherwise); a failed upload leaves no object; an
existing output is refused without ``overwrite`` and left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import geodino
from geodino import analysis
from geodino.cube import storage
from geodino.cube.storage import exists, list_keys, read_bytes, zarr_store
from tests.cubes import make_cube, structured_features

KINDS = ("compact", "cog", "geoparquet", "index", "head")
BUCKET = "outputs"


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """48 x 40 patches of 16-d structured features in 16-patch tiles, a hole of invalid patches."""
    valid = np.ones((48, 40), bool)
    valid[10:20, 5:12] = False
    return str(make_cube(tmp_path_factory.mktemp("s3out") / "cube.zarr",
                         structured_features((48, 40), 16, seed=3), valid, chunk=16))


def _head():
    from geodino.heads.card import CARD_FORMAT, TrainedHead

    return TrainedHead({"weight": np.arange(32, dtype=np.float32).reshape(2, 16), "bias": np.zeros(2, np.float32)},
                       {"format": CARD_FORMAT, "head": "logreg", "classes": ["water", "land"], "feature_dim": 16})


def write(kind: str, cube: str, dest: str, overwrite: bool = False):
    """The output of ``kind`` from ``cube`` at ``dest`` (a path or a URL), through the library call users make."""
    if kind == "compact":
        from geodino.cube.compress import compress

        return compress(cube, dest, k=4, sample=600, overwrite=overwrite).output
    if kind == "cog":
        from geodino.export import write_cog
        from geodino.export.cog import provenance_tags

        ds = geodino.open_cube(cube)
        return write_cog(analysis.feature_map(ds, [0, 1, 2]), dest, nodata=np.nan, overwrite=overwrite,
                         tags=provenance_tags(ds))
    if kind == "geoparquet":
        from geodino.export import write_embeddings

        return write_embeddings(geodino.open_cube(cube), dest, level="patch", overwrite=overwrite)
    if kind == "index":
        from geodino.index import build_index

        return build_index([cube], dest, overwrite=overwrite).path
    from geodino.heads.card import save_head

    return save_head(_head(), dest, overwrite=overwrite)


def _name(kind: str) -> str:
    return {"compact": "c.zarr", "cog": "m.tif", "geoparquet": "t.parquet", "index": "idx",
            "head": "h.safetensors"}[kind]


def _zarr_arrays(where: str) -> dict:
    root = zarr.open_group(zarr_store(where), mode="r")
    return {name: root[name][...] for name in ("codes", "norm", "valid", "compact_components", "compact_scale")}


def assert_same_output(kind: str, local: str, url: str) -> None:
    if kind in ("cog", "geoparquet"):  # no clock or random id in either format: the same bytes
        assert read_bytes(url) == read_bytes(local)
    elif kind == "head":  # the card byte for byte; safetensors orders its header's metadata as it likes
        assert read_bytes(url.replace(".safetensors", ".json")) == read_bytes(local.replace(".safetensors", ".json"))
        from geodino.heads.card import load_head

        a, b = load_head(local), load_head(url)
        assert a.card == b.card == _head().card and a.tensors.keys() == b.tensors.keys() == _head().tensors.keys()
        for name, t in _head().tensors.items():
            np.testing.assert_array_equal(b.tensors[name], t)
            np.testing.assert_array_equal(a.tensors[name], t)
    elif kind == "index":
        for name in ("vectors.faiss", "patches.parquet"):
            assert read_bytes(storage.join(url, name)) == read_bytes(storage.join(local, name))
        a, b = json.loads(read_bytes(storage.join(local, "index.json"))), \
            json.loads(read_bytes(storage.join(url, "index.json")))
        assert {k: v for k, v in a.items() if k != "created"} == {k: v for k, v in b.items() if k != "created"}
        from geodino.index import open_index

        ia, ib = open_index(local), open_index(url)
        q = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
        ha, hb = ia.search(q, 10), ib.search(q, 10)
        np.testing.assert_array_equal(ha["key"], hb["key"])
        np.testing.assert_array_equal(ha["score"], hb["score"])
        assert ha.geometry.geom_equals(hb.geometry).all()
    else:  # compact: the same arrays (the cube id is random, so the metadata differs)
        a, b = _zarr_arrays(local), _zarr_arrays(url)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
        da, db = geodino.open_cube(local), geodino.open_cube(url)
        assert db.attrs["geodino_status"] == "complete"
        np.testing.assert_array_equal(da.features.values, db.features.values)  # decoded transparently


def _nothing_at(url: str) -> bool:
    return not exists(url) and not list_keys(url)


@pytest.mark.parametrize("kind", KINDS)
def test_output_to_s3_equals_the_local_output(kind, cube, s3_env, tmp_path):
    s3_env.create_bucket(BUCKET)
    local, url = str(tmp_path / _name(kind)), f"s3://{BUCKET}/{tmp_path.name}/{_name(kind)}"
    assert str(write(kind, cube, local)) == local
    assert write(kind, cube, url) == url
    assert_same_output(kind, local, url)
    # an existing output is refused and left as it was; overwrite replaces it
    before = {k: read_bytes(storage.join(url, k)) for k in list_keys(url)} if kind in ("compact", "index") else \
        read_bytes(url)
    with pytest.raises(Exception, match="exists|already holds"):
        write(kind, cube, url)
    after = {k: read_bytes(storage.join(url, k)) for k in list_keys(url)} if kind in ("compact", "index") else \
        read_bytes(url)
    assert after == before
    assert write(kind, cube, url, overwrite=True) == url
    assert_same_output(kind, local, url)
    assert not [k for k in list_keys(url) if k.startswith(storage.LEASE_KEY)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_upload_leaves_no_object(kind, cube, s3_env, tmp_path, monkeypatch):
    """The store refuses a write midway (the second object of an index, the compact cube's last step, the only PUT
    of the others): the error surfaces and nothing is left at the URL."""
    import obstore

    s3_env.create_bucket(BUCKET)
    url = f"s3://{BUCKET}/{tmp_path.name}/{_name(kind)}"
    with monkeypatch.context() as m:  # (not monkeypatch.undo(): that would take s3_env's settings too)
        if kind == "compact":
            import geodino.cube.compress as compress_mod

            def cut(store):
                raise ConnectionResetError("connection reset by peer")

            m.setattr(compress_mod, "_mark_complete", cut)
        else:
            real, calls = obstore.put, []

            def put(store, path, *a, **kw):
                calls.append(path)
                if kind in ("index", "head") and len(calls) < 2:
                    return real(store, path, *a, **kw)  # the first object goes up, the next one fails
                raise ConnectionResetError("connection reset by peer")

            m.setattr(obstore, "put", put)
        with pytest.raises(ConnectionResetError):
            write(kind, cube, url)
    assert _nothing_at(url), list_keys(url)
    if kind == "head":
        assert _nothing_at(url.replace(".safetensors", ".json"))


def test_a_missing_bucket_is_one_line_and_writes_nothing(cube, s3_env, tmp_path):
    from geodino.errors import RemoteError

    with pytest.raises(RemoteError, match="bucket does not exist"):
        write("cog", cube, "s3://no-such-bucket/m.tif")
    assert not list(tmp_path.iterdir())


def test_cli_writes_each_output_to_s3(cube, s3_env, tmp_path, capsys):
    """The commands take URLs like `embed -o s3://` does (credentials and endpoint from the environment)."""
    from geodino.cli import main

    s3_env.create_bucket(BUCKET)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    assert main(["compress", cube, "-o", f"{base}/c.zarr", "--k", "4", "--sample", "600"]) == 0
    assert geodino.open_cube(f"{base}/c.zarr").attrs["geodino_status"] == "complete"
    assert main(["export", "cog", cube, f"{base}/m.tif", "--map", "features", "--bands", "0,1,2"]) == 0
    assert main(["export", "geoparquet", cube, f"{base}/t.parquet", "--level", "patch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == int(geodino.open_cube(cube).valid.sum())
    assert main(["index", cube, "-o", f"{base}/idx"]) == 0
    x, y = (float(v) for v in geodino.open_cube(cube).rio.transform() * (20.5, 30.5))
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    assert main(["search", f"{base}/idx", "--near", f"{lon},{lat}", "-k", "5", "-o", f"{base}/hits.parquet"]) == 0
    import geopandas as gpd

    from geodino.cube.storage import open_input

    with open_input(f"{base}/hits.parquet") as f:
        hits = gpd.read_parquet(f)
    assert len(hits) == 5 and (hits.iloc[0]["row"], hits.iloc[0]["col"]) == (30, 20)
    # an existing output: one line, exit code 2, nothing replaced
    before = read_bytes(f"{base}/m.tif")
    assert main(["export", "cog", cube, f"{base}/m.tif", "--map", "valid"]) == 2
    assert "exists" in capsys.readouterr().err and read_bytes(f"{base}/m.tif") == before


def test_predict_writes_its_pair_of_maps_to_s3(cube, s3_env, tmp_path, monkeypatch):
    """`predict_map` to a URL: the class map and the probabilities hold the bytes the local pair holds; a failure
    uploading the second leaves neither; an existing pair is refused and left as it was."""
    import obstore

    from geodino.heads import predict_map
    from geodino.heads.card import TrainedHead

    head = _head()
    head = TrainedHead({**head.tensors, "mean": np.zeros(16, np.float32), "scale": np.ones(16, np.float32)},
                       {**head.card, "colours": [[0, 0, 255], [0, 160, 0]]})  # as train writes them
    s3_env.create_bucket(BUCKET)
    local = predict_map(cube, head, tmp_path / "map.tif", force=True)
    url = f"s3://{BUCKET}/{tmp_path.name}/map.tif"
    res = predict_map(cube, head, url, force=True)
    assert (res.class_map, res.probabilities) == (url, f"s3://{BUCKET}/{tmp_path.name}/map_proba.tif")
    for a, b in ((local.class_map, res.class_map), (local.probabilities, res.probabilities)):
        assert read_bytes(b) == read_bytes(a)
    with pytest.raises(Exception, match="exists"):
        predict_map(cube, head, url, force=True)
    assert read_bytes(url) == read_bytes(local.class_map)

    url2 = f"s3://{BUCKET}/{tmp_path.name}/cut.tif"
    real, calls = obstore.put, []

    def put(store, path, *a, **kw):
        calls.append(path)
        if len(calls) < 2:
            return real(store, path, *a, **kw)  # the probabilities go up, the class map fails
        raise ConnectionResetError("connection reset by peer")

    with monkeypatch.context() as m:
        m.setattr(obstore, "put", put)
        with pytest.raises(ConnectionResetError):
            predict_map(cube, head, url2, force=True)
    assert len(calls) == 2
    assert _nothing_at(url2) and _nothing_at(url2.replace(".tif", "_proba.tif"))
