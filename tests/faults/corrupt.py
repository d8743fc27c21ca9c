"""Corrupt GeoTIFFs for the fault tests: cut short, tile data zeroed, tile offsets pointing outside the file.

The block layout comes from GDAL itself (the ``TIFF`` metadata domain's ``BLOCK_OFFSET_x_y``/``BLOCK_SIZE_x_y``);
the offsets table is found by walking the first IFD of the classic little-endian TIFF that GDAL writes.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import rasterio

from tests.rasters import texture, write_raster

_TILE_OFFSETS, _STRIP_OFFSETS = 324, 273
_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def striped(path: Path, shape=(256, 256), seed: int = 5) -> Path:
    """An uncompressed, stripped 3-band uint16 GeoTIFF (the layout of the NAIP file of issue 17)."""
    return write_raster(path, texture(shape, seed=seed), tiled=False, compress=None)


def tiled(path: Path, shape=(256, 256), seed: int = 6) -> Path:
    """A DEFLATE-compressed GeoTIFF of 64-px tiles (so that zeroed bytes fail to decode)."""
    data = texture(shape, seed=seed)
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=3, dtype=data.dtype.name,
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 4500000, 10, 10),
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate") as ds:
        ds.write(data)
    return path


def truncated(src: Path, dst: Path, fraction: float) -> Path:
    """``head -c`` at ``fraction`` of the bytes."""
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _blocks(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every block of band 1 (pixel-interleaved files have one set of blocks)."""
    out = []
    with rasterio.open(path) as ds:
        by, bx = ds.block_shapes[0]
        for y in range(-(-ds.height // by)):
            for x in range(-(-ds.width // bx)):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)
                size = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)
                out.append((int(off), int(size)))
    return out


def zeroed_tiles(src: Path, dst: Path, every: int = 3) -> Path:
    """Every ``every``-th block's bytes set to zero (a bad block on disk)."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for i, (off, size) in enumerate(_blocks(dst)):
            if i % every == 1:
                f.seek(off)
                f.write(b"\0" * size)
    return dst


def _offsets_table(data: bytes) -> tuple[int, str, int, int]:
    """(file position, struct code, item size, count) of the tile (or strip) offsets of the first IFD."""
    assert data[:4] == b"II*\0", "a classic little-endian TIFF"
    ifd = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, ifd)[0]
    for i in range(n):
        tag, typ, count, value = struct.unpack_from("<HHII", data, ifd + 2 + 12 * i)
        if tag in (_TILE_OFFSETS, _STRIP_OFFSETS):
            code, size = _TYPES[typ]
            pos = ifd + 2 + 12 * i + 8 if count * size <= 4 else value
            return pos, code, size, count
    raise AssertionError("no offsets tag")


def bad_offsets(src: Path, dst: Path, every: int = 4) -> Path:
    """Every ``every``-th tile offset points past the end of the file (or into the header)."""
    data = bytearray(Path(src).read_bytes())
    pos, code, size, count = _offsets_table(bytes(data))
    rng = np.random.default_rng(0)
    for i in range(count):
        if i % every == 2:
            bad = len(data) + int(rng.integers(1, 1 << 20)) if i % 2 else 8
            struct.pack_into("<" + code, data, pos + i * size, bad)
    dst.write_bytes(bytes(data))
    return dst
