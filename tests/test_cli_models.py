"""`geodino models`, `geodino weights inspect|convert`, and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from geodino.cli import main
from geodino.models import build_model, load_backbone, save_weights
from tests.conftest import randomize_


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geodino", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def test_models_lists_names_params_and_normalisation(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dinov3-vitl16-sat493m"]["params"] == 303_156_224
    assert rows["dinov3-vit7b16-sat493m"]["params"] == 6_716_043_264
    assert rows["dinov3-vitl16-sat493m"]["normalization"] == "sat493m"
    assert main(["models"]) == 0
    assert "dinov3-vits16plus-lvd1689m" in capsys.readouterr().out


def test_models_table_fits_80_columns():
    r = run_cli("models", env={**__import__("os").environ, "COLUMNS": "80"})
    assert r.returncode == 0 and "dinov3-vith16plus-lvd1689m" in r.stdout, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
    assert "\x1b[" not in r.stdout  # not a terminal: plain text


def test_inspect_and_convert(tmp_path, capsys):
    model = randomize_(build_model("dinov3-vitb16-lvd1689m"), seed=2)
    src = save_weights(model, tmp_path / "official.pth", layout="official")
    assert main(["weights", "inspect", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "official" and info["models"] == ["dinov3-vitb16-lvd1689m"]
    import hashlib
    assert info["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    for to, dst in (("hf", tmp_path / "hf_dir"), ("timm", tmp_path / "t.safetensors"),
                    ("geodino", tmp_path / "g.safetensors"), ("official", tmp_path / "o.safetensors")):
        assert main(["weights", "convert", str(src), str(dst), "--to", to]) == 0
        loaded = load_backbone("dinov3-vitb16-lvd1689m", dst)
        assert loaded.weights_info.layout == to
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    # an existing output is not overwritten
    assert main(["weights", "convert", str(src), str(tmp_path / "g.safetensors")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_user_errors_are_one_line_exit_2_no_traceback(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    r = run_cli("weights", "inspect", junk)
    assert r.returncode == 2
    assert r.stderr.startswith("geodino: error:") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("--debug", "weights", "inspect", junk)
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run_cli("no-such-command")
    assert r.returncode == 2


def test_inspect_every_layout_and_refuse_bad_files_in_one_line(tmp_path):
    """`weights inspect` names each layout and the model; another model's file, a truncated file and a pickle that
    would run code are one line on stderr and exit 2, for inspect and convert alike."""
    import pickle

    model = build_model("dinov3-vits16-lvd1689m", seed=1, depth=2)
    for layout, name in (("official", "o.pth"), ("hf", "hf_dir"), ("timm", "t.safetensors"),
                         ("geodino", "g.safetensors")):
        p = save_weights(model, tmp_path / name, layout=layout)
        r = run_cli("weights", "inspect", p, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["layout"] == layout
    # a ViT-S file converted as the ViT-B: names the model it holds
    r = run_cli("weights", "convert", tmp_path / "o.pth", tmp_path / "x.safetensors", "--model",
                "dinov3-vitb16-lvd1689m")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "do not fit dinov3-vitb16-lvd1689m" in r.stderr
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
    torch.save({"cls_token": torch.zeros(1, 1, 384), "x": _Evil(str(marker))}, tmp_path / "evil_zip.pth")
    for bad, words in (("cut.safetensors", "truncated or corrupt"), ("evil.pth", "it was not loaded"),
                       ("evil_zip.pth", "would import or run code")):
        for args in (("inspect", tmp_path / bad), ("convert", tmp_path / bad, tmp_path / "out.safetensors")):
            r = run_cli("weights", *args)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (bad, r.stderr)
            assert "Traceback" not in r.stderr and not marker.exists()


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))
