#!/usr/bin/env python
"""Seams between tile cores: the seam ratio (1.0 = seamless) and the compute it costs, per tile/halo/blend.

A context-mixing random checkpoint (the registry model with every LayerScale gamma at 0.5, saved as a file and
loaded as weights) embeds a real raster at each setting; the seam ratio of the cube (geodino.cube.seams) and
the wall time are printed as a table. The official random init (LayerScale 1e-5) would hide seams.

    python pipelines/bench_seams.py                                   # ViT-L SAT, rasterio_cogeo.tif
    python pipelines/bench_seams.py --raster s2-rgb --radiometry s2-l2a --scale 2 --tiles 512   # S2 RGB, 2196²
    python pipelines/bench_seams.py --tiles 128 512 --halos 0 32 64 --blends 0 2
    python pipelines/bench_seams.py --smoke                           # tiny model, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

warnings.simplefilter("ignore")


def context_mixing_checkpoint(model: str, arch: dict, path: Path, gamma: float = 0.5,
                              weight_gain: float = 0.5) -> Path:
    """geodino.models.testing.context_mixing_model, saved once as a weights file."""
    from geodino.models import save_weights
    from geodino.models.testing import context_mixing_model

    if path.is_file():
        return path
    return save_weights(context_mixing_model(model, gamma=gamma, weight_gain=weight_gain, **arch), path)


def s2_rgb(work: Path) -> Path:
    """The Sentinel-2 L2A tile 29RKH's B04, B03, B02 files (../shared/data) stacked into one GeoTIFF."""
    import rasterio

    out = work / "s2l2a_29RKH_20200219_RGB.tif"
    if out.is_file():
        return out
    files = [REPO.parent / "shared" / "data" / f"s2l2a_29RKH_20200219_{b}.tif" for b in ("B04", "B03", "B02")]
    with rasterio.open(files[0]) as ds:
        prof = ds.profile | {"count": 3, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(out, "w", **prof) as dst:
        for i, f in enumerate(files, 1):
            with rasterio.open(f) as ds:
                dst.write(ds.read(1), i)
    return out


def run(args) -> list[dict]:
    from geodino.cube.seams import cube_seam_ratio
    from geodino.embed import EmbedConfig, embed

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    arch = json.loads(args.arch) if args.arch else {}
    ckpt = context_mixing_checkpoint(args.model, arch, work / f"ctxmix-{args.model}-{args.weight_gain}-"
                                     f"{abs(hash(json.dumps(arch, sort_keys=True))) % 10**6}.safetensors",
                                     weight_gain=args.weight_gain)
    raster = str(s2_rgb(work)) if args.raster == "s2-rgb" else args.raster
    rows = []
    settings = [(h, b) for h in args.halos for b in args.blends if b * 16 <= h]
    settings += [tuple(int(v) for v in a.split(":")) for a in args.also]
    for tile in args.tiles:
        for halo, blend in settings:
            if True:
                out = work / f"seams-t{tile}-h{halo}-b{blend}.zarr"
                opts = dict(model=args.model, weights=str(ckpt), arch=arch, device="cpu", tile=tile, halo=halo,
                            batch_size=args.batch_size, overwrite=True, output=str(out), dtype="float32",
                            radiometry=args.radiometry, precision=args.precision, scale=args.scale)
                if args.radiometry == "s2-l2a":
                    opts["s2_offset"] = 0  # the 2020 product predates baseline 04.00
                opts["blend"] = blend
                t0 = time.perf_counter()
                [s] = embed([raster], EmbedConfig.build(**opts), command="bench_seams")
                sec = time.perf_counter() - t0
                rep = cube_seam_ratio(out)
                rows.append({"tile": tile, "halo": halo, "blend": blend, "tiles": s.tiles_total,
                             "seconds": round(sec, 2), "seam_ratio": round(rep.ratio, 4),
                             "straddling": rep.straddling, "inside": rep.inside,
                             "pairs_straddling": rep.n_straddling})
                r = rows[-1]
                print(f"tile {tile:4d} halo {halo:3d} blend {blend}: seam ratio {r['seam_ratio']:.4f} "
                      f"({r['pairs_straddling']} boundary pairs), {r['tiles']} tiles, {sec:.1f} s", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raster", default=str(REPO.parent / "shared" / "data" / "rasterio_cogeo.tif"))
    p.add_argument("--radiometry", default="uint8")
    p.add_argument("--scale", type=float, default=1.0, help="resample the raster by this factor in the read")
    p.add_argument("--model", default="dinov3-vitl16-sat493m")
    p.add_argument("--arch", default=None, help='JSON architecture overrides, e.g. \'{"depth": 4}\'')
    p.add_argument("--tiles", type=int, nargs="+", default=[128, 512])
    p.add_argument("--halos", type=int, nargs="+", default=[0, 32, 64])
    p.add_argument("--blends", type=int, nargs="+", default=[0])
    p.add_argument("--also", nargs="*", default=[], metavar="HALO:BLEND", help="extra (halo, blend) settings")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--weight-gain", type=float, default=0.5, help="context mixing of the random checkpoint (0: "
                                                                   "LayerScale 0.5 only)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--workdir", default="/tmp/geodino-bench-seams")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes (seconds)")
    args = p.parse_args()
    if args.smoke:
        args.model, args.arch = "dinov3-vits16-lvd1689m", '{"depth": 2, "embed_dim": 64, "num_heads": 2}'
        args.tiles, args.halos = [64], [0, 16]
    rows = run(args)
    print("\n| tile | halo | blend | tiles | seconds | seam ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tile']} | {r['halo']} | {r['blend']} | {r['tiles']} | {r['seconds']} | {r['seam_ratio']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
