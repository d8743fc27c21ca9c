"""`geodino info` on a cube whose tile status was damaged or emptied says so in a clear line, never "(complete)"
beside tiles that are not done."""

from __future__ import annotations

import json
import shutil

import pytest

from geodino.cli import main
from geodino.cube.info import cube_info
from tests.cubes import make_cube, structured_features


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_cube(tmp_path_factory.mktemp("info") / "good.zarr", structured_features((16, 24), 4, seed=2),
                     shard=(1, 3))


def _emptied(cube):
    for p in (cube / "tile_status" / "c").rglob("*"):
        if p.is_file():
            p.unlink()


def _cut(cube):
    p = next(p for p in (cube / "tile_status" / "c").rglob("*") if p.is_file())
    p.write_bytes(p.read_bytes()[:3])


def _removed(cube):
    shutil.rmtree(cube / "tile_status")


@pytest.mark.parametrize("damage,words", [(_emptied, "marked complete, but its tile_status says 6 of 6 tiles"),
                                          (_cut, "tile_status"), (_removed, "tile_status")],
                         ids=["emptied", "cut short", "removed"])
def test_info_names_a_damaged_tile_status(good, tmp_path, capsys, damage, words):
    assert cube_info(good)["completeness"]["status"] == "complete"
    cube = tmp_path / "c.zarr"
    shutil.copytree(good, cube)
    damage(cube)
    c = cube_info(cube)["completeness"]
    assert c["status"] == "damaged" and words in c["problem"] and "--overwrite" in c["problem"]
    assert main(["info", str(cube)]) == 0
    out = capsys.readouterr().out
    assert "(complete)" not in out and "(DAMAGED)" in out.splitlines()[0]
    assert any(line.strip().startswith("DAMAGED") and words in line for line in out.splitlines()), out
    assert main(["info", str(cube), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completeness"]["status"] == "damaged"
