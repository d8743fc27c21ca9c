"""Cubes of the real rasters from two checkouts of geodino, compared: georeference, arrays, fingerprints, resume.

Runs the same jobs with an *old* tree (e.g. ``git archive <commit> | tar -x -C old/``) and this one, each in its
own process with that tree first on ``PYTHONPATH`` and one shared tiny context-mixing checkpoint (random weights,
CPU, fp32), then compares what they wrote:

* georeference: pyproj CRS equality of ``spatial_ref``'s WKT, the affine (``GeoTransform``) and the shape, and
  whether the georeferencing bytes (``spatial_ref`` and coordinate attributes, GeoZarr root attributes,
  coordinate values) are identical;
* every array of the cube (features, valid, cls, tile_status, heights...) bit for bit;
* the fingerprint and settings (what a resume checks) and, for mosaics, the cube names;
* a resume: the old tree's cube with a third of its tiles set back to pending (as a killed run leaves them) is
  completed by this tree, which must accept it (same fingerprint) and give the old tree's bytes; ``geodino info``
  of this tree reads the old cube.

Jobs: every raster of ``../shared/data`` embedded alone (the options of tests/embed/test_real_rasters.py), one with
``--scale 0.7``, a mosaic of real crops (NAIP windows on and off its pixel lattice and a window of the Albers file,
whose CRS has no EPSG code) and a canopy-height job on the 0.6 m aerial COG (resampled to ground metres).

    python pipelines/compare_checkouts.py OLD_TREE             # prints a table; exit 1 if anything differs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
MODEL = "dinov3-vits16-lvd1689m"
REAL = [  # file, options (as tests/embed/test_real_rasters.py)
    ("s2l2a_29RKH_20200219_B02_B03_B04_B08_crop512.tif", {"bands": "B04,B03,B02", "radiometry": "s2-l2a",
                                                          "s2_offset": 0}),
    ("rasterio_RGB.byte.tif", {}),
    ("rasterio_cogeo.tif", {}),
    ("naip_m_3607717_sw_18_1_20160620_subset.tif", {}),
    ("landsat_ard_albers_3band_int16.tif", {"bands": "3,2,1", "radiometry": "percentile"}),
    ("l8_elkton_B4_epsg4326.tif", {"bands": "1,1,1", "radiometry": "landsat-c2-l2"}),
]


# --------------------------------------------------------------------------------------- the jobs (worker side)
def run_job(job: dict) -> None:
    """One job with the geodino on ``sys.path`` (the tree under test)."""
    if job["kind"] == "read":
        read_cube(job["cube"], job["out"])
        return
    if job["kind"] == "canopy":
        from geodino.canopy import canopy

        canopy(job["scenes"][0], **job["opts"])
        return
    from geodino.embed import EmbedConfig, embed

    embed(job["scenes"], EmbedConfig.build(**job["opts"]))


def read_cube(cube: str, out: str) -> None:
    """What the readers of cubes make of ``cube`` (with the geodino under test), saved to ``out`` (.npz): sampled
    features at points (random ones, and ones on patch edges and corners, where the cell arithmetic decides) with and
    without a tolerance, and polygon means; a TorchGeo ``CubeDataset`` query; the patch index's table (footprints,
    coordinates) and its recorded transform; the prediction map's grid (coordinates and transform at scale 4)."""
    import shapely
    import torch  # noqa: F401  (torchgeo)

    from geodino import open_cube
    from geodino.analysis import sample
    from geodino.index import build_index
    from geodino.torchgeo import CubeDataset

    ds = open_cube(cube)
    res = {}
    t = ds.rio.transform()
    h, w = ds.sizes["y"], ds.sizes["x"]
    rng = np.random.default_rng(0)
    k = rng.integers(0, [w, h], size=(200, 2))
    xs = np.concatenate([t.c + rng.uniform(0, w, 200) * t.a, t.c + k[:, 0] * t.a])  # random, then on edges
    ys = np.concatenate([t.f + rng.uniform(0, h, 200) * t.e, t.f + k[:, 1] * t.e])
    pts = shapely.points(xs, ys)
    crs = ds.rio.crs.to_wkt() if ds.rio.crs else None
    res["points"] = np.asarray(sample(ds, list(pts), crs=crs).values, np.float64)
    res["points_tol"] = np.asarray(sample(ds, list(pts), crs=crs, tolerance=abs(t.a)).values, np.float64)
    polys = [shapely.box(t.c + a * t.a, t.f + b * t.e, t.c + (a + 3.3) * t.a, t.f + (b + 2.7) * t.e)
             for a, b in rng.uniform(0, [max(1, w - 4), max(1, h - 3)], size=(20, 2))]
    res["polygons"] = np.asarray(sample(ds, polys, crs=crs, strict=False).values, np.float64)
    if crs:
        from torchgeo.datasets.utils import BoundingBox  # noqa: F401

        dset = CubeDataset(cube)
        b = dset.bounds
        x0, x1, y0, y1 = b[0].start, b[0].stop, b[1].start, b[1].stop
        q = (slice(x0 + 0.1 * (x1 - x0), x0 + 0.8 * (x1 - x0), abs(t.a) * 0.7),
             slice(y0 + 0.2 * (y1 - y0), y0 + 0.9 * (y1 - y0), abs(t.e) * 0.7), b[2])
        got = dset[q]
        res["torchgeo_image"], res["torchgeo_valid"] = got["image"].numpy(), got["valid"].numpy()
        import geopandas as gpd

        info = build_index([cube], Path(out).with_suffix(".index"), overwrite=True)
        tab = gpd.read_parquet(Path(info.path) / "patches.parquet")
        res["index_geom"] = np.asarray(shapely.get_coordinates(tab.geometry.values))
        res["index_xyrc"] = tab[["x", "y", "row", "col"]].to_numpy(np.float64)
        meta = json.loads((Path(info.path) / "index.json").read_text())
        res["index_transform"] = np.asarray(meta["cubes"][0]["transform"], np.float64)
    try:  # trees before issue 24: the map's grid by hand
        from geodino.heads.mapping import _grid_array

        m = _grid_array(np.zeros((h * 4, w * 4), np.uint8), ds, 4, ("y", "x"), "classes", {})
        res["map_y"], res["map_x"] = m["y"].values, m["x"].values
        res["map_transform"] = np.asarray(tuple(m.rio.transform())[:6])
    except ImportError:  # since: predict_map's grid is the cube's GeoBox refined (cube.reading.patch_grid)
        from geodino.cube.reading import patch_grid

        g = patch_grid(ds, 4)
        res["map_y"], res["map_x"] = g.coords["y"].values, g.coords["x"].values
        res["map_transform"] = np.asarray(tuple(g.affine)[:6])
    np.savez(out, **res)


# --------------------------------------------------------------------------------------- inputs
def make_weights(work: Path) -> tuple[Path, Path]:
    from geodino.models import save_canopy_weights, save_weights
    from geodino.models.testing import context_mixing_canopy_model, context_mixing_model

    vit = save_weights(context_mixing_model(MODEL, seed=11, **TINY), work / "tiny.safetensors")
    chm = context_mixing_canopy_model(arch={"depth": 4, "embed_dim": 64, "num_heads": 2},
                                      head_arch={"embed_dim": 64, "layers": (0, 1, 2, 3),
                                                 "post_process_channels": (16, 32, 48, 64),
                                                 "fusion_hidden_size": 32, "head_hidden_size": 16, "n_bins": 64})
    return vit, save_canopy_weights(chm, work / "tiny_chmv2.safetensors")


def crop(src: Path, dst: Path, rows: slice, cols: slice, shift_px: tuple[float, float] = (0.0, 0.0)) -> str:
    """A window of a real raster as its own GeoTIFF (optionally moved by a fraction of a pixel)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        data = ds.read(window=win)
        prof = ds.profile.copy()
        t = ds.window_transform(win) * Affine.translation(*shift_px)
        prof.update(width=win.width, height=win.height, transform=t, tiled=False, compress="deflate")
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        with rasterio.open(dst, "w", **prof) as out:
            out.write(data)
            out.colorinterp = ds.colorinterp
    return str(dst)


def jobs(data: Path, work: Path, vit: Path, chm: Path) -> list[dict]:
    base = {"model": MODEL, "weights": str(vit), "arch": TINY, "device": "cpu", "threads": 2, "precision": "fp32",
            "radiometry": None, "minmax": None, "tile": 128, "halo": 32, "blend": 1}
    out = []
    for name, opts in REAL:
        out.append({"name": name.split(".")[0], "kind": "embed", "scenes": [str(data / name)],
                    "opts": {**base, **opts}, "output": "c.zarr"})
    out.append({"name": "rasterio_RGB.byte --scale 0.7", "kind": "embed", "scenes": [str(data / REAL[1][0])],
                "opts": {**base, "scale": 0.7, "tile": 64, "halo": 16}, "output": "c.zarr"})
    crops = work / "crops"
    crops.mkdir(exist_ok=True)
    naip, albers = data / REAL[3][0], data / REAL[4][0]
    scenes = [crop(naip, crops / "naip_a_20160620.tif", slice(0, 180), slice(0, 200)),
              crop(naip, crops / "naip_b_20160621.tif", slice(96, 300), slice(112, 300)),  # on the lattice
              crop(naip, crops / "naip_c_20160622.tif", slice(150, 300), slice(0, 140), (0.37, -0.21)),  # off
              crop(albers, crops / "albers_20160620.tif", slice(40, 300), slice(100, 400))]
    out.append({"name": "mosaic (NAIP x3, Albers)", "kind": "mosaic", "scenes": scenes,
                "opts": {**base, "mosaic": True, "radiometry": "minmax", "minmax": (0, 3000), "tile": 64},
                "output": "m"})
    out.append({"name": "canopy rasterio_cogeo", "kind": "canopy", "scenes": [str(data / REAL[2][0])],
                "opts": {"weights": str(chm), "arch": {"depth": 4, "embed_dim": 64, "num_heads": 2},
                         "head_arch": {"embed_dim": 64, "layers": [0, 1, 2, 3],
                                       "post_process_channels": [16, 32, 48, 64], "fusion_hidden_size": 32,
                                       "head_hidden_size": 16, "n_bins": 64},
                         "device": "cpu", "precision": "fp32", "threads": 2, "tile": 128, "halo": 32,
                         "batch_size": 2}, "output": "chm"})
    return out


def _with_output(job: dict, folder: Path) -> dict:
    job = json.loads(json.dumps(job))
    if job["kind"] == "canopy":
        job["opts"].update(output=str(folder / "chm.tif"), cube=str(folder / "chm.zarr"))
    else:
        job["opts"]["output"] = str(folder / job["output"])
    return job


def run_in(tree: Path, job: dict) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)], cwd=tree,
                       env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{job['name']} failed in {tree}:\n{r.stderr[-3000:]}")


# --------------------------------------------------------------------------------------- comparing
def cubes_in(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.rglob("*.zarr")) if (p / "zarr.json").exists()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes()
    return np.array_equal(a, b)


def compare_cubes(a: Path, b: Path) -> dict:
    import zarr
    from affine import Affine
    from pyproj import CRS

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    ra, rb = dict(ga.attrs), dict(gb.attrs)
    pa, pb = ra.pop("geodino", {}), rb.pop("geodino", {})
    sa, sb = dict(ga["spatial_ref"].attrs), dict(gb["spatial_ref"].attrs)
    out = {
        "crs": (CRS.from_wkt(sa["crs_wkt"]) == CRS.from_wkt(sb["crs_wkt"])) if "crs_wkt" in sa else
        ("crs_wkt" not in sb),
        "affine": Affine.from_gdal(*map(float, sa["GeoTransform"].split())) ==
        Affine.from_gdal(*map(float, sb["GeoTransform"].split())),
        "shape": ga["y"].shape == gb["y"].shape and ga["x"].shape == gb["x"].shape,
        "georef bytes": sa == sb and ra == rb and all(dict(ga[c].attrs) == dict(gb[c].attrs) and
                                                       _same_bits(ga[c][...], gb[c][...]) for c in ("y", "x")),
        "fingerprint": pa.get("fingerprint") == pb.get("fingerprint") and pa.get("settings") == pb.get("settings"),
    }
    names = sorted(set(ga.array_keys()) | set(gb.array_keys()))
    same = [n for n in names if n in ga and n in gb and _same_bits(ga[n][...], gb[n][...])
            and ga[n].metadata.chunk_grid == gb[n].metadata.chunk_grid]
    out["arrays"] = f"{len(same)}/{len(names)}"
    out["arrays_ok"] = len(same) == len(names)
    out["differs"] = [n for n in names if n not in same]
    return out


def compare_cogs(a: Path, b: Path) -> str:
    """"same" when both GeoTIFFs have the same CRS, transform, shape, nodata and pixels, else what differs."""
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        diffs = [k for k, u, v in (("crs", x.crs, y.crs), ("transform", x.transform, y.transform),
                                   ("shape", x.shape, y.shape), ("nodata", repr(x.nodata), repr(y.nodata))) if u != v]
        if not diffs and not _same_bits(x.read(), y.read()):
            diffs.append("pixels")
    return "same" if not diffs else "differs: " + ", ".join(diffs)


def set_back(cube: Path, every: int = 3) -> int:
    """Tiles ``0, every, 2*every...`` (row-major) back to pending with fill values, as a killed run leaves them."""
    import zarr

    g = zarr.open_group(str(cube), mode="a")
    status = g["tile_status"][...]
    n_y = g["y"].shape[0]
    n_x = g["x"].shape[0]
    chunk = g["valid"].chunks[0] if "valid" in g else g["heights"].chunks[0]
    done = 0
    for k, (ty, tx) in enumerate(np.ndindex(*status.shape)):
        if k % every or status[ty, tx] != 1:
            continue
        rows, cols = slice(ty * chunk, min(n_y, (ty + 1) * chunk)), slice(tx * chunk, min(n_x, (tx + 1) * chunk))
        if "features" in g:
            g["features"][:, rows, cols] = np.nan
            g["valid"][rows, cols] = False
            g["cls"][ty, tx] = np.nan
        else:
            g["heights"][rows, cols] = np.nan
        g["tile_status"][ty, tx] = 0
        done += 1
    g.attrs["geodino_status"] = "incomplete"
    zarr.consolidate_metadata(str(cube))
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", nargs="?", help="the old tree (a checkout or `git archive` of another commit)")
    ap.add_argument("--new", default=str(HERE), help="the new tree (default: this one)")
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data"))
    ap.add_argument("--work", default=None, help="where to write (default: a temporary folder, removed)")
    ap.add_argument("--only", help="run the jobs whose name contains this text")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_job(json.loads(args.worker))
        return 0
    if not args.old:
        ap.error("give the old tree")
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"{data} is missing: the real rasters are needed (see ../shared/data/MANIFEST.md)")
    old, new = Path(args.old).resolve(), Path(args.new).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="geodino-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(new))
    vit, chm = make_weights(work)
    rows, bad = [], False
    for i, job in enumerate(jobs(data, work, vit, chm)):
        if args.only and args.only not in job["name"]:
            continue
        fa, fb = work / f"{i}-old", work / f"{i}-new"
        for folder, tree in ((fa, old), (fb, new)):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            run_in(tree, _with_output(job, folder))
        ca, cb = cubes_in(fa), cubes_in(fb)
        if sorted(ca) != sorted(cb):
            rows.append((job["name"], "cube names differ", f"{sorted(ca)} vs {sorted(cb)}"))
            bad = True
            continue
        for name in ca:
            r = compare_cubes(ca[name], cb[name])
            # the resume: the old cube, a third of its tiles pending, completed by the new tree
            res = work / f"{i}-resume"
            shutil.rmtree(res, ignore_errors=True)
            shutil.copytree(fa, res)
            n_back = set_back(cubes_in(res)[name])
            for tif in res.glob("*.tif"):  # canopy: a finished COG is refused without --overwrite
                tif.unlink()
            run_in(new, _with_output(job, res))
            rr = compare_cubes(ca[name], cubes_in(res)[name])
            info = 0
            if job["kind"] != "canopy":  # `geodino info` reads feature cubes (a height cube is an internal error,
                info = subprocess.run([sys.executable, "-m", "geodino", "info", str(ca[name])], cwd=new,  # in both)
                                      env={**os.environ, "PYTHONPATH": str(new)}, capture_output=True).returncode
            ok = (r["crs"] and r["affine"] and r["shape"] and r["georef bytes"] and r["fingerprint"]
                  and r["arrays_ok"] and rr["arrays_ok"] and rr["fingerprint"] and info == 0)
            bad |= not ok
            label = job["name"] + (f" [{name}]" if job["kind"] == "mosaic" else "")
            if job["kind"] == "canopy":
                cog = compare_cogs(fa / "chm.tif", fb / "chm.tif")
                bad |= cog != "same"
                rows.append((job["name"] + " [COG]", "same" if cog == "same" else "DIFFERS", cog))
            readers = ""
            if job["kind"] != "canopy":  # the readers of both trees on the same (old) cube
                outs = []
                for tag, tree in (("old", old), ("new", new)):
                    o = work / f"{i}-read-{tag}-{name}.npz"
                    run_in(tree, {"name": f"read {name}", "kind": "read", "cube": str(ca[name]), "out": str(o)})
                    outs.append(np.load(o))
                keys = sorted(set(outs[0].files) | set(outs[1].files))
                same_r = [k for k in keys if k in outs[0].files and k in outs[1].files
                          and _same_bits(outs[0][k], outs[1][k])]
                ok = ok and len(same_r) == len(keys)
                bad |= len(same_r) != len(keys)
                readers = f"; readers {len(same_r)}/{len(keys)} same" + (
                    f" (differ: {sorted(set(keys) - set(same_r))})" if len(same_r) != len(keys) else "")
            differs = f" {r['differs']}" if r["differs"] else ""
            rows.append((label, "same" if ok else "DIFFERS",
                         f"crs {r['crs']}, affine {r['affine']}, shape {r['shape']}, georef bytes "
                         f"{r['georef bytes']}, fingerprint {r['fingerprint']}, arrays {r['arrays']}{differs}; resume "
                         f"of {n_back} tiles: arrays {rr['arrays']}, fingerprint {rr['fingerprint']}"
                         + ("" if job["kind"] == "canopy" else f"; info rc {info}") + readers))
    w = max(len(r[0]) for r in rows)
    print(f"old: {old}\nnew: {new}\n")
    for name, verdict, detail in rows:
        print(f"{name:<{w}}  {verdict:<8}  {detail}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
