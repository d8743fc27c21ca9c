#!/usr/bin/env python
"""Honest head validation: `geodino train` on labels that are spatially autocorrelated noise, independent of the
features. A split that keeps validation out of the training patches' receptive field scores chance (about 0.5);
one that does not scores more, because held-out patches sit beside training patches whose features look alike
(features see a whole model window) and whose labels are alike (the labels are autocorrelated).

The cube is written with geodino's cube writer, laid out as `geodino embed` lays out a 4096 x 4096 px scene at the
default tiling (512-px tiles, 32-px halo: a 576-px model window, 36 patches), 256 x 256 patches: its features are
16 smooth random fields (Gaussian-filtered white noise, sigma 3 patches, so that nearby patches look alike), its
labels another such field, drawn independently, thresholded at 0 (two classes of about half the patches each),
written as a GeoTIFF at patch resolution. Each `geodino train` runs in a fresh process with the geodino that
`python -m geodino` imports (set PYTHONPATH to compare checkouts):

    python pipelines/noise_labels.py                         # knn and logreg, seeds 0 1 2
    python pipelines/noise_labels.py --heads knn --seeds 0 --workdir /tmp/noise
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

N, DIM, SIGMA, TILE, HALO = 256, 16, 3.0, 512, 32


def smooth_fields(n: int, seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    f = np.stack([gaussian_filter(rng.normal(size=(N, N)), SIGMA) for _ in range(n)])
    return (f / f.std(axis=(1, 2), keepdims=True)).astype(np.float32)


def write_cube(path: Path) -> Path:
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from pyproj import CRS

    from geodino.cube.store import CubeLayout, CubeWriter, create_cube, finalize_cube, is_cube, read_attrs

    if is_cube(path) and read_attrs(path).get("geodino_status") == "complete":
        return path
    n = TILE // 16
    t = Affine(160, 0, 300000, 0, -160, 5000000)
    grid = GeoBox((N, N), t, CRS.from_epsg(32633).to_wkt())
    nt = math.ceil(N / n)
    ybounds = tuple((t.f + r * n * t.e, t.f + min(N, (r + 1) * n) * t.e) for r in range(nt))
    xbounds = tuple((t.c + c * n * t.a, t.c + min(N, (c + 1) * n) * t.a) for c in range(nt))
    prov = {"model": {"name": "synthetic", "arch_overrides": {}, "embed_dim": DIM, "patch_size": 16,
                      "weights": {"source": "synthetic", "sha256": "synthetic"}, "random_weights": False},
            "normalization": {"name": "none", "mean": [0.0] * 3, "std": [1.0] * 3},
            "radiometry": {"kind": "reflectance", "gain": [1e-4] * 3, "bias": [0.0] * 3, "params": {}},
            "tiling": {"tile": TILE, "halo": HALO, "patch": 16, "window": TILE + 2 * HALO, "blend": 1,
                       "tiles": [nt, nt]},
            "numerics": {"precision": "fp32", "quantize": None},
            "source": {"path": f"synthetic noise {N * 16}x{N * 16} px"}}
    create_cube(path, CubeLayout(grid, n, ybounds, xbounds), DIM, "float16", prov)
    feats = smooth_fields(DIM, 1)
    w = CubeWriter(path)
    for ty in range(nt):
        for tx in range(nt):
            rs, cs = slice(ty * n, min(N, (ty + 1) * n)), slice(tx * n, min(N, (tx + 1) * n))
            f = feats[:, rs, cs]
            v = np.ones(f.shape[1:], bool)
            w.write_tile(ty, tx, rs, cs, np.moveaxis(f, 0, -1), v, f.mean(axis=(1, 2)))
    finalize_cube(path)
    return path


def write_labels(path: Path) -> Path:
    import rasterio
    from affine import Affine

    labels = (smooth_fields(1, 2)[0] > 0).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=N, height=N, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(160, 0, 300000, 0, -160, 5000000), nodata=255) as r:
        r.write(labels[None])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", nargs="+", default=["knn", "logreg"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workdir", default="noise-labels")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cube, labels = write_cube(work / "noise.zarr"), write_labels(work / "noise_labels.tif")
    where = subprocess.run([sys.executable, "-c", "import geodino; print(geodino.__file__)"], capture_output=True,
                           text=True).stdout.strip()
    print(f"geodino: {where}\n")
    print("| head | seed | valid accuracy [95 % CI] | held-out blocks | block | ring | train / valid patches |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for head in a.heads:
        accs = []
        for seed in a.seeds:
            r = subprocess.run([sys.executable, "-m", "geodino", "train", str(cube), "--labels", str(labels),
                                "--head", head, "--seed", str(seed), "-o", str(work / f"{head}.safetensors"),
                                "--overwrite", "--json"], capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr)
            card = json.loads(r.stdout)
            m, sp, fit = card["metrics"]["valid"], card["split"], card["fit"]
            acc = m["accuracy"]
            accs.append(acc["value"])
            block = sp.get("block_patches")
            ring = sp.get("buffer_patches", 0)
            counts = f"{sp.get('train_patches', fit.get('train_samples'))} / " \
                     f"{sp.get('valid_patches', fit.get('valid_samples'))}"
            rows.append({"head": head, "seed": seed, "accuracy": acc["value"], "ci95": acc["ci95"],
                         "blocks": m["blocks"], "block": block, "ring": ring, "split": sp})
            print(f"| {head} | {seed} | {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] | "
                  f"{m['blocks']} | {block} | {ring} | {counts} |")
        print(f"| {head} | mean | {np.mean(accs):.3f} | | | | |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
