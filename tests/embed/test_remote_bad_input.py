"""Bad remote inputs given to `geodino embed` beside good ones (issue 13, point 6): an unreachable URL, a missing
object over HTTP and S3, refused S3 credentials. Each gives one line and exit code 2, creates no cube, and leaves
the cubes already in the output directory byte for byte as they were (STAC items' cases: test_stac_embed.py)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from geodino.cube import read_attrs
from tests.embed.conftest import MODEL, TINY
from tests.embed.test_bad_input import assert_clean_failure
from tests.raster.test_remote import closed_port
from tests.rasters import texture, write_raster


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".geodino.lock"}


def _embed(capsys, weights, *args):
    from geodino.cli import main

    code = main(["embed", *map(str, args), "--model", MODEL, "--weights", str(weights),
                 *[f"--arch={k}={v}" for k, v in TINY.items()], "--tile", "64", "--halo", "16", "--device", "cpu",
                 "--radiometry", "minmax", "--minmax", "0,4000"])
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


@pytest.fixture
def written(tmp_path, tiny_weights, capsys):
    """A directory already holding a complete cube of a good scene (made by the same command's first run)."""
    good = write_raster(tmp_path / "good.tif", texture((96, 96), seed=2))
    out = tmp_path / "cubes"
    out.mkdir()
    r = _embed(capsys, tiny_weights, good, write_raster(tmp_path / "second.tif", texture((96, 96), seed=3)),
               "-o", out)
    assert r.returncode == 0, r.stderr
    return good, out, _digest(out)


def _check(r, out, before, *needles):
    assert_clean_failure(r, *needles)
    assert _digest(out) == before  # nothing already written changed, and no cube was added
    assert all(read_attrs(c)["geodino_status"] == "complete" for c in out.glob("*.zarr"))


def test_unreachable_url(written, tiny_weights, capsys):
    good, out, before = written
    r = _embed(capsys, tiny_weights, good, f"http://127.0.0.1:{closed_port()}/scene.tif", "-o", out)
    _check(r, out, before, "cannot reach the server", "scene.tif")


def test_missing_object_over_http(written, tiny_weights, http_server_factory, tmp_path, capsys):
    good, out, before = written
    served = tmp_path / "served"
    served.mkdir()
    http = http_server_factory(served)
    r = _embed(capsys, tiny_weights, good, f"{http.url}/gone.tif", "-o", out)
    _check(r, out, before, "gone.tif", "does not exist")


def test_missing_object_and_refused_credentials_on_s3(written, tiny_weights, s3_env, tmp_path, monkeypatch, capsys):
    good, out, before = written
    bucket = s3_env.create_bucket("geodino-bad-input")
    r = _embed(capsys, tiny_weights, good, f"s3://{bucket}/missing.tif", "-o", out)
    _check(r, out, before, "missing.tif", "does not exist")
    # a bucket GDAL has not listed yet in this process (it caches listings)
    url = s3_env.upload(write_raster(tmp_path / "up.tif", texture((96, 96), seed=4)),
                        s3_env.create_bucket("geodino-bad-creds"), "up.tif")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    r = _embed(capsys, tiny_weights, good, url, "-o", out)
    _check(r, out, before, "refused the credentials", "AWS_SECRET_ACCESS_KEY")
