"""`geodino embed --mosaic -o s3://...` against the local S3 server: the per-CRS cubes written to object storage
hold the local run's chunks byte for byte, the manifest and the STAC files are the local run's bytes, readers
(`open_cube`, `tile_sources`) work on the URLs, a rerun is already complete, an interrupted run resumes to the same
bytes from the command line, and the refusals of local folders hold for URLs with the same one-line messages."""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest

from geodino import open_cube
from geodino.cli import main
from geodino.cube import read_attrs
from geodino.cube.mosaic import COLLECTION, MANIFEST, tile_sources
from geodino.cube.storage import LEASE_KEY, list_keys, read_bytes, zarr_store
from geodino.embed import embed
from geodino.errors import ConfigError, CubeExistsError, Interrupted
from tests.embed.test_bad_input import assert_clean_failure
from tests.embed.test_mosaic import _cli, _opts, mosaic, scenes  # noqa: F401 (fixtures: the local reference)

BUCKET = "mosaics"
CUBES = ("epsg32633.zarr", "epsg32634.zarr")
ARRAYS = ("features", "valid", "cls", "tile_status", "tile_source")


def chunks(cube) -> dict[str, bytes]:
    """The array objects of a cube, local or on S3 (not the metadata, which records times, paths and ids)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = zarr_store(cube)
    return {k: sync(store.get(k, prototype=default_buffer_prototype())).to_bytes() for k in list_keys(cube)
            if k.split("/")[0] in ARRAYS and not k.endswith("zarr.json")}


def catalogue(folder) -> dict[str, bytes]:
    return {name: read_bytes(f"{folder}/{name}") for name in
            (MANIFEST, COLLECTION, *(f"items/{c[:-5]}.json" for c in CUBES))}


def assert_same_mosaic(url, ref) -> None:
    for name in CUBES:
        a, b = chunks(ref / name), chunks(f"{url}/{name}")
        assert a.keys() == b.keys() and len(a) > 10 and all(a[k] == b[k] for k in a), \
            [k for k in a if a[k] != b.get(k)][:5]
        assert read_attrs(f"{url}/{name}")["geodino_status"] == "complete"
        assert not [k for k in list_keys(f"{url}/{name}") if k.startswith(LEASE_KEY)]  # released at the end
    # the manifest and the STAC files: relative links and names only, so the local run's bytes
    assert catalogue(url) == catalogue(ref)


@pytest.fixture
def paths(scenes):  # noqa: F811
    p, _ = scenes
    return [p["A"], p["B"], p["C"]]


def test_mosaic_to_s3_matches_the_local_run_and_reads_back(s3_env, paths, mosaic, tiny_weights, tmp_path):  # noqa: F811
    ref, _ = mosaic
    s3_env.create_bucket(BUCKET)
    url = f"s3://{BUCKET}/{tmp_path.name}/{ref.name}"  # the local folder's name: the collection's id
    summaries = embed(paths, _opts(tiny_weights, url, mosaic=True))
    assert [s.status for s in summaries] == ["complete"] * 2
    assert [s.output for s in summaries] == [f"{url}/{c}" for c in CUBES]
    assert_same_mosaic(url, ref)
    # readers: open_cube and tile_sources on the URLs
    for name in CUBES:
        ds, local = open_cube(f"{url}/{name}"), open_cube(ref / name)
        np.testing.assert_array_equal(ds.features.values, local.features.values)
        np.testing.assert_array_equal(ds.tile_source.values, local.tile_source.values)
        np.testing.assert_array_equal(tile_sources(f"{url}/{name}"), tile_sources(ref / name))
    # a rerun is already complete and rewrites the same catalogue
    again = embed(paths, _opts(tiny_weights, url, mosaic=True))
    assert [(s.status, s.tiles_written) for s in again] == [("already complete", 0)] * 2
    assert catalogue(url) == catalogue(ref)
    # another set of scenes is another mosaic: refused, as locally
    with pytest.raises(CubeExistsError, match="different settings"):
        embed([paths[0], paths[2]], _opts(tiny_weights, url, mosaic=True))


def test_an_interrupted_mosaic_on_s3_resumes_from_the_cli_to_the_same_bytes(s3_env, paths, mosaic,  # noqa: F811
                                                                           tiny_weights, tmp_path, capsys):
    ref, _ = mosaic
    s3_env.create_bucket(BUCKET)
    url = f"s3://{BUCKET}/{tmp_path.name}/{ref.name}"
    done = []
    with pytest.raises(Interrupted):
        embed(paths, _opts(tiny_weights, url, mosaic=True, prefetch=1),
              progress=lambda scene, n, total: done.append(n),
              stop=lambda: signal.SIGINT if len(done) > 12 else None)
    assert "incomplete" in [read_attrs(f"{url}/{c}")["geodino_status"] for c in CUBES]
    assert any(k.startswith("tile_status/c/") for c in CUBES for k in list_keys(f"{url}/{c}"))  # tiles kept
    assert main(_cli(paths, url, tiny_weights, "--mosaic")[3:]) == 0
    err = capsys.readouterr().err
    assert "already present" in err and f"{url}: manifest.parquet, collection.json" in err
    assert_same_mosaic(url, ref)


def _fails(argv, capsys, *needles) -> None:
    code = main(argv)
    assert_clean_failure(subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err), *needles)


def test_refusals_of_a_mosaic_folder_hold_for_urls(s3_env, paths, tiny_weights, tmp_path, capsys):
    s3_env.create_bucket(BUCKET)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    note = tmp_path / "notes.txt"
    note.write_text("not a cube")
    # -o names a cube: by its suffix, or a prefix holding a zarr store
    with pytest.raises(ConfigError, match="names a cube: give a directory"):
        embed(paths[:1], _opts(tiny_weights, f"{base}/m.zarr", mosaic=True))
    s3_env.upload(note, BUCKET, f"{tmp_path.name}/store/zarr.json")
    _fails(_cli(paths[:1], f"{base}/store", tiny_weights, "--mosaic")[3:], capsys, "names a cube")
    # -o is an object (a file)
    s3_env.upload(note, BUCKET, f"{tmp_path.name}/file")
    _fails(_cli(paths[:1], f"{base}/file", tiny_weights, "--mosaic")[3:], capsys, "is a file: --mosaic needs a "
                                                                                  "directory")
    # a cube's location holding other data: refused, and nothing is written or deleted
    s3_env.upload(note, BUCKET, f"{tmp_path.name}/region/{CUBES[0]}/notes.txt")
    _fails(_cli(paths, f"{base}/region", tiny_weights, "--mosaic")[3:], capsys, "is not a geodino cube",
           "geodino never deletes data it did not write")
    assert list_keys(f"{base}/region") == [f"{CUBES[0]}/notes.txt"]
    # no such bucket: one line
    _fails(_cli(paths[:1], "s3://no-such-bucket/region", tiny_weights, "--mosaic")[3:], capsys,
           "bucket does not exist")
