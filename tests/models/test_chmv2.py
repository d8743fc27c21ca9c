"""The CHMv2 canopy head: parity with transformers' CHMv2ForDepthEstimation, layouts, strict loading, errors.

The peer is transformers' own model with every parameter randomised (LayerScale ~1, non-zero biases, so that each
block, the class-token readout and every head layer shape the output). Its weights reach geodino only through
geodino's converter (in memory) or through files the peer wrote with ``save_pretrained``. Both run in fp32 on the
same non-square input with the math SDPA backend. The peer's RoPE frequencies are set to the bf16-rounded periods
of the released DINOv3 checkpoints (transformers recomputes them unrounded; geodino keeps the official values).

Heights are a bin-weighted mean, so their plain relative error is dominated by the mean height; the tests also
check the relative error of the centred map and of the bin logits, which carry the spatial detail.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from geodino.errors import ConfigError, InputSizeError, WeightsError, WeightsMismatchError, WeightsNotFoundError
from geodino.models import (CanopyHeightModel, CHMv2Arch, CHMv2Head, RandomWeightsWarning, build_model,
                            convert_canopy_state_dict, detect_canopy_layout, file_sha256, get_config,
                            load_canopy_model, rope_periods, save_canopy_weights, save_weights)
from geodino.models.chmv2 import hf_canopy_config
from tests.conftest import randomize_, rel_err

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")
from transformers import CHMv2Config, CHMv2ForDepthEstimation  # noqa: E402

TOL = 1e-4
BACKBONE = "dinov3-vitl16-sat493m"
TINY = {"depth": 4, "embed_dim": 64, "num_heads": 2}  # backbone overrides
TINY_HEAD = {"embed_dim": 64, "layers": (0, 1, 2, 3), "post_process_channels": (16, 32, 48, 64),
             "fusion_hidden_size": 32, "head_hidden_size": 16, "n_bins": 64}
# The same model, written as transformers configures it (independently of geodino's config writer).
TINY_HF = {"backbone_config": {"model_type": "dinov3_vit", "hidden_size": 64, "intermediate_size": 256,
                               "num_attention_heads": 2, "num_hidden_layers": 4, "num_register_tokens": 4,
                               "key_bias": False, "out_indices": [1, 2, 3, 4], "reshape_hidden_states": True,
                               "apply_layernorm": True, "layer_norm_eps": 1e-5, "return_class_token": True},
           "post_process_channels": [16, 32, 48, 64], "fusion_hidden_size": 32, "head_hidden_size": 16,
           "number_output_channels": 64}
LOAD = {"arch": TINY, "head_arch": TINY_HEAD}


def _peer(config: CHMv2Config, seed: int = 0):
    """transformers' model, every parameter random (built on meta: its own init is slow and overwritten)."""
    with torch.device("meta"):
        peer = CHMv2ForDepthEstimation(config)
    peer = randomize_(peer.to_empty(device="cpu"), seed).eval()
    head_dim = config.backbone_config.hidden_size // config.backbone_config.num_attention_heads
    peer.backbone.rope_embeddings.inv_freq.copy_(1.0 / rope_periods(head_dim))
    return peer


def _peer_outputs(peer, x):
    """transformers' heights, bin logits and (patch grid, cls) per layer."""
    p = peer.config.patch_size
    out = peer.backbone(x)
    feats = list(zip(out.feature_maps, out.cls_tokens))
    logits = peer.head(feats, x.shape[-2] // p, x.shape[-1] // p)
    return peer.features_to_depth(logits).squeeze(1), logits, feats


def _errors(model: CanopyHeightModel, peer, x) -> dict[str, float]:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        feats = model.features(x)
        logits = model.head.bin_logits(feats)
        heights = model.head(feats)
        h_ref, l_ref, f_ref = _peer_outputs(peer, x)
    errs = {"heights": rel_err(heights, h_ref),
            "heights_centred": rel_err(heights - heights.mean(), h_ref - h_ref.mean()),
            "logits": rel_err(logits, l_ref)}
    for i, ((g, c), (g_ref, c_ref)) in enumerate(zip(feats, f_ref)):
        errs[f"layer{i}"] = max(rel_err(g, g_ref), rel_err(c, c_ref))
    assert heights.shape == h_ref.shape
    return errs


@pytest.fixture(scope="module")
def peer():
    return _peer(CHMv2Config(**TINY_HF))


@pytest.fixture(scope="module")
def hf_dir(peer, tmp_path_factory):
    """The peer as transformers writes it: config.json + model.safetensors (backbone.layer.N.*, head.*)."""
    path = tmp_path_factory.mktemp("chmv2") / "snapshot"
    peer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(hf_dir):
    return load_canopy_model(hf_dir, **LOAD)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- parity

def test_parity_with_transformers(model, peer, record_property):
    x = _image(96, 160)  # 6 x 10 patches: non-square
    with torch.no_grad():
        heights = model(x)
    assert heights.shape == (2, 96, 160) and heights.dtype == torch.float32
    assert heights.std() > 0.1  # the random peer gives a map with structure, not a constant
    errs = _errors(model, peer, x)
    record_property("rel_err", errs)
    print("CHMv2 parity (tiny, 96x160): " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_in_memory_converter_matches_the_file_path(model, peer):
    """transformers' in-memory names (backbone.model.layer.N) through the converter give the same model."""
    sd = convert_canopy_state_dict(peer.state_dict(), dst="geodino", backbone_arch=model.backbone.arch)
    with torch.device("meta"):
        other = CanopyHeightModel(build_model(BACKBONE, device="meta", **TINY), CHMv2Head(model.head.arch))
    other.load_state_dict(sd, strict=True, assign=True)
    x = _image(64, 96, seed=3)
    with torch.no_grad():
        assert torch.equal(other.eval()(x), model(x))


def test_odd_patch_grid_matches_transformers_and_is_refused_by_the_model(model, peer):
    """5 x 7 patches: the head's map is 32 * ceil(n / 2) px (as in transformers), so the model refuses it."""
    x = _image(80, 112, seed=1)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ours = model.head(model.features(x))
        theirs = _peer_outputs(peer, x)[0]
    assert ours.shape == theirs.shape == (2, 96, 128)
    assert rel_err(ours - ours.mean(), theirs - theirs.mean()) <= TOL
    with pytest.raises(InputSizeError, match="multiples of 32"):
        model(x)


def _real_head_pair(seed: int = 0):
    from transformers.models.chmv2.modeling_chmv2 import CHMv2FeaturesToDepth
    from transformers.models.chmv2.modeling_chmv2 import CHMv2Head as HFHead

    config = CHMv2Config()  # transformers' defaults: the released head
    with torch.device("meta"):
        hf_head = HFHead(config)
    hf_head = randomize_(hf_head.to_empty(device="cpu"), seed).eval()
    sd = convert_canopy_state_dict({"head." + k: v for k, v in hf_head.state_dict().items()}, src="hf")
    ours = CHMv2Head(CHMv2Arch())
    ours.load_state_dict({k.removeprefix("head."): v for k, v in sd.items()}, strict=True)
    return ours.eval(), hf_head, CHMv2FeaturesToDepth(config), config


@pytest.mark.parametrize("grid", [(4, 6), (3, 5)], ids=["4x6-patches", "odd-3x5-patches"])
def test_real_head_config_parity(grid, record_property):
    """The released head (1024-wide, channels 128..1024, 256 bins) on random layer features."""
    ours, hf_head, to_depth, config = _real_head_pair()
    g = torch.Generator().manual_seed(5)
    feats = [(torch.randn(1, 1024, *grid, generator=g), torch.randn(1, 1024, generator=g)) for _ in range(4)]
    with torch.no_grad():
        logits, heights = ours.bin_logits(feats), ours(feats)
        ref_logits = hf_head(feats, *grid)
        ref = to_depth(ref_logits).squeeze(1)
    assert heights.shape == ref.shape == (1, 32 * -(-grid[0] // 2), 32 * -(-grid[1] // 2))
    errs = {"heights": rel_err(heights, ref), "heights_centred": rel_err(heights - heights.mean(), ref - ref.mean()),
            "logits": rel_err(logits, ref_logits)}
    record_property("rel_err", errs)
    print(f"CHMv2 real head {grid}: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_defaults_are_the_released_config():
    """geodino's CHMv2 defaults written as a transformers config equal transformers' own CHMv2 defaults, and the
    layers [5, 11, 17, 23] are transformers' out_indices [6, 12, 18, 24]."""
    ours = CHMv2Config(**{k: v for k, v in hf_canopy_config(get_config(BACKBONE).arch, CHMv2Arch()).items()
                          if k not in ("architectures", "model_type")})
    ref = CHMv2Config()
    for k in ("patch_size", "reassemble_factors", "post_process_channels", "fusion_hidden_size", "head_hidden_size",
              "number_output_channels", "readout_type", "min_depth", "max_depth", "bins_strategy", "norm_strategy"):
        assert getattr(ours, k) == getattr(ref, k), k
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_register_tokens", "out_indices",
              "intermediate_size"):
        assert getattr(ours.backbone_config, k) == getattr(ref.backbone_config, k), k
    assert CHMv2Arch().layers == (5, 11, 17, 23)


@pytest.mark.parametrize("bins,norm,n_bins,readout", [
    ("linear", "linear", 64, "project"), ("log", "softmax", 64, "add"), ("chmv2_mixlog", "sigmoid", 64, "ignore"),
    ("chmv2_mixlog", "chmv2_mixlog", 1, "project")])
def test_other_bin_strategies_and_readouts(bins, norm, n_bins, readout):
    from transformers.models.chmv2.modeling_chmv2 import CHMv2FeaturesToDepth
    from transformers.models.chmv2.modeling_chmv2 import CHMv2Head as HFHead

    hf_cfg = {k: v for k, v in TINY_HF.items() if k != "number_output_channels"}
    config = CHMv2Config(**hf_cfg, number_output_channels=n_bins, bins_strategy=bins, norm_strategy=norm,
                         readout_type=readout)
    hf_head = randomize_(HFHead(config), seed=2).eval()
    arch = CHMv2Arch(**{**TINY_HEAD, "n_bins": n_bins}, bins_strategy=bins, norm_strategy=norm, readout_type=readout)
    ours = CHMv2Head(arch)
    sd = convert_canopy_state_dict({"head." + k: v for k, v in hf_head.state_dict().items()}, src="hf")
    ours.load_state_dict({k.removeprefix("head."): v for k, v in sd.items()}, strict=True)
    g = torch.Generator().manual_seed(4)
    feats = [(torch.randn(2, 64, 4, 6, generator=g), torch.randn(2, 64, generator=g)) for _ in range(4)]
    with torch.no_grad():
        ours_h = ours(feats)
        ref = CHMv2FeaturesToDepth(config)(hf_head(feats, 4, 6)).squeeze(1)
    assert rel_err(ours_h - ours_h.mean(), ref - ref.mean()) <= TOL and rel_err(ours_h, ref) <= TOL


@pytest.mark.slow
def test_parity_full_vitl_chmv2(record_property):
    """The whole released architecture (SAT ViT-L, 24 blocks, the full head), random weights, 64 x 96 px."""
    bb = {"model_type": "dinov3_vit", "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
          "num_hidden_layers": 24, "num_register_tokens": 4, "key_bias": False, "out_indices": [6, 12, 18, 24],
          "reshape_hidden_states": True, "apply_layernorm": True, "layer_norm_eps": 1e-5, "return_class_token": True}
    peer = _peer(CHMv2Config(backbone_config=bb))
    sd = convert_canopy_state_dict(peer.state_dict(), dst="geodino", backbone_arch=get_config(BACKBONE).arch)
    with torch.device("meta"):
        model = CanopyHeightModel(build_model(BACKBONE, device="meta"), CHMv2Head())
    model.load_state_dict(sd, strict=True, assign=True)
    errs = _errors(model.eval(), peer, _image(64, 96)[:1])
    record_property("rel_err", errs)
    print("CHMv2 parity (ViT-L, 64x96): " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_parity_can_fail(model, peer):
    """Negative controls: plausible mistakes push the errors above the tolerance (even the bf16 rounding of the
    RoPE periods, which transformers skips for real checkpoints, shows)."""
    x = _image(64, 96, seed=2)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ref = _peer_outputs(peer, x)[0]
        # reading the layers without the backbone's final LayerNorm (patch grids and class tokens)
        raw = [(g, prefix[:, 0]) for g, prefix in model.backbone.vit.forward_intermediates(
            x, indices=list(model.head.arch.layers), norm=False, output_fmt="NCHW", intermediates_only=True,
            return_prefix_tokens=True)]
        no_norm = model.head(raw)
        # ignoring the class token (readout 'ignore' instead of 'project' with the same weights)
        no_cls = model.head([(g, torch.zeros_like(c)) for g, c in model.features(x)])
        # unrounded RoPE periods: what transformers computes for a real checkpoint
        unrounded = _peer(CHMv2Config(**TINY_HF))
        unrounded.backbone.rope_embeddings.inv_freq.copy_(1.0 / 100 ** (torch.arange(8) / 8))
        ours = model(x)
        rope = rel_err(ours - ours.mean(), (u := _peer_outputs(unrounded, x)[0]) - u.mean())
    centred = {"no_final_norm": rel_err(no_norm - no_norm.mean(), ref - ref.mean()),
               "class_token_ignored": rel_err(no_cls - no_cls.mean(), ref - ref.mean()),
               "unrounded_rope_periods": rope}
    print("CHMv2 negative controls (centred rel. err.): " + ", ".join(f"{k}={v:.2e}" for k, v in centred.items()))
    assert min(centred.values()) > 2 * TOL, centred


# ----------------------------------------------------------------------------------------- loading

def test_hf_snapshot_records_provenance(model, hf_dir):
    assert model.weights_info.layout == "hf" and model.backbone.weights_info.layout == "hf"
    assert model.weights_info.sha256 == file_sha256(hf_dir / "model.safetensors")
    assert model.cfg.name == "chmv2-vitl16-sat493m" and model.mean == (0.420, 0.411, 0.296)
    assert model.head.arch.layers == (0, 1, 2, 3)


def test_bare_safetensors_and_hf_cache(model, hf_dir, tmp_path, monkeypatch):
    x = _image(64, 64, seed=4)
    with torch.no_grad():
        ref = model(x)
    bare = tmp_path / "chmv2.safetensors"
    shutil.copy(hf_dir / "model.safetensors", bare)
    with torch.no_grad():
        assert torch.equal(load_canopy_model(bare, **LOAD)(x), ref)
    # the hub id, offline, from the local HF cache (hub layout: models--org--name/snapshots/<rev>)
    cache = tmp_path / "hub"
    repo = cache / "models--facebook--dinov3-vitl16-chmv2-dpt-head"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(hf_dir, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    with torch.no_grad():
        assert torch.equal(load_canopy_model("facebook/dinov3-vitl16-chmv2-dpt-head", **LOAD)(x), ref)
        assert torch.equal(load_canopy_model(None, **LOAD)(x), ref)  # the model's own repo is the default
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError, match="not in the local Hugging Face cache"):
        load_canopy_model(None, **LOAD)


def test_geodino_and_hf_files_round_trip_and_transformers_reads_ours(model, tmp_path):
    x = _image(64, 96, seed=5)
    with torch.no_grad():
        ref = model(x)
    for path, layout in ((tmp_path / "c.safetensors", "geodino"), (tmp_path / "hf_snap", "hf"),
                         (tmp_path / "hf.safetensors", "hf")):
        save_canopy_weights(model, path, layout=layout)
        loaded = load_canopy_model(path, **LOAD)
        assert loaded.weights_info.layout == layout
        with torch.no_grad():
            assert torch.equal(loaded(x), ref), layout
    peer, info = CHMv2ForDepthEstimation.from_pretrained(tmp_path / "hf_snap", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    peer.backbone.rope_embeddings.inv_freq.copy_(1.0 / rope_periods(32))
    errs = _errors(model, peer.eval(), x)
    assert max(errs.values()) <= TOL, errs


def test_official_head_only_checkpoint_on_a_separate_backbone(model, tmp_path, monkeypatch):
    head = save_canopy_weights(model, tmp_path / "dinov3_vitl16_chmv2_dpt_head.pth", layout="official")
    sd = torch.load(head, weights_only=True)
    assert detect_canopy_layout(sd) == "official" and not any(k.startswith(("backbone.", "head.")) for k in sd)
    assert "fusion_blocks.1.res_conv_unit1.conv1.conv.weight" in sd and "convs.0.conv.weight" in sd
    backbone = save_weights(model.backbone, tmp_path / "sat.pth", layout="official")
    loaded = load_canopy_model(head, backbone_weights=backbone, **LOAD)
    assert loaded.weights_info.layout == "official" and loaded.backbone.weights_info.layout == "official"
    x = _image(64, 64, seed=6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError, match="holds the CHMv2 head alone.*pass backbone_weights"):
        load_canopy_model(head, **LOAD)


def test_random_weights_warn_are_seeded_and_recorded():
    with pytest.warns(RandomWeightsWarning, match="RANDOM"):
        a = load_canopy_model("random", **LOAD)
    with pytest.warns(RandomWeightsWarning):
        b = load_canopy_model("random", **LOAD)
    assert a.weights_info.random and a.weights_info.sha256 == "random-init"
    x = _image(64, 64)
    with torch.no_grad():
        ha, hb = a(x), b(x)
    assert torch.equal(ha, hb) and ha.shape == (2, 64, 64)
    assert 0.008 <= ha.min() and ha.max() <= 96.0


# ------------------------------------------------------------------------------------------ bad input

def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _write(sd: dict, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def hf_sd(hf_dir):
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


def test_missing_unexpected_and_misshapen_head_keys(hf_sd, tmp_path):
    sd = dict(hf_sd)
    del sd["head.conv_depth.head.4.bias"]
    with pytest.raises(WeightsMismatchError) as e:
        load_canopy_model(_write(sd, tmp_path / "missing.safetensors"), **LOAD)
    assert "1 missing key(s) (depth.conv3.bias)" in _one_line(e)
    sd = {**hf_sd, "head.extra.weight": torch.zeros(3)}
    with pytest.raises(WeightsMismatchError, match="1 unexpected key"):
        load_canopy_model(_write(sd, tmp_path / "extra.safetensors"), **LOAD)
    # a bare file (no config.json) read with the wrong head channels: the message says what the file holds
    with pytest.raises(WeightsMismatchError) as e:
        load_canopy_model(tmp_path / "extra.safetensors", arch=TINY,
                          head_arch={**TINY_HEAD, "post_process_channels": (8, 32, 48, 64)})
    msg = _one_line(e)
    assert "shape mismatch" in msg and "a head for 64-wide tokens: 4 layers, channels [16, 32, 48, 64], 64 bins" in msg


def test_backbone_head_mismatch_is_one_line(hf_dir):
    with torch.device("meta"):
        vits, vitl_head = build_model("dinov3-vits16-lvd1689m", device="meta"), CHMv2Head(CHMv2Arch())
    with pytest.raises(WeightsMismatchError) as e:
        CanopyHeightModel(vits, vitl_head)
    assert "reads 1024-wide tokens but dinov3-vits16-lvd1689m is 384 wide" in _one_line(e)
    with pytest.raises(WeightsMismatchError) as e:  # the tiny file on a full ViT-S
        load_canopy_model(hf_dir, backbone="dinov3-vits16-lvd1689m", head_arch=TINY_HEAD)
    assert "reads 64-wide tokens but dinov3-vits16-lvd1689m is 384 wide" in _one_line(e)
    with pytest.raises(WeightsMismatchError) as e:  # a backbone without the blocks the head reads
        load_canopy_model(hf_dir, arch={**TINY, "depth": 3}, head_arch=TINY_HEAD)
    assert "reads blocks [0, 1, 2, 3] but dinov3-vitl16-sat493m has 3 blocks" in _one_line(e)


def test_wrong_files_are_named(model, hf_dir, hf_sd, tmp_path):
    backbone_only = save_weights(model.backbone, tmp_path / "backbone.safetensors", layout="hf")
    with pytest.raises(WeightsError) as e:
        load_canopy_model(backbone_only, **LOAD)
    assert "holds a DINOv3 backbone (hf layout) but no CHMv2 head" in _one_line(e)
    with pytest.raises(WeightsError, match="holds no CHMv2 head"):
        load_canopy_model(_write({"foo.weight": torch.zeros(2)}, tmp_path / "foo.safetensors"), **LOAD)
    with pytest.raises(ConfigError, match="holds its own backbone"):
        load_canopy_model(hf_dir, backbone_weights=backbone_only, **LOAD)
    with pytest.raises(InputSizeError, match="multiples of 32"):
        model(_image(64, 80))


@pytest.mark.parametrize("edit,depth,error,match", [
    (lambda c: c["backbone_config"].update(out_indices=[1, 2, 3, 5], num_hidden_layers=5), 5,
     WeightsMismatchError, "has layers=\\(0, 1, 2, 4\\), but chmv2-vitl16-sat493m has layers=\\(0, 1, 2, 3\\)"),
    (lambda c: c["backbone_config"].update(out_indices=[2, 3, 4, 5], num_hidden_layers=5), 4,
     WeightsMismatchError, "reads blocks \\[1, 2, 3, 4\\] but dinov3-vitl16-sat493m has 4 blocks"),
    (lambda c: c.update(number_output_channels=32), 4, WeightsMismatchError, "has n_bins=32"),
    (lambda c: c["backbone_config"].update(apply_layernorm=False), 4, WeightsError, "apply_layernorm=false"),
    (lambda c: c["backbone_config"].update(layer_norm_eps=1e-6), 4, WeightsMismatchError, "layer_norm_eps=1e-06"),
    (lambda c: c.update(model_type="dpt"), 4, WeightsError, "not CHMv2"),
], ids=["layers", "layers-beyond-depth", "bins", "no-layernorm", "eps", "model-type"])
def test_config_json_is_checked(hf_dir, tmp_path, edit, depth, error, match):
    d = tmp_path / "snap"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(error, match=match) as e:
        load_canopy_model(d, arch={**TINY, "depth": depth}, head_arch=TINY_HEAD)
    _one_line(e)
