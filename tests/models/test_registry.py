"""The registry of named backbones: timm builds each one, with the normalisation of its weights and the exact
parameter counts of the official checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch

from geodino.errors import ConfigError
from geodino.models import IMAGENET_MEAN, SAT_MEAN, build_model, get_config, list_models
from geodino.models.layouts import from_timm


def test_mission_models_are_registered():
    names = list_models()
    assert {"dinov3-vitl16-sat493m", "dinov3-vit7b16-sat493m"} <= set(names)
    assert {f"dinov3-{a}-lvd1689m"
            for a in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16")} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_config_carries_normalisation_and_ids(name):
    cfg = get_config(name)
    assert cfg.arch.patch_size == 16 and cfg.arch.n_registers == 4
    assert cfg.mean == (SAT_MEAN if "sat493m" in name else IMAGENET_MEAN)
    assert cfg.hf_repo.startswith("facebook/dinov3-") and cfg.timm_name.endswith(name.rsplit("-", 1)[1])
    assert get_config(cfg.timm_name) is cfg and get_config(cfg.hf_repo) is cfg


@pytest.mark.parametrize("name", list_models())
def test_timm_builds_the_registered_architecture_with_the_same_normalisation(name):
    """The model is timm's own (by its model and weight tag), and timm's pretrained config for that tag agrees with
    the registry on normalisation; every layer has the official width."""
    cfg = get_config(name)
    m = build_model(name, device="meta")
    assert isinstance(m.vit, timm.models.Eva)
    assert m.vit.pretrained_cfg["architecture"] + "." + m.vit.pretrained_cfg["tag"] == cfg.timm_name
    assert tuple(m.vit.pretrained_cfg["mean"]) == cfg.mean and tuple(m.vit.pretrained_cfg["std"]) == cfg.std
    a = cfg.arch
    blk = m.vit.blocks[0]
    fc1 = blk.mlp.fc1_g if a.ffn == "swiglu" else blk.mlp.fc1
    assert fc1.weight.shape == (a.ffn_hidden, a.embed_dim) and len(m.vit.blocks) == a.depth
    assert (blk.attn.q_bias is not None) == a.qkv_bias and m.vit.reg_token.shape == (1, 4, a.embed_dim)
    assert m.vit.norm.eps == blk.norm1.eps == 1e-5 and m.vit.rope.temperature == 100


def test_exact_parameter_counts_of_the_sat_models():
    """The official checkpoints' counts (incl. mask token, local_cls_norm and the masked key bias), and what timm's
    model holds without those training-only values."""
    assert get_config("dinov3-vitl16-sat493m").arch.num_params == 303_156_224
    assert get_config("dinov3-vit7b16-sat493m").arch.num_params == 6_716_043_264
    assert build_model("dinov3-vitl16-sat493m", device="meta").num_params() == 303_156_224 - 1024 - 2 * 1024 - 24 * 1024
    assert build_model("dinov3-vit7b16-sat493m", device="meta").num_params() == 6_716_043_264 - 4096 - 2 * 4096


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("over", [{}, {"depth": 2, "embed_dim": 96, "num_heads": 2}], ids=["full", "small"])
def test_parameter_counts_are_the_official_files(name, over):
    """ViTArch.num_params (what `geodino models` lists, without building anything) is the number of values in an
    official checkpoint of the model timm builds."""
    m = build_model(name, device="meta", **over)
    sd = from_timm(m.vit.state_dict(), "official", m.arch)
    assert m.arch.num_params == sum(v.numel() for k, v in sd.items() if not k.endswith(("bias_mask", "periods")))


def test_swiglu_hidden_size_of_the_7b():
    m = build_model("dinov3-vit7b16-sat493m", device="meta")
    assert m.vit.blocks[0].mlp.fc1_g.weight.shape == (8192, 4096)
    assert m.vit.blocks[0].mlp.fc2.weight.shape == (4096, 8192)


def test_odd_widths_from_overrides_keep_the_official_hidden_size():
    """timm's hidden width is int(dim * ratio): overrides whose ratio is not exact in floating point still get
    the official width."""
    for ffn, dim, heads in (("swiglu", 96, 2), ("mlp", 40, 2), ("swiglu", 200, 2)):
        m = build_model("dinov3-vits16plus-lvd1689m", device="meta", ffn=ffn, embed_dim=dim, num_heads=heads, depth=1)
        fc1 = m.vit.blocks[0].mlp.fc1_g if ffn == "swiglu" else m.vit.blocks[0].mlp.fc1
        assert fc1.weight.shape[0] == m.arch.ffn_hidden, (ffn, dim)


def test_random_init_is_seeded_and_official():
    a = build_model("dinov3-vits16-lvd1689m", seed=3, depth=2)
    b = build_model("dinov3-vits16-lvd1689m", seed=3, depth=2)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    v = a.vit
    assert torch.all(v.blocks[0].gamma_1 == 1e-5) and torch.all(v.blocks[1].norm2.weight == 1)
    assert v.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not v.blocks[0].attn.q_bias.any() and not v.blocks[0].mlp.fc1.bias.any()
    assert not any(t.is_meta for t in list(a.parameters()) + list(a.buffers()))


def test_unknown_model_and_override():
    with pytest.raises(ConfigError, match="unknown model"):
        get_config("dinov3-vitx")
    with pytest.raises(ConfigError, match="unknown architecture override"):
        build_model("dinov3-vits16-lvd1689m", width=3)


def test_flops_match_the_published_figures():
    """GFLOPs per image from the reference table (ViT-L SAT and 7B SAT at 224, 256 and 512 px)."""
    from geodino.models import flops_per_image

    table = {"dinov3-vitl16-sat493m": (125.7, 164.7, 727.2), "dinov3-vit7b16-sat493m": (2725.5, 3549.3, 14511.4)}
    for name, gflops in table.items():
        arch = get_config(name).arch
        assert [round(flops_per_image(arch, s, s) / 1e9, 1) for s in (224, 256, 512)] == list(gflops)
