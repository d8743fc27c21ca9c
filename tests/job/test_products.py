"""Conformance of every product of the streaming job (geodino.job), like zarr's StoreTests: embed's features,
canopy's heights and a third product defined in one file (tests/job/patch_means.py) run through the same job and
must each (1) give their result (patch means: equal to a block-reduce of the raster), (2) resume after an
interrupt to the bytes of a clean run, (3) refuse to resume under other settings and (4) be replaced with
--overwrite."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from geodino.cube.store import STATUS_ATTR, read_attrs
from geodino.errors import CubeExistsError, Interrupted
from tests.canopy.conftest import TINY as CHM_TINY
from tests.canopy.conftest import TINY_HEAD, canopy_model, canopy_weights  # noqa: F401 (fixtures)
from tests.embed.conftest import tiny_opts, tiny_weights  # noqa: F401 (fixtures)
from tests.job.patch_means import patch_means
from tests.rasters import texture, write_raster


@dataclass
class Case:
    name: str
    run: object  # (out: Path, **changes) -> summary
    store: object  # out -> the store the job writes
    arrays: tuple[str, ...]
    change: dict  # a setting whose change must be refused


class StopAfterOneTile:
    """``stop()`` asks for a stop (SIGINT) once ``progress`` has seen one tile written by this run."""

    def __init__(self):
        self.first = self.now = None

    def progress(self, scene, done, total):
        self.first = done if self.first is None else self.first
        self.now = done

    def stop(self):
        return signal.SIGINT if self.first is not None and self.now > self.first else None


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("products")
    return {"u16": write_raster(d / "u16.tif", texture((192, 192), seed=7)),
            "rgb8": write_raster(d / "rgb8.tif", texture((192, 192), seed=3, dtype="uint8", scale=250),
                                 transform=Affine(0.6, 0, 500000.0, 0, -0.6, 4500000.0))}


def _embed_case(scenes, tiny_opts):
    from geodino.embed import embed

    def run(out, cog="", **kw):
        opts = {**tiny_opts, "tile": 64, "halo": 16, "blend": 1, "batch_size": 2, "prefetch": 1, **kw}
        return embed([scenes["u16"]], output=str(out), **opts)[0]

    return Case("embed", run, lambda out: out, ("features", "valid", "cls", "tile_status"), {"halo": 32})


def _canopy_case(scenes, weights):
    from geodino.canopy import canopy

    def run(out, cog="", **kw):  # cog: another COG beside the same height cube (the COG refuses on its own)
        opts = {"weights": str(weights), "arch": dict(CHM_TINY), "head_arch": dict(TINY_HEAD), "device": "cpu",
                "precision": "fp32", "threads": 2, "tile": 64, "halo": 32, "batch_size": 2, "prefetch": 1, **kw}
        cube = out.with_name(out.stem + ".heights.zarr")
        return canopy(scenes["rgb8"], output=str(out.with_name(out.stem + cog + ".tif")), cube=str(cube), **opts)

    return Case("canopy", run, lambda out: out.with_name(out.stem + ".heights.zarr"), ("heights", "tile_status"),
                {"halo": 16})


def _means_case(scenes):
    def run(out, cog="", **kw):
        return patch_means(scenes["u16"], str(out), **{"batch_size": 2, "prefetch": 1, **kw})

    return Case("patch-means", run, lambda out: out, ("means", "tile_status"), {"halo": 8})


@pytest.fixture(params=["embed", "canopy", "patch-means"])
def case(request, scenes):
    if request.param == "embed":
        return _embed_case(scenes, request.getfixturevalue("tiny_opts"))
    if request.param == "canopy":
        return _canopy_case(scenes, request.getfixturevalue("canopy_weights"))
    return _means_case(scenes)


def _arrays(store: Path, names) -> dict[str, bytes]:
    g = zarr.open_group(str(store), mode="r")
    return {n: np.ascontiguousarray(g[n][...]).tobytes() for n in names}


def test_a_product_resumes_refuses_and_overwrites(case, tmp_path):
    clean = case.run(tmp_path / "clean.zarr")
    assert clean.status == "complete" and clean.tiles_written == clean.tiles_total > 4
    ref = _arrays(case.store(tmp_path / "clean.zarr"), case.arrays)

    out = tmp_path / "cut.zarr"
    s = StopAfterOneTile()
    with pytest.raises(Interrupted):
        case.run(out, progress=s.progress, stop=s.stop)
    assert read_attrs(case.store(out))[STATUS_ATTR] == "incomplete"
    resumed = case.run(out)
    assert resumed.status == "complete" and 0 < resumed.tiles_resumed < resumed.tiles_total
    assert _arrays(case.store(out), case.arrays) == ref  # bit-identical to the clean run

    with pytest.raises(CubeExistsError, match="different settings"):
        case.run(tmp_path / "clean.zarr", cog="-b", **case.change)
    assert _arrays(case.store(tmp_path / "clean.zarr"), case.arrays) == ref  # refused and kept
    again = case.run(tmp_path / "clean.zarr", overwrite=True, **case.change)
    assert again.status == "complete" and again.tiles_written == again.tiles_total


def test_patch_means_equal_a_block_reduce_of_the_raster(scenes, tmp_path):
    s = patch_means(scenes["u16"], str(tmp_path / "m.zarr"), tile=64, halo=16, patch=8, blend=1)
    assert s.status == "complete"
    with rasterio.open(scenes["u16"]) as ds:
        raw = ds.read().astype(np.float64)
    c, h, w = raw.shape
    scaled = np.clip(raw / 4000.0, 0, 1)  # minmax (0, 4000): gain 1/4000, bias 0
    want = scaled.reshape(c, h // 8, 8, w // 8, 8).mean(axis=(2, 4)).transpose(1, 2, 0)
    got = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["means"][...]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
