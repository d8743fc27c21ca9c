"""The cube sample is uniform over valid patches: every valid patch is drawn with probability n / N, also when the
sample reads a bounded number of chunks and chunks hold very different numbers of valid patches."""

from __future__ import annotations

import numpy as np
import pytest

import geodino
from geodino.cube.sampling import random_patches
from tests.cubes import make_cube


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """16 chunks of 8 x 8 patches: 8 fully valid, 8 with 4 valid patches each (scene edges, clouds). Feature 0 is
    the patch's row, feature 1 its column, so a sampled vector says which patch it is."""
    h = w = 32
    valid = np.zeros((h, w), bool)
    for ty in range(4):
        for tx in range(4):
            if (ty + tx) % 2:
                valid[ty * 8:ty * 8 + 8, tx * 8:tx * 8 + 8] = True
            else:
                valid[ty * 8 + 2, tx * 8 + 1:tx * 8 + 5] = True
    rr, cc = np.mgrid[0:h, 0:w]
    f = np.stack([rr, cc]).astype(np.float32)
    return geodino.open_cube(make_cube(tmp_path_factory.mktemp("sampling") / "c.zarr", f, valid, dtype="float32")), \
        valid


def test_every_valid_patch_is_equally_likely(uneven):
    ds, valid = uneven
    n, runs = 40, 40
    hits = np.zeros(valid.shape)
    sizes = []
    for seed in range(runs):
        x = random_patches(ds, n, seed, max_chunks=4)
        sizes.append(len(x))
        hits[x[:, 0].astype(int), x[:, 1].astype(int)] += 1
    assert not hits[~valid].any()
    sparse = np.zeros(valid.shape, bool)
    for ty in range(4):
        for tx in range(4):
            if not (ty + tx) % 2:
                sparse[ty * 8:ty * 8 + 8, tx * 8:tx * 8 + 8] = True
    pi = n / valid.sum()
    # patches of sparse chunks are drawn as often as the others (they once were ~10 times less often)
    rate_sparse, rate_dense = hits[sparse & valid].mean() / runs, hits[~sparse & valid].mean() / runs
    assert abs(rate_sparse - pi) < 0.35 * pi and abs(rate_dense - pi) < 0.1 * pi, (rate_sparse, rate_dense, pi)
    assert abs(np.mean(sizes) - n) < 0.1 * n


def test_draw_gives_each_patch_probability_n_over_N():
    """The draw alone, many times over chunks of very different sizes (fast: no cube)."""
    from geodino.cube.sampling import draw

    counts = np.array([1, 1, 2, 3, 50, 200, 0, 7, 120, 1000, 5, 5] * 5)
    n, total, runs = 300, counts.sum(), 3000
    freq = np.zeros(len(counts))
    rng = np.random.default_rng(0)
    read = []
    for _ in range(runs):
        picks = draw(counts, n, rng, max_chunks=12)
        read.append(len(picks))
        for c, ranks in picks:
            assert len(np.unique(ranks)) == len(ranks) and ranks.max() < counts[c]
            freq[c] += len(ranks)
    sizes = np.unique(counts[counts > 0])
    per_patch = [freq[counts == k].sum() / (k * (counts == k).sum()) / runs for k in sizes]  # per chunk size
    np.testing.assert_allclose(per_patch, n / total, rtol=0.08)
    assert np.mean(read) < 20  # about max_chunks chunks read, not one per drawn patch


def test_few_chunks_give_a_simple_random_sample_of_n(uneven):
    ds, _ = uneven
    x = random_patches(ds, 50, 3)
    assert len(x) == 50 and len({(a, b) for a, b in x[:, :2]}) == 50
