#!/usr/bin/env python
"""Analysis out of core: time and peak RSS of each operation on cubes of growing size.

For each raster size (default 2,000² and 20,000² px, i.e. 125² and 1,250² patches) two synthetic feature cubes are
written the way `geodino embed` lays them out (512-px tiles, 16-px patches, float16, one tile core per chunk),
filled with seeded synthetic features of width --dim (384 by default: ViT-S; 1024 is ViT-L), a cloud of invalid
patches and a skipped tile; the second is the first with a changed square (``change_crs`` reads it in another CRS
and aligns it with ``align="reproject"``). Each operation then runs in a fresh process and writes its full result to
disk (a zarr map, a COG, a compact cube), and the table gives its time and peak RSS. Peak RSS must agree within 10 % across sizes for every operation.

    python pipelines/bench_analysis.py                          # 2000 and 20000 px, in ./bench-analysis/
    python pipelines/bench_analysis.py --sizes 1000 3000 --dim 64 --workdir /tmp/b --json out.json

--fidelity measures the compact product instead: a real raster (default ../shared/data/rasterio_cogeo.tif, 0.6 m
aerial RGB) is embedded with a context-mixing random checkpoint (ViT-S/16, 4 blocks, LayerScale gammas 0.5, saved
and loaded as a weights file), compressed at several k, and the table gives bytes per patch against float16, the
cosine of decoded vs source features over every valid patch, and the top-100 overlap of similarity search for
seeded random query patches:

    python pipelines/bench_analysis.py --fidelity --ks 16 32 64 128 --workdir /tmp/b
    python pipelines/bench_analysis.py --fidelity --model-weights dinov3-vitl16-sat493m dinov3_vitl16_...pth
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from synthetic import make_cube

ONE_GRAPH = False
OPS = ("baseline", "pca_rgb", "similarity", "cluster", "change", "change_crs", "compress", "cog")
# change_crs: the second cube read as if in a neighbouring transverse Mercator (central meridian 0.2 deg east of
# UTM 33's): the same grid numbers in another CRS, mostly over the first, so align="reproject" warps it onto it
TMERC = "+proj=tmerc +lat_0=0 +lon_0=15.2 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m +no_defs"


def _store_map(m, path: Path) -> None:
    """Write a lazy map into a zarr array a band of chunk rows at a time (about 128 chunks per dask graph), as
    write_cog and compress do: one graph over every chunk would cost dask scheduler memory in proportion to the
    number of chunks (``--one-graph`` measures that instead)."""
    import dask.array as da
    import zarr

    from geodino.cube.sampling import row_bands

    arr = zarr.create_array(str(path), shape=m.shape, chunks=m.data.chunksize, dtype=m.dtype, overwrite=True,
                            zarr_format=3)
    if ONE_GRAPH:
        da.store(m.data, arr, lock=False)
        return
    ydim = m.dims.index("y")
    for r0, band in row_bands(m.data, ydim):
        sl = [slice(None)] * m.ndim
        sl[ydim] = slice(r0, r0 + band.shape[ydim])
        da.store(band, arr, regions=tuple(sl), lock=False)


def child(op: str, cube: str, other: str, out: str) -> None:
    """Run one operation in this fresh process and print its figures as JSON."""
    import warnings

    import geodino
    from geodino import analysis
    from geodino.cube.compress import compress
    from geodino.export import write_cog

    warnings.simplefilter("ignore")
    out_p = Path(out)
    t0 = time.perf_counter()
    ds = geodino.open_cube(cube)
    info = {}
    if op == "pca_rgb":
        _store_map(analysis.pca_rgb(ds), out_p / "pca_rgb.zarr")
    elif op == "similarity":
        h, w = ds.sizes["y"], ds.sizes["x"]
        pick = [(0.2, 0.2), (0.5, 0.5), (0.8, 0.3), (0.9, 0.1), (0.75, 0.6)]  # off the cloud and the skipped tile
        pts = [(float(ds.x[int(fx * (w - 1))]), float(ds.y[int(fy * (h - 1))])) for fy, fx in pick]
        res = analysis.similarity(ds, pts[:3], pts[3:], crs=ds.rio.crs, top_k=100)
        _store_map(res.map, out_p / "similarity.zarr")
        info["top_score"] = float(res.top.score.iloc[0])
    elif op == "cluster":
        _store_map(analysis.cluster(ds, 8), out_p / "cluster.zarr")
    elif op == "change":
        _store_map(analysis.change(ds, geodino.open_cube(other)), out_p / "change.zarr")
    elif op == "change_crs":
        b = geodino.open_cube(other).rio.write_crs(TMERC)
        _store_map(analysis.change(ds, b, align="reproject"), out_p / "change_crs.zarr")
    elif op == "compress":
        s = compress(ds, out_p / "compact.zarr", k=64, overwrite=True)
        info.update(cosine_mean=s.cosine_mean, stored_bytes_per_patch=s.stored_bytes_per_patch)
    elif op == "cog":
        write_cog(analysis.pca_rgb(ds), out_p / "pca_rgb.tif", nodata=float("nan"), overwrite=True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"op": op, "seconds": seconds, "peak_rss_mib": peak_rss_mib(), **info}))


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the process image, whereas ``ru_maxrss`` is carried over
    exec from the parent that spawned it (here the parent that generated the cubes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fidelity(work: Path, raster: str, ks: list[int], queries: int, as_json: str | None,
             model_weights: tuple[str, str] | None = None) -> int:
    """Embed ``raster`` with a context-mixing random ViT-S (or ``model_weights``: a model name and its weights)
    and print the compact product's fidelity per k."""
    import warnings

    import torch

    from geodino.analysis.fidelity import compact_fidelity
    from geodino.cube.compress import compress
    from geodino.embed import EmbedConfig, embed
    from geodino.models import build_model, save_weights

    warnings.simplefilter("ignore")
    arch = {"depth": 4}
    weights = work / "vits16_depth4_ls0.5.safetensors"
    if not weights.exists():
        model = build_model("dinov3-vits16-lvd1689m", seed=0, **arch)
        with torch.no_grad():  # LayerScale 1e-5 (the official init) barely mixes context; 0.5 does
            for name, p in model.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(0.5)
        save_weights(model, weights)
    name = "dinov3-vits16-lvd1689m"
    if model_weights:
        name, weights, arch = model_weights[0], model_weights[1], {}
    full = work / (Path(raster).stem + ("_mixing.zarr" if not model_weights else f"_{name}.zarr"))
    t0 = time.perf_counter()
    [s] = embed([raster], EmbedConfig.build(model=name, weights=str(weights), arch=arch, device="auto", tile=256,
                                            halo=32, output=str(full), threads=2))
    print(f"embedded {raster} -> {full} ({s.status}, {time.perf_counter() - t0:.0f} s)")
    rows = []
    for k in ks:
        out = work / f"{full.stem}_k{k}.zarr"
        compress(full, out, k=k, overwrite=True)
        rows.append(compact_fidelity(full, out, queries=queries, top_k=100, seed=0))
    print(f"{'k':>4} {'B/patch':>8} {'f16 B/patch':>11} {'stored B':>9} {'f16 stored':>10} {'cos mean':>9} "
          f"{'cos p01':>8} {'cos min':>8} {'top-100 mean':>12} {'top-100 min':>11}")
    for r in rows:
        print(f"{r['components']:>4} {r['bytes_per_patch']:>8} {r['float16_bytes_per_patch']:>11} "
              f"{r['stored_bytes_per_patch']:>9.1f} {r['source_stored_bytes_per_patch']:>10.1f} "
              f"{r['cosine_mean']:>9.4f} {r['cosine_p01']:>8.4f} {r['cosine_min']:>8.4f} "
              f"{r['topk_overlap_mean']:>12.3f} {r['topk_overlap_min']:>11.2f}")
    print(f"({rows[0]['valid_patches']} valid patches, {rows[0]['queries']} queries)")
    if as_json:
        Path(as_json).write_text(json.dumps({"raster": raster, "rows": rows}, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="raster sides in px")
    ap.add_argument("--dim", type=int, default=384, help="feature width")
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--workdir", default="bench-analysis")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--fidelity", action="store_true", help="measure the compact product instead")
    ap.add_argument("--raster", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                            "rasterio_cogeo.tif"), help="--fidelity: the raster to embed")
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128], help="--fidelity: dimensions kept")
    ap.add_argument("--queries", type=int, default=20, help="--fidelity: similarity queries")
    ap.add_argument("--model-weights", nargs=2, metavar=("MODEL", "WEIGHTS"),
                    help="--fidelity: a real backbone and its weights instead of the random checkpoint")
    ap.add_argument("--one-graph", action="store_true", help="write each map with one dask graph over all chunks")
    ap.add_argument("--child", nargs=4, metavar=("OP", "CUBE", "OTHER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    global ONE_GRAPH
    ONE_GRAPH = a.one_graph
    if a.child:
        child(*a.child)
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.fidelity:
        return fidelity(work, a.raster, a.ks, a.queries, a.json, a.model_weights)
    rows = []
    for size in a.sizes:
        t0 = time.perf_counter()
        cube = make_cube(work / f"cube_{size}_{a.dim}.zarr", size, a.dim, seed=0)
        other = make_cube(work / f"cube_{size}_{a.dim}_later.zarr", size, a.dim, seed=0, changed=True)
        gen = time.perf_counter() - t0
        out = work / f"out_{size}"
        out.mkdir(exist_ok=True)
        for op in a.ops:
            r = subprocess.run([sys.executable, __file__, "--child", op, str(cube), str(other), str(out)]
                               + (["--one-graph"] if a.one_graph else []),
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(size=size, patches=-(-size // 16), dim=a.dim, generate_s=gen)
            rows.append(res)
    print(f"{'operation':>11} {'raster px':>10} {'patches':>10} {'seconds':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['op']:>11} {r['size']:>8}² {r['patches']:>8}² {r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    verdict = "PASS"
    spreads = {}
    for op in a.ops:
        peaks = [r["peak_rss_mib"] for r in rows if r["op"] == op]
        spreads[op] = (max(peaks) - min(peaks)) / min(peaks)
        if op != "baseline" and spreads[op] > 0.10:
            verdict = "FAIL"
    print("peak RSS spread across sizes: " + ", ".join(f"{op} {s * 100:.1f} %" for op, s in spreads.items())
          + f" ({verdict}: each must be <= 10 %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "rss_spread": spreads}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
