"""Numerical parity of geodino's backbone (timm's DINOv3 ViT behind geodino's adapter) with transformers'
DINOv3ViTModel, an independent implementation, and with timm's model used directly.

transformers' model gets random weights of its own (every parameter non-trivial: LayerScale ~1, non-zero q/v
biases), writes them with ``save_pretrained``'s names, and geodino loads that file through its HF converter. Both run
in fp32 on the same non-square input with the math SDPA backend. transformers recomputes RoPE frequencies
unrounded; its ``inv_freq`` is set from the bf16-rounded periods of the released checkpoints, which geodino uses.
"""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from geodino.models import build_model, get_config, hf_config_for, load_backbone, rope_periods
from tests.conftest import randomize_, rel_err

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

TOL = 1e-4

# (registered name, arch overrides, input H, W, intermediate block ids)
CASES = [
    pytest.param("dinov3-vitl16-sat493m", {}, (224, 288), [4, 11, 17, 23], id="vitl16-sat-full-224x288",
                 marks=pytest.mark.slow),
    pytest.param("dinov3-vit7b16-sat493m", {"depth": 2}, (64, 96), [0, 1], id="vit7b16-sat-width4096-depth2",
                 marks=pytest.mark.slow),
    pytest.param("dinov3-vits16-lvd1689m", {"depth": 3}, (96, 128), [0, 2], id="vits16-depth3"),
    pytest.param("dinov3-vits16plus-lvd1689m", {"depth": 2}, (112, 64), [0, 1], id="vits16plus-depth2"),
    pytest.param("dinov3-vitb16-lvd1689m", {"depth": 2}, (80, 80), [1], id="vitb16-depth2"),
    pytest.param("dinov3-vith16plus-lvd1689m", {"depth": 1}, (48, 64), [0], id="vith16plus-depth1"),
]


def _hf_peer(name: str, overrides: dict, seed: int):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    arch = get_config(name).arch.replace(**overrides)
    cfg = {k: v for k, v in hf_config_for(arch).items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        peer = DINOv3ViTModel(DINOv3ViTConfig(**cfg))
    peer = randomize_(peer.to_empty(device="cpu"), seed).eval()
    peer.rope_embeddings.inv_freq.copy_(1.0 / rope_periods(arch.head_dim, arch.rope_base))
    return peer


def _as_hf_file(peer, path):
    """The peer's weights under the names ``save_pretrained`` writes (``layer.N``, not transformers 5's in-memory
    ``model.layer.N``)."""
    sd = {k.removeprefix("model."): v.contiguous() for k, v in peer.state_dict().items() if "inv_freq" not in k}
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("name,overrides,hw,blocks", CASES)
def test_parity_transformers(name, overrides, hw, blocks, tmp_path, record_property):
    peer = _hf_peer(name, overrides, seed=3)
    model = load_backbone(name, _as_hf_file(peer, tmp_path / "hf.safetensors"), **overrides)
    assert model.weights_info.layout == "hf"
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
    r = model.n_registers
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        out = model.forward_features(x, layers=blocks)
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
    for b, ours, cls in zip(blocks, out["layers"], out["layer_cls"]):
        normed = peer.norm(res.hidden_states[b + 1])
        theirs = normed[:, 1 + r:].reshape(2, h, w, -1).permute(0, 3, 1, 2)
        assert ours.shape == (2, model.embed_dim, h, w)
        errs[f"block{b}"] = rel_err(ours, theirs)
        errs[f"block{b}_cls"] = rel_err(cls, normed[:, 0])
    record_property("rel_err", errs)
    print(f"HF parity {name} {overrides}: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_parity_detects_wrong_rope_periods(tmp_path):
    """The test above can fail: transformers' own unrounded periods are measurably off."""
    peer = _hf_peer("dinov3-vits16-lvd1689m", {"depth": 2}, seed=0)
    model = load_backbone("dinov3-vits16-lvd1689m", _as_hf_file(peer, tmp_path / "hf.safetensors"), depth=2)
    peer.rope_embeddings.inv_freq.copy_(1.0 / 100.0 ** (torch.arange(16, dtype=torch.float32) / 16))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model.forward_features(x)["patches"].flatten(1, 2),
                       peer(pixel_values=x).last_hidden_state[:, 5:]) > 1e-5


def test_the_adapter_returns_what_timm_computes():
    """geodino's dict of cls/registers/patches and its layer grids are timm's own outputs, split and reshaped (the
    same weights in a model built by plain ``timm.create_model`` with the model card's period fix)."""
    model = randomize_(build_model("dinov3-vits16plus-lvd1689m", depth=3), seed=4)
    peer = timm.create_model("vit_small_plus_patch16_dinov3_qkvb.lvd1689m", pretrained=False, depth=3).eval()
    peer.load_state_dict(model.vit.state_dict(), strict=True)
    peer.rope.periods = peer.rope.periods.to(torch.bfloat16).to(torch.float32)  # timm's model card
    x = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_features(x, layers=2)
        tokens = peer.forward_features(x)
        grids = peer.forward_intermediates(x, indices=[1, 2], norm=True, intermediates_only=True)
    assert torch.equal(out["cls"], tokens[:, 0]) and torch.equal(out["registers"], tokens[:, 1:5])
    assert torch.equal(out["patches"], tokens[:, 5:].reshape(2, 3, 5, 384))
    assert all(torch.equal(a, b) for a, b in zip(out["layers"], grids)) and len(out["layers"]) == 2
    assert torch.equal(model(x), tokens[:, 0])


def test_periods_match_released_checkpoint_values():
    # bf16-rounded periods stored in the released ViT-L checkpoints (head dim 64)
    released = [1, 1.3359375, 1.78125, 2.375, 3.15625, 4.21875, 5.625, 7.5, 10, 13.3125, 17.75, 23.75,
                31.625, 42.25, 56.25, 75]
    assert rope_periods(64).tolist() == released
    assert build_model("dinov3-vitl16-sat493m", device="meta").vit.rope.periods.is_meta
    assert build_model("dinov3-vits16-lvd1689m", depth=1).vit.rope.periods.tolist() == released
