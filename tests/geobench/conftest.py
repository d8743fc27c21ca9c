from __future__ import annotations

import pytest

from geodino.models import build_model, save_weights
from tests.conftest import randomize_
from tests.geobench.synth import write_benchmark

MODEL = "dinov3-vits16-lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
FAST = {"segmentation": {"iterations": 150, "input_size": 32, "lr": [1e-2], "batch_size": 8, "dpt_features": 32},
        "classification": {"logreg": {"c_num": 8, "n_jobs": 1}}, "evaluation": {"bootstrap": 200}}


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("geobench"))


@pytest.fixture(scope="session")
def gb_weights(tmp_path_factory):
    m = randomize_(build_model(MODEL, **TINY), seed=3)
    return str(save_weights(m, tmp_path_factory.mktemp("gbw") / "tiny.safetensors"))
