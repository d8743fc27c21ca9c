"""The compact product: PCA-k int8 unit vectors on the same grid, decoded transparently by open_cube, measured on
a cube embedded with a context-mixing random checkpoint."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import geodino
from geodino import analysis
from geodino.analysis.fidelity import compact_fidelity
from geodino.cube.compact import CompactBasis
from geodino.cube.compress import compress
from geodino.cube.store import read_attrs
from geodino.embed import EmbedConfig, embed
from geodino.errors import ConfigError, CubeExistsError, SampleError
from geodino.models import build_model, save_weights
from tests.conftest import randomize_
from tests.rasters import texture, write_raster

WIDE = {"depth": 2, "embed_dim": 192, "num_heads": 3}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 384 x 512 px scene embedded by a randomised (context-mixing: LayerScale ~1) width-192 ViT: 768 patches."""
    tmp = tmp_path_factory.mktemp("compact")
    weights = save_weights(randomize_(build_model("dinov3-vits16-lvd1689m", **WIDE), seed=5), tmp / "wide.safetensors")
    scene = write_raster(tmp / "scene.tif", texture((384, 512), seed=9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [s] = embed([scene], EmbedConfig.build(model="dinov3-vits16-lvd1689m", weights=str(weights), arch=WIDE,
                                               device="cpu", tile=128, halo=32, radiometry="minmax",
                                               minmax=(0, 3000), output=str(tmp / "full.zarr"), threads=2))
    return tmp / "full.zarr"


@pytest.fixture(scope="module")
def compact(source):
    out = source.parent / "compact.zarr"
    return compress(source, out, k=64, sample=400), out


def test_same_grid_basis_in_metadata_and_transparent_decoding(source, compact):
    summary, out = compact
    full, small = geodino.open_cube(source), geodino.open_cube(out)
    attrs = read_attrs(out)
    meta = attrs["geodino_compact"]
    assert attrs["geodino_status"] == "complete" and meta["components"] == 64 and meta["source_features"] == 192
    assert small["codes"].dtype == np.int8 and small["codes"].dims == ("component", "y", "x")
    assert small["compact_components"].shape == (64, 192) and small["compact_scale"].shape == (64,)
    assert small.rio.crs == full.rio.crs and small.rio.transform() == full.rio.transform()
    np.testing.assert_array_equal(small["valid"].values, full["valid"].values)
    assert small["features"].dims == ("feature", "y", "x") and small.sizes["feature"] == 192
    # decoding by hand from the stored codes, norm and basis: mu + P^T (r * s * q / 127)
    q = small["codes"].values.astype(np.float64)
    r = small["norm"].values.astype(np.float64)
    mu, p, s = (small[n].values.astype(np.float64) for n in ("compact_mean", "compact_components", "compact_scale"))
    by_hand = mu[:, None, None] + np.einsum("kd,khw->dhw", p, q * (s / 127.0)[:, None, None] * r)
    v = full["valid"].values
    np.testing.assert_allclose(small["features"].values[:, v], by_hand[:, v], rtol=1e-4, atol=1e-5)
    assert summary.bytes_per_patch == 66 and summary.float16_bytes_per_patch == 384
    assert 0 < summary.stored_bytes_per_patch < summary.source_stored_bytes_per_patch / 4


def test_fidelity_on_a_context_mixing_checkpoint(source, compact):
    _, out = compact
    full, small = geodino.open_cube(source), geodino.open_cube(out)
    v = full["valid"].values
    x = full["features"].values.astype(np.float32)[:, v].T
    y = small["features"].values[:, v].T
    cos = np.sum(x * y, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.mean() > 0.99 and np.percentile(cos, 1) > 0.95, (cos.mean(), cos.min())
    fid = compact_fidelity(full, small, queries=5, top_k=100)
    np.testing.assert_allclose(fid["cosine_mean"], cos.mean(), rtol=1e-5)
    assert fid["topk_overlap_mean"] > 0.8, fid
    # fewer dimensions must cost fidelity: the measure can fail
    k4, _ = compress(full, source.parent / "k4.zarr", k=4, sample=400), None
    assert k4.cosine_mean < cos.mean() - 0.01


def test_analysis_runs_on_compact_cubes(source, compact):
    _, out = compact
    small = geodino.open_cube(out)
    assert analysis.pca_rgb(small, sample=300).shape == (3, *small["valid"].shape)
    ch = analysis.change(source, out).values  # comparable: same model, weights, radiometry, grid
    assert np.nanmax(ch) < 0.1


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)).astype(np.float32) + 3
    from geodino.cube.compact import fit_basis

    b = fit_basis(x, 32)  # all components: only the int8 step is lost
    codes, norm = b.encode(x)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127
    y = b.decode(codes, norm)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.abs(y - u).max() < 0.02
    assert isinstance(b, CompactBasis) and b.k == 32


def test_bad_requests(source, compact, tmp_path):
    _, out = compact
    with pytest.raises(CubeExistsError, match="--overwrite"):
        compress(source, out)
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "a.txt").write_text("keep me")
    with pytest.raises(CubeExistsError, match="not a geodino cube"):
        compress(source, stray, overwrite=True)
    assert (stray / "a.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="1..192"):
        compress(source, tmp_path / "k.zarr", k=500)
    with pytest.raises(SampleError):
        compress(source, tmp_path / "s.zarr", k=64, sample=10)
    assert not (tmp_path / "k.zarr").exists() and not (tmp_path / "s.zarr").exists()


def test_a_failed_compress_leaves_no_cube(source, tmp_path, monkeypatch):
    import geodino.cube.compress as compress_mod

    def fail(path):
        raise RuntimeError("power cut")

    monkeypatch.setattr(compress_mod, "_mark_complete", fail)
    with pytest.raises(RuntimeError, match="power cut"):
        compress(source, tmp_path / "half.zarr", k=8, sample=300)
    assert not (tmp_path / "half.zarr").exists()
