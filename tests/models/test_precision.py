"""The precision policy with timm's model under the engine's bf16 autocast: matmuls in bf16, while the tokens
entering block 0, LayerNorm, LayerScale, RoPE and the residual stream stay fp32 (as the official autocast inference)."""

from __future__ import annotations

import numpy as np
import pytest
import timm.models.eva as eva
import torch

from geodino.engine import Engine, EngineSpec
from geodino.models import build_model, save_weights
from geodino.raster import Radiometry
from tests.conftest import randomize_

MODEL = "dinov3-vits16plus-lvd1689m"  # SwiGLU and q/v biases
ARCH = (("depth", 2),)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    w = save_weights(randomize_(build_model(MODEL, depth=2), seed=1), tmp_path_factory.mktemp("w") / "w.safetensors")
    return Engine(EngineSpec(MODEL, str(w), "cpu", precision="bf16", arch=ARCH))


def _rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


def test_bf16_autocast_keeps_norms_rope_and_the_residual_stream_in_fp32(engine, monkeypatch):
    vit = engine.model.vit
    seen: list[tuple[str, str, torch.dtype]] = []

    def record(name):
        def hook(m, args, out):
            seen.append((name, "in", args[0].dtype))
            seen.append((name, "out", out.dtype))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in vit.named_modules()
             if n.startswith("blocks.") and n.count(".") == 1 or isinstance(m, torch.nn.LayerNorm)
             or n.endswith(("mlp.fc1_x", "attn.proj", "patch_embed.proj"))]
    rotations = []
    real = eva.apply_rot_embed_cat

    def spy(x, emb, half=False):
        out = real(x, emb, half=half)
        sin, cos = emb.chunk(2, -1)
        want = (x.float() * cos.float() + _rotate_half(x.float()) * sin.float()).to(x.dtype)  # rotated in fp32
        rotations.append((x.dtype, emb.dtype, out.dtype, torch.equal(out, want)))
        return out

    monkeypatch.setattr(eva, "apply_rot_embed_cat", spy)
    raw = np.random.default_rng(0).integers(0, 4000, (1, 3, 64, 96)).astype(np.uint16)
    out = engine.run(raw, None, Radiometry("minmax", (1 / 4000,) * 3, (0.0,) * 3).engine_params)
    for h in hooks:
        h.remove()
    dtypes = {(n, io): dt for n, io, dt in seen}
    assert dtypes[("blocks.0", "in")] == torch.float32  # the patch tokens enter block 0 in fp32
    for i in range(2):
        assert dtypes[(f"blocks.{i}", "out")] == torch.float32  # the residual stream
        for norm in ("norm1", "norm2"):
            assert dtypes[(f"blocks.{i}.{norm}", "in")] == dtypes[(f"blocks.{i}.{norm}", "out")] == torch.float32
        assert dtypes[(f"blocks.{i}.mlp.fc1_x", "out")] == dtypes[(f"blocks.{i}.attn.proj", "out")] == torch.bfloat16
    assert dtypes[("norm", "out")] == torch.float32 and dtypes[("patch_embed.proj", "out")] == torch.bfloat16
    # RoPE: fp32 sin/cos, bf16 q/k rotated in fp32 and cast back, for q and k of both blocks
    assert len(rotations) == 4 and all(r == (torch.bfloat16, torch.float32, torch.bfloat16, True) for r in rotations)
    # stored dtypes: matmul weights bf16; LayerScale, norms, tokens, q/v biases and RoPE periods fp32
    blk = vit.blocks[0]
    matmuls = (blk.attn.qkv.weight, blk.mlp.fc1_g.weight, vit.patch_embed.proj.weight)
    assert {w.dtype for w in matmuls} == {torch.bfloat16}
    assert {blk.gamma_1.dtype, blk.norm1.weight.dtype, vit.cls_token.dtype, vit.reg_token.dtype, blk.attn.q_bias.dtype,
            vit.rope.periods.dtype} == {torch.float32}
    assert np.isfinite(out["patches"]).all()
