"""Remote sources have an identity (issue 21, point 4): a cube records the ETag, Last-Modified and size of every
remote object it reads (a COG over HTTP or on S3, each asset of a STAC item, each scene of a mosaic), and a
resume that finds another object at the same URL is refused with one line (exit 2), where before it resumed and
mixed two versions under a claim of bit-identity (the identity of a URL was ``(url, 0, 0.0)``).

Each first run is stopped by an injected full disk (so the cube is incomplete, as after a crash); then the files
behind the local HTTP server and the S3 object are swapped, and the same commands are refused; with
``--overwrite`` they start again and record the new objects.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from affine import Affine

from tests.faults.conftest import assert_bit_identical, error_lines, run_children, tiny_args
from tests.raster.items import S2_BANDS, s2_item, write
from tests.rasters import texture, write_raster


def _bands(folder: Path, seed: int) -> None:
    """Small single-band uint16 files named as the Sentinel-2 band files an item's assets point at."""
    for i, (_, file) in enumerate(S2_BANDS.values()):
        write_raster(folder / file, texture((256, 256), bands=1, seed=seed + i), crs="EPSG:32629",
                     transform=Affine(10, 0, 300000, 0, -10, 3300000), nodata=0)


def _prov(cube: Path) -> dict:
    return json.loads((cube / "zarr.json").read_text())["attributes"]["geodino"]


def test_a_changed_remote_object_is_never_resumed(http_server_factory, s3_env, tiny_weights, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    write_raster(served / "scene.tif", texture((256, 256), seed=1))
    first_size = (served / "scene.tif").stat().st_size
    _bands(served, 10)
    http = http_server_factory(served)
    item = write(tmp_path / "item.json", s2_item(http.url, served))
    s3_url = s3_env.upload(served / "scene.tif", s3_env.create_bucket("identity"), "scenes/scene.tif")
    other = tmp_path / "other.tif"
    write_raster(other, texture((256, 256), seed=2))  # the same size, other pixels: a new version of the scene
    tiny = tiny_args(tiny_weights, threads=2)
    cases = {
        "http": ["embed", f"{http.url}/scene.tif", "-o", str(tmp_path / "http.zarr"), *tiny],
        "s3": ["embed", s3_url, "-o", str(tmp_path / "s3.zarr"), *tiny],
        "mosaic": ["embed", f"{http.url}/scene.tif", "--mosaic", "-o", str(tmp_path / "mosaic"), *tiny],
        "stac": ["embed", str(item), "--bands", "red,green,blue", "-o", str(tmp_path / "stac.zarr"), *tiny],
    }
    swap = ("import shutil, sys, boto3, os\n"
            "shutil.copyfile(sys.argv[1], sys.argv[2])\n"  # the file behind the HTTP server
            "shutil.copyfile(sys.argv[3], sys.argv[4])\n"  # one asset of the STAC item
            "boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).upload_file(sys.argv[1], 'identity', "
            "'scenes/scene.tif')\n")
    b04 = served / S2_BANDS["red"][1]
    shutil.copyfile(b04, tmp_path / "b04.orig.tif")
    write_raster(tmp_path / "b04.new.tif", texture((256, 256), bands=1, seed=99), crs="EPSG:32629",
                 transform=Affine(10, 0, 300000, 0, -10, 3300000), nodata=0)
    # stopped at the 6th of its 16 chunk writes (16 tiles in 4 shards, 4 arrays): an incomplete cube
    runs = [{"argv": argv, "fault": {"errno": "ENOSPC", "after": 6}} for argv in cases.values()]
    runs.append({"sh": [sys.executable, "-c", swap, str(other), str(served / "scene.tif"),
                        str(tmp_path / "b04.new.tif"), str(b04)]})
    runs += [{"argv": argv} for argv in cases.values()]  # refused
    runs.append({"sh": ["sh", "-c", f"cd {tmp_path} && cp http.zarr/zarr.json http.before.json && "
                                    "cp s3.zarr/zarr.json s3.before.json"]})
    # --overwrite starts again from the new objects, in the same process (GDAL's cache of the old bytes is
    # dropped): the cube is the one of the new file read locally, bit for bit
    runs += [{"argv": [*cases[k], "--overwrite"]} for k in ("http", "s3")]
    runs.append({"argv": ["embed", str(other), "-o", str(tmp_path / "local.zarr"), *tiny]})
    rc, results, err = run_children(runs, tmp_path)
    assert rc == 0, err[-2000:]
    n = len(cases)
    for k, name in enumerate(cases):
        first, again = results[k], results[n + 1 + k]
        assert first["rc"] == 4, (name, first)  # stopped mid-run: an incomplete cube, as after a crash
        lines = error_lines(again["stderr"])
        assert again["rc"] == 2 and len(lines) == 1, (name, again)
        assert "cannot be resumed" in lines[0] and "changed since the cube was begun" in lines[0], (name, lines[0])
        assert "--overwrite" in lines[0] and ("etag" in lines[0] or "size" in lines[0]), lines[0]
    assert results[n]["rc"] == 0 and results[2 * n + 1]["rc"] == 0, results
    assert all(r["rc"] == 0 for r in results[2 * n + 2:]), results[2 * n + 2:]
    # the provenance records each object (ETag, Last-Modified, size): the version a cube was begun with...
    old = {k: json.loads((tmp_path / f"{k}.before.json").read_text())["attributes"]["geodino"]["source"]["objects"][0]
           for k in ("http", "s3")}
    assert old["http"]["url"] == f"{http.url}/scene.tif" and old["http"]["last_modified"]
    assert old["http"]["size"] == first_size and old["s3"]["url"] == s3_url and old["s3"]["size"] == first_size
    stac_objs = _prov(tmp_path / "stac.zarr")["source"]["objects"]
    assert {o["url"].rsplit("/", 1)[-1] for o in stac_objs} == {S2_BANDS[b][1] for b in ("red", "green", "blue")}
    assert all(o["etag"] and o["size"] for o in stac_objs)
    scene = _prov(tmp_path / "mosaic" / "epsg32633.zarr")["mosaic"]["scenes"][0]["source"]["objects"][0]
    assert scene["etag"] == old["http"]["etag"]
    # ...and after --overwrite the new one, whose pixels (not GDAL's cached old bytes) made the cube
    for k in ("http", "s3"):
        new = _prov(tmp_path / f"{k}.zarr")["source"]["objects"][0]
        assert new["etag"] != old[k]["etag"] and new["size"] == other.stat().st_size, (k, new, old[k])
        assert_bit_identical(tmp_path / "local.zarr", tmp_path / f"{k}.zarr")
