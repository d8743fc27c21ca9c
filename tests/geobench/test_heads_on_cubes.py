"""The heads are source-agnostic: train a segmentation head on windows of a zarr feature cube and a label raster
aligned by the one label path (geodino.heads.align_labels)."""

from __future__ import annotations

import numpy as np
from affine import Affine

from geodino.embed import EmbedConfig, embed
from geodino.heads import LinearHead, align_labels, evaluate_head, miou, train_head
from geodino.heads.train import read_windows
from tests.geobench.conftest import MODEL, TINY
from tests.geobench.synth import COLOURS
from tests.rasters import write_raster


def test_linear_head_on_a_cube_with_a_label_raster(tmp_path, gb_weights):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 3, (16, 16))
    cls = np.kron(blocks, np.ones((32, 32), int))  # 512 x 512 px, 3 classes in 32-px blocks
    rgb = np.clip(COLOURS[cls].transpose(2, 0, 1) + rng.normal(0, 0.05, (3, 512, 512)), 0, 1)
    t = Affine(2.0, 0, 400000, 0, -2.0, 5000000)
    scene = write_raster(tmp_path / "scene.tif", (rgb * 255).astype(np.uint8), transform=t)
    # labels in another CRS-compatible raster at a coarser resolution (8 m): warped onto the cube
    labels = write_raster(tmp_path / "labels.tif", blocks.repeat(8, 0).repeat(8, 1)[None].astype(np.uint8),
                          transform=Affine(8.0, 0, 400000, 0, -8.0, 5000000), tiled=False)
    [s] = embed([scene], EmbedConfig.build(model=MODEL, weights=gb_weights, arch=TINY, device="cpu", tile=128,
                                           halo=32, output=str(tmp_path / "c.zarr")))
    grid = align_labels(s.output, labels, scale=4)
    assert grid.classes == ("0", "1", "2")
    origins = [(r, c) for r in range(0, 32, 8) for c in range(0, 32, 8)]
    import geodino

    grids = read_windows(geodino.open_cube(s.output), origins, 8)
    masks = np.stack([grid.labels[r * 4:(r + 8) * 4, c * 4:(c + 8) * 4] for r, c in origins]).astype(np.int64)
    assert grids.shape == (16, 1, 64, 8, 8) and masks.shape == (16, 32, 32)
    assert set(np.unique(masks)) <= {0, 1, 2}
    head = train_head(LinearHead(64, 3), grids[:12], masks[:12], iterations=200, batch_size=4, lr=1e-2)
    cm, _ = evaluate_head(head, grids[12:], masks[12:], 3)
    assert miou(cm) > 0.6  # chance is about 0.2
