"""`geodino embed item.json --bands red,green,blue` end to end, over a local HTTP server and a local S3 server,
and the bad inputs of remote and STAC scenes (one line, exit code 2, no cube)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
import zarr

from geodino.cube import open_cube, read_attrs
from geodino.embed import EmbedConfig, embed
from tests.embed.conftest import MODEL, TINY
from tests.embed.test_bad_input import assert_clean_failure
from tests.raster.items import ITEM_ID, S2_BANDS, s2_item, write
from tests.raster.test_remote import closed_port

OPTS = ["--tile", "256", "--halo", "32", "--device", "cpu", "--radiometry", "s2-l2a"]


def cli(weights, *args, env=None):
    return subprocess.run([sys.executable, "-m", "geodino", "embed", *map(str, args), "--model", MODEL,
                           "--weights", str(weights), *[f"--arch={k}={v}" for k, v in TINY.items()], *OPTS],
                          capture_output=True, text=True, timeout=600, env=env)


def cli_here(weights, *args, capsys):
    """The same command line run in this process (no interpreter start-up): (exit code, stderr)."""
    from geodino.cli import main

    code = main(["embed", *map(str, args), "--model", MODEL, "--weights", str(weights),
                 *[f"--arch={k}={v}" for k, v in TINY.items()], *OPTS])
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


def features(cube):
    return zarr.open_group(str(cube), mode="r")["features"][...]


@pytest.fixture(scope="module")
def local_cube(shared_data, tiny_weights, tmp_path_factory):
    """The same three bands stacked into one GeoTIFF by rasterio, embedded with the same options: the truth."""
    d = tmp_path_factory.mktemp("local")
    bands = []
    for key in ("red", "green", "blue"):
        with rasterio.open(shared_data / S2_BANDS[key][1]) as ds:
            bands.append(ds.read(1))
            profile = ds.profile
    with rasterio.open(d / "rgb.tif", "w", **(profile | {"count": 3})) as out:
        out.write(np.stack(bands))
    cfg = EmbedConfig.build(model=MODEL, weights=str(tiny_weights), arch=dict(TINY), device="cpu", tile=256,
                            halo=32, radiometry="s2-l2a", s2_offset=0, output=str(d / "rgb.zarr"))
    [s] = embed([d / "rgb.tif"], cfg)
    assert s.status == "complete"
    return d / "rgb.zarr"


def test_stac_item_over_http(http_data, shared_data, tiny_weights, local_cube, tmp_path, capsys):
    item = write(tmp_path / "item.json", s2_item(http_data.url, shared_data))
    r = cli(tiny_weights, item, "--bands", "red,green,blue")
    assert r.returncode == 0, r.stderr
    assert "metadata BOA_ADD_OFFSET=0" in r.stderr  # the offset came from the item
    cube = tmp_path / "item.zarr"
    np.testing.assert_array_equal(features(cube), features(local_cube))
    ds = open_cube(cube)
    assert ds.rio.crs.to_epsg() == 32629 and ds.rio.transform() == open_cube(local_cube).rio.transform()
    prov = read_attrs(cube)["geodino"]
    assert prov["stac"]["item_id"] == ITEM_ID and prov["stac"]["platform"] == "sentinel-2a"
    assert [b["asset"] for b in prov["stac"]["bands"]] == ["red", "green", "blue"]
    assert prov["bands"]["names"] == ["B04", "B03", "B02"] and prov["source"]["path"].startswith("stac:")
    # the same command again finds the same input: nothing to do
    again = cli_here(tiny_weights, item, "--bands", "red,green,blue", capsys=capsys)
    assert again.returncode == 0 and "already complete" in again.stderr, again.stderr


def test_stac_item_url_with_s3_assets(s3_env, http_server_factory, shared_data, tiny_weights, local_cube,
                                      tmp_path, capsys, monkeypatch):
    served = tmp_path / "catalog"
    served.mkdir()
    http = http_server_factory(served)
    for name in ("geodino-stac", "geodino-refused"):  # GDAL caches bucket listings: one bucket per case
        bucket = s3_env.create_bucket(name)
        for _, file in S2_BANDS.values():
            s3_env.upload(shared_data / file, bucket, f"tiles/29/R/KH/{file}")
        write(served / f"{name}.json", s2_item(f"s3://{bucket}/tiles/29/R/KH", shared_data))
    r = cli_here(tiny_weights, f"{http.url}/geodino-stac.json", "-o", tmp_path / "s3.zarr", "--bands",
                 "red,green,blue", capsys=capsys)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(features(tmp_path / "s3.zarr"), features(local_cube))
    assert read_attrs(tmp_path / "s3.zarr")["geodino"]["stac"]["bands"][0]["path"].startswith("/vsis3/geodino-stac/")

    # credentials refused: one line, exit 2, no cube
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    r = cli_here(tiny_weights, f"{http.url}/geodino-refused.json", "-o", tmp_path / "refused.zarr", "--bands",
                 "red,green,blue", capsys=capsys)
    assert_clean_failure(r, "refused the credentials", "asset 'red'")
    assert not (tmp_path / "refused.zarr").exists()


def _item(tmp_path, http_data, shared_data, **props):
    return write(tmp_path / "item.json", s2_item(http_data.url, shared_data, **props))


@pytest.mark.parametrize("case", ["unreachable", "missing band", "missing asset", "no projection"])
def test_bad_stac_input(case, http_data, shared_data, tiny_weights, tmp_path, capsys):
    bands = "red,green,blue"
    if case == "unreachable":
        scene, needles = f"http://127.0.0.1:{closed_port()}/item.json", ["cannot reach"]
    elif case == "missing band":
        scene, bands, needles = _item(tmp_path, http_data, shared_data), "red,green,swir16", ["'swir16' is not in"]
    elif case == "missing asset":
        d = s2_item(http_data.url, shared_data)
        d["assets"]["green"]["href"] = f"{http_data.url}/gone/B03.tif"
        scene, needles = write(tmp_path / "item.json", d), ["asset 'green'", "does not exist"]
    else:
        scene, needles = _item(tmp_path, http_data, shared_data, **{"proj:epsg": None}), ["no projection"]
    r = cli_here(tiny_weights, scene, "-o", tmp_path / "out.zarr", "--bands", bands, capsys=capsys)
    assert_clean_failure(r, *needles)
    assert not (tmp_path / "out.zarr").exists()


def test_item_collection_makes_one_cube_per_item(shared_data, tiny_weights, tmp_path, capsys):
    from tests.raster.items import collection

    crops = tmp_path / "crops"
    crops.mkdir()
    for _, file in S2_BANDS.values():  # 128 px windows of the real band files, to keep the run short
        with rasterio.open(shared_data / file) as ds:
            w = rasterio.windows.Window(300, 200, 128, 128)
            prof = ds.profile | {"width": 128, "height": 128, "transform": ds.window_transform(w),
                                 "blockxsize": 128, "blockysize": 128}
            with rasterio.open(crops / file, "w", **prof) as out:
                out.write(ds.read(window=w))
    items = []
    for day in ("20200219", "20200224"):
        it = s2_item(str(crops), shared_data)
        it["id"] = f"S2A_29RKH_{day}_0_L2A"
        for a in it["assets"].values():
            a.pop("proj:shape", None), a.pop("proj:transform", None)
        items.append(it)
    coll = write(tmp_path / "search.json", collection(*items))
    r = cli_here(tiny_weights, coll, "-o", tmp_path / "cubes", "--bands", "red,green,blue", capsys=capsys)
    assert r.returncode == 0, r.stderr
    for it in items:
        cube = tmp_path / "cubes" / f"{it['id']}.zarr"
        assert read_attrs(cube)["geodino_status"] == "complete"
        assert read_attrs(cube)["geodino"]["stac"]["item_id"] == it["id"]
