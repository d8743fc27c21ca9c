from __future__ import annotations

import pytest

from geodino.models import build_model, save_weights
from tests.conftest import randomize_

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
MODEL = "dinov3-vits16-lvd1689m"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A small randomised DINOv3 (2 blocks, width 64) saved as safetensors: context visibly matters."""
    model = randomize_(build_model(MODEL, **TINY), seed=11)
    # keep activations tame so fp16 cubes hold them
    path = save_weights(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    return path


@pytest.fixture
def tiny_opts(tiny_weights):
    """Options of a tiny-model CPU job; synthetic uint16 textures span 1..3000, so a fixed 0..4000 stretch."""
    return {"model": MODEL, "weights": str(tiny_weights), "arch": dict(TINY), "device": "cpu", "threads": 2,
            "radiometry": "minmax", "minmax": (0, 4000)}
