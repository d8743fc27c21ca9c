"""Fingerprints of existing plans must not change: a half-made cube resumes only under the same fingerprint, so a
refactor that changed them would make every user's interrupted cube refuse to resume. The values below were
computed by the code before geodino/job/ existed (planning with a fixed engine report; the source's identity,
which holds an mtime, is replaced by a fixed one)."""

from __future__ import annotations

import numpy as np
from affine import Affine

from geodino.canopy.options import CanopyOptions
from geodino.embed.config import EmbedConfig
from tests.rasters import texture, write_raster

SOURCE = {"path": "scene.tif", "size": 1234, "mtime": 1700000000.0}
NUMERICS = {"device_type": "cpu", "precision": "fp32", "torch": "x", "kernel": "y"}


def _report(head: bool = False) -> dict:
    desc = {"device": "cpu"}
    if head:
        desc |= {"head": "dpt", "backbone_weights": {"sha256": "b" * 64}}
    return {"numerics": dict(NUMERICS), "weights": {"sha256": "a" * 64, "random": False, "source": "w.safetensors"},
            "describe": desc}


def _scene(tmp_path):
    data = texture((300, 260), seed=5, dtype="uint16")
    return write_raster(tmp_path / "scene.tif", data, crs="EPSG:32633",
                        transform=Affine(10, 0, 500000.0, 0, -10, 4500000.0))


def _fingerprint(plan) -> str:
    from geodino.embed.plan import fingerprint

    return fingerprint({**plan.settings, "source": SOURCE})


def test_embed_plan_fingerprint_is_frozen(tmp_path):
    from geodino.embed.plan import plan_scene

    cfg = EmbedConfig.build(model="dinov3-vits16-lvd1689m", weights="w.safetensors", device="cpu",
                            radiometry="minmax", minmax=(0, 4000), tile=128, halo=16, blend=1,
                            output=str(tmp_path / "out.zarr"))
    plan = plan_scene(str(_scene(tmp_path)), cfg, lambda window, spec: _report())
    assert sorted(plan.settings) == ["arch", "bands", "blend", "dtype", "halo", "min_valid", "model", "nodata",
                                     "numerics", "radiometry", "resampling", "scale", "source", "tile",
                                     "weights_sha256"]
    assert _fingerprint(plan) == EMBED
    assert plan.provenance["fingerprint"] == plan.fingerprint


def test_canopy_plan_fingerprint_is_frozen(tmp_path):
    from geodino.canopy.plan import plan_canopy

    data = texture((200, 232), seed=3, dtype="uint8", scale=250)
    scene = write_raster(tmp_path / "scene.tif", data, crs="EPSG:32633",
                         transform=Affine(0.6, 0, 500000.0, 0, -0.6, 4500000.0))
    opts = CanopyOptions.build(weights="w.safetensors", device="cpu", precision="fp32", tile=64, halo=32,
                               output=str(tmp_path / "chm.tif"))
    plan = plan_canopy(str(scene), opts, lambda window: _report(head=True))
    assert sorted(plan.settings) == ["arch", "backbone", "backbone_weights_sha256", "bands", "blend",
                                     "canopy_model", "halo", "head_arch", "nodata", "numerics", "radiometry",
                                     "resampling", "scale", "source", "tile", "weights_sha256"]
    assert _fingerprint(plan) == CANOPY
    assert plan.provenance["fingerprint"] == plan.fingerprint


def test_fingerprint_of_a_literal_settings_dict_is_frozen():
    from geodino.embed.plan import fingerprint

    assert fingerprint({"b": [1, 2], "a": {"y": 1.5, "x": None}, "p": np.float64(0.25)}) == LITERAL


EMBED = "238afd06d7e4d3d8"
CANOPY = "03fb3ab8dd299f90"
LITERAL = "5e03aff58a927d4e"
