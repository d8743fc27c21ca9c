"""Shared fixtures: the real rasters beside the repo, tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEODINO_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real satellite rasters); tests using it skip on a user's clone without it."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"real test rasters not present at {SHARED_DATA} (only the project's CI checkout has them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def http_server_factory(tmp_path_factory):
    """``start(root) -> HttpFileServer`` serving ``root`` on 127.0.0.1 with byte ranges; all stop at the end."""
    from tests.servers import HttpFileServer

    servers = []

    def start(root) -> HttpFileServer:
        s = HttpFileServer(root, tmp_path_factory.mktemp("http-log") / "requests.log").start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def http_data(shared_data, http_server_factory):
    """../shared/data over HTTP (``http_data.url + "/" + name``)."""
    return http_server_factory(shared_data)


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) that checks signatures; ``s3_server.env`` configures clients."""
    pytest.importorskip("moto", reason="moto[server] is needed for the local S3 server (pip install -e '.[dev]')")
    from tests.servers import S3Server

    with S3Server() as s:
        yield s


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's environment points GDAL, boto3, s3fs and obstore at the local S3 server."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST"):
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (LayerScale ~1, non-zero biases), so that each
    block, norm and bias visibly shapes the output and parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("gamma", "gamma_1", "gamma_2", "lambda1")) or ("norm" in name and name.endswith("weight")):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif p.ndim > 1 and "token" not in name:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
