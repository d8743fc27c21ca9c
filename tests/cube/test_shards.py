"""Sharded cubes: one object per shard of tile cores, and a shard completed tile by tile (read-modify-write, as a
resume over tiles of an earlier run does) ends with the same bytes as a shard written whole."""

from __future__ import annotations

import numpy as np

from geodino.cube.storage import list_keys
from geodino.cube.store import (PENDING, SKIPPED, WRITTEN, CubeWriter, TileResult, create_cube, cube_shard,
                                default_shard, tile_status)
from tests.embed.test_s3_cube import object_bytes
from pipelines.bench_store import layout_for


def _tiles(layout, dim, seed=0):
    """Synthetic results for every tile of the layout; tile (0, 2) is skipped (all nodata)."""
    rng = np.random.default_rng(seed)
    n = layout.chunk
    out = {}
    for ty in range(layout.tiles[0]):
        for tx in range(layout.tiles[1]):
            rows, cols = slice(ty * n, (ty + 1) * n), slice(tx * n, (tx + 1) * n)
            if (ty, tx) == (0, 2):
                out[ty, tx] = TileResult(ty, tx, rows, cols)
                continue
            f = rng.standard_normal((n, n, dim)).astype(np.float32)
            out[ty, tx] = TileResult(ty, tx, rows, cols, f, rng.random((n, n)) > 0.2, f.mean(axis=(0, 1)))
    return out


def test_default_shards_are_row_bands_of_at_most_16_tiles():
    assert default_shard((22, 22)) == (1, 11) and default_shard((5, 16)) == (1, 16)
    assert default_shard((3, 17)) == (1, 9) and default_shard((1, 1)) == (1, 1)


def test_a_shard_completed_tile_by_tile_has_the_bytes_of_a_shard_written_whole(tmp_path):
    dim = 8
    lay = layout_for(1024, 256, (1, 4))  # 4 x 4 tiles of 16 x 16 patches, shards of 1 x 4 tiles
    plain = layout_for(1024, 256, (1, 1))
    tiles = _tiles(lay, dim)
    whole, pieces, unsharded = (str(tmp_path / n) for n in ("whole.zarr", "pieces.zarr", "plain.zarr"))
    for url, ly in ((whole, lay), (pieces, lay), (unsharded, plain)):
        create_cube(url, ly, dim, "float16", {"settings": {}})
    assert cube_shard(whole) == (1, 4) and cube_shard(unsharded) == (1, 1)
    w = CubeWriter(whole)
    for ty in range(4):
        w.write_shard([tiles[ty, tx] for tx in range(4)])
    p = CubeWriter(pieces)
    p.write_shard([tiles[0, 1], tiles[0, 3]])  # a partial shard: read-modify-write, tile by tile
    st = tile_status(pieces)
    assert st[0, 1] == st[0, 3] == WRITTEN and st[0, 0] == st[0, 2] == PENDING
    p.write_shard([tiles[0, 0], tiles[0, 2]])
    for ty in range(1, 4):
        for tx in (3, 0, 2, 1):
            p.write_shard([tiles[ty, tx]])
    u = CubeWriter(unsharded)
    for t in tiles.values():
        u.write_shard([t])
    a, b = object_bytes(whole), object_bytes(pieces)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert tile_status(whole)[0, 2] == SKIPPED and (tile_status(whole) != PENDING).all()
    # the same values as an unsharded cube, in a quarter of the array objects
    import zarr

    ga, gu = zarr.open_group(whole, mode="r"), zarr.open_group(unsharded, mode="r")
    for name in ("features", "valid", "cls", "tile_status"):
        np.testing.assert_array_equal(ga[name][...], gu[name][...])
    ka = [k for k in list_keys(whole) if k.startswith("features/c")]
    ku = [k for k in list_keys(unsharded) if k.startswith("features/c")]
    assert len(ka) == 4 and len(ku) == 15  # the skipped tile's chunk is never written
