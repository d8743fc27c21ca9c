"""Map tiles: 256-px PNG XYZ tiles in Web Mercator, rendered on the server.

The heat map and the PCA-RGB image are the session's in-memory per-patch arrays (one value per patch): a tile takes,
for each of its pixels, the patch under the pixel's centre (nearest neighbour, so a patch stays a crisp square;
:func:`tile_lookup`, cached per tile). The source imagery is a windowed, decimated read of the source raster (GDAL
picks overviews when the file has them) warped into the tile by rasterio, in the cube's display radiometry
(``clip(gain * DN + bias, 0, 1)``, what the model saw). Nothing reads a whole cube or a whole raster. A tile is a
GeoBox (:func:`tile_geobox`), as every cube's patch grid is. Server-side PNG tiles were chosen over image sources
georeferenced in the page because MapLibre then shows cubes in any CRS (a mosaic's UTM zones) without the page
knowing projections, and a tile costs a window.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np

from geodino.errors import QueryError
from geodino.grid import GeoBox

__all__ = ["TILE", "tile_bounds", "tile_geobox", "tile_lookup", "warp_into", "encode_png", "SourceImage",
           "source_images", "render_source", "thumbnail"]

TILE = 256
_HALF = 20037508.342789244  # half the Web Mercator world width, in metres (EPSG:3857)
# A perceptually ordered ramp (matplotlib's "magma" at 6 stops): matplotlib is not a runtime dependency, and a
# 256-entry lookup table interpolated from these stops is all a heat map needs.
_STOPS = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                  np.float32)
LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), _STOPS[:, i])
                for i in range(3)], axis=1).astype(np.uint8)
HEAT_PALETTE = np.concatenate([np.zeros((1, 3), np.uint8), LUT[np.linspace(0, 255, 255).round().astype(int)]])


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of XYZ tile ``z/x/y`` in EPSG:3857 (the OSM/Google tiling)."""
    size = 2 * _HALF / 2**z
    return (-_HALF + x * size, _HALF - (y + 1) * size, -_HALF + (x + 1) * size, _HALF - y * size)


def check_tile(z: int, x: int, y: int) -> None:
    if not (0 <= z <= 30 and 0 <= x < 2**z and 0 <= y < 2**z):
        raise QueryError(f"tile {z}/{x}/{y} does not exist (x and y must be within 0..2^z - 1, z within 0..30)")


def tile_geobox(z: int, x: int, y: int) -> GeoBox:
    """XYZ tile ``z/x/y`` as a 256 x 256 GeoBox in EPSG:3857. Its affine is rasterio's ``from_bounds`` of
    :func:`tile_bounds`, the bits tiles were always drawn with: odc-geo's ``GeoBox.from_bbox`` and
    ``GridSpec.web_tiles(z).tile_geobox((x, y))`` round it another way on 88 % and 90 % of random tiles (zooms
    0-22), which would move a pixel onto the neighbouring patch where its centre lies on an edge."""
    from rasterio.transform import from_bounds

    return GeoBox((TILE, TILE), from_bounds(*tile_bounds(z, x, y), TILE, TILE), "EPSG:3857")


def _meets(gbox: GeoBox, bounds3857) -> bool:
    """Whether Web Mercator ``bounds3857`` (their outline densified and projected by rasterio) overlap ``gbox``."""
    from rasterio.warp import transform_bounds

    try:  # rasterio raises where the bounds lie outside the CRS's area of use
        l, b, r, t = transform_bounds("EPSG:3857", str(gbox.crs), *bounds3857, densify_pts=21)
    except Exception:
        return False
    g = gbox.boundingbox
    return all(map(math.isfinite, (l, b, r, t))) and l < g.right and r > g.left and b < g.top and t > g.bottom


def warp_into(dst: np.ndarray, src: np.ndarray, src_gbox: GeoBox, tile: GeoBox, *, nodata,
              resampling="nearest") -> None:
    """Warp ``src`` ([bands, H, W] on ``src_gbox``) into ``dst`` ([bands, 256, 256] on ``tile``), keeping the
    pixels of ``dst`` that ``src`` does not cover (several sources draw into one tile). rasterio's reproject, all
    bands in one call: odc-geo's ``rio_reproject`` warps band by band and forces ``XSCALE=YSCALE=1``; on 116
    source tiles of the S2 demo crop (zooms 11-16, Intel Xeon, 2 cores) it took 12.3/29.8 ms per tile
    (median/p95) against 5.5/10.2 ms, and drew 25 of them differently. ``src`` is :func:`_read_display`'s read of
    the tile's own bounds (<= 384 px), so it is warped whole."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    reproject(np.ascontiguousarray(src), dst, src_transform=src_gbox.affine, src_crs=str(src_gbox.crs),
              src_nodata=nodata, dst_transform=tile.affine, dst_crs=str(tile.crs), dst_nodata=nodata,
              init_dest_nodata=False, resampling=getattr(Resampling, resampling))


def tile_lookup(gbox: GeoBox, z: int, x: int, y: int) -> np.ndarray | None:
    """For each pixel of tile ``z/x/y``, the flat index (row * width + col) of the patch of ``gbox`` under its
    centre, -1 off the grid; None when the tile misses the grid.

    Nearest-neighbour resampling written out, the way GDAL's approximate transformer does it: the tile's pixel
    centres are projected exactly at a 17 x 17 lattice (every 16 px) and bilinearly in between (over 16 px the
    projection is linear to far below a pixel from zoom 5 on), then each pixel takes the patch its centre falls in.
    Kept by hand because odc-geo's ``rio_reproject`` of the flat patch index onto the tile's GeoBox (nearest) is
    slower, and more so the larger the cube: per tile, median/p95, interleaved on the same tiles (zooms 8-15), Intel
    Xeon (2 cores): 1000 x 1000 patches 2.80/3.04 ms by hand vs 3.55/4.12 ms; 3000 x 3000 patches 2.85/3.10 vs
    10.24/13.16 ms (``xr_reproject`` adds ~2 ms more). GDAL's own approximation also picks another patch for 1-2 %
    of the pixels at low zooms. Lookups are cached per tile by the session, so the next query's tiles are a gather.
    """
    if not _meets(gbox, tile_bounds(z, x, y)):
        return None
    tile = tile_geobox(z, x, y)
    n = 16
    e = np.arange(n + 1) * (TILE // n)
    gx, gy = tile.pix2wld(*np.meshgrid(e, e))  # the lattice: every 16th pixel edge
    with np.errstate(all="ignore"):
        X, Y = (np.asarray(v).reshape(gx.shape)
                for v in tile.crs.transformer_to_crs(gbox.crs)(gx.ravel(), gy.ravel()))
        u = (np.arange(TILE) + 0.5) * n / TILE  # pixel centres in lattice units
        i0 = np.minimum(u.astype(np.int64), n - 1)
        f = (u - i0)[None, :]
        fy = f.T

        def interp(G):
            a = G[i0][:, i0] * (1 - fy) * (1 - f) + G[i0][:, i0 + 1] * (1 - fy) * f
            return a + G[i0 + 1][:, i0] * fy * (1 - f) + G[i0 + 1][:, i0 + 1] * fy * f

        # geodino.grid.cell_index's arithmetic (the cell a click there queries), cast to int on the pixels inside
        # only: cell_index itself (two 65,536-element int casts) with odc-geo's roi_from_points for the fast reject
        # made a lookup 10-29 % slower than main's (median, 1000 x 1000 patches, UTM and EPSG:4326 grids, 340
        # tiles interleaved, Intel Xeon, 2 cores); this and the bounding-box reject: +3 %.
        t = gbox.affine
        col, row = np.floor((interp(X).ravel() - t.c) / t.a), np.floor((interp(Y).ravel() - t.f) / t.e)
    h, w = gbox.shape.yx
    inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if not inside.any():
        return None
    out = np.full(TILE * TILE, -1, np.int32 if h * w < 2**31 else np.int64)
    out[inside] = row[inside].astype(np.int64) * w + col[inside].astype(np.int64)
    return out


def gather(values: np.ndarray, lookup: np.ndarray, fill) -> np.ndarray:
    """``values`` ([H * W] or [H * W, bands]) at the lookup's patches, ``fill`` off the grid: [256, 256(, bands)]."""
    ok = lookup >= 0
    out = np.full((TILE * TILE,) + values.shape[1:], fill, values.dtype)
    out[ok] = values[lookup[ok]]
    return out.reshape((TILE, TILE) + values.shape[1:])


def heat_index(values: np.ndarray, lo: float, hi: float, threshold: float | None) -> np.ndarray:
    """A [256, 256] float tile (NaN = nothing) as palette indices: 0 transparent (no patch, or below
    ``threshold``), 1..255 the colour ramp between ``lo`` and ``hi``."""
    ok = np.isfinite(values)
    if threshold is not None:
        ok &= values >= threshold
    span = hi - lo if hi > lo else 1.0
    with np.errstate(invalid="ignore"):
        i = np.clip((values - lo) * (254.0 / span), 0, 254) + 1
    i[~ok] = 0
    return i.astype(np.uint8)


def encode_png(rgba: np.ndarray, *, palette: np.ndarray | None = None, **save) -> bytes:
    """An RGBA [H, W, 4] array as a PNG, or with ``palette`` an [H, W] index array as a paletted one."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgba), "RGBA" if palette is None else "P")
    if palette is not None:
        img.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1, **save)
    return buf.getvalue()


def encode_heat_png(index: np.ndarray, opacity: int = 220) -> bytes:
    """A paletted PNG of :func:`heat_index` (a quarter of an RGBA tile's bytes to compress and send)."""
    return encode_png(index, palette=HEAT_PALETTE, transparency=bytes([0] + [opacity] * 255))


@functools.cache
def empty_png() -> bytes:
    return encode_png(np.zeros((TILE, TILE, 4), np.uint8))


# ----- the source imagery


@dataclass(frozen=True)
class SourceImage:
    """A raster a cube was embedded from, with the bands and display radiometry the model saw."""

    path: str
    bands: tuple[int, ...]
    gain: tuple[float, ...]
    bias: tuple[float, ...]


def _scene_source(scene: dict) -> SourceImage | None:
    """A scene's (or a single-scene cube's) provenance as a :class:`SourceImage`; None when not readable here."""
    import rasterio

    source, bands, radiometry = (scene.get(k) or {} for k in ("source", "bands", "radiometry"))
    path = str(source.get("path") or "")
    idx = list(bands.get("indexes") or source.get("bands") or [])
    gain, bias = list(radiometry.get("gain") or []), list(radiometry.get("bias") or [])
    if not path or not idx or len(gain) != len(idx) or len(bias) != len(idx):
        return None
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as src:
            if src.crs is None or max(idx) > src.count:
                return None
    except Exception:  # not readable here (moved, remote without credentials, a STAC item...): no imagery layer
        return None
    pick = [0, 1, 2] if len(idx) >= 3 else [0, 0, 0]  # one or two bands: grey from the first
    return SourceImage(path, tuple(int(idx[i]) for i in pick), tuple(float(gain[i]) for i in pick),
                       tuple(float(bias[i]) for i in pick))


def source_images(cube) -> list[SourceImage]:
    """The readable source rasters of a cube: its scene, or each scene of a mosaic cube; [] when none is."""
    prov = cube.provenance
    found = [_scene_source(s) for s in (prov.get("mosaic") or {}).get("scenes") or [prov]]
    return [s for s in found if s is not None]


def _read_display(img: SourceImage, bounds, crs, max_px: int):
    """A decimated read of ``img`` over ``bounds`` (in ``crs``) as RGBA uint8 [4, h, w] and its GeoBox."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds as window_from_bounds

    with rasterio.open(img.path) as src:
        try:
            l, b, r, t = transform_bounds(crs, src.crs, *bounds, densify_pts=21)
        except Exception:
            return None
        sl, sb, sr, st = src.bounds
        l, b, r, t = max(l, sl), max(b, sb), min(r, sr), min(t, st)
        if r <= l or t <= b:
            return None
        win = window_from_bounds(l, b, r, t, src.transform).round_offsets().round_lengths()
        if win.width < 1 or win.height < 1:
            return None
        scale = max(1.0, max(win.width, win.height) / max_px)
        shape = (max(1, round(win.height / scale)), max(1, round(win.width / scale)))
        data = src.read(list(img.bands), window=win, out_shape=(3,) + shape, resampling=Resampling.bilinear,
                        masked=True)
        gbox = GeoBox(shape, src.window_transform(win) * Affine.scale(win.width / shape[1], win.height / shape[0]),
                      src.crs)
    disp = np.clip(np.asarray(data.filled(0), np.float32) * np.array(img.gain, np.float32)[:, None, None]
                   + np.array(img.bias, np.float32)[:, None, None], 0, 1)
    alpha = np.where(np.ma.getmaskarray(data).any(axis=0), 0, 255)
    return np.concatenate([np.rint(disp * 255), alpha[None]]).astype(np.uint8), gbox


def render_source(images: list[SourceImage], z: int, x: int, y: int) -> np.ndarray | None:
    """The true-colour tile ``z/x/y`` of the sources (RGBA [256, 256, 4]), None where none covers it."""
    bounds3857, tile = tile_bounds(z, x, y), tile_geobox(z, x, y)
    dst = np.zeros((4, TILE, TILE), np.uint8)
    drew = False
    for img in images:
        got = _read_display(img, bounds3857, "EPSG:3857", int(TILE * 1.5))
        if got is not None:
            warp_into(dst, *got, tile, nodata=0, resampling="nearest")
            drew = True
    return np.moveaxis(dst, 0, -1) if drew else None


def thumbnail(images: list[SourceImage], bounds, crs, size: int = 64) -> bytes | None:
    """A PNG of the sources over ``bounds`` (in ``crs``), ``size`` px across; None when none covers it."""
    for img in images:
        got = _read_display(img, bounds, crs, size)
        if got is not None:
            return encode_png(np.moveaxis(got[0], 0, -1))
    return None
