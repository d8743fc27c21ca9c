"""The damage report names the stored object that is damaged: the file under the cube (a shard of a sharded array),
and nothing at all for an intact cube."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from geodino.cube.damage import find_damaged_chunk, reading_cubes
from geodino.errors import CubeError
from tests.cubes import make_cube, structured_features


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_cube(tmp_path_factory.mktemp("damage") / "good.zarr", structured_features((24, 32), 8, seed=7),
                     shard=(1, 4))  # one tile row per shard, as embed writes it


def test_an_intact_sharded_cube_has_no_damaged_chunk(good):
    root = zarr.open_group(str(good), mode="r")
    assert root["features"].shards is not None and root["cls"].shards is not None  # the layout this is about
    assert find_damaged_chunk(good) is None


@pytest.mark.parametrize("array", ["features", "valid", "cls"])
def test_the_damaged_file_is_named(good, tmp_path, array):
    cube = tmp_path / "cut.zarr"
    shutil.copytree(good, cube)
    files = sorted(p for p in (cube / array / "c").rglob("*") if p.is_file())
    assert len(files) > 1
    hit = files[len(files) // 2]
    hit.write_bytes(b"\0" * hit.stat().st_size)  # (blosc decodes some cut-short small chunks without a word)
    key = hit.relative_to(cube).as_posix()
    assert find_damaged_chunk(cube) == key
    with pytest.raises(CubeError, match=f"its chunk {key} cannot be decoded"):
        with reading_cubes([cube]):
            zarr.open_group(str(cube), mode="r")[array][...]
