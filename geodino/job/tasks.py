"""What every streaming job's tasks run around a product's inference and write: read a tile's window, cut the
pieces a tile core needs from a batch's outputs, blend them (:mod:`geodino.job.product` says what a product adds).

They take only small, picklable values (a source, tiles, an engine spec), so the same graph runs in-process and
on a dask.distributed cluster; engines and store writers are cached per process.

A window's output covers its *extended core*: its core grown by ``blend`` cells (patches, or pixels) on every
side; :meth:`geodino.tiling.TileGrid.blend_ramps` gives linear ramps that fall from 1 to 0 over ``2 * blend``
cells, crossing 1/2 at each core boundary (a partition of unity).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from dataclasses import dataclass

import numpy as np

from geodino.cube.store import FAILED, SKIPPED, WRITTEN, StoreWriter, TileResult, cube_writer
from geodino.errors import RasterReadError
from geodino.raster import RasterSource, inside_mask
from geodino.tiling import Tile, TileGrid

__all__ = ["TileData", "TileOut", "Piece", "read_tile", "infer_windows", "pieces_for", "blend_tile", "write_blended",
           "patch_validity", "slim"]


@dataclass
class TileData:
    tile: Tile
    raw: np.ndarray | None  # [C, window, window] source dtype; None for a skipped tile
    pixel_valid: np.ndarray | None  # [window, window]: real (or mirrored real) data
    patch_valid: np.ndarray  # [h, w] of the core
    failed: str | None = None  # why the window could not be read (--on-read-error skip)


@dataclass
class TileOut:
    tile: Tile
    extended: np.ndarray | None  # [h + 2b, w + 2b, ...] output on the extended core; None when skipped
    cls: np.ndarray | None
    patch_valid: np.ndarray
    failed: str | None = None


@dataclass
class Piece:
    """What one window gives a tile core: weighted features and their weights on a region of the core (or the
    core's own cls/validity when the window is the tile's own).

    A piece waits in memory until its destination's last neighbour is inferred (the next tile row), so it holds
    copies of its region only, its weights as two separable ramps, and on the destination's own piece a
    :class:`TileOut` slimmed by :func:`slim` (cls and validity, no features): what a scene's width costs in memory
    is then about one core's features per tile across."""

    src: str  # source tile key
    rows: slice  # region, relative to the destination core
    cols: slice
    features: np.ndarray | None  # [r, c, ...] the window's output on the region, in the cube's dtype
    ramps: tuple[np.ndarray, np.ndarray] | None  # ([r], [c]) float32 blending factors (TileGrid.blend_ramps)
    own: TileOut | None = None  # set on the destination's own piece
    failed: str | None = None  # the window could not be read: the destination cannot be finished this run


def slim(o: TileOut) -> TileOut:
    """``o`` without its features: ``extended`` becomes an empty array of the same feature width (None stays None
    for a skipped window), so a waiting own piece does not keep the whole window's output alive."""
    ext = None if o.extended is None else np.empty((0, 0, *o.extended.shape[2:]), o.extended.dtype)
    return TileOut(o.tile, ext, o.cls, o.patch_valid, o.failed)


def patch_validity(pixel_valid: np.ndarray, patch: int, min_valid: float) -> np.ndarray:
    """Per patch: is the fraction of valid pixels at least ``min_valid`` (and above zero)?"""
    h, w = pixel_valid.shape[0] // patch, pixel_valid.shape[1] // patch
    frac = pixel_valid[: h * patch, : w * patch].reshape(h, patch, w, patch).mean(axis=(1, 3))
    return (frac >= min_valid) & (frac > 0)


def read_tile(source: RasterSource, tile: Tile, min_valid: float, on_read_error: str = "fail") -> TileData:
    """Read the tile's model window (core + halo, reflect-padded at raster edges). A read that fails raises
    :class:`RasterReadError` (``on_read_error="fail"``) or gives a tile marked failed (``"skip"``)."""
    r0, c0 = tile.read_origin
    try:
        raw, valid = source.read(r0, c0, tile.window, tile.window)
    except RasterReadError as e:
        if on_read_error != "skip":
            raise
        return TileData(tile, None, None, np.zeros((tile.height // tile.patch, tile.width // tile.patch), bool),
                        failed=e.brief)
    h = tile.halo
    core = valid[h:h + tile.height, h:h + tile.width] & inside_mask(tile.row, tile.col, tile.height, tile.width,
                                                                    source.grid.shape)
    live = core.any()  # an all-nodata core is skipped: no window to infer
    return TileData(tile, raw if live else None, valid if live else None, patch_validity(core, tile.patch, min_valid))


def infer_windows(batch: list[TileData], run: Callable) -> dict[str, TileOut]:
    """Per window of ``batch``, its output on its extended core: ``run(raw [N, C, win, win], valid [N, win, win],
    first tile)`` runs the engine once on the stacked non-empty windows and returns ``(out [N, H, W, ...], extra
    [N, ...] or None)``, ``out`` cropped to a full tile's extended core; each is cut to its own tile's size."""
    live = [t for t in batch if t.raw is not None]
    out = {t.tile.key: TileOut(t.tile, None, None, t.patch_valid, t.failed) for t in batch}
    if live:
        res, extra = run(np.stack([t.raw for t in live]), np.stack([t.pixel_valid for t in live]), live[0].tile)
        b = live[0].tile.blend
        p = live[0].tile.patch
        for i, t in enumerate(live):
            h, w = t.tile.height // p + 2 * b, t.tile.width // p + 2 * b
            out[t.tile.key] = TileOut(t.tile, res[i, :h, :w], None if extra is None else extra[i], t.patch_valid)
    return out


def pieces_for(batch_out: dict[str, TileOut], dest: Tile, tiles: TileGrid) -> list[Piece]:
    """The parts of a batch's windows that fall on ``dest``'s core, weighted for blending (a small task, so that
    a write receives only its own slices, and may run on any worker)."""
    out = []
    dr, dc = dest.patch_slice
    for key in sorted(batch_out):
        o = batch_out[key]
        src = o.tile
        own = src.key == dest.key
        if o.failed is not None:  # an unread window: does it reach dest's core?
            er, ec = src.extended
            if own or (max(er.start, dr.start) < min(er.stop, dr.stop)
                       and max(ec.start, dc.start) < min(ec.stop, dc.stop)):
                why = o.failed if own else f"its blend needs the window of tile {key}, which failed"
                out.append(Piece(key, slice(0, 0), slice(0, 0), None, None, own=slim(o) if own else None,
                                 failed=why))
            continue
        if o.extended is None:  # a skipped window: nothing to blend, but the destination's own cls and validity
            if own:
                out.append(Piece(key, slice(0, 0), slice(0, 0), None, None, own=slim(o)))
            continue
        er, ec = src.extended
        r0, r1 = max(er.start, dr.start), min(er.stop, dr.stop)
        c0, c1 = max(ec.start, dc.start), min(ec.stop, dc.stop)
        if r0 >= r1 or c0 >= c1:  # never the own window: a tile's extended core covers its core
            continue
        rows, cols = slice(r0, r1), slice(c0, c1)
        # a copy, never a view: a view would keep the whole window's output alive while the piece waits
        feats = np.array(o.extended[r0 - er.start:r1 - er.start, c0 - ec.start:c1 - ec.start], copy=True)
        out.append(Piece(key, slice(r0 - dr.start, r1 - dr.start), slice(c0 - dc.start, c1 - dc.start),
                         feats, tiles.blend_ramps(src, rows, cols), own=slim(o) if own else None))
    return out


def blend_tile(dest: Tile, *piece_lists: list[Piece]) -> TileResult:
    """Blend the pieces of ``dest``'s core: sum of weighted features / sum of weights, in a fixed order. A tile
    whose own window, or a neighbour's window its blend needs, could not be read comes back ``failed``."""
    pieces = sorted((p for lst in piece_lists for p in lst), key=lambda p: p.src)
    own = next(p.own for p in pieces if p.own is not None)
    rows, cols = dest.patch_slice
    failed = next((p.failed for p in pieces if p.failed is not None and p.src == dest.key), None) or \
        next((p.failed for p in pieces if p.failed is not None), None)
    if failed is not None:
        return TileResult(dest.ty, dest.tx, rows, cols, failed=failed)
    if own.extended is None:
        return TileResult(dest.ty, dest.tx, rows, cols)
    h, wd = dest.height // dest.patch, dest.width // dest.patch
    trail = own.extended.shape[2:]  # () for a map (heights), (D,) for features
    acc = np.zeros((h, wd, *trail), np.float32)
    wsum = np.zeros((h, wd), np.float32)
    grow = (slice(None), slice(None)) + (None,) * len(trail)
    for p in pieces:
        if p.features is None:
            continue
        w = p.ramps[0][:, None] * p.ramps[1][None, :]  # [r, c] float32 (as TileGrid.blend_weights)
        acc[p.rows, p.cols] += p.features.astype(np.float32) * w[grow]
        wsum[p.rows, p.cols] += w
    return TileResult(dest.ty, dest.tx, rows, cols, acc / wsum[grow], own.patch_valid, own.cls)


def write_blended(writer: type[StoreWriter], url: str, cube_id: str, dests: list[Tile], counts: list[int],
                  piece_lists) -> list[tuple[str, int, str | None]]:
    """A product's ``write_shard``: blend the pending tile cores ``dests`` of one shard (``counts[i]`` piece lists
    each, in order) and write them with the product's ``writer`` (:meth:`geodino.cube.store.StoreWriter.write_shard`,
    ``tile_status`` last). Returns [(tile key, status, why it failed or None)]."""
    starts = [0, *accumulate(counts)]  # dests[k]'s piece lists are piece_lists[starts[k]:starts[k + 1]]
    results = [blend_tile(d, *piece_lists[i:j]) for d, i, j in zip(dests, starts, starts[1:])]
    cube_writer(url, cube_id, writer).write_shard(results)
    return [(d.key, FAILED if t.failed is not None else SKIPPED if t.patches is None else WRITTEN, t.failed)
            for d, t in zip(dests, results)]
