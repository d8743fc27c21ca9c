"""Remote COGs over HTTP(S) and S3 through GDAL's virtual filesystems, and their failures in one line."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import rasterio

from geodino.errors import CredentialsError, RasterError, RasterNotFoundError, RemoteError
from geodino.raster import RasterSource
from geodino.raster.remote import gdal_path
from geodino.raster.scene import resolve_scene, scene_name

COG = "s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gdal_paths():
    assert gdal_path("https://h.example/a/b.tif") == "/vsicurl/https://h.example/a/b.tif"
    assert gdal_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    assert gdal_path("gs://bucket/x.tif") == "/vsigs/bucket/x.tif"
    assert gdal_path("az://container/x.tif") == "/vsiaz/container/x.tif"
    assert gdal_path("/vsis3/b/k.tif") == "/vsis3/b/k.tif" and gdal_path("local/x.tif") == "local/x.tif"
    with pytest.raises(RasterError, match="unsupported URL scheme"):
        gdal_path("ftp://h/x.tif")
    assert scene_name("https://h.example/a/b.tif").with_suffix(".zarr").as_posix() == "b.zarr"
    assert scene_name("s3://bucket/k/x.tif").name == "x.tif"


def _local(shared_data):
    with rasterio.open(shared_data / COG) as ds:
        return ds.read(window=((10, 300), (20, 260)))


def test_http_cog_reads_as_the_local_file(http_data, shared_data):
    r = resolve_scene(f"{http_data.url}/{COG}", bands="B04,B03,B02")
    assert r.path == f"/vsicurl/{http_data.url}/{COG}" and r.stac is None
    src = RasterSource(r.path, bands=r.bands)
    data, _ = src.read(10, 20, 290, 240)
    np.testing.assert_array_equal(data, _local(shared_data)[[2, 1, 0]])
    assert any(status == 206 for *_, status in http_data.requests())


def test_s3_cog_reads_as_the_local_file(s3_env, shared_data):
    url = s3_env.upload(shared_data / COG, s3_env.create_bucket("geodino-remote"), f"scenes/{COG}")
    r = resolve_scene(url, bands="B04,B03,B02")
    assert r.path == f"/vsis3/geodino-remote/scenes/{COG}"
    data, _ = RasterSource(r.path, bands=r.bands).read(10, 20, 290, 240)
    np.testing.assert_array_equal(data, _local(shared_data)[[2, 1, 0]])


def test_remote_failures(http_data, s3_env, shared_data, monkeypatch):
    with pytest.raises(RemoteError, match="cannot reach the server"):
        resolve_scene(f"http://127.0.0.1:{closed_port()}/x.tif")
    with pytest.raises(RasterNotFoundError, match="does not exist"):
        resolve_scene(f"{http_data.url}/missing.tif")
    bucket = s3_env.create_bucket("geodino-remote")
    with pytest.raises(RasterNotFoundError, match="does not exist"):
        resolve_scene(f"s3://{bucket}/missing.tif")
    # a bucket GDAL has not listed yet (it caches listings within a process)
    url = s3_env.upload(shared_data / COG, s3_env.create_bucket("geodino-refused"), "refused.tif")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(CredentialsError, match="refused the credentials"):
        resolve_scene(url)
