"""The inference engine: device-side preprocessing, out-of-memory halving, quantisation, fp8 refusal, CUDA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from geodino.engine import Engine, EngineSpec, prepare_batch
from geodino.errors import ConfigError
from geodino.models import build_model, save_weights
from geodino.raster import Radiometry
from tests.conftest import randomize_, rel_err

MODEL = "dinov3-vits16-lvd1689m"
ARCH = (("depth", 2), ("embed_dim", 64), ("num_heads", 2))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    m = randomize_(build_model(MODEL, **dict(ARCH)), seed=5)
    return str(save_weights(m, tmp_path_factory.mktemp("w") / "w.safetensors"))


@pytest.fixture
def engine(weights):
    return Engine(EngineSpec(MODEL, weights, "cpu", arch=ARCH))


def batch(n=5, size=96, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 4000, (n, 3, size, size)).astype(np.uint16)
    valid = rng.random((n, size, size)) > 0.1
    return raw, valid


RAD = Radiometry("minmax", (1 / 4000,) * 3, (0.0,) * 3)


def test_prepare_batch_matches_the_numpy_reference():
    raw, valid = batch(2, 32)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    ref = (np.stack([RAD.apply(r) for r in raw]) - mean[None, :, None, None]) / std[None, :, None, None]
    ref = ref * valid[:, None]
    got = prepare_batch(torch.from_numpy(raw), torch.from_numpy(valid), torch.tensor(RAD.gain), torch.tensor(RAD.bias),
                        torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_raw_integers_reach_the_model_unconverted(engine, monkeypatch):
    seen = {}
    real = prepare_batch

    def spy(raw, *a, **k):
        seen["dtype"] = raw.dtype
        return real(raw, *a, **k)

    monkeypatch.setattr("geodino.engine.engine.prepare_batch", spy)
    raw, valid = batch(2)
    engine.embed(raw, valid, RAD.gain, RAD.bias)
    assert seen["dtype"] == torch.uint16


def test_crop_and_output_dtype(engine):
    raw, valid = batch(2)
    full, cls = engine.embed(raw, valid, RAD.gain, RAD.bias)
    crop, cls16 = engine.embed(raw, valid, RAD.gain, RAD.bias, crop=slice(1, 4), out_dtype=torch.float16)
    assert full.shape == (2, 6, 6, 64) and crop.shape == (2, 3, 3, 64) and crop.dtype == np.float16
    np.testing.assert_allclose(crop.astype(np.float32), full[:, 1:4, 1:4], rtol=2e-3, atol=2e-3)


def test_out_of_memory_halves_the_batch_and_continues(engine, monkeypatch, caplog):
    raw, valid = batch(5)
    ref, ref_cls = engine.embed(raw, valid, RAD.gain, RAD.bias)
    real = engine._run
    sizes = []

    def flaky(raw, *a, **k):
        sizes.append(raw.shape[0])
        if raw.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(raw, *a, **k)

    monkeypatch.setattr(engine, "_run", flaky)
    with caplog.at_level(logging.WARNING, logger="geodino.engine.engine"):
        got, got_cls = engine.embed(raw, valid, RAD.gain, RAD.bias)
    assert sizes[:2] == [5, 2] and max(sizes[1:]) <= 2
    assert engine.max_batch == 2
    assert "out of memory with a batch of 5 tiles: continuing with batches of 2" in caplog.text
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_cls, ref_cls, rtol=1e-5, atol=1e-5)
    sizes.clear()
    engine.embed(raw, valid, RAD.gain, RAD.bias)  # the smaller batch is remembered
    assert max(sizes) <= 2


def test_other_errors_are_not_swallowed(engine, monkeypatch):
    monkeypatch.setattr(engine, "_run", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        engine.embed(*batch(2), RAD.gain, RAD.bias)


@pytest.mark.parametrize("mode,min_cos", [("int8", 0.999), ("int4", 0.95)])
def test_weight_only_quantisation_reports_cosine_to_unquantised(weights, mode, min_cos):
    pytest.importorskip("torchao", reason="torchao is a dev dependency")
    ref = Engine(EngineSpec(MODEL, weights, "cpu", arch=ARCH))
    q = Engine(EngineSpec(MODEL, weights, "cpu", arch=ARCH, quantize=mode))
    assert q.quality["mode"] == mode and q.quality["patches"]["mean"] >= min_cos
    raw, valid = batch(2)
    a, _ = ref.embed(raw, valid, RAD.gain, RAD.bias)
    b, _ = q.embed(raw, valid, RAD.gain, RAD.bias)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.mean() >= min_cos and rel_err(torch.from_numpy(b), torch.from_numpy(a)) > 0  # really quantised


def test_fp8_needs_an_h100_class_gpu(weights):
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this machine has an fp8-capable GPU")
    with pytest.raises(ConfigError, match="compute capability >= 8.9"):
        Engine(EngineSpec(MODEL, weights, "cpu", precision="fp8", arch=ARCH))


def test_bad_precision_and_quantize():
    with pytest.raises(ConfigError):
        EngineSpec(MODEL, "random", precision="fp16")
    with pytest.raises(ConfigError):
        EngineSpec(MODEL, "random", quantize="int2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_engine_matches_cpu_fp32(weights):
    cpu = Engine(EngineSpec(MODEL, weights, "cpu", arch=ARCH))
    gpu = Engine(EngineSpec(MODEL, weights, "cuda", arch=ARCH))
    assert gpu.precision == "bf16"
    raw, valid = batch(4)
    a, _ = cpu.embed(raw, valid, RAD.gain, RAD.bias)
    b, _ = gpu.embed(raw, valid, RAD.gain, RAD.bias, out_dtype=torch.float16)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b.astype(np.float32), axis=-1)
    assert cos.mean() > 0.99
