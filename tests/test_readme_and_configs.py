"""README.md stays true: its set-up commands are what CI runs, every other ```bash and ```python block runs as
written, in order, on a fresh copy of the repository (with the weights it names replaced by ``random``, as README
says), quietly, leaving the copy's git status clean; shipped configs validate."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from geodino.embed import EmbedConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# README: "each weights file or hub id a command names (dinov3_….pth, facebook/dinov3-…) becomes random"
REAL_WEIGHTS = re.compile(r"dinov3_[a-z0-9_]+-[0-9a-f]{8}\.pth|facebook/dinov3-[\w.-]*[\w]")
SETUP = "## Set up"


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(section, language, code)`` of every fenced block, in order."""
    out, section = [], ""
    for m in re.finditer(r"^(## [^\n]*)$|^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if m.group(1):
            section = m.group(1)
        else:
            out.append((section, m.group(2), m.group(3)))
    return out


def runnable() -> list[tuple[int, str, str, str]]:
    return [(i, sec, lang, code) for i, (sec, lang, code) in enumerate(blocks(README))
            if lang in ("bash", "python") and sec != SETUP]


def test_ci_runs_the_readme_setup_commands():
    ci = (REPO / ".ci" / "run").read_text()
    setup = [code for sec, lang, code in blocks(README) if sec == SETUP]
    assert [b.strip() for b in setup] == ["pip install -e '.[dev]'", "pytest"]
    assert "\npip install -e '.[dev]'\n" in ci and "\npytest" in ci


def test_readme_blocks_are_fenced_as_run_or_not_run():
    """Each block is bash or python (run) or text (not run: network, S3, GPUs, GEO-Bench, your files); blocks that
    are not run never write to the repository outside out/."""
    langs = {lang for _, lang, _ in blocks(README)}
    assert langs <= {"bash", "python", "text"}, langs
    for _, _, lang, code in runnable():
        for path in re.findall(r"(?:-o|--output)\s+(\S+)|output=\"([^\"]+)\"", code):
            p = next(x for x in path if x)
            assert p.startswith("out/"), (p, code)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "embed").glob("*.yaml")), ids=lambda p: p.name)
def test_embed_configs_validate(path):
    cfg = EmbedConfig.build(path)
    assert cfg.tile % 16 == 0


def _copy_repo(dest: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored), committed into a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    git = ["git", "-c", "user.name=readme", "-c", "user.email=readme@test", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)


def _shell_lines(code: str) -> list[str]:
    return [ln for ln in code.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _serve_then_interrupt(argv: list[str], where: str) -> None:
    """``geodino explore`` as a user runs it: it prints the page's URL, the page and its API answer, and Ctrl-C
    (SIGINT) stops it with one line and exit code 130."""
    import json
    import signal
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "geodino", *argv[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"{where}: {' '.join(argv)}\n{proc.stderr.read()}"
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "maplibre" in page.lower()
        session = json.loads(urllib.request.urlopen(url + "api/session", timeout=30).read())
        assert len(session["cubes"]) == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"{where}: {' '.join(argv)} exited {proc.returncode}\n{err}"
    assert "Traceback" not in err and not [ln for ln in err.splitlines() if "warning" in ln], err


@pytest.mark.slow
def test_readme_runs_as_written(shared_data, tmp_path, monkeypatch, capfd, caplog):
    """Every bash and python block outside "Set up", in order, from the root of a fresh copy that has the shared
    data at ../shared/data. geodino commands run in this interpreter (the console script's entry point, with its
    exit code); other shell lines in bash. No library warning may be raised, nor GDAL warning logged, besides the
    one saying the weights are random, and the copy's git status stays clean (outputs go to the ignored out/)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the README test copies the repository with git")
    from geodino.cli import main
    from geodino.models import RandomWeightsWarning

    root = tmp_path / "clone"
    root.mkdir()
    _copy_repo(root)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data, target_is_directory=True)
    monkeypatch.chdir(root)
    caplog.set_level(logging.WARNING)
    ran = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # Python's defaults, as a user's session has them
        for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", cat)
        for i, section, lang, code in runnable():
            code = REAL_WEIGHTS.sub("random", code)
            where = f"README block {i} ({section})"
            if lang == "python":
                exec(compile(code, where, "exec"), {"__name__": "__readme__"})
                ran.append(where)
                continue
            for line in _shell_lines(code):
                argv = shlex.split(line, comments=True)
                if argv[:2] == ["geodino", "explore"]:  # serves until Ctrl-C: the page answers, then Ctrl-C
                    _serve_then_interrupt(argv, where)
                elif argv[0] == "geodino":
                    code_ = main(argv[1:])
                    err = capfd.readouterr().err
                    assert code_ == 0, f"{where}: {line}\n{err}"
                    warned = [ln for ln in err.splitlines() if "warning" in ln and "--weights random" not in ln]
                    assert not warned and "Traceback" not in err, f"{where}: {line}\n{err}"
                else:
                    r = subprocess.run(line, shell=True, executable="bash", capture_output=True, text=True)
                    assert r.returncode == 0, f"{where}: {line}\n{r.stderr}"
                ran.append(line)
    others = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, RandomWeightsWarning)]
    assert not others, others
    gdal = [r.getMessage() for r in caplog.records if r.name.startswith("rasterio")]
    assert not gdal, gdal
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"README's blocks left files in the clone:\n{status}"
    assert len(ran) >= 20 and (root / "out" / "demo_map.tif").is_file()

    # what the blocks claim: both classes on the map, an RGB uint8 PCA image, bands by description
    import numpy as np
    import rasterio
    from rasterio.enums import ColorInterp

    with rasterio.open(root / "out" / "demo_map.tif") as m:
        classes = np.unique(m.read(1))
    assert {0, 1} <= set(classes.tolist()), classes
    with rasterio.open(root / "out" / "demo_pca.tif") as r:
        assert r.count == 3 and r.dtypes[0] == "uint8" and r.colorinterp[:3] == (
            ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    assert main(["info", "out/scene.zarr"]) == 0
    assert "bands     : 3,2,1 = B04, B03, B02" in capfd.readouterr().out
