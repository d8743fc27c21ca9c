"""The functions an embed graph's tasks run: read a tile, embed a batch, write a tile core.

They take only small, picklable values (a source, a tile, an engine spec), so the same graph runs on the local
threaded scheduler and on a dask.distributed cluster; engines and cube writers are cached per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geodino.cube.store import cube_writer
from geodino.engine import EngineSpec, get_engine
from geodino.raster import Radiometry, RasterSource
from geodino.tiling import Tile

__all__ = ["TileData", "TileResult", "read_tile", "infer_batch", "write_tile", "patch_validity"]


@dataclass
class TileData:
    tile: Tile
    raw: np.ndarray | None  # [C, window, window] source dtype; None for a skipped tile
    pixel_valid: np.ndarray | None  # [window, window]
    patch_valid: np.ndarray  # [h, w] of the core


@dataclass
class TileResult:
    tile: Tile
    patches: np.ndarray | None  # [h, w, D] float32 core features; None when skipped
    cls: np.ndarray | None
    patch_valid: np.ndarray


def patch_validity(pixel_valid: np.ndarray, patch: int, min_valid: float) -> np.ndarray:
    """Per patch: is the fraction of valid pixels at least ``min_valid`` (and above zero)?"""
    h, w = pixel_valid.shape[0] // patch, pixel_valid.shape[1] // patch
    frac = pixel_valid[: h * patch, : w * patch].reshape(h, patch, w, patch).mean(axis=(1, 3))
    return (frac >= min_valid) & (frac > 0)


def read_tile(source: RasterSource, tile: Tile, min_valid: float) -> TileData:
    """Read the tile's model window (core + halo, reflect-padded at raster edges)."""
    r0, c0 = tile.read_origin
    raw, valid = source.read(r0, c0, tile.window, tile.window)
    h = tile.halo
    core = valid[h:h + tile.height, h:h + tile.width]
    pv = patch_validity(core, tile.patch, min_valid)
    if not core.any():
        return TileData(tile, None, None, pv)
    return TileData(tile, raw, valid, pv)


def infer_batch(spec: EngineSpec, radiometry: Radiometry, batch: list[TileData], dtype: str) -> list[TileResult]:
    """Embed the non-empty tiles of a batch together; the device crops each window to the tile core and casts
    to the cube's ``dtype``, so only stored bytes come back."""
    import torch

    live = [t for t in batch if t.raw is not None]
    results = {id(t): TileResult(t.tile, None, None, t.patch_valid) for t in batch}
    if live:
        engine = get_engine(spec)
        raw = np.stack([t.raw for t in live])
        valid = np.stack([t.pixel_valid for t in live])
        t0 = live[0].tile
        start = t0.halo // t0.patch
        crop = slice(start, start + max(max(t.tile.height, t.tile.width) for t in live) // t0.patch)
        patches, cls = engine.embed(raw, valid, radiometry.gain, radiometry.bias, crop=crop,
                                    out_dtype=getattr(torch, dtype))
        for i, t in enumerate(live):
            h, w = t.tile.height // t0.patch, t.tile.width // t0.patch
            results[id(t)] = TileResult(t.tile, patches[i, :h, :w], cls[i], t.patch_valid)
    return [results[id(t)] for t in batch]


def write_tile(cube_path: str, cube_id: str, results: list[TileResult], index: int) -> tuple[str, int]:
    """Write one tile core (its own chunks only). Returns (tile key, status)."""
    from geodino.cube.store import SKIPPED, WRITTEN

    r = results[index]
    w = cube_writer(cube_path, cube_id)
    t = r.tile
    if r.patches is None:
        w.skip_tile(t.ty, t.tx)
        return t.key, SKIPPED
    w.write_tile(t.ty, t.tx, *t.patch_slice, r.patches, r.patch_valid, r.cls)
    return t.key, WRITTEN
