"""`geodino canopy --scheduler`: the same graph on a dask.distributed cluster gives the same bytes."""

from __future__ import annotations

import pytest

from geodino.canopy import canopy
from geodino.cube import read_attrs
from tests.canopy.conftest import scene_raster
from tests.canopy.test_canopy import _chunks

distributed = pytest.importorskip("distributed")


def test_cluster_heights_are_bit_identical_to_the_in_process_ones(tmp_path, opts):
    from distributed import LocalCluster

    scene = scene_raster(tmp_path / "s.tif", shape=(128, 96), nodata=0, hole=(slice(0, 64), slice(0, 64)))
    local = canopy(scene, output=str(tmp_path / "local.tif"), **opts)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"INFER": 1},
                      dashboard_address=None, silence_logs=40) as c:
        dist = canopy(scene, output=str(tmp_path / "dist.tif"), scheduler=c.scheduler_address, resource="INFER",
                      **opts)
    assert local.status == dist.status == "complete" and dist.tiles_skipped == 1
    a, b = _chunks(tmp_path / "local.heights.zarr"), _chunks(tmp_path / "dist.heights.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert read_attrs(tmp_path / "dist.heights.zarr")["geodino"]["engine"]["scheduler"] == c.scheduler_address
