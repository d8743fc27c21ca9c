"""`geodino explore` on the command line (bad input: one line, exit 2; a real server answering) and
`geodino.explore(...)` in a notebook (the inline page and the current query as GeoDataFrames)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

import geodino
from geodino.cli import main
from tests.explore.conftest import REPO, patch_lonlat


def run(capfd, *args):
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def one_line_error(err: str, text: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geodino: error:") and text in lines[0], err
    assert "Traceback" not in err


def test_not_a_cube(capfd, tmp_path):
    (tmp_path / "scene.tif").write_bytes(b"not a cube")
    code, _, err = run(capfd, "explore", tmp_path / "scene.tif", "--port", 0)
    assert code == 2
    one_line_error(err, "is a file, not a cube")
    code, _, err = run(capfd, "explore", tmp_path / "missing.zarr", "--port", 0)
    assert code == 2
    one_line_error(err, "missing.zarr")


def test_cubes_that_are_not_comparable(capfd, dated_cubes, other_model_cube):
    code, _, err = run(capfd, "explore", dated_cubes[0], other_model_cube, "--port", 0)
    assert code == 2
    one_line_error(err, "are not comparable: weights differ")


def test_a_port_in_use(capfd, dated_cubes):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        code, _, err = run(capfd, "explore", dated_cubes[0], "--port", s.getsockname()[1])
    finally:
        s.close()
    assert code == 2
    one_line_error(err, "is in use")


def test_bad_options(capfd, dated_cubes):
    code, _, err = run(capfd, "explore", dated_cubes[0], "--port", 0, "--vectors", "fast")
    assert code == 2
    one_line_error(err, "vectors must be auto, full or compact")
    code, _, err = run(capfd, "explore", dated_cubes[0], "--port", 70000)
    assert code == 2
    one_line_error(err, "--port must be within")


def test_the_command_serves_the_page_and_stops_on_sigterm(dated_cubes, tmp_path):
    tmp = tmp_path / "tmpdir"  # where the re-rank store goes: nothing may be left there after SIGTERM
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "geodino", "explore", *map(str, dated_cubes), "--port", "0",
                             "--vectors", "compact"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        info = json.loads(urllib.request.urlopen(url + "api/session", timeout=30).read())
        assert info["dates"] == ["2021-06-01", "2022-06-01"] and len(info["cubes"]) == 2
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "static/vendor/maplibre-gl.js" in page and "cdn" not in page.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal to geodino's handler: exit 143 and one line, as for
    # every geodino command stopped by SIGTERM
    assert proc.returncode == 143, err
    assert "geodino: interrupted" in err
    assert "2 cube(s), 2 date(s)" in err and "compact vectors" in err and "Traceback" not in err
    assert not any(tmp.iterdir())


def test_jupyter_entry_point(dated_cubes):
    ds = geodino.open_cube(dated_cubes[0])
    ex = geodino.explore(ds)  # a Dataset, as in a notebook
    try:
        assert ex.url.startswith("http://127.0.0.1:") and ex.url in ex._repr_html_() and "<iframe" in ex._repr_html_()
        assert len(ex.hits) == 0 and len(ex.positives) == 0
        pos, neg = patch_lonlat(ds, 5, 7), patch_lonlat(ds, 18, 30)
        req = urllib.request.Request(ex.url + "api/query", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"positives": [pos], "negatives": [neg], "k": 12}).encode())
        page_hits = json.loads(urllib.request.urlopen(req, timeout=30).read())["hits"]
        hits, p, n = ex.hits, ex.positives, ex.negatives
        assert len(hits) == 12 and hits.crs == ds.rio.crs
        assert list(zip(hits["row"], hits["col"])) == [(h["row"], h["col"]) for h in page_hits]
        assert p.crs == "EPSG:4326" and list(p.geometry.iloc[0].coords)[0] == pytest.approx(pos)
        assert len(n) == 1 and list(n.geometry.iloc[0].coords)[0] == pytest.approx(neg)
        from geodino import analysis

        lib = analysis.similarity(ds, [pos], [neg], crs="EPSG:4326", top_k=12).top
        assert list(zip(hits["row"], hits["col"])) == list(zip(lib["row"], lib["col"]))
    finally:
        ex.stop()


def _readme_blocks(lang: str) -> list[str]:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_explore_command_runs(demo_cube):
    import shlex

    block = next(b for b in _readme_blocks("bash") if "geodino explore" in b)
    argv = shlex.split(block.strip().replace("out/demo.zarr", str(demo_cube)))
    assert argv[:2] == ["geodino", "explore"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "geodino", *argv[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        info = json.loads(urllib.request.urlopen(url + "api/session", timeout=30).read())
        assert info["cubes"][0]["imagery"] and info["cubes"][0]["random_weights"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_readme_jupyter_snippet_runs(demo_cube):
    snippet = next(b for b in _readme_blocks("python") if "geodino.explore(" in b)
    scope: dict = {}
    exec(snippet.replace('"out/demo.zarr"', repr(str(demo_cube))), scope)
    ex = scope["ex"]
    assert "<iframe" in ex._repr_html_()
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(ex.url + "api/session", timeout=5)
