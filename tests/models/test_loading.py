"""Loading at scale: straight into the target dtype (meta device + assign, block by block), bounded host
memory, a cached sha256, and the usual PyTorch meta-device idiom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from geodino.models import build_model, file_sha256, load_backbone, save_weights
from tests.conftest import randomize_

NAME = "dinov3-vits16-lvd1689m"


def test_the_meta_device_idiom_builds_without_memory():
    with torch.device("meta"):
        m = build_model("dinov3-vit7b16-sat493m")
    assert all(p.is_meta for p in m.parameters())
    assert m.arch.num_params == 6_716_043_264 and m.num_params() == 6_716_030_976
    assert build_model(NAME, device="meta").vit.cls_token.is_meta


@pytest.mark.parametrize("layout,filename", [("geodino", "w.safetensors"), ("official", "w.pth"),
                                             ("hf", "w.safetensors"), ("timm", "w.safetensors")])
def test_weights_go_straight_into_the_target_dtypes(tmp_path, layout, filename):
    m = randomize_(build_model(NAME, depth=3), seed=2)
    p = save_weights(m, tmp_path / filename, layout=layout)
    b = load_backbone(NAME, p, depth=3, matmul_dtype=torch.bfloat16)
    fp32 = dict(load_backbone(NAME, p, depth=3).named_parameters())  # the plain fp32 load of the same file
    for name, t in b.named_parameters():
        matmul = name.endswith((".weight", ".bias")) and any(k in name for k in ("attn.", "mlp.", "patch_embed."))
        assert t.dtype == (torch.bfloat16 if matmul else torch.float32), name
        assert torch.equal(t, fp32[name].detach().to(t.dtype)), name
    assert b.vit.rope.periods.dtype == torch.float32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cos = torch.nn.functional.cosine_similarity(b.forward_features(x)["patches"].float().flatten(0, 2),
                                                    m.forward_features(x)["patches"].flatten(0, 2), dim=-1)
    assert cos.min() > 0.99


def test_a_random_model_in_bf16_equals_the_fp32_one_cast():
    a = build_model(NAME, seed=4, depth=2)
    b = build_model(NAME, seed=4, depth=2, matmul_dtype=torch.bfloat16)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.detach().to(q.dtype), q.detach()), n


_PEAK = textwrap.dedent("""
    import json, sys, torch
    import timm  # code, not weights: importing timm (and torchvision) adds ~220 MB to any process that builds a model
    from geodino.models import load_backbone
    def status(key):  # VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at its parent's
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current RSS
    before = status("VmRSS")
    m = load_backbone(sys.argv[1], sys.argv[2], matmul_dtype=torch.bfloat16)
    nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
    print(json.dumps({"before": before, "peak": status("VmHWM"), "model_bytes": nbytes}))
""")


@pytest.mark.slow
def test_peak_host_memory_while_loading_stays_near_the_models_own_size(tmp_path):
    """ViT-B/16 (86M parameters) from an fp32 file into bf16 matmul weights: the load adds at most 1.3x the
    loaded model's bytes to the process (a whole fp32 copy would add 3x)."""
    p = save_weights(build_model("dinov3-vitb16-lvd1689m", seed=1), tmp_path / "vitb.safetensors")
    r = subprocess.run([sys.executable, "-c", _PEAK, "dinov3-vitb16-lvd1689m", str(p)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "GEODINO_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    added = m["peak"] - m["before"]
    print(f"model {m['model_bytes'] / 2**20:.0f} MiB, added peak RSS {added / 2**20:.0f} MiB "
          f"({added / m['model_bytes']:.2f}x)")
    assert added <= 1.3 * m["model_bytes"]


def test_sha256_is_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("GEODINO_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    import hashlib

    want = hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(f) == want
    cache = json.loads((tmp_path / "cache" / "weights-sha256.json").read_text())
    assert list(cache.values()) == [want]
    real_open = open
    reads = []

    def spy(path, *a, **k):
        if str(path) == str(f.resolve()):
            reads.append(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    assert file_sha256(f) == want and reads == []  # from the cache: the file is not read again
    f.write_bytes(b"b" * 1000)  # a new size/mtime: hashed again
    os.utime(f, ns=(1, 10**18))
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest() and len(reads) == 1


def test_a_cuda_device_without_cuda_is_one_line(tmp_path, monkeypatch):
    """load_backbone(..., device="cuda") on a machine without a GPU: geodino's one-line error, not torch's."""
    from geodino.errors import ConfigError
    from geodino.models import load_canopy_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "w.safetensors"
    save_weights(build_model("dinov3-vits16-lvd1689m", depth=1), path)
    for call in (lambda: load_backbone("dinov3-vits16-lvd1689m", path, device="cuda", depth=1),
                 lambda: load_backbone("dinov3-vits16-lvd1689m", "random", device="cuda:0", depth=1),
                 lambda: load_canopy_model(weights="random", device="cuda")):
        with pytest.raises(ConfigError, match=r"^device 'cuda(:0)?' asked for, but .*: use device='cpu'") as e:
            call()
        assert "\n" not in str(e.value)


def test_allow_download_without_network_says_the_hub_is_unreachable(tmp_path):
    """--allow-download with no network (here: the hub's address is a closed local port) says so in one line, not
    "pass --allow-download"; without it, a repo id missing from the cache says where to get it."""
    code = textwrap.dedent("""
        import sys
        from geodino.errors import WeightsNotFoundError
        from geodino.models.weights import resolve_weights
        for allow in (True, False):
            try:
                resolve_weights("facebook/dinov3-vitl16-chmv2-dpt-head", allow_download=allow)
            except WeightsNotFoundError as e:
                print(str(e))
    """)
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "0",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    online, offline = r.stdout.strip().splitlines()
    assert online.startswith("cannot download facebook/dinov3-vitl16-chmv2-dpt-head: the Hugging Face hub is "
                             "unreachable (the network is unreachable"), online
    assert "--allow-download" not in online and "hf download facebook/dinov3-vitl16-chmv2-dpt-head" in online
    assert "not in the local Hugging Face cache" in offline and "huggingface.co/facebook/dinov3-vitl16-chmv2" in offline
