"""Checkpoint IO: round trips through every layout, strict loading, provenance, hostile and broken files."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from geodino.errors import (InputSizeError, UnsafeFileError, WeightsError, WeightsMismatchError,
                            WeightsNotFoundError)
from geodino.models import (build_model, convert_state_dict, detect_layout, file_sha256, load_backbone,
                            rope_periods, save_weights)
from tests.conftest import randomize_

NAME = "dinov3-vits16-lvd1689m"
SMALL = {"depth": 2}


@pytest.fixture(scope="module")
def small_model():
    return randomize_(build_model(NAME, **SMALL), seed=7)


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))


# -------------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("layout,filename", [
    ("geodino", "w.safetensors"),
    ("official", "w.pth"),
    ("official", "w.safetensors"),
    ("hf", "w.safetensors"),
    ("hf", "hf_snapshot"),  # a directory: config.json + model.safetensors
    ("timm", "w.safetensors"),
    ("timm", "w.pth"),
])
def test_round_trip_every_layout(small_model, image, tmp_path, layout, filename):
    path = save_weights(small_model, tmp_path / filename, layout=layout)
    loaded = load_backbone(NAME, path, **SMALL)
    assert loaded.weights_info.layout == layout
    with torch.no_grad():
        a, b = small_model.forward_features(image), loaded.forward_features(image)
    for k in ("cls", "registers", "patches"):
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name,overrides", [("dinov3-vit7b16-sat493m", {"depth": 1, "embed_dim": 512, "num_heads": 4}),
                                            ("dinov3-vitl16-sat493m", {"depth": 1, "embed_dim": 256, "num_heads": 4})])
def test_round_trip_swiglu_and_local_cls_norm(tmp_path, name, overrides):
    model = randomize_(build_model(name, **overrides), seed=1)
    x = torch.randn(1, 3, 32, 32)
    for layout in ("official", "hf", "timm"):
        path = save_weights(model, tmp_path / f"{layout}.safetensors", layout=layout)
        loaded = load_backbone(name, path, **overrides)
        with torch.no_grad():
            assert torch.equal(model.forward_features(x)["patches"], loaded.forward_features(x)["patches"])


def test_layout_detection_and_conversion_are_inverse(small_model):
    sd = small_model.vit.state_dict()
    assert detect_layout(sd) == "timm" and detect_layout(small_model.state_dict()) == "timm"
    for layout in ("official", "hf", "geodino"):
        other = convert_state_dict(sd, dst=layout, arch=small_model.arch)
        assert detect_layout(other) == layout
        back = convert_state_dict(other, dst="timm")
        assert back.keys() == sd.keys(), layout
        for k in sd:
            assert torch.equal(back[k], sd[k]), (layout, k)


def test_official_layout_matches_official_key_names(small_model):
    sd = convert_state_dict(small_model.state_dict(), dst="official", arch=small_model.arch)
    for key in ("storage_tokens", "mask_token", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask",
                "blocks.0.ls1.gamma", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"):
        assert key in sd
    mask = sd["blocks.0.attn.qkv.bias_mask"]
    assert mask.tolist() == [1.0] * 384 + [0.0] * 384 + [1.0] * 384
    assert sd["rope_embed.periods"].tolist() == rope_periods(64).tolist()
    hf = convert_state_dict(small_model.state_dict(), dst="hf", arch=small_model.arch)
    assert "layer.0.attention.k_proj.weight" in hf and "layer.0.attention.k_proj.bias" not in hf
    assert hf["embeddings.mask_token"].shape == (1, 1, 384)


def test_key_bias_is_masked_like_the_official_model(small_model, image, tmp_path):
    """The official qkv linear multiplies its bias by bias_mask = [1, 0, 1]: the key third has no effect, whatever
    the file holds there; the query third has."""
    sd = convert_state_dict(small_model.state_dict(), dst="official", arch=small_model.arch)
    sd["blocks.0.attn.qkv.bias"][384:768] += 5.0
    torch.save(sd, tmp_path / "k.pth")
    with torch.no_grad():
        ref = small_model.forward_features(image)["patches"]
        assert torch.equal(load_backbone(NAME, tmp_path / "k.pth", **SMALL).forward_features(image)["patches"], ref)
        sd["blocks.0.attn.qkv.bias"][:384] += 0.5
        torch.save(sd, tmp_path / "q.pth")
        assert not torch.equal(load_backbone(NAME, tmp_path / "q.pth", **SMALL).forward_features(image)["patches"],
                               ref)


def test_the_checkpoints_own_rope_periods_are_used_and_survive_casts(small_model, image, tmp_path):
    """Official and geodino files carry RoPE periods: those are used (else the bf16-rounded ones), and they stay
    through a whole-model cast (timm recomputes unrounded periods when its buffer is cast down)."""
    sd = convert_state_dict(small_model.state_dict(), dst="official", arch=small_model.arch)
    own = sd["rope_embed.periods"] * 1.5
    sd["rope_embed.periods"] = own
    torch.save(sd, tmp_path / "p.pth")
    m = load_backbone(NAME, tmp_path / "p.pth", **SMALL)
    assert torch.equal(m.vit.rope.periods, own)
    with torch.no_grad():
        assert not torch.allclose(m.forward_features(image)["patches"], small_model.forward_features(image)["patches"])
    for layout in ("timm", "hf"):  # no periods in the file: the released checkpoints' bf16-rounded ones
        p = save_weights(small_model, tmp_path / f"{layout}.safetensors", layout=layout)
        assert torch.equal(load_backbone(NAME, p, **SMALL).vit.rope.periods, rope_periods(64))
    m.to(torch.bfloat16)
    assert m.vit.rope.periods.dtype == torch.float32 and torch.equal(m.vit.rope.periods, own)
    m.to(torch.float32)
    assert torch.equal(m.vit.rope.periods, own)
    with pytest.raises(WeightsMismatchError, match="rope_embed.periods"):  # periods for another head size
        sd["rope_embed.periods"] = own[:8]
        torch.save(sd, tmp_path / "bad.pth")
        load_backbone(NAME, tmp_path / "bad.pth", **SMALL)


def test_timm_files_load_into_timm_itself(small_model, image, tmp_path):
    """A timm-layout file is a state dict timm's own model (by its registry name) loads strictly: the zero-bias
    variant when the q/v biases are all zero, as timm's released DINOv3 files are."""
    import timm
    from safetensors.torch import load_file

    m = build_model(NAME, seed=1, **SMALL)
    p = save_weights(m, tmp_path / "t.safetensors", layout="timm")
    sd = load_file(str(p))
    assert not any(k.endswith("q_bias") for k in sd)
    peer = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, depth=2).eval()
    peer.load_state_dict(sd, strict=True)
    peer.rope.periods.copy_(peer.rope.periods.to(torch.bfloat16).to(torch.float32))  # timm's model card
    with torch.no_grad():
        assert torch.equal(peer.forward_features(image)[:, 5:], m.forward_features(image)["patches"].flatten(1, 2))
    assert load_backbone(NAME, p, **SMALL).vit.blocks[0].attn.q_bias.abs().max() == 0


def test_sha256_provenance(small_model, tmp_path):
    import hashlib

    path = save_weights(small_model, tmp_path / "w.safetensors")
    model = load_backbone(NAME, path, **SMALL)
    assert model.weights_info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert not model.weights_info.random


def test_random_weights_warn_and_are_recorded():
    from geodino.models import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning, match="RANDOM"):
        model = load_backbone(NAME, "random", **SMALL)
    assert model.weights_info.random and model.weights_info.sha256 == "random-init"


def test_hf_repo_id_resolves_offline_from_local_cache(small_model, tmp_path, monkeypatch, image):
    """A hub id is looked up in the local HF cache (hub layout: models--org--name/snapshots/<rev>)."""
    cache = tmp_path / "hub"
    repo = cache / "models--facebook--dinov3-vits16-pretrain-lvd1689m"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    save_weights(small_model, snap, layout="hf")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    loaded = load_backbone(NAME, "facebook/dinov3-vits16-pretrain-lvd1689m", **SMALL)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(image)["cls"], small_model.forward_features(image)["cls"])
    # the model's own hub id is the default
    assert load_backbone(NAME, None, **SMALL).weights_info.layout == "hf"
    with pytest.raises(WeightsNotFoundError, match="not in the local Hugging Face cache"):
        load_backbone(NAME, "facebook/dinov3-vitb16-pretrain-lvd1689m")


# -------------------------------------------------------------------------------------------- bad inputs

def test_wrong_model_names_the_model_the_file_fits(tmp_path):
    vitb = build_model("dinov3-vitb16-lvd1689m", device="meta")
    # a full-size ViT-B state dict (zeros) saved as an official checkpoint, loaded as the SAT ViT-L
    sd = {k: torch.zeros(v.shape) for k, v in vitb.state_dict().items()}
    path = save_weights(sd, tmp_path / "vitb.pth", layout="official", model="dinov3-vitb16-lvd1689m")
    with pytest.raises(WeightsMismatchError) as e:
        load_backbone("dinov3-vitl16-sat493m", path)
    msg = str(e.value)
    assert "dinov3-vitl16-sat493m" in msg and "looks like dinov3-vitb16-lvd1689m" in msg
    assert "missing key" in msg and "shape mismatch" in msg and "\n" not in msg


def test_lvd_vitl_official_file_is_not_taken_for_the_sat_model(tmp_path):
    """Same shapes, but the official SAT checkpoint has local_cls_norm and the LVD one has not."""
    lvd = build_model("dinov3-vitl16-lvd1689m", device="meta", depth=1)
    sd = {k: torch.zeros(v.shape) for k, v in lvd.state_dict().items()}
    path = tmp_path / "lvd.pth"
    torch.save(convert_state_dict(sd, dst="official", arch=lvd.arch), path)
    with pytest.raises(WeightsMismatchError, match="local_cls_norm"):
        load_backbone("dinov3-vitl16-sat493m", path, depth=1)


def test_hf_config_of_another_model_is_refused(small_model, tmp_path):
    path = save_weights(small_model, tmp_path / "snap", layout="hf")
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_attention_heads"] = 12
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsMismatchError, match="num_heads=12"):
        load_backbone(NAME, path, **SMALL)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(small_model, tmp_path, suffix):
    layout = "geodino" if suffix == ".safetensors" else "official"
    path = save_weights(small_model, tmp_path / f"w{suffix}", layout=layout)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_backbone(NAME, path, **SMALL)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"this is not a checkpoint at all" * 100)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_backbone(NAME, path, **SMALL)


class _Evil:
    """Unpickling this object would create a marker file (standing in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_would_run_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 384), "payload": _Evil(str(marker))}, path)
    # sanity: the file really does run code when unpickled unsafely
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="would import or run code"):
        load_backbone(NAME, path, **SMALL)
    assert not marker.exists()
    # a raw pickle (not torch's zip format) too
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
    with pytest.raises(WeightsError):
        load_backbone(NAME, raw, **SMALL)
    assert not marker.exists()


def test_missing_file_and_bad_repo_id(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_backbone(NAME, tmp_path / "nope.safetensors")
    with pytest.raises(WeightsNotFoundError):
        load_backbone(NAME, tmp_path / "empty_dir_that_does_not_exist" / "x")
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(WeightsNotFoundError, match="holds no weights"):
        load_backbone(NAME, d)


def test_incomplete_sharded_snapshot(small_model, tmp_path):
    snap = save_weights(small_model, tmp_path / "snap", layout="hf")
    (snap / "model.safetensors").rename(snap / "model-00001-of-00002.safetensors")
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(WeightsError, match="download is incomplete"):
        load_backbone(NAME, snap, **SMALL)
    shutil.copy(snap / "model-00001-of-00002.safetensors", snap / "model-00002-of-00002.safetensors")
    assert load_backbone(NAME, snap, **SMALL).weights_info.layout == "hf"


def test_image_size_policy_is_a_clear_error(small_model):
    """Policy: sizes not a multiple of 16 are refused (never silently cropped) in every entry point."""
    from geodino.models import crop_to_patch_multiple

    x = torch.randn(1, 3, 70, 85)
    for call in (small_model.forward_features, small_model, lambda t: small_model.forward_features(t, layers=1)):
        with pytest.raises(InputSizeError, match=r"70x85 px is not a multiple of the patch size 16.*64x80"):
            call(x)
    with torch.no_grad():  # the helper reproduces the official model's crop
        out = small_model.forward_features(crop_to_patch_multiple(x))
    assert out["patches"].shape == (1, 4, 5, 384)
