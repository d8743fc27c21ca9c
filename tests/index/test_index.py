"""The similarity index across cubes: what it stores, that search finds what exact search finds, queries from
points, and the refusals (other models, other vector kinds, incomplete cubes), through the library and the CLI."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import zarr
from pyproj import Transformer
from shapely import Point

from geodino.cli import main
from geodino.embed import EmbedConfig, embed
from geodino.errors import CubeError, IndexMismatchError, VectorIndexError
from geodino.index import build_index, open_index, query_examples, query_near, search
from geodino.models import build_model, save_weights
from tests.conftest import randomize_
from tests.embed.conftest import MODEL, TINY
from tests.rasters import texture, write_raster

S2 = "s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif"
NAIP = "naip_m_3607717_sw_18_1_20160620_subset.tif"


def _embed(scene, out, weights, **kw):
    cfg = EmbedConfig.build(model=MODEL, weights=str(weights), arch=dict(TINY), device="cpu", tile=256, halo=32,
                            output=str(out), **kw)
    [s] = embed([scene], cfg)
    assert s.status == "complete"
    return str(out)


@pytest.fixture(scope="module")
def cubes(shared_data, tiny_weights, tmp_path_factory):
    """Two cubes of one model in two UTM zones (Sentinel-2 in 29N, NAIP in 18N)."""
    d = tmp_path_factory.mktemp("cubes")
    return [_embed(shared_data / S2, d / "s2.zarr", tiny_weights, bands="B04,B03,B02", radiometry="s2-l2a", s2_offset=0),
            _embed(shared_data / NAIP, d / "naip.zarr", tiny_weights)]


@pytest.fixture(scope="module")
def index_dir(cubes, tmp_path_factory):
    return build_index(cubes, tmp_path_factory.mktemp("idx") / "index", relax=("radiometry",)).path


def _valid_features(cube):
    root = zarr.open_group(cube, mode="r")
    v = root["valid"][...]
    r, c = np.nonzero(v)
    return root["features"][...][:, r, c].T.astype(np.float32), r, c


def _exact(index_dir, cubes, q, k):
    """Brute-force cosine top-k over the vectors each sidecar row points at (keys are sidecar rows)."""
    p = gpd.read_parquet(f"{index_dir}/patches.parquet")
    feats = [zarr.open_group(c, mode="r")["features"][...] for c in cubes]
    f = np.stack([feats[ci][:, r, c] for ci, r, c in zip(p["cube"], p["row"], p["col"])]).astype(np.float32)
    s = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    return np.argsort(-s)[:k], s


def test_index_holds_every_valid_patch_with_its_place(cubes, index_dir):
    idx = open_index(index_dir)
    n = [len(_valid_features(c)[0]) for c in cubes]
    assert idx.meta["vectors"] == sum(n) and [c["vectors"] for c in idx.cubes] == n
    assert idx.meta["kind"] == {"name": "features", "dtype": "float16", "dim": 64}
    assert [c["crs"] for c in idx.cubes] == ["EPSG:32629", "EPSG:26918"]
    p = gpd.read_parquet(f"{index_dir}/patches.parquet")
    assert p.crs.to_epsg() == 4326 and list(p["key"]) == list(range(sum(n)))
    # a footprint is the patch cell, reprojected: check one against pyproj by hand
    row = p.iloc[n[0] + 7]
    root = zarr.open_group(cubes[1], mode="r")
    a, _, c, _, e, f = root.attrs["spatial:transform"]
    x0, y0 = c + row["col"] * a, f + row["row"] * e
    assert row["x"] == pytest.approx(x0 + a / 2) and row["y"] == pytest.approx(y0 + e / 2)
    lon, lat = Transformer.from_crs(26918, 4326, always_xy=True).transform([x0, x0 + a, x0 + a, x0],
                                                                           [y0, y0, y0 + e, y0 + e])
    got = np.asarray(row.geometry.exterior.coords)[:4]
    np.testing.assert_allclose(sorted(got.tolist()), sorted(np.c_[lon, lat].tolist()), atol=1e-9)


@pytest.mark.parametrize("ivf", [False, True], ids=["exact scan", "inverted file"])
def test_search_finds_what_exact_search_finds(cubes, index_dir, tmp_path, ivf):
    if ivf:  # force the inverted file on this small index, and probe every list
        index_dir = build_index(cubes, tmp_path / "ivf", ivf_min=0, relax=["radiometry"]).path
    idx = open_index(index_dir)
    assert (idx.meta["params"]["nlist"] > 0) == ivf
    feats, _, _ = _valid_features(cubes[0])
    rng = np.random.default_rng(0)
    for q in feats[rng.choice(len(feats), 5, replace=False)]:
        hits = idx.search(q, k=50, nprobe=idx.meta["params"]["nlist"] or None)
        truth, s = _exact(index_dir, cubes, q, 50)
        # vs float32 brute force: the same neighbours up to ties within float16 rounding of the 50th score
        assert len(set(hits["key"]) & set(truth)) >= 45
        assert s[hits["key"]].min() >= s[truth[-1]] - 2e-3
        np.testing.assert_allclose(hits["score"], s[hits["key"]], atol=2e-3)
        assert (np.diff(hits["score"]) <= 1e-6).all() and list(hits["rank"]) == list(range(1, 51))


def test_query_near_takes_the_patch_under_the_point(cubes, index_dir):
    root = zarr.open_group(cubes[0], mode="r")
    a, _, c, _, e, f = root.attrs["spatial:transform"]
    r, col = 9, 20
    x, y = c + (col + 0.5) * a, f + (r + 0.5) * e
    lon, lat = Transformer.from_crs(32629, 4326, always_xy=True).transform(x, y)
    q = query_near(index_dir, lon, lat)
    np.testing.assert_array_equal(q[0], root["features"][:, r, col].astype(np.float32))
    top = search(index_dir, q, k=3).iloc[0]
    assert (top.row, top.col, top.cube.endswith("s2.zarr")) == (r, col, True) and top.score == pytest.approx(1, abs=1e-3)
    with pytest.raises(VectorIndexError, match="outside every cube"):
        query_near(index_dir, 100.0, 10.0)


def test_examples_query_is_positives_minus_negatives(cubes, index_dir):
    pts = lambda xy: gpd.GeoDataFrame(geometry=[Point(p) for p in xy], crs="EPSG:32629")  # noqa: E731
    root = zarr.open_group(cubes[0], mode="r")
    a, _, c, _, e, f = root.attrs["spatial:transform"]
    cells = [(3, 4), (10, 11), (20, 5)]
    xy = [(c + (cc + 0.5) * a, f + (rr + 0.5) * e) for rr, cc in cells]
    q = query_examples(index_dir, pts(xy[:2]), pts(xy[2:]))
    v = np.stack([root["features"][:, rr, cc].astype(np.float32) for rr, cc in cells])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(q[0], v[:2].mean(0) - v[2], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def other_cubes(tiny_weights, tmp_path_factory):
    """A cube of another model (other weights) and one of float32 features, on a small synthetic scene."""
    d = tmp_path_factory.mktemp("other")
    scene = write_raster(d / "scene.tif", texture((96, 96), seed=3))
    other = save_weights(randomize_(build_model(MODEL, **TINY), seed=5), d / "other.safetensors")
    return {"other model": _embed(scene, d / "other.zarr", other, radiometry="minmax", minmax=(0, 4000)),
            "float32": _embed(scene, d / "f32.zarr", tiny_weights, radiometry="minmax", minmax=(0, 4000),
                              dtype="float32")}


def test_search_from_the_indexed_cube_itself_with_random_weights(shared_data, tmp_path, capsys):
    """`search --cube` with the very cube of the index, made with --weights random (the index once stored a list
    where the cube gave a tuple, and refused it)."""
    cube = _embed(shared_data / S2, tmp_path / "rand.zarr", "random", bands="B04,B03,B02", radiometry="s2-l2a",
                  s2_offset=0)
    code, out = _cli(capsys, "index", cube, "-o", tmp_path / "idx")
    assert code == 0, out.err
    code, out = _cli(capsys, "search", tmp_path / "idx", "--near", "-11.3239,25.0673", "--cube", cube, "-k", "3",
                     "-o", tmp_path / "hits.parquet")
    assert code == 0, out.err
    assert gpd.read_parquet(tmp_path / "hits.parquet").iloc[0].score == pytest.approx(1, abs=1e-3)


def test_index_of_a_compact_cube(cubes, tmp_path):
    """A compact cube is indexed through the reading layer (decoded features); mixing it with full cubes is a
    difference of the one rule, refused unless relaxed."""
    import geodino
    from geodino.cube.compress import compress

    compress(cubes[0], tmp_path / "c.zarr", k=16, sample=500)
    info = build_index([tmp_path / "c.zarr"], tmp_path / "idx")
    ds = geodino.open_cube(tmp_path / "c.zarr")
    assert info.vectors == int(ds["valid"].sum()) and info.kind == {"name": "features", "dtype": "float32", "dim": 64}
    idx = open_index(info.path)
    q = ds["features"].values[:, 9, 20]
    top = idx.search(q, k=1).iloc[0]
    assert (top.row, top.col) == (9, 20) and top.score == pytest.approx(1, abs=1e-3)
    with pytest.raises(IndexMismatchError, match="feature encoding differs"):
        build_index([cubes[0], tmp_path / "c.zarr"], tmp_path / "mixed")


def _cli(capsys, *args):
    code = main([*map(str, args)])
    return code, capsys.readouterr()


def test_cli_index_and_search(cubes, tmp_path, capsys):
    code, out = _cli(capsys, "index", *cubes, "-o", tmp_path / "idx")  # two sensors: refused unless relaxed
    _assert_one_line(code, out, "radiometry kind differs (s2-l2a for cube", "--force")
    code, out = _cli(capsys, "index", *cubes, "-o", tmp_path / "idx", "--relax", "radiometry")
    assert code == 0, out.err
    compat = open_index(tmp_path / "idx").meta["compat"]
    assert compat["relaxed"] == ["radiometry"] and not compat["forced"]
    assert [d["field"] for d in compat["differences"][0]["differences"]] == ["radiometry"] * len(
        compat["differences"][0]["differences"])
    root = zarr.open_group(cubes[1], mode="r")
    a, _, c, _, e, f = root.attrs["spatial:transform"]
    lon, lat = Transformer.from_crs(26918, 4326, always_xy=True).transform(c + 5.5 * a, f + 6.5 * e)
    code, out = _cli(capsys, "search", tmp_path / "idx", "--near", f"{lon},{lat}", "-k", "7", "-o",
                     tmp_path / "near.parquet")
    assert code == 0, out.err
    hits = gpd.read_parquet(tmp_path / "near.parquet")
    assert len(hits) == 7 and hits.crs.to_epsg() == 4326 and hits.geometry.is_valid.all()
    assert (hits.iloc[0].row, hits.iloc[0].col) == (6, 5) and hits.iloc[0].geometry.contains(Point(lon, lat))
    pos = gpd.GeoDataFrame(geometry=[Point(lon, lat)], crs="EPSG:4326")
    pos.to_file(tmp_path / "pos.gpkg")
    code, out = _cli(capsys, "search", tmp_path / "idx", "--positives", tmp_path / "pos.gpkg", "-k", "7", "-o",
                     tmp_path / "pos.parquet")
    assert code == 0, out.err
    assert list(gpd.read_parquet(tmp_path / "pos.parquet")["key"]) == list(hits["key"])


def _assert_one_line(code, out, *needles):
    errors = [line for line in out.err.splitlines() if line.startswith("geodino: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out.err, out.err
    for n in needles:
        assert n in errors[0], errors[0]


def test_refusals(cubes, other_cubes, index_dir, tmp_path, capsys):
    code, out = _cli(capsys, "index", cubes[0], other_cubes["other model"], "-o", tmp_path / "mixed")
    _assert_one_line(code, out, "not comparable: weights differ (sha256 ")
    assert not (tmp_path / "mixed").exists()
    code, out = _cli(capsys, "index", cubes[0], other_cubes["float32"], "-o", tmp_path / "kinds", "--relax",
                     "radiometry", "--relax", "tile")  # (the small scene's tile shrank to its 96 px)
    _assert_one_line(code, out, "float32 x 64", "float16 x 64")
    # a query taken from a cube of another model
    root = zarr.open_group(other_cubes["other model"], mode="r")
    a, _, c, _, e, f = root.attrs["spatial:transform"]
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(c + 2.5 * a, f + 2.5 * e)
    code, out = _cli(capsys, "search", index_dir, "--near", f"{lon},{lat}", "--cube", other_cubes["other model"],
                     "-o", tmp_path / "h.parquet")
    _assert_one_line(code, out, "not comparable: weights differ")
    code, out = _cli(capsys, "search", tmp_path, "--near", "0,0")
    _assert_one_line(code, out, "not a geodino index")
    code, out = _cli(capsys, "index", cubes[0], "-o", index_dir)
    _assert_one_line(code, out, "already holds an index")
    code, out = _cli(capsys, "search", index_dir, "--near", "29.4,-8.5")
    _assert_one_line(code, out)


@pytest.mark.filterwarnings("ignore")
def test_incomplete_cube_is_refused(cubes, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(cubes[1], bad)
    g = zarr.open_group(str(bad), mode="r+")
    g.attrs["geodino_status"] = "incomplete"
    zarr.consolidate_metadata(str(bad))
    with pytest.raises(CubeError, match="incomplete"):
        build_index([cubes[0], str(bad)], tmp_path / "idx")
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.building*"))
    with pytest.raises(IndexMismatchError):
        open_index(build_index([cubes[0]], tmp_path / "one").path).search(np.ones(32), 3)


def test_readme_index_commands_run(shared_data, tmp_path, capsys, monkeypatch):
    """README's demo embed, then its `geodino index` and `geodino search` commands, as written."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    demo = next(b for b in blocks if "cpu-demo.yaml" in b)
    ours = next(b for b in blocks if "geodino index" in b)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()  # README's blocks write under out/
    repo = Path(__file__).resolve().parents[2]
    for line in [demo.replace("\\\n", " ").strip(), *ours.strip().splitlines()]:
        argv = shlex.split(line)
        argv = [str(shared_data / Path(a).name) if a.startswith("../shared/data/") else
                str(repo / a) if a.startswith("configs/") else a for a in argv]
        assert argv[0] == "geodino"
        code = main(argv[1:])
        assert code == 0, capsys.readouterr().err
    hits = gpd.read_parquet(tmp_path / "out" / "hits.parquet")
    assert len(hits) == 20 and hits.iloc[0].geometry.contains(Point(-11.3239, 25.0673))


def test_a_cube_with_valid_patches_but_no_written_tile_is_named_damaged(tmp_path):
    """Its tile_status says nothing was written while `valid` holds patches: one line naming the cube (this path
    read an undefined name before)."""
    from tests.cubes import make_cube, structured_features

    good = make_cube(tmp_path / "good.zarr", structured_features((32, 32), 16, seed=1), chunk=16)
    bad = make_cube(tmp_path / "bad.zarr", structured_features((32, 32), 16, seed=2), chunk=16)
    root = zarr.open_group(str(bad), mode="r+")
    root["tile_status"][...] = 0
    with pytest.raises(CubeError, match="bad.zarr is damaged"):
        build_index([str(good), str(bad)], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
