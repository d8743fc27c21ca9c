"""Honest validation: the spatial split keeps held-out patches a model window away from training patches, so labels
that are spatially autocorrelated noise, independent of the features, score near chance; the former split (8-patch
blocks drawn at random, no ring) scored well above it on the same labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import geodino
from geodino.heads import train_on_cube
from geodino.heads.labels import LabelGrid
from geodino.heads.split import Split, spatial_split
from geodino.heads.train import _patch_head
from tests.cubes import make_cube

N = 80  # patches per side; make_cube's tiling: 128-px tiles, no halo: a model window of 8 patches


def smooth_noise(seed: int, n: int = 1, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.stack([gaussian_filter(rng.normal(size=(N, N)), sigma) for _ in range(n)])
    return f / f.std(axis=(1, 2), keepdims=True)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """Smooth random features (16 fields: nearby patches look alike) and labels that are autocorrelated noise
    drawn independently of them."""
    feats = smooth_noise(1, 16).astype(np.float32)
    labels = (smooth_noise(2)[0] > 0).astype(np.int16)
    ds = geodino.open_cube(make_cube(tmp_path_factory.mktemp("noise") / "c.zarr", feats))
    return ds, LabelGrid(labels, ("a", "b"), 1, "raster", "autocorrelated noise")


def former_split(seed: int, block: int = 8, valid_fraction: float = 0.25) -> Split:
    """The split geodino used before: 8 x 8-patch blocks, a random quarter held out, no ring."""
    bid = (np.arange(N)[:, None] // block) * (N // block) + np.arange(N)[None, :] // block
    held = np.isin(bid, np.random.default_rng(seed).choice(bid.max() + 1, round(valid_fraction * (bid.max() + 1)),
                                                           replace=False))
    return Split(~held, held, held, ~held, bid, block, 0, 8, "", seed, valid_fraction, 0)


def test_noise_labels_score_near_chance(noise):
    ds, grid = noise
    before, after = [], []
    for seed in (0, 1):
        _, res = _patch_head(ds, grid, "knn", former_split(seed), seed, 20_000, 20, 100, (1.0,))
        before.append(res["metrics"]["accuracy"]["value"])
        head = train_on_cube(ds, grid, head="knn", seed=seed, n_boot=100)
        after.append(head.card["metrics"]["valid"]["accuracy"]["value"])
        sp = head.card["split"]
        assert (sp["block_patches"], sp["buffer_patches"], sp["window_patches"]) == (8, 8, 8)
    assert np.mean(before) > 0.65, before  # neighbours of held-out patches were in training: labels leak
    assert abs(np.mean(after) - 0.5) < 0.08, after  # a window away: chance


def test_the_ring_is_at_least_one_window_and_recorded(noise):
    ds, grid = noise
    split = spatial_split(grid.labels, block=None, buffer=None, window=8, valid_fraction=0.25, seed=3)
    tr, va = np.argwhere(split.train), np.argwhere(split.valid)
    assert np.abs(tr[:, None, :] - va[None, :, :]).max(-1).min() > 8
    assert split.train.sum() > split.valid.sum() >= 0.25 * N * N
    # both classes on both sides, although the held-out region is one compact area
    assert set(np.unique(grid.labels[split.train])) == set(np.unique(grid.labels[split.valid])) == {0, 1}
    d = split.describe()
    assert (d["block_patches"], d["buffer_patches"], d["window_patches"], d["optimistic"]) == (8, 8, 8, False)
    assert d["train_patches"] + d["valid_patches"] + d["ring_patches"] == N * N
    assert spatial_split(grid.labels, block=4, buffer=2, window=8).describe()["optimistic"]


def test_window_comes_from_the_cube_tiling(tmp_path):
    from geodino.heads.split import window_patches
    from tests.cubes import PROVENANCE

    f = np.zeros((2, 8, 8), np.float32)
    ds = geodino.open_cube(make_cube(tmp_path / "c.zarr", f, provenance={**PROVENANCE, "tiling": {
        "tile": 512, "halo": 32, "window": 576, "patch": 16}}))
    assert window_patches(ds) == (36, "window 576 px = tile 512 + 2 x halo 32 px, patch 16 px")
