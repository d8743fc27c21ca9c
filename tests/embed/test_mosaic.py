"""`geodino embed SCENES... --mosaic`: one cube per CRS on a common grid, the overlap rule, features equal to the
chosen scene embedded alone, the manifest and the STAC collection, refusals, and kill/resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import zarr
from affine import Affine
from pyproj import Transformer

from geodino.cube import read_attrs, tile_status
from geodino.cube.mosaic import tile_sources
from geodino.cube.store import PENDING, SKIPPED, WRITTEN
from geodino.embed import EmbedConfig, embed
from geodino.embed.mosaic import RULE
from geodino.errors import ConfigError
from tests.embed.conftest import MODEL, TINY
from tests.embed.test_bad_input import assert_clean_failure
from tests.rasters import texture, write_raster

TILE, HALO, RES = 64, 16, 10.0
STEP = TILE * RES  # the tile lattice: multiples of 640 m from the CRS origin
# scene -> (CRS, origin in tiles of the lattice (col, row from the top), shape px, seed, date tag)
A0 = (780 * STEP, 7032 * STEP)  # x, y of A's top-left corner: on the lattice


def _opts(weights, out, **kw):
    return EmbedConfig.build(model=MODEL, weights=str(weights), arch=dict(TINY), device="cpu", threads=2,
                             radiometry="minmax", minmax=(0, 4000), tile=TILE, halo=HALO, blend=1, batch_size=4,
                             output=str(out), **kw)


def _write(path, data, x0, y0, crs, date, nodata=None):
    return write_raster(path, data, crs=crs, transform=Affine(RES, 0, x0, 0, -RES, y0), nodata=nodata,
                        tags={"TIFFTAG_DATETIME": date})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A (2023) and B (2024, with a nodata hole in the overlap) in UTM 33N, overlapping by 3 x 3 tiles; C in
    UTM 34N. All on the 640 m tile lattice."""
    d = tmp_path_factory.mktemp("scenes")
    a = texture((320, 320), seed=3)
    b = texture((320, 320), seed=4)
    b[:, 0:64, 0:64] = 0  # B's first tile (in the overlap) is all nodata: A must fill it although B is newer
    b[:, 64:128, 0:40] = 0  # ...and most of the next one down
    c = texture((192, 192), seed=5)
    paths = {
        "A": _write(d / "A_20230501.tif", a, A0[0], A0[1], "EPSG:32633", "2023:05:01 10:00:00"),
        "B": _write(d / "B.tif", b, A0[0] + 2 * STEP, A0[1] - 2 * STEP, "EPSG:32633", "2024:06:01 10:00:00", nodata=0),
        "C": _write(d / "C.tif", c, 300 * STEP, 7000 * STEP, "EPSG:32634", "2024:01:01 00:00:00"),
    }
    return paths, {"A": a, "B": b, "C": c}


@pytest.fixture(scope="module")
def mosaic(scenes, tiny_weights, tmp_path_factory):
    paths, _ = scenes
    out = tmp_path_factory.mktemp("mosaic") / "region"
    t0 = time.perf_counter()
    summaries = embed([paths["A"], paths["B"], paths["C"]], _opts(tiny_weights, out, mosaic=True))
    print(f"mosaic of 3 scenes: {time.perf_counter() - t0:.1f} s")
    return out, summaries


@pytest.fixture(scope="module")
def alone(scenes, tiny_weights, tmp_path_factory):
    """Each scene embedded by itself (a plain single-scene run): the truth a mosaic's tiles are checked against."""
    paths, _ = scenes
    d = tmp_path_factory.mktemp("alone")
    for k, p in paths.items():
        [s] = embed([p], _opts(tiny_weights, d / f"{k}.zarr"))
        assert s.status == "complete"
    return {k: d / f"{k}.zarr" for k in paths}


def _features(cube):
    return zarr.open_group(str(cube), mode="r")["features"][...]


def _origin(cube):
    t = read_attrs(cube)["spatial:transform"]
    return t[2], t[5]


def test_one_cube_per_crs_on_the_lattice(mosaic, scenes):
    out, summaries = mosaic
    assert sorted(p.name for p in out.glob("*.zarr")) == ["epsg32633.zarr", "epsg32634.zarr"]
    assert [s.status for s in summaries] == ["complete", "complete"]
    a33 = read_attrs(out / "epsg32633.zarr")
    # A at the top left, B 2 tiles right and down: 7 x 7 tiles of 4 patches... of 64 px = 4 patches each
    assert a33["spatial:transform"] == [16 * RES, 0.0, A0[0], 0.0, -16 * RES, A0[1]]
    assert a33["spatial:shape"] == [7 * TILE // 16, 7 * TILE // 16]
    assert a33["proj:code"] == "EPSG:32633" and read_attrs(out / "epsg32634.zarr")["proj:code"] == "EPSG:32634"
    st = tile_status(out / "epsg32633.zarr")
    choice = tile_sources(out / "epsg32633.zarr")
    # tiles no scene covers: skipped, chosen by none
    assert (choice[5:, :2] == -1).all() and (choice[:2, 5:] == -1).all()
    assert (st[choice == -1] == SKIPPED).all() and not (st == PENDING).any()
    assert a33["geodino"]["mosaic"]["rule"] == RULE


def test_overlaps_follow_the_rule(mosaic, scenes):
    """The rule recomputed here from the arrays written (not through GDAL): most valid pixels, then newest."""
    out, _ = mosaic
    _, data = scenes
    choice = tile_sources(out / "epsg32633.zarr")
    names = [Path(s["scene"]).stem for s in read_attrs(out / "epsg32633.zarr")["geodino"]["mosaic"]["scenes"]]
    assert names == ["A_20230501", "B"]
    valid = {"A": np.ones((448, 448), bool), "B": np.zeros((448, 448), bool)}
    valid["A"][320:] = False
    valid["A"][:, 320:] = False
    valid["B"][128:, 128:] = np.all(data["B"] != 0, axis=0)
    for ty in range(7):
        for tx in range(7):
            sl = np.s_[ty * 64:(ty + 1) * 64, tx * 64:(tx + 1) * 64]
            na, nb = valid["A"][sl].sum(), valid["B"][sl].sum()
            a_covers, b_covers = ty < 5 and tx < 5, ty >= 2 and tx >= 2
            if not (a_covers or b_covers):
                want = -1
            elif a_covers and b_covers:
                want = 0 if na > nb else 1  # ties (both full) go to B, the newer
            else:
                want = 0 if a_covers else 1
            assert choice[ty, tx] == want, (ty, tx, na, nb)
    assert choice[2, 2] == 0 and choice[3, 2] == 0 and choice[2, 3] == 1  # the hole, and a tie to the newer


def test_tiles_equal_the_chosen_scene_embedded_alone(mosaic, alone):
    """Independent truth: each scene embedded by itself. Where a tile's windows (its own, and with blending its
    neighbours') lie inside its scene, the mosaic's features are bit-identical; where only its own window does, the
    core's inner patches (beyond the blend margin) are."""
    out, _ = mosaic
    cube = out / "epsg32633.zarr"
    feats, choice, st = _features(cube), tile_sources(cube), tile_status(cube)
    n = TILE // 16
    x0, y0 = _origin(cube)
    checked = {"full": 0, "inner": 0}
    for key, idx in (("A", 0), ("B", 1)):
        ref = _features(alone[key])
        ax, ay = _origin(alone[key])
        oy, ox = round((y0 - ay) / (16 * RES)), round((ax - x0) / (16 * RES))  # scene's patch origin in the mosaic
        sty, stx = ref.shape[1] // n, ref.shape[2] // n
        for ty, tx in np.argwhere((choice == idx) & (st == WRITTEN)):
            ly, lx = ty - oy // n, tx - ox // n  # tile in the scene's own grid
            m = np.s_[:, ty * n:(ty + 1) * n, tx * n:(tx + 1) * n]
            r = np.s_[:, ly * n:(ly + 1) * n, lx * n:(lx + 1) * n]
            if 2 <= ly <= sty - 3 and 2 <= lx <= stx - 3:
                np.testing.assert_array_equal(feats[m], ref[r])
                checked["full"] += 1
            elif 1 <= ly <= sty - 2 and 1 <= lx <= stx - 2:
                np.testing.assert_array_equal(feats[m][:, 1:-1, 1:-1], ref[r][:, 1:-1, 1:-1])
                checked["inner"] += 1
    assert checked["full"] >= 2 and checked["inner"] >= 4, checked
    # UTM 34N: a lone scene, but on the mosaic's grid: its inner tile matches too
    c = _features(out / "epsg32634.zarr")
    np.testing.assert_array_equal(c[:, n + 1:2 * n - 1, n + 1:2 * n - 1],
                                  _features(alone["C"])[:, n + 1:2 * n - 1, n + 1:2 * n - 1])


def test_manifest_and_stac_collection(mosaic, scenes):
    out, _ = mosaic
    paths, _ = scenes
    man = gpd.read_parquet(out / "manifest.parquet")
    assert man.crs.to_epsg() == 4326 and len(man) == 3
    assert list(man["cube"]) == ["epsg32633.zarr", "epsg32633.zarr", "epsg32634.zarr"]
    assert list(man["date"]) == ["2023-05-01T10:00:00+00:00", "2024-06-01T10:00:00+00:00",
                                 "2024-01-01T00:00:00+00:00"]
    for _, row in man.iterrows():
        cube = out / row["cube"]
        choice, st = tile_sources(cube), tile_status(cube)
        want = sorted(f"{ty}-{tx}" for ty, tx in np.argwhere((choice == row["scene_index"]) & (st == WRITTEN)))
        assert sorted(row["filled_tiles"]) == want and row["tiles_filled"] == len(want) > 0
        # the footprint holds the scene's centre, transformed here with pyproj
        left, bottom, right, top = row["bounds_cube_crs"]
        epsg = int(row["crs"].split(":")[1])
        lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform((left + right) / 2, (bottom + top) / 2)
        assert row.geometry.contains(gpd.points_from_xy([lon], [lat])[0])
        assert json.loads(row["provenance"])["warp"] == "exact"
    assert man.loc[0, "scene"] == str(paths["A"])

    coll = pystac.Collection.from_file(str(out / "collection.json"))
    items = {it.id: it for it in coll.get_items()}
    assert sorted(items) == ["epsg32633", "epsg32634"]
    for name, it in items.items():
        attrs = read_attrs(out / f"{name}.zarr")
        proj = pystac.extensions.projection.ProjectionExtension.ext(it)
        assert proj.epsg == int(name[4:]) and proj.shape == attrs["spatial:shape"]
        assert proj.transform == attrs["spatial:transform"] and proj.bbox == attrs["spatial:bbox"]
        assert Path(it.assets["features"].get_absolute_href()).resolve() == (out / f"{name}.zarr").resolve()
        assert it.properties["geodino:status"] == "complete"
    assert items["epsg32633"].common_metadata.start_datetime.year == 2023
    assert items["epsg32633"].common_metadata.end_datetime.year == 2024
    assert Path(coll.assets["manifest"].get_absolute_href()).resolve() == (out / "manifest.parquet").resolve()
    # the STAC core JSON schemas pystac ships (offline); the projection extension's schema would need the network,
    # so its fields are checked above through pystac's ProjectionExtension
    from pystac.validation import RegisteredValidator

    validator = RegisteredValidator.get_validator()
    for f, kind in [(out / "collection.json", pystac.STACObjectType.COLLECTION),
                    *[(out / "items" / f"{n}.json", pystac.STACObjectType.ITEM) for n in items]]:
        d = json.loads(f.read_text())
        validator.validate_core(d, kind, d["stac_version"], str(f))
        assert all(link["rel"] != "self" and not link["href"].startswith("/") for link in d["links"])


def test_a_rerun_is_already_complete_and_other_settings_are_refused(mosaic, scenes, tiny_weights):
    out, _ = mosaic
    paths, _ = scenes
    again = embed([paths["A"], paths["B"], paths["C"]], _opts(tiny_weights, out, mosaic=True))
    assert [s.status for s in again] == ["already complete"] * 2
    from geodino.errors import CubeExistsError

    with pytest.raises(CubeExistsError, match="different settings"):  # a scene fewer: another mosaic
        embed([paths["A"], paths["C"]], _opts(tiny_weights, out, mosaic=True))


def test_off_lattice_scene_is_resampled_and_says_so(scenes, tiny_weights, tmp_path):
    """The first of the finest scenes sets the pixel lattice; a scene 5 m / 3 m off it is warped onto it."""
    paths, data = scenes
    p = _write(tmp_path / "shifted.tif", data["C"][:, :128, :128], A0[0] + 64 * RES + 5.0, A0[1] - 3.0,
               "EPSG:32633", "2022:01:01 00:00:00")
    [s] = embed([paths["A"], p], _opts(tiny_weights, tmp_path / "m", mosaic=True))
    assert s.status == "complete"
    prov = read_attrs(tmp_path / "m" / "epsg32633.zarr")["geodino"]
    assert [x["warp"] for x in prov["mosaic"]["scenes"]] == ["exact", "resampled (bilinear)"]
    assert any("shifted.tif" in m and "resampled (bilinear)" in m for m in s.messages)
    assert _origin(tmp_path / "m" / "epsg32633.zarr") == (A0[0], A0[1])  # the grid stays on A's lattice


def _cli(scenes_, out, weights, *extra):
    arch = [f"--arch={k}={v}" for k, v in TINY.items()]
    return [sys.executable, "-m", "geodino", "embed", *map(str, scenes_), "-o", str(out), "--model", MODEL,
            "--weights", str(weights), *arch, "--tile", str(TILE), "--halo", str(HALO), "--blend", "1",
            "--batch-size", "4", "--threads", "2", "--device", "cpu", "--radiometry", "minmax", "--minmax", "0,4000",
            *extra]


def test_several_crs_without_mosaic_into_one_cube_is_refused(scenes, tiny_weights, tmp_path, capsys):
    from geodino.cli import main

    paths, _ = scenes
    argv = _cli([paths["A"], paths["C"]], tmp_path / "one.zarr", tiny_weights)[3:]
    code = main(argv)
    r = subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err)
    assert_clean_failure(r, "2 CRSs", "EPSG:32633", "EPSG:32634", "--mosaic")
    assert not (tmp_path / "one.zarr").exists()
    with pytest.raises(ConfigError, match="names a cube"):
        embed([paths["A"]], _opts(tiny_weights, tmp_path / "m.zarr", mosaic=True))


def test_killed_mosaic_resumes_to_the_same_bytes(mosaic, scenes, tiny_weights, tmp_path, capsys):
    ref, _ = mosaic
    paths, _ = scenes
    out = tmp_path / "killed"
    cmd = _cli([paths["A"], paths["B"], paths["C"]], out, tiny_weights, "--mosaic", "--prefetch", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status = out / "epsg32633.zarr" / "tile_status" / "c"
    deadline = time.time() + 180
    while time.time() < deadline:
        n = sum(1 for _ in status.rglob("*")) if status.exists() else 0
        if n >= 20 or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = tile_status(out / "epsg32633.zarr")
    assert (st == PENDING).any() and (st == WRITTEN).any()
    assert read_attrs(out / "epsg32633.zarr")["geodino_status"] == "incomplete"
    from geodino.cli import main

    assert main(cmd[3:]) == 0  # the same command again, in this process (no second interpreter start-up)
    assert "already present" in capsys.readouterr().err
    for name in ("epsg32633.zarr", "epsg32634.zarr"):
        a, b = out / name, ref / name
        assert read_attrs(a)["geodino_status"] == "complete"
        for arr in ("features", "valid", "cls", "tile_status", "tile_source"):
            np.testing.assert_array_equal(zarr.open_array(str(a / arr), mode="r")[...],
                                          zarr.open_array(str(b / arr), mode="r")[...])
    man = gpd.read_parquet(out / "manifest.parquet")
    assert man["tiles_pending"].sum() == 0


def _digest(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".geodino.lock"}


def test_a_bad_scene_added_to_a_mosaic_changes_nothing(mosaic, scenes, tiny_weights, capsys):
    """An unreachable scene among good ones: one line, exit 2, and the cubes, manifest and STAC files as they were."""
    from geodino.cli import main
    from tests.raster.test_remote import closed_port

    out, _ = mosaic
    paths, _ = scenes
    before = _digest(out)
    url = f"http://127.0.0.1:{closed_port()}/late.tif"
    argv = _cli([paths["A"], paths["B"], paths["C"], url], out, tiny_weights, "--mosaic")[3:]
    code = main(argv)
    assert_clean_failure(subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err), "cannot reach",
                         "late.tif")
    assert _digest(out) == before


def test_mosaic_cubes_open_and_index_like_any_cube(mosaic, tmp_path):
    from geodino import open_cube
    from geodino.index import build_index

    out, _ = mosaic
    cubes = sorted(out.glob("*.zarr"))
    ds = open_cube(cubes[0])
    assert ds.rio.crs.to_epsg() == 32633 and ds.tile_source.dims == ("tile_y", "tile_x")
    n_valid = sum(int(open_cube(c).valid.sum()) for c in cubes)
    info = build_index(cubes, tmp_path / "index")
    assert info.cubes == 2 and info.vectors == n_valid > 0


def test_undated_scenes_tie_to_the_order_given_and_the_item_takes_the_creation_time(scenes, tiny_weights, tmp_path):
    _, data = scenes
    a = write_raster(tmp_path / "a.tif", data["C"][:, :128, :128], transform=Affine(RES, 0, A0[0], 0, -RES, A0[1]))
    b = write_raster(tmp_path / "b.tif", data["A"][:, :128, :128], transform=Affine(RES, 0, A0[0], 0, -RES, A0[1]))
    [s] = embed([b, a], _opts(tiny_weights, tmp_path / "m", mosaic=True))
    cube = tmp_path / "m" / "epsg32633.zarr"
    assert s.status == "complete" and (tile_sources(cube) == 0).all()  # full ties, no dates: the first given (b)
    item = pystac.Item.from_file(str(tmp_path / "m" / "items" / "epsg32633.json"))
    assert item.datetime.isoformat()[:19] == read_attrs(cube)["geodino"]["created"][:19]
    assert list(gpd.read_parquet(tmp_path / "m" / "manifest.parquet")["date"]) == [None, None]


def test_unreadable_windows_of_a_mosaic_are_failed_tiles_and_a_rerun_retries_them(tiny_weights, tmp_path):
    """As for one scene: with on_read_error="skip" the tiles whose windows (or blends) need a bad block are FAILED,
    recorded with their reason in the cube, the others written; once the file is whole again, the same run
    writes only those tiles."""
    from geodino.cube.store import FAILED
    from tests.faults import corrupt

    whole = corrupt.tiled(tmp_path / "whole.tif", (256, 256))
    target = tmp_path / "scene.tif"
    corrupt.zeroed_tiles(whole, target, every=16)  # one bad 64-px block
    out = tmp_path / "mosaic"
    [s] = embed([str(target)], _opts(tiny_weights, out, mosaic=True, on_read_error="skip"))
    cube = Path(s.output)
    status = tile_status(cube)
    prov = read_attrs(cube)["geodino"]
    assert s.status == "incomplete" and s.tiles_failed == int((status == FAILED).sum()) > 0
    assert (status == WRITTEN).sum() + (status == FAILED).sum() == status.size
    assert set(prov["failed_tiles"]) == {f"{ty},{tx}" for ty, tx in np.argwhere(status == FAILED)}
    reasons = list(prov["failed_tiles"].values())
    assert any(str(target) in why for why in reasons)  # the tiles whose own window failed name the file
    assert all("which failed" in why or str(target) in why for why in reasons)  # the others, the window they need
    n_failed = s.tiles_failed
    st = target.stat()
    target.write_bytes(whole.read_bytes())
    import os

    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same file identity: the run resumes
    [s2] = embed([str(target)], _opts(tiny_weights, out, mosaic=True, on_read_error="skip"))
    assert s2.status == "complete" and s2.tiles_written == n_failed and s2.tiles_failed == 0
    assert read_attrs(cube)["geodino"]["failed_tiles"] == {}


def test_the_scenes_of_a_mosaic_go_through_the_one_comparability_rule():
    """Scene-specific parts of one radiometry preset (each product's offset) may differ, and are recorded; another
    preset, or anything else the rule compares, is refused with one line naming it."""
    import copy
    from types import SimpleNamespace

    from geodino.embed.mosaic import _check_scenes_comparable
    from geodino.errors import ConfigError
    from tests.cubes import PROVENANCE

    def scene(name, **radiometry):
        prov = copy.deepcopy(PROVENANCE)
        prov["radiometry"].update(radiometry)
        prov["tiling"] = {"tile": 512, "halo": 32, "blend": 1}
        return SimpleNamespace(scene=name, provenance=prov)

    rec = _check_scenes_comparable([scene("a.tif"), scene("b.tif", bias=[-0.1] * 3,
                                                          params={"offset": -1000.0})])
    assert [d["detail"] for d in rec["differences"][0]["differences"]] == ["radiometry.bias",
                                                                          "radiometry.params.offset"]
    with pytest.raises(ConfigError, match=r"radiometry kind differs \(s2-l2a for a.tif, landsat-c2-l2 for b.tif\)"):
        _check_scenes_comparable([scene("a.tif"), scene("b.tif", kind="landsat-c2-l2")])
