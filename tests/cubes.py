"""Synthetic feature cubes with known features, written through geodino's own cube writer (tests of readers)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import CRS
from odc.geo.geobox import GeoBox

from geodino.cube.store import CubeLayout, CubeWriter, create_cube, finalize_cube

PROVENANCE = {
    "model": {"name": "dinov3-vits16-lvd1689m", "arch_overrides": {}, "embed_dim": None, "patch_size": 16,
              "weights": {"source": "synthetic", "sha256": "0" * 64}, "random_weights": False},
    "normalization": {"name": "imagenet", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "radiometry": {"kind": "s2-l2a", "gain": [1e-4] * 3, "bias": [0.0] * 3,
                   "params": {"formula": "(DN + offset) / 10000", "offset": 0.0, "offset_source": "given"}},
    "bands": {"indexes": [3, 2, 1], "names": ["B04", "B03", "B02"]},
    "numerics": {"precision": "fp32", "quantize": None},
}


def structured_features(shape: tuple[int, int], dim: int, seed: int = 0, rank: int = 6,
                        noise: float = 0.3) -> np.ndarray:
    """``[D, H, W]`` features: a few smooth spatial fields mixed into D channels, plus noise and an offset."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fields = np.stack([np.sin(yy * rng.uniform(0.05, 0.4) + rng.uniform(0, 6)) *
                       np.cos(xx * rng.uniform(0.05, 0.4) + rng.uniform(0, 6)) for _ in range(rank)])
    mix = rng.normal(size=(dim, rank))
    return (np.einsum("dr,rhw->dhw", mix, fields) + noise * rng.normal(size=(dim, h, w)) + 0.5).astype(np.float32)


def make_cube(path: Path, features: np.ndarray, valid: np.ndarray | None = None, *, chunk: int = 8,
              transform: Affine = Affine(160.0, 0, 500000.0, 0, -160.0, 4500000.0), crs: str | None = "EPSG:32633",
              provenance: dict | None = None, dtype: str = "float16", shard: tuple[int, int] = (1, 1)) -> Path:
    """Write ``features`` [D, H, W] (and ``valid`` [H, W], default all) as a complete geodino cube; tiles whose
    patches are all invalid are marked skipped, as embed does. ``shard``: tiles per shard (embed groups a tile row)."""
    d, h, w = features.shape
    valid = np.ones((h, w), bool) if valid is None else valid.astype(bool)
    wkt = CRS.from_user_input(crs).to_wkt() if crs else None
    grid = GeoBox((h, w), transform, wkt)
    nty, ntx = -(-h // chunk), -(-w // chunk)
    ybounds = tuple((transform.f + r * chunk * transform.e, transform.f + min(h, (r + 1) * chunk) * transform.e)
                    for r in range(nty))
    xbounds = tuple((transform.c + c * chunk * transform.a, transform.c + min(w, (c + 1) * chunk) * transform.a)
                    for c in range(ntx))
    prov = copy.deepcopy(provenance if provenance is not None else PROVENANCE)
    prov.setdefault("model", {})["embed_dim"] = d
    prov["tiling"] = {"tile": chunk * 16, "halo": 0, "patch": 16, "window": chunk * 16, "blend": 0,
                      "tiles": [nty, ntx], **(prov.get("tiling") or {})}
    create_cube(path, CubeLayout(grid, chunk, ybounds, xbounds, shard), d, dtype, prov)
    writer = CubeWriter(path)
    for ty in range(nty):
        for tx in range(ntx):
            rows, cols = slice(ty * chunk, min(h, (ty + 1) * chunk)), slice(tx * chunk, min(w, (tx + 1) * chunk))
            v = valid[rows, cols]
            if not v.any():
                writer.skip_tile(ty, tx)
                continue
            f = np.where(v[None], features[:, rows, cols], np.nan)
            writer.write_tile(ty, tx, rows, cols, np.moveaxis(f, 0, -1), v, np.nanmean(f, axis=(1, 2)))
    finalize_cube(path)
    return Path(path)
