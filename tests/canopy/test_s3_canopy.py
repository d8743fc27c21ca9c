"""`geodino canopy` to object storage, against the local S3 server: the height cube and the COG written to
``s3://`` hold what the same job writes to local paths (cube chunks byte for byte, heights value for value, the
COG byte for byte as the cube's export), a rerun whose COG is missing is already complete and writes only the
COG, an existing COG is refused without ``--overwrite`` and left as it was, a cube location holding other data
is refused, and the CLI's ``-o s3://...`` works end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from geodino.canopy import canopy, open_heights
from geodino.canopy.run import export_cog
from geodino.cli import main
from geodino.cube import read_attrs
from geodino.cube.storage import LEASE_KEY, exists, list_keys, delete, read_bytes, zarr_store
from geodino.errors import CubeExistsError, OutputExistsError
from tests.canopy.conftest import cli_args, np_heights, scene_raster

BUCKET = "heights"
# the tags that name this very run: where its outputs are, its cube's id, its command or call
RUN_TAGS = {"geodino_cube_id", "geodino_provenance", "geodino_command", "geodino_call"}


def chunk_bytes(where) -> dict[str, bytes]:
    """The array objects of a height cube (not the metadata, which records times, paths and ids)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = zarr_store(where)
    return {k: sync(store.get(k, prototype=default_buffer_prototype())).to_bytes() for k in list_keys(where)
            if k.split("/")[0] in ("heights", "tile_status") and not k.endswith("zarr.json")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return scene_raster(tmp_path_factory.mktemp("s3chm") / "scene.tif", shape=(150, 140))


@pytest.fixture
def local(scene, opts, tmp_path):
    """The reference: the same job to local paths."""
    s = canopy(scene, output=str(tmp_path / "local.tif"), **opts)
    assert s.status == "complete"
    return s


def test_canopy_to_s3_matches_the_local_run_and_resumes_and_refuses(s3_env, scene, opts, local, tmp_path):
    s3_env.create_bucket(BUCKET)
    cog = f"s3://{BUCKET}/{tmp_path.name}/chm.tif"
    cube = f"s3://{BUCKET}/{tmp_path.name}/chm.heights.zarr"  # the default: beside the COG
    s = canopy(scene, output=cog, **opts)
    assert s.status == "complete" and s.output == cog and s.cube == cube
    assert s.tiles_total == local.tiles_total and s.tiles_written == local.tiles_written
    assert read_attrs(cube)["geodino_status"] == "complete"
    assert not [k for k in list_keys(cube) if k.startswith(LEASE_KEY)]  # released at the end
    a, b = chunk_bytes(local.cube), chunk_bytes(cube)
    assert a.keys() == b.keys() and len(a) > 8 and all(a[k] == b[k] for k in a)
    np.testing.assert_array_equal(open_heights(cube).values, open_heights(local.cube).values)
    # the COG: valid, the local run's pixels and georeference, and byte for byte the export of its cube
    data = read_bytes(cog)
    (tmp_path / "down.tif").write_bytes(data)
    assert cog_validate(str(tmp_path / "down.tif"))[0]
    with rasterio.open(tmp_path / "down.tif") as got, rasterio.open(local.output) as ref:
        pg, pr = dict(got.profile), dict(ref.profile)
        assert np.isnan(pg.pop("nodata")) and np.isnan(pr.pop("nodata"))  # NaN != NaN
        assert pg == pr and got.overviews(1) == ref.overviews(1)
        np.testing.assert_array_equal(got.read(1), ref.read(1))
        t, r = got.tags(), ref.tags()
        assert {k: v for k, v in t.items() if k not in RUN_TAGS} == {k: v for k, v in r.items() if k not in RUN_TAGS}
        assert json.loads(t["geodino_provenance"])["cog"]["path"] == cog
    export_cog(cube, tmp_path / "again.tif")
    assert (tmp_path / "again.tif").read_bytes() == data
    # a rerun whose COG is missing (an export cut off): already complete, no tile written, only the COG made
    delete(cog)
    s2 = canopy(scene, output=cog, **opts)
    assert s2.status == "already complete" and s2.tiles_written == 0 and read_bytes(cog) == data
    # an existing COG is refused without overwrite (before anything is written), and kept
    with pytest.raises(OutputExistsError, match="exists: pass --overwrite"):
        canopy(scene, output=cog, **{**opts, "overwrite": False, "tile": 32})
    assert read_bytes(cog) == data
    # --overwrite replaces both
    s3 = canopy(scene, output=cog, overwrite=True, **opts)
    assert s3.status == "complete" and s3.tiles_written == s.tiles_written
    assert chunk_bytes(cube) == b


def test_s3_cube_path_holding_other_data_is_refused(s3_env, scene, opts, tmp_path):
    s3_env.create_bucket(BUCKET)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    src = tmp_path / "other.txt"
    src.write_text("not a cube")
    s3_env.upload(src, BUCKET, f"{tmp_path.name}/data.zarr/notes.txt")
    with pytest.raises(CubeExistsError, match="is not a geodino height cube"):
        canopy(scene, output=f"{base}/chm.tif", cube=f"{base}/data.zarr", **opts)
    assert not exists(f"{base}/chm.tif") and list_keys(f"{base}/data.zarr") == ["notes.txt"]
    with pytest.raises(OutputExistsError, match="is a folder"):
        canopy(scene, output=f"{base}/data.zarr", **opts)


def test_cli_writes_to_s3(s3_env, scene, opts, tmp_path, capfd):
    s3_env.create_bucket(BUCKET)
    cog = f"s3://{BUCKET}/{tmp_path.name}/x.tif"
    code = main(["canopy", str(scene), "-o", cog, *cli_args(opts)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert f"{cog}: complete" in err
    assert exists(cog) and read_attrs(f"s3://{BUCKET}/{tmp_path.name}/x.heights.zarr")["geodino_status"] == \
        "complete"
    (tmp_path / "x.tif").write_bytes(read_bytes(cog))
    assert np.isfinite(np_heights(tmp_path / "x.tif")).any()
    code = main(["canopy", str(scene), "-o", cog, *cli_args(opts)])
    err = capfd.readouterr().err
    assert code == 2 and "exists: pass --overwrite" in err, err
    assert main(["info", f"s3://{BUCKET}/{tmp_path.name}/x.heights.zarr"]) == 0
    assert "(complete)" in capfd.readouterr().out
    # a local COG from a height cube on the object store
    cube = f"s3://{BUCKET}/{tmp_path.name}/mixed.heights.zarr"
    code = main(["canopy", str(scene), "-o", str(tmp_path / "mixed.tif"), "--cube", cube, *cli_args(opts)])
    err = capfd.readouterr().err
    assert code == 0, err
    np.testing.assert_array_equal(np_heights(tmp_path / "mixed.tif"), np_heights(tmp_path / "x.tif"))
