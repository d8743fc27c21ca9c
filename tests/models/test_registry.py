"""The registry of named backbones and exact parameter counts (checked against timm's models too)."""

from __future__ import annotations

import pytest
import torch

from geodino.errors import ConfigError
from geodino.models import SAT_MEAN, IMAGENET_MEAN, build_model, get_config, list_models

timm = pytest.importorskip("timm", reason="timm is a dev dependency")


def test_mission_models_are_registered():
    names = list_models()
    assert {"dinov3-vitl16-sat493m", "dinov3-vit7b16-sat493m"} <= set(names)
    assert {f"dinov3-{a}-lvd1689m" for a in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16")} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_config_carries_normalisation_and_ids(name):
    cfg = get_config(name)
    assert cfg.arch.patch_size == 16 and cfg.arch.n_registers == 4
    assert cfg.mean == (SAT_MEAN if "sat493m" in name else IMAGENET_MEAN)
    assert cfg.hf_repo.startswith("facebook/dinov3-") and cfg.timm_name.endswith(name.rsplit("-", 1)[1])
    assert get_config(cfg.timm_name) is cfg and get_config(cfg.hf_repo) is cfg


def test_exact_parameter_counts_of_the_sat_models():
    assert build_model("dinov3-vitl16-sat493m").num_params() == 303_156_224
    assert build_model("dinov3-vit7b16-sat493m", device="meta").num_params() == 6_716_043_264


def test_swiglu_hidden_size_of_the_7b():
    m = build_model("dinov3-vit7b16-sat493m", device="meta")
    assert m.blocks[0].mlp.w1.weight.shape == (8192, 4096)
    assert m.blocks[0].mlp.w3.weight.shape == (4096, 8192)


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts_agree_with_timm(name):
    """timm leaves out mask_token and local_cls_norm, and its _qkvb variants hold q/v but not k bias."""
    cfg = get_config(name)
    ours = build_model(name, device="meta")
    timm_arch = cfg.timm_name.split(".")[0] + ("_qkvb" if cfg.arch.qkv_bias else "")
    with torch.device("meta"):
        peer = timm.create_model(timm_arch, pretrained=False, num_classes=0)
    d = cfg.arch.embed_dim
    extra = d + (2 * d if cfg.arch.local_cls_norm else 0) + (d * cfg.arch.depth if cfg.arch.qkv_bias else 0)
    assert ours.num_params() == sum(p.numel() for p in peer.parameters()) + extra


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
