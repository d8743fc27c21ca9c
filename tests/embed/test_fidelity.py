"""Features do not depend on how the job was run (batch size, prefetch, threads, resume), cubes record the
numerics that made them, resuming under other numerics is refused, and the cube's metadata follows the specs."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import CRS

from geodino.cube import open_cube, read_attrs, tile_status
from geodino.embed import EmbedConfig, embed
from geodino.errors import CubeExistsError
from tests.embed.test_resume import chunk_bytes
from tests.rasters import texture, write_raster


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    data = texture((300, 350), seed=31)
    data[:, 200:300, :120] = 0  # skipped tiles
    return write_raster(tmp_path_factory.mktemp("scene") / "s.tif", data, nodata=0)


def opts(tiny_opts, out, **kw):
    return EmbedConfig.build(**{**tiny_opts, "tile": 64, "halo": 32, "blend": 1, "precision": "bf16",
                                "output": str(out), **kw})


def test_cubes_are_byte_identical_whatever_batch_size_prefetch_and_threads(tmp_path, scene, tiny_opts):
    runs = [dict(batch_size=1, prefetch=1, threads=1), dict(batch_size=3, prefetch=2, threads=2),
            dict(batch_size=8, prefetch=4, threads=4)]
    cubes = []
    for i, kw in enumerate(runs):
        [s] = embed([scene], opts(tiny_opts, tmp_path / f"c{i}.zarr", **kw))
        assert s.status == "complete"
        cubes.append(chunk_bytes(tmp_path / f"c{i}.zarr"))
    assert len(cubes[0]) >= 16  # 4 arrays x (tile rows x shards per row): sharded cubes have few objects
    for other in cubes[1:]:
        assert other.keys() == cubes[0].keys()
        assert [k for k in other if other[k] != cubes[0][k]] == []
    # and the features are not trivially equal: context (the halo, the blend) shapes them
    [s] = embed([scene], opts(tiny_opts, tmp_path / "h0.zarr", halo=0, blend=0))
    a, b = open_cube(tmp_path / "c0.zarr").features.values, open_cube(tmp_path / "h0.zarr").features.values
    assert np.nanmax(np.abs(a.astype(np.float32) - b.astype(np.float32))) > 1e-2


def test_a_resume_with_another_batch_size_gives_the_same_bytes(tmp_path, scene, tiny_opts, monkeypatch):
    from geodino.embed import tasks

    [clean] = embed([scene], opts(tiny_opts, tmp_path / "clean.zarr", batch_size=4))
    real = tasks.infer_batch

    def failing(spec, radiometry, batch, dtype):
        if any(t.tile.key == "3-2" for t in batch):
            raise RuntimeError("simulated crash")
        return real(spec, radiometry, batch, dtype)

    out = tmp_path / "resumed.zarr"
    monkeypatch.setattr(tasks, "infer_batch", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed([scene], opts(tiny_opts, out, batch_size=4, prefetch=1))
    assert (tile_status(out) == 0).any() and (tile_status(out) != 0).any()
    monkeypatch.setattr(tasks, "infer_batch", real)
    [s] = embed([scene], opts(tiny_opts, out, batch_size=3, prefetch=3, threads=1))
    assert s.status == "complete" and s.tiles_resumed > 0
    a, b = chunk_bytes(tmp_path / "clean.zarr"), chunk_bytes(out)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_the_cube_records_its_numerics_and_refuses_to_resume_under_others(tmp_path, scene, tiny_opts):
    import torch

    out = tmp_path / "c.zarr"
    embed([scene], opts(tiny_opts, out, precision="fp32"))
    n = read_attrs(out)["geodino"]["numerics"]
    assert n["precision"] == "fp32" and n["device_type"] == "cpu" and n["torch"] == torch.__version__
    assert n["device_name"] and n["micro_batch"] >= 1
    assert read_attrs(out)["geodino"]["settings"]["numerics"] == n
    with pytest.raises(CubeExistsError, match=r"begun computing fp32 on cpu .* would compute bf16 on cpu .*"
                                              r"--precision fp32.*--overwrite"):
        embed([scene], opts(tiny_opts, out, precision="bf16"))
    # batch size, prefetch and threads are not numerics: that cube is simply complete
    [s] = embed([scene], opts(tiny_opts, out, precision="fp32", batch_size=5, threads=1))
    assert s.status == "already complete"


def test_proj_wkt2_is_wkt2_and_coordinates_carry_cf_units(tmp_path, tiny_opts):
    utm = write_raster(tmp_path / "u.tif", texture((64, 80), seed=1), crs="EPSG:32633")
    [s] = embed([utm], opts(tiny_opts, tmp_path / "u.zarr", tile=64, halo=16))
    ds = open_cube(s.output)
    wkt = ds.attrs["proj:wkt2"]
    assert wkt.startswith("PROJCRS[") and CRS.from_wkt(wkt).to_epsg() == 32633
    assert CRS.from_wkt(wkt).to_wkt("WKT2_2019") == wkt
    assert ds.x.attrs["units"] == "metre" and ds.x.attrs["standard_name"] == "projection_x_coordinate"
    ll = write_raster(tmp_path / "g.tif", texture((64, 80), seed=2), crs="EPSG:4326",
                      transform=__import__("affine").Affine(0.001, 0, 10, 0, -0.001, 50))
    [s] = embed([ll], opts(tiny_opts, tmp_path / "g.zarr", tile=64, halo=16))
    ds = open_cube(s.output)
    assert ds.x.attrs["units"] == "degrees_east" and ds.y.attrs["units"] == "degrees_north"
    assert ds.attrs["proj:wkt2"].startswith("GEOGCRS[")
