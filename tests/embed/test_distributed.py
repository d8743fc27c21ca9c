"""The same embed graph on a dask.distributed cluster: identical cubes, worker failures, resource placement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from geodino.cube import read_attrs, tile_status
from geodino.cube.store import cube_shard
from geodino.embed import EmbedConfig, embed
from geodino.errors import SchedulerError
from tests.embed.test_resume import chunk_bytes, wait_for_tiles
from tests.rasters import texture, write_raster

distributed = pytest.importorskip("distributed")

RESOURCE = "INFER"  # a CPU-only cluster advertises an explicit inference resource


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={RESOURCE: 1},
                      dashboard_address=None, silence_logs=40) as c:
        yield c


@pytest.fixture
def scene(tmp_path):
    data = texture((384, 448), seed=21)
    data[:, 200:330, :150] = 0
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


def cfg(tiny_opts, out, **kw):
    return EmbedConfig.build(**tiny_opts, tile=64, halo=16, batch_size=3, output=str(out), resource=RESOURCE, **kw)


def test_cluster_cube_is_bit_identical_to_the_in_process_cube(tmp_path, scene, tiny_opts, cluster):
    [local] = embed([scene], cfg(tiny_opts, tmp_path / "local.zarr"))
    [dist] = embed([scene], cfg(tiny_opts, tmp_path / "dist.zarr", scheduler=cluster.scheduler_address))
    assert local.status == dist.status == "complete"
    a, b = chunk_bytes(tmp_path / "local.zarr"), chunk_bytes(tmp_path / "dist.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert read_attrs(tmp_path / "dist.zarr")["geodino"]["engine"]["scheduler"] == cluster.scheduler_address
    # each worker loaded the model once (engines are cached per process), none was shipped from here
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        loads = client.run(lambda: len(__import__("geodino.engine.engine", fromlist=["_ENGINES"])._ENGINES))
    assert all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1


def _gdal_cache():
    from rasterio.env import get_gdal_config

    return get_gdal_config("GDAL_CACHEMAX")


def test_workers_are_left_as_they_are_unless_asked(tmp_path, scene, tiny_opts, cluster):
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        before = client.run(_gdal_cache)
        embed([scene], cfg(tiny_opts, tmp_path / "a.zarr", scheduler=cluster.scheduler_address, gdal_cache_mb=48))
        assert client.run(_gdal_cache) == before
        embed([scene], cfg(tiny_opts, tmp_path / "b.zarr", scheduler=cluster.scheduler_address, gdal_cache_mb=48,
                           configure_workers=True))
        assert set(client.run(_gdal_cache).values()) == {48 * 2**20} != set(before.values())


def test_several_scenes_in_one_call(tmp_path, tiny_opts, cluster):
    scenes = [write_raster(tmp_path / f"s{i}.tif", texture((150, 170), seed=i)) for i in range(3)]
    out = tmp_path / "cubes"
    out.mkdir()
    res = embed(scenes, cfg(tiny_opts, out, scheduler=cluster.scheduler_address))
    assert [r.status for r in res] == ["complete"] * 3
    assert sorted(p.name for p in out.iterdir()) == ["s0.zarr", "s1.zarr", "s2.zarr"]


def test_a_worker_killed_mid_run_still_gives_the_identical_cube(tmp_path, tiny_opts, cluster):
    big = write_raster(tmp_path / "big.tif", texture((896, 960), seed=22))
    [ref] = embed([big], cfg(tiny_opts, tmp_path / "ref.zarr"))
    out = tmp_path / "dist.zarr"
    box = {}

    def run():
        try:
            box["res"] = embed([big], cfg(tiny_opts, out, scheduler=cluster.scheduler_address))
        except BaseException as e:  # pragma: no cover - reported below
            box["err"] = e

    th = threading.Thread(target=run)
    th.start()
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        wait_for_tiles(out, 30)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        assert th.is_alive() and (tile_status(out) == 0).any(), "the run ended before a worker could be killed"
        os.kill(pids[victim], signal.SIGKILL)
    th.join(timeout=600)
    assert "err" not in box, box.get("err")
    [res] = box["res"]
    assert res.status == "complete" and (tile_status(out) != 0).all()
    a, b = chunk_bytes(tmp_path / "ref.zarr"), chunk_bytes(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


class _Restrictions:
    """A scheduler plugin recording, for every task that starts, its resource restrictions and dependencies."""

    name = "geodino-test-restrictions"

    def __init__(self):
        self.seen = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            ts = self.scheduler.tasks[key]
            self.seen[str(key)] = (dict(ts.resource_restrictions or {}), sorted(str(d.key) for d in ts.dependencies),
                                   ts.retries)


def test_inference_runs_only_on_workers_with_the_resource(tmp_path, scene, tiny_opts):
    from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream
    from distributed.diagnostics.plugin import SchedulerPlugin

    spec = {"gpu": {"cls": Nanny, "options": {"nthreads": 2, "resources": {RESOURCE: 1}}},
            "plain": {"cls": Nanny, "options": {"nthreads": 2}}}
    plugin = type("Restrictions", (_Restrictions, SchedulerPlugin), {})()
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                     silence_logs=40) as sc, Client(sc, set_as_default=False) as client:
        client.wait_for_workers(2)
        client.register_plugin(plugin)
        infos = client.scheduler_info(n_workers=-1)["workers"]
        gpu = [a for a, w in infos.items() if w["resources"].get(RESOURCE)]
        plain = [a for a in infos if a not in gpu]
        assert len(gpu) == len(plain) == 1
        with get_task_stream(client=client) as ts:
            [res] = embed([scene], cfg(tiny_opts, tmp_path / "c.zarr", scheduler=sc.scheduler_address))
        assert res.status == "complete"
        placed = {}
        for t in ts.data:
            name = str(t["key"][0] if isinstance(t["key"], tuple) else t["key"])
            placed.setdefault(name.split("-")[0], set()).add(t["worker"])
        assert placed["infer"] == set(gpu)
        seen = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[_Restrictions.name].seen)
    cube_id = read_attrs(tmp_path / "c.zarr")["geodino"]["cube_id"]
    kinds = {}
    for key, (restr, deps, retries) in seen.items():
        kind = key.split("-")[0]
        if kind == "engine_report":  # what the workers' engine computes in (numerics for the fingerprint)
            assert restr == {RESOURCE: 1}
            continue
        kinds.setdefault(kind, []).append((restr, deps, retries))
        assert cube_id[:12] in key  # task keys name the cube they belong to
        assert restr == ({RESOURCE: 1} if kind == "infer" else {}), (key, restr)
        if kind == "write":  # a write receives its shard's tiles' pieces, never a whole batch's output
            assert deps and all(d.startswith("piece-") for d in deps), (key, deps)
        if kind in ("read", "write"):
            assert retries == 2
    assert set(kinds) == {"read", "infer", "piece", "write"}
    shard = cube_shard(tmp_path / "c.zarr")  # one write task per shard: one writer per shard object
    nty, ntx = tile_status(tmp_path / "c.zarr").shape
    assert shard[1] > 1 and len(kinds["write"]) == -(-nty // shard[0]) * -(-ntx // shard[1])


def test_no_worker_with_the_resource_is_a_clear_error(tmp_path, scene, tiny_opts, cluster):
    with pytest.raises(SchedulerError, match="advertises the resource 'TPU'"):
        embed([scene], cfg(tiny_opts, tmp_path / "c.zarr", scheduler=cluster.scheduler_address).replace(resource="TPU"))


def test_unreachable_cluster_exit_2(tmp_path, scene, tiny_weights):
    r = subprocess.run([sys.executable, "-m", "geodino", "embed", str(scene), "-o", str(tmp_path / "c.zarr"),
                        "--model", "dinov3-vits16-lvd1689m", "--weights", str(tiny_weights), "--arch=depth=2",
                        "--arch=embed_dim=64", "--arch=num_heads=2", "--scheduler", "tcp://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("geodino: error:")]
    assert len(err) == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in err[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "c.zarr" / "zarr.json").exists() or read_attrs(tmp_path / "c.zarr")["geodino_status"] != "complete"


def test_a_read_error_and_a_store_error_in_one_task_are_retried(tmp_path, scene, tiny_opts, monkeypatch):
    """One read of one tile fails (an unreachable byte range), and one shard write fails (the object store answers
    an error) once each: the tasks are retried and the cube is the same as an undisturbed run's."""
    from geodino.embed import tasks
    from geodino.job import tasks as job_tasks

    [ref] = embed([scene], cfg(tiny_opts, tmp_path / "ref.zarr"))
    real_read, real_write = job_tasks.read_tile, tasks.write_shard
    calls = tmp_path / "calls"
    calls.mkdir()

    def flaky_read(source, tile, min_valid, *rest):
        if tile.key == "2-3" and not (calls / "read").exists():
            (calls / "read").write_text("failed once")
            raise OSError("simulated read error: connection reset")
        return real_read(source, tile, min_valid, *rest)

    def flaky_write(cube, cube_id, dests, counts, *pieces):
        if any(d.key == "4-1" for d in dests) and not (calls / "write").exists():
            (calls / "write").write_text("failed once")
            raise OSError("simulated store error: 503 Slow Down")
        return real_write(cube, cube_id, dests, counts, *pieces)

    monkeypatch.setattr(job_tasks, "read_tile", flaky_read)
    monkeypatch.setattr(tasks, "write_shard", flaky_write)
    [res] = embed([scene], cfg(tiny_opts, tmp_path / "c.zarr"))
    assert (calls / "read").exists() and (calls / "write").exists()  # both failures happened
    assert res.status == "complete" and res.tiles_written == ref.tiles_written
    a, b = chunk_bytes(tmp_path / "ref.zarr"), chunk_bytes(tmp_path / "c.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
