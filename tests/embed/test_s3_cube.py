"""Cubes on object storage, against the local S3 server: `-o s3://...` through embed, info, open_cube, resume
after a SIGKILL, --radiometry-like, the second-writer refusal and a stale lease, all bit-identical to a local cube."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from geodino.cube import open_cube, read_attrs, tile_status
from geodino.cube.storage import LEASE_KEY, CubeLease, list_keys, zarr_store
from geodino.embed import EmbedConfig, embed
from geodino.errors import CubeLockedError
from tests.embed.test_resume import cli_args, tiles_done
from tests.rasters import texture, write_raster

BUCKET = "cubes"


def object_bytes(where) -> dict[str, bytes]:
    """Every array object of a cube (chunks and shards; not the metadata, which records times and paths)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = zarr_store(where)
    out = {}
    for k in list_keys(where):
        if k.split("/")[0] in ("features", "valid", "cls", "tile_status") and not k.endswith("zarr.json"):
            out[k] = sync(store.get(k, prototype=default_buffer_prototype())).to_bytes()
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    data = texture((640, 704), seed=31)
    data[:, 300:420, :200] = 0  # skipped tiles
    return write_raster(tmp_path_factory.mktemp("s3scene") / "scene.tif", data, nodata=0)


def _cfg(tiny_opts, out, **kw):
    """The job of ``cli_args`` (the same settings, so the same bytes), in-process."""
    return EmbedConfig.build(**tiny_opts, tile=64, halo=16, batch_size=3, output=str(out), **kw)


@pytest.fixture
def local_cube(scene, tiny_opts, tmp_path):
    """The reference: the same job into a local folder."""
    out = tmp_path / "local.zarr"
    [s] = embed([scene], _cfg(tiny_opts, out))
    assert s.status == "complete"
    return out


def test_embed_to_s3_is_bit_identical_and_info_opens_it(s3_env, scene, local_cube, tiny_opts, tmp_path):
    s3_env.create_bucket(BUCKET)
    url = f"s3://{BUCKET}/{tmp_path.name}/scene.zarr"
    [s] = embed([scene], _cfg(tiny_opts, url))
    assert s.status == "complete" and s.output == url
    assert not [k for k in list_keys(url) if k.startswith(LEASE_KEY)]  # released at the end
    a, b = object_bytes(local_cube), object_bytes(url)
    assert a.keys() == b.keys() and len(a) > 20 and all(a[k] == b[k] for k in a)
    assert read_attrs(url)["geodino_status"] == "complete"
    ds, ref = open_cube(url), open_cube(local_cube)
    np.testing.assert_array_equal(ds.features.values, ref.features.values)
    assert ds.rio.crs == ref.rio.crs and ds.encoding["source"] == url
    r = subprocess.run([sys.executable, "-m", "geodino", "info", url, "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["completeness"]["status"] == "complete" and info["completeness"]["pending"] == 0
    # --radiometry-like reads the recorded radiometry from the S3 cube
    from geodino.embed.plan import radiometry_of_cube

    assert radiometry_of_cube(url)["copied_from"] == url
    # storage_options instead of the environment
    opts = {"endpoint": s3_env.endpoint, "access_key_id": s3_env.info["key"],
            "secret_access_key": s3_env.info["secret"], "region": "us-east-1", "client_options": {"allow_http": True}}
    for k in ("AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(k)
    try:
        assert float(open_cube(url, storage_options=opts).features[0, 5, 5]) == float(ref.features[0, 5, 5])
    finally:
        os.environ.update(s3_env.env)


def test_a_writer_killed_mid_run_resumes_on_s3_to_the_same_bytes(s3_env, scene, local_cube, tiny_weights,
                                                                  tmp_path):
    s3_env.create_bucket(BUCKET)
    url = f"s3://{BUCKET}/{tmp_path.name}/killed.zarr"
    proc = subprocess.Popen(cli_args(scene, url, tiny_weights), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300  # generous: interpreter start-up alone is slow on a loaded 2-core machine
    while time.time() < deadline and tiles_done(url) < 15 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed: make the scene larger"
    done = tiles_done(url)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert done > 0, f"no tile was written within the deadline; the writer said: {err.decode()[-800:]}"
    st = tile_status(url)
    assert read_attrs(url)["geodino_status"] == "incomplete" and (st == 0).any() and (st != 0).any()
    assert LEASE_KEY in list_keys(url)  # the killed writer's lease is still there: its process is gone
    r = subprocess.run(cli_args(scene, url, tiny_weights), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "already present" in r.stderr and read_attrs(url)["geodino_status"] == "complete"
    a, b = object_bytes(local_cube), object_bytes(url)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a.get(k) != b.get(k)][:5]


def test_second_writer_refused_and_stale_lease_taken_over_on_s3(s3_env, tiny_opts, tmp_path):
    s3_env.create_bucket(BUCKET)
    src = write_raster(tmp_path / "s.tif", texture((100, 100), seed=1))
    url = f"s3://{BUCKET}/{tmp_path.name}/c.zarr"
    with CubeLease(url):
        with pytest.raises(CubeLockedError, match="being written by pid"):
            embed([src], _cfg(tiny_opts, url))
    # a writer on another machine that stopped renewing long ago
    import obstore

    from geodino.cube.storage import _obstore

    obstore.put(_obstore(url), LEASE_KEY, json.dumps({"owner": "gone", "host": "node-7", "pid": 99,
                                                      "expires": time.time() - 5, "ttl": 60}).encode())
    [s] = embed([src], _cfg(tiny_opts, url))
    assert s.status == "complete" and s.output == url and s.output_bytes > 0
    assert not [k for k in list_keys(url) if k.startswith(LEASE_KEY)]


def test_refused_credentials_and_a_missing_bucket_are_one_line_errors(s3_env, tiny_opts, tmp_path, monkeypatch):
    from geodino.cube.info import cube_info
    from geodino.errors import CredentialsError, RemoteError

    src = write_raster(tmp_path / "s.tif", texture((64, 64), seed=2))
    with pytest.raises(RemoteError, match="bucket does not exist") as e:
        embed([src], _cfg(tiny_opts, "s3://no-such-bucket/c.zarr"))
    assert "\n" not in str(e.value)
    s3_env.create_bucket(BUCKET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(CredentialsError, match=r"refused the credentials \(SignatureDoesNotMatch\)") as e:
        embed([src], _cfg(tiny_opts, f"s3://{BUCKET}/{tmp_path.name}/c.zarr"))
    assert "\n" not in str(e.value)
    with pytest.raises(CredentialsError):
        cube_info(f"s3://{BUCKET}/{tmp_path.name}/c.zarr")
