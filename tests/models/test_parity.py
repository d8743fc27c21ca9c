"""Numerical parity with two independent DINOv3 implementations: timm's Eva and transformers' DINOv3ViTModel.

Random weights are built in geodino, carried to each peer through the layout converter, and both models run
in fp32 on the same input with the math SDPA backend. The peers' RoPE periods are set to the bf16-rounded
values of the released checkpoints (timm's model card; HF through inv_freq).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from geodino.models import build_model, convert_state_dict, rope_periods
from geodino.models.dinov3 import DinoV3ViT
from tests.conftest import randomize_, rel_err

timm = pytest.importorskip("timm", reason="timm is a dev dependency: pip install -e '.[dev]'")
transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

TOL = 1e-4

# (registered name, arch overrides, timm architecture, input H, W, intermediate block ids)
CASES = [
    pytest.param("dinov3-vitl16-sat493m", {}, "vit_large_patch16_dinov3_qkvb", (224, 224), [4, 11, 17, 23],
                 id="vitl16-sat-real-224", marks=pytest.mark.slow),
    pytest.param("dinov3-vit7b16-sat493m", {"depth": 2}, "vit_7b_patch16_dinov3", (64, 96), [0, 1],
                 id="vit7b16-sat-width4096-depth2", marks=pytest.mark.slow),
    pytest.param("dinov3-vits16-lvd1689m", {"depth": 3}, "vit_small_patch16_dinov3_qkvb", (96, 128), [0, 2],
                 id="vits16-depth3"),
    pytest.param("dinov3-vits16plus-lvd1689m", {"depth": 2}, "vit_small_plus_patch16_dinov3_qkvb", (112, 64),
                 [0, 1], id="vits16plus-depth2"),
    pytest.param("dinov3-vitb16-lvd1689m", {"depth": 2}, "vit_base_patch16_dinov3_qkvb", (80, 80), [1],
                 id="vitb16-depth2"),
    pytest.param("dinov3-vith16plus-lvd1689m", {"depth": 1}, "vit_huge_plus_patch16_dinov3_qkvb", (48, 64), [0],
                 id="vith16plus-depth1"),
]


def _geodino(name, overrides, seed=0) -> DinoV3ViT:
    return randomize_(build_model(name, **overrides), seed)


def _timm_model(model: DinoV3ViT, timm_arch: str):
    sd = convert_state_dict(model.state_dict(), src="geodino", dst="timm")
    peer = timm.create_model(timm_arch, pretrained=False, depth=model.arch.depth, num_classes=0).eval()
    peer.load_state_dict(sd, strict=True)
    # timm's model card: bf16-truncated periods reproduce the released checkpoints
    peer.rope.periods.copy_(peer.rope.periods.to(torch.bfloat16).to(torch.float32))
    return peer


def _hf_model(model: DinoV3ViT):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from geodino.models import hf_config_for

    cfg = {k: v for k, v in hf_config_for(model.arch).items() if k not in ("architectures", "model_type")}
    peer = DINOv3ViTModel(DINOv3ViTConfig(**cfg)).eval()
    sd = convert_state_dict(model.state_dict(), src="geodino", dst="hf")
    in_memory = {k for k in peer.state_dict()}
    sd = {("model." + k if k.startswith("layer.") and "model." + k in in_memory else k): v for k, v in sd.items()}
    missing, unexpected = peer.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"rope_embeddings.inv_freq"}, missing
    peer.rope_embeddings.inv_freq.copy_(1.0 / rope_periods(model.arch.head_dim, model.arch.rope_base))
    return peer


def _ours(model, x, blocks):
    out = model.forward_features(x)
    inter = model.get_intermediate_layers(x, blocks, norm=True)
    return out, inter


@pytest.mark.parametrize("name,overrides,timm_arch,hw,blocks", CASES)
def test_parity_timm(name, overrides, timm_arch, hw, blocks, record_property):
    model = _geodino(name, overrides)
    peer = _timm_model(model, timm_arch)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    r = model.n_registers
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        out, inter = _ours(model, x, blocks)
        tokens = peer.forward_features(x)
        t_inter = peer.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NCHW",
                                             intermediates_only=True)
    h, w = hw[0] // 16, hw[1] // 16
    errs = {
        "cls": rel_err(out["cls"], tokens[:, 0]),
        "registers": rel_err(out["registers"], tokens[:, 1:1 + r]),
        "patches": rel_err(out["patches"], tokens[:, 1 + r:].reshape(2, h, w, -1)),
    }
    for b, ours, theirs in zip(blocks, inter, t_inter):
        assert ours.shape == theirs.shape == (2, model.embed_dim, h, w)
        errs[f"block{b}"] = rel_err(ours, theirs)
    record_property("rel_err", errs)
    print(f"timm parity {name} {overrides}: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("name,overrides,timm_arch,hw,blocks", CASES)
def test_parity_transformers(name, overrides, timm_arch, hw, blocks, record_property):
    model = _geodino(name, overrides, seed=3)
    peer = _hf_model(model)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
    r = model.n_registers
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        out, inter = _ours(model, x, blocks)
        res = peer(pixel_values=x, output_hidden_states=True)
    seq = res.last_hidden_state
    h, w = hw[0] // 16, hw[1] // 16
    errs = {
        "cls": rel_err(out["cls"], seq[:, 0]),
        "registers": rel_err(out["registers"], seq[:, 1:1 + r]),
        "patches": rel_err(out["patches"], seq[:, 1 + r:].reshape(2, h, w, -1)),
    }
    # hidden_states[0] is the embedding output; hidden_states[i + 1] is block i's output
    assert len(res.hidden_states) == model.arch.depth + 1
    for b, ours in zip(blocks, inter):
        theirs = peer.norm(res.hidden_states[b + 1])[:, 1 + r:].reshape(2, h, w, -1).permute(0, 3, 1, 2)
        errs[f"block{b}"] = rel_err(ours, theirs)
    record_property("rel_err", errs)
    print(f"HF parity {name} {overrides}: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_parity_detects_wrong_rope_periods():
    """The test above can fail: timm's own unrounded fp32 periods are measurably off."""
    model = _geodino("dinov3-vits16-lvd1689m", {"depth": 2})
    peer = _timm_model(model, "vit_small_patch16_dinov3_qkvb")
    peer.rope.periods.copy_(100.0 ** (torch.arange(16, dtype=torch.float32) / 16))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model.forward_features(x)["patches"].flatten(1, 2),
                       peer.forward_features(x)[:, 5:]) > 1e-5


def test_periods_match_released_checkpoint_values():
    # bf16-rounded periods stored in the released ViT-L checkpoints (head dim 64)
    released = [1, 1.3359375, 1.78125, 2.375, 3.15625, 4.21875, 5.625, 7.5, 10, 13.3125, 17.75, 23.75,
                31.625, 42.25, 56.25, 75]
    assert rope_periods(64).tolist() == released


def test_key_bias_is_masked_like_the_official_model():
    """The official qkv linear multiplies its bias by bias_mask = [1, 0, 1]: the key bias has no effect."""
    model = _geodino("dinov3-vits16-lvd1689m", {"depth": 1})
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = model.forward_features(x)["patches"]
        model.blocks[0].attn.qkv.bias[384:768] += 5.0
        assert torch.equal(model.forward_features(x)["patches"], ref)
        model.blocks[0].attn.qkv.bias[:384] += 0.5
        assert not torch.equal(model.forward_features(x)["patches"], ref)
