"""Conformance of every product of the streaming job (geodino.job), like zarr's StoreTests: embed's features,
canopy's heights and a third product defined in one file (tests/job/patch_means.py) run through the same job and
must each (1) give their result (patch means: equal to a block-reduce of the raster), (2) resume after an
interrupt to the bytes of a clean run, (3) refuse to resume under other settings and (4) be replaced with
--overwrite, (5) stop at a full disk with its fault and resume to the same bytes."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from geodino.cube.store import STATUS_ATTR, read_attrs
from geodino.errors import CubeExistsError, DiskFullError, Interrupted
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
    from geodino.job.product import Product

    assert isinstance(_product(case), Product)
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


def test_a_full_disk_is_its_fault_and_the_rerun_resumes_to_the_same_bytes(case, tmp_path, monkeypatch):
    """The output's device fills up (ENOSPC from the store, after two chunks of its main array): the run stops with
    DiskFullError (the CLI's one line and exit 4) naming the output; the same call then finishes it,
    bit-identical to a clean run."""
    from zarr.storage import LocalStore

    clean = case.run(tmp_path / "clean.zarr")
    ref = _arrays(case.store(tmp_path / "clean.zarr"), case.arrays)
    out = tmp_path / "full.zarr"
    real = LocalStore.set
    chunks = []

    async def full(self, key, value):
        if str(self.root).startswith(str(case.store(out))) and key.startswith(case.arrays[0] + "/c/"):
            chunks.append(key)
            if len(chunks) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full)
    with pytest.raises(DiskFullError) as e:
        case.run(out)
    assert e.value.exit_code == 4 and str(case.store(out)) in str(e.value) and "\n" not in str(e.value)
    assert read_attrs(case.store(out))[STATUS_ATTR] == "incomplete"
    monkeypatch.setattr(LocalStore, "set", real)
    again = case.run(out)
    assert again.status == "complete" and again.tiles_resumed > 0 and clean.status == "complete"
    assert _arrays(case.store(out), case.arrays) == ref


def _product(case):
    if case.name == "embed":
        from geodino.embed.tasks import FEATURES

        return FEATURES
    if case.name == "canopy":
        from geodino.canopy.tasks import HEIGHTS

        return HEIGHTS
    from tests.job.patch_means import MEANS

    return MEANS


def test_a_summary_shows_the_job_fields_unless_its_product_chooses():
    """`geodino embed --json` prints the job's fields (as before canopy's fields joined JobSummary); a product's
    own fields appear only where it lists them (canopy: tests/canopy/test_canopy.py)."""
    from geodino.job.run import JobSummary

    s = JobSummary("a.tif", "a.zarr", "complete", 4, 3, 1, 0, 0, [], 1.0, 3.0, 0.5, 1234, ["m"])
    assert list(s.to_dict()) == ["scene", "output", "status", "tiles_total", "tiles_written", "tiles_skipped",
                                 "tiles_resumed", "tiles_failed", "failed", "seconds", "tiles_per_s", "mpx_per_s",
                                 "output_bytes", "messages"]
    c = dataclasses.replace(s, cube="a.heights.zarr", random_weights=True, shown=("scene", "cube", "random_weights"))
    assert c.to_dict() == {"scene": "a.tif", "cube": "a.heights.zarr", "random_weights": True}


def test_the_options_are_listed_in_the_order_of_before():
    """The unknown-option message lists the valid options: the shared ones (geodino.job.options) and each
    product's own, in the order each product listed them before the shared ones were declared once."""
    from geodino.canopy.options import CanopyOptions
    from geodino.embed.config import EmbedConfig

    assert " ".join(EmbedConfig.fields()) == (
        "output model weights device precision batch_size tile halo blend bands nodata radiometry radiometry_like "
        "s2_offset minmax percentiles scale resampling dtype min_valid overwrite arch scheduler resource compile "
        "quantize micro_batch threads prefetch retries configure_workers gdal_cache_mb allow_download on_read_error "
        "mosaic")
    assert " ".join(CanopyOptions.fields()) == (
        "output cube model backbone weights backbone_weights device precision batch_size tile halo blend bands "
        "nodata radiometry s2_offset minmax percentiles gsd resampling dtype overwrite arch head_arch scheduler "
        "resource micro_batch threads prefetch retries configure_workers gdal_cache_mb allow_download")
