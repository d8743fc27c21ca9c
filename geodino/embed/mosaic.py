"""Regional mosaics: many scenes -> one feature cube per CRS (UTM zone) on a common grid (``embed --mosaic``).

The grid of a CRS's cube:

* resolution: the finest of its scenes (after ``--scale``);
* pixel lattice: that of the finest scene (the first given among equals), and tiles of ``--tile`` px at
  multiples of ``tile x resolution`` from the CRS origin (shifted by that lattice's phase), so the tile and patch
  lattice does not depend on which scenes a run includes; the extent: the scenes' union, snapped outwards to it.

Each scene is read onto that grid through a GDAL WarpedVRT (:mod:`geodino.raster.warped`): a scene whose pixels
lie on the lattice at the cube's resolution is copied exactly (nearest neighbour at an integer shift); any other
is resampled (``--resampling``, bilinear by default) and the cube and manifest record ``warp: resampled``.

Overlaps are resolved per tile (:data:`RULE`): among the scenes whose footprint meets a tile's core, the one with
the most valid pixels in the core (the fewest nodata pixels) fills it; ties go to the most recent date (STAC
``datetime``, the raster's date tags, or a ``YYYYMMDD`` in its file name; scenes without a date count as oldest),
then to the order the scenes were given. Counting reads the core of every candidate scene of the tiles that
several scenes cover (at plan time, once: a resumed run reads the choice back from the cube).

A tile's features come from its chosen scene alone: its window and, with ``--blend``, the neighbouring windows
are all read from that scene (neighbouring tiles filled by another scene are read again from it), so a tile's
features equal those of embedding the chosen scene by itself on the same lattice, except within one window of
the scene's edge, where the mosaic sees nodata beyond the scene and a lone scene sees its mirrored pixels.

Tiles run through the one embed schedule (:mod:`geodino.job.schedule`): one scene's tiles of one cube are
one :class:`~geodino.job.schedule.SceneWork`, and every cube is created, locked, resumed and finalised as a
single scene's is (:class:`geodino.job.run.JobRun`). Tiles that no scene covers are marked skipped. Beside
the cubes, :func:`geodino.cube.mosaic.write_catalog` writes ``manifest.parquet`` and a STAC Collection. The
folder is a local path or an object-store URL (``s3://bucket/region``), as a single scene's cube.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
from affine import Affine
from odc.geo import resxy_, xy_
from odc.geo.geom import bbox_union

from geodino.cube.mosaic import tile_sources, write_catalog, write_tile_sources
from geodino.cube.storage import exists, join, location
from geodino.cube.store import PENDING, CubeLayout, cube_writer, is_cube, read_attrs, tile_status
from geodino.embed.config import EmbedConfig
from geodino.embed.plan import NUMERICS, ScenePlan, fingerprint, plan_scene
from geodino.embed.tasks import FEATURES
from geodino.job.run import JobRun, run_job
from geodino.errors import ConfigError, GridError
from geodino.grid import GeoBox, crs_wkt, grid_dict
from geodino.raster import inside_mask
from geodino.raster.warped import WarpedSource, on_grid
from geodino.tiling import TileGrid

__all__ = ["RULE", "MosaicPlan", "MosaicPart", "plan_mosaic", "choose_tiles", "embed_mosaic", "scene_date",
           "check_one_cube"]

RULE = ("most valid pixels in the tile core (fewest nodata); ties: most recent date (undated scenes count as "
        "oldest); then the order the scenes were given")

_DATE_TAGS = ("DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "DATATAKE_1_DATATAKE_SENSING_START",
              "PRODUCT_START_TIME", "TIFFTAG_DATETIME")
_NAME_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})(?!\d)")


def _iso(text: str) -> str | None:
    """An ISO 8601 UTC timestamp of a date text (ISO, or TIFF's ``YYYY:MM:DD HH:MM:SS``), or None."""
    t = str(text).strip()
    if re.fullmatch(r"\d{4}:\d{2}:\d{2}( .*)?", t):
        t = t[:10].replace(":", "-") + t[10:]
    try:
        d = datetime.fromisoformat(t)  # Python >= 3.11: "Z" and dates alone included
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()


def scene_date(plan: ScenePlan) -> str | None:
    """A scene's acquisition date (ISO 8601, UTC): the STAC item's ``datetime``, else the raster's date tags, else a
    ``YYYYMMDD`` in its file name; None when none says."""
    m = _NAME_DATE.search(Path(str(plan.scene).split("#")[-1]).name)
    texts = [(plan.provenance.get("stac") or {}).get("datetime"), *map(plan.source.metadata.get, _DATE_TAGS),
             "-".join(m.groups()) if m else None]
    return next((d for d in map(_iso, filter(None, texts)) if d), None)


def _ts(date: str | None) -> float:
    return datetime.fromisoformat(date).timestamp() if date else -math.inf


@dataclass
class MosaicPart:
    """One scene of a mosaic cube: its plan (validated source, radiometry, provenance), its source read on the
    cube's grid and where it lies there."""

    index: int  # in the cube's scene list
    plan: ScenePlan
    source: WarpedSource
    warp: str  # "exact" | "resampled (bilinear)"
    date: str | None
    window: tuple[float, float, float, float]  # (row0, col0, row1, col1) of its pixels in the cube's grid

    def describe(self) -> dict:
        p = self.plan
        return {"scene": p.scene, "date": self.date, "bounds": list(p.source.grid.boundingbox.bbox), "warp": self.warp,
                "source": p.provenance["source"], "stac": p.provenance.get("stac"),
                "radiometry": p.provenance["radiometry"], "bands": p.provenance["bands"]}


@dataclass
class MosaicPlan:
    """One output cube of a mosaic: a CRS's scenes on one grid (what :func:`geodino.job.run.prepare_output` needs,
    as :class:`~geodino.embed.plan.ScenePlan` gives it for one scene)."""

    scene: str  # a label for progress and summaries
    output: Path | str  # a local path or an object-store URL
    options: EmbedConfig
    tiles: TileGrid
    embed_dim: int
    engine_spec: object
    settings: dict
    provenance: dict
    messages: list[str]
    parts: list[MosaicPart]
    choice: np.ndarray | None = None  # (tile_y, tile_x) index of the chosen part, -1 none

    @property
    def layout(self) -> CubeLayout:
        # not sharded: neighbouring tiles of a mosaic may come from different scenes, i.e. different SceneWorks,
        # and one writer per shard is only guaranteed within one scene's work
        ys, xs = self.tiles.tile_bounds()
        return CubeLayout(self.tiles.patch_grid, self.tiles.tile_patches, tuple(ys), tuple(xs))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)


def mosaic_dir(output: str | None) -> Path | str:
    """The mosaic's folder: a local :class:`~pathlib.Path`, or an object-store URL (a prefix, as a string)."""
    if not output:
        raise ConfigError("--mosaic needs -o DIR: the directory that receives one cube per CRS, manifest.parquet "
                          "and collection.json")
    out = location(output)
    if PurePosixPath(str(out)).suffix == ".zarr" or exists(out, "zarr.json"):
        raise ConfigError(f"--mosaic writes one cube per CRS into a directory, but -o {output} names a cube: give "
                          "a directory (e.g. -o mosaic/)")
    if (out.exists() and not out.is_dir()) if isinstance(out, Path) else _is_object(out):
        raise ConfigError(f"-o {output} is a file: --mosaic needs a directory")
    return out


def _is_object(url: str) -> bool:
    try:
        return exists(url)
    except ValueError:  # a bucket's root names no object
        return False


def _crs_key(gbox: GeoBox) -> tuple[str, str]:
    """(cube name, label) of a grid's CRS: ``epsg32633``/``EPSG:32633``, or a hash of its WKT (rasterio's)."""
    epsg = gbox.crs.epsg
    if epsg:
        return f"epsg{epsg}", f"EPSG:{epsg}"
    h = hashlib.sha256(crs_wkt(gbox).encode()).hexdigest()[:8]
    return f"crs-{h}", f"CRS {h}"


def _common_grid(plans: list[ScenePlan], tile: int) -> GeoBox:
    """The cube grid of one CRS's scenes (module docstring): the tile cells of ``tile`` px on the finest scene's
    lattice that cover the scenes' union, snapped by odc-geo (``tol`` is a fraction of a *tile* cell, so it is
    given: the default 0.01 drops a tile row or column in 75 of 3000 random cases)."""
    ref = min(plans, key=lambda p: (abs(p.source.grid.affine.a) * abs(p.source.grid.affine.e)))
    t = ref.source.grid.affine
    rx, ry = abs(t.a), abs(t.e)
    sx, sy = tile * rx, tile * ry
    px, py = t.c % rx, t.f % ry  # the reference lattice's phase
    cells = GeoBox.from_bbox(bbox_union(p.source.grid.boundingbox for p in plans), ref.source.grid.crs,
                             resolution=resxy_(sx, -sy), anchor=xy_(px / sx, py / sy), tol=1e-6)
    # the origin from the cell index, as geodino always wrote it: odc-geo's (anchor fraction x cell size + index x
    # cell size) differs in the last bit in 40 of 300 random cases, and the grid is part of a mosaic's fingerprint
    kx, ky = round((cells.affine.c - px) / sx), round((cells.affine.f - py) / sy)
    h, w = cells.height * tile, cells.width * tile
    if w * h > 2 ** 36:
        raise GridError(f"the scenes in {_crs_key(ref.source.grid)[1]} span {w} x {h} px: too far apart for one "
                        "cube; embed them in groups")
    return GeoBox((h, w), Affine(rx, 0, px + kx * sx, 0, -ry, py + ky * sy), ref.source.grid.crs)


def plan_mosaic(scenes: list[str], cfg: EmbedConfig, report_for, command: str | None = None,
                scheduler: str | None = None) -> list[MosaicPlan]:
    """Validate every scene (as a single scene's run would) and lay out one cube per CRS. Writes nothing."""
    from geodino.models import get_config

    outdir = mosaic_dir(cfg.output)
    n = max(2, len(scenes))
    plans = [plan_scene(s, cfg.replace(output=str(outdir)), report_for, n, command, scheduler) for s in scenes]
    for p in plans:
        if not p.source.has_crs:
            raise GridError(f"{p.scene} has no CRS: a mosaic places scenes by their coordinates; give it one "
                            "(gdal_edit -a_srs EPSG:<code>) or embed it alone")
        if p.radiometry.kind == "percentile":
            raise ConfigError("--radiometry percentile stretches each scene by its own statistics, so tiles of a "
                              "mosaic would not be comparable: choose a sensor preset, reflectance or --minmax")
    groups: dict[str, list[ScenePlan]] = {}
    for p in plans:
        groups.setdefault(_crs_key(p.source.grid)[0], []).append(p)
    patch = get_config(cfg.model).arch.patch_size
    out: list[MosaicPlan] = []
    for name, group in groups.items():
        compared = _check_scenes_comparable(group)
        grid = _common_grid(group, cfg.tile)
        tiles = TileGrid(grid, cfg.tile, cfg.halo, patch, cfg.blend)
        parts, messages = [], []
        for i, p in enumerate(group):
            src, how = on_grid(p.source, grid, cfg.resampling)
            l, b, r, tp = p.source.grid.boundingbox.bbox
            (c0, r0), (c1, r1) = grid.wld2pix(l, tp), grid.wld2pix(r, b)
            window = (r0, c0, r1, c1)
            parts.append(MosaicPart(i, p, src, how, scene_date(p), window))
            messages.extend(f"{p.scene}: {m}" for m in p.messages)
            if how != "exact":
                messages.append(f"{p.scene}: its pixel grid is not on the mosaic's lattice: {how} onto it")
        first = group[0]
        settings = {
            "mosaic": {"rule": RULE, "grid": grid_dict(grid), "resampling": cfg.resampling},
            "scenes": [{**{k: v for k, v in p.settings.items() if k != NUMERICS}, "warp": parts[i].warp}
                       for i, p in enumerate(group)],
            **{k: first.settings[k] for k in ("model", "arch", "weights_sha256", "tile", "halo", "blend", "dtype",
                                              "min_valid", NUMERICS)},
        }
        rads = [p.provenance["radiometry"] for p in group]
        radiometry = rads[0] if all(r == rads[0] for r in rads) else {
            "kind": rads[0]["kind"], "per_scene": True,
            "formula": "per scene (geodino.mosaic.scenes[*].radiometry): one preset, scene-specific offsets"}
        prov = {**first.provenance, "radiometry": radiometry, "settings": settings,
                "source": {"path": f"mosaic of {len(group)} scenes", "scenes": len(group)}, "stac": None,
                "mosaic": {"rule": RULE, "crs": _crs_key(grid)[1], "scenes": [pt.describe() for pt in parts],
                           **({"compat": compared} if compared["differences"] else {})}}
        prov["tiling"] = {**first.provenance["tiling"], **tiles.to_dict()}
        label = f"mosaic {_crs_key(grid)[1]} ({len(group)} scene{'s' if len(group) > 1 else ''})"
        mp = MosaicPlan(label, location(join(outdir, f"{name}.zarr")), cfg, tiles, first.embed_dim,
                        first.engine_spec, settings, prov, messages, parts)
        prov["fingerprint"] = mp.fingerprint
        out.append(mp)
    return out


# What may differ between the scenes of one mosaic: the scene-specific part of one radiometry preset (e.g. each
# Sentinel-2 product's BOA offset), which maps every scene's DN to the same reflectance scale. The preset itself
# (radiometry.kind), the model, numerics and tiling must agree (geodino.cube.compat).
SCENE_RELAX = ("radiometry.gain", "radiometry.bias", "radiometry.params")


def _check_scenes_comparable(group: list[ScenePlan]) -> dict:
    """Refuse scenes whose features would not be comparable in one cube; the differences accepted."""
    from geodino.cube.compat import RULE as COMPAT_RULE, check_comparable

    out = []
    for p in group[1:]:
        res = check_comparable(group[0].provenance, p.provenance, relax=SCENE_RELAX, what="mosaic them",
                               a_name=str(group[0].scene), b_name=str(p.scene), error=ConfigError,
                               hint="give the same --radiometry for every scene, so that one mosaic is one function "
                                    "of reflectance", forceable=False)
        if res:
            out.append({"scene": str(p.scene), **res.to_dict()})
    return {"rule": COMPAT_RULE, "relaxed": list(SCENE_RELAX), "differences": out}


def _candidates(plan: MosaicPlan) -> dict[tuple[int, int], list[MosaicPart]]:
    """Per tile (ty, tx), the parts whose footprint overlaps its core."""
    out: dict[tuple[int, int], list[MosaicPart]] = {}
    for t in plan.tiles.tiles():
        for part in plan.parts:
            r0, c0, r1, c1 = part.window
            if min(r1, t.row + t.height) - max(r0, t.row) > 1e-6 and min(c1, t.col + t.width) - max(c0, t.col) > 1e-6:
                out.setdefault((t.ty, t.tx), []).append(part)
    return out


def _valid_pixels(part: MosaicPart, t, shape) -> int:
    _, valid = part.source.read(t.row, t.col, t.height, t.width)
    return int((valid & inside_mask(t.row, t.col, t.height, t.width, shape)).sum())


def choose_tiles(plan: MosaicPlan, threads: int = 4) -> np.ndarray:
    """The scene that fills each tile, by :data:`RULE`: (tile_y, tile_x) part indexes, -1 where none covers it."""
    choice = np.full(plan.tiles.shape, -1, np.int16)
    cands = _candidates(plan)
    contested = [(k, ps) for k, ps in cands.items() if len(ps) > 1]
    for (ty, tx), ps in cands.items():
        if len(ps) == 1:
            choice[ty, tx] = ps[0].index
    shape = plan.tiles.grid.shape.yx

    def decide(item):
        (ty, tx), ps = item
        t = plan.tiles.tile_at(ty, tx)
        return (ty, tx), min(ps, key=lambda p: (-_valid_pixels(p, t, shape), -_ts(p.date), p.index)).index

    with ThreadPoolExecutor(max(1, threads)) as pool:  # GDAL releases the GIL while it reads
        for (ty, tx), idx in pool.map(decide, contested):
            choice[ty, tx] = idx
    return choice


def check_one_cube(plans: list[ScenePlan], cfg: EmbedConfig) -> None:
    """Without ``--mosaic``, several scenes written to one ``-o X.zarr`` must share a CRS: a cube holds one."""
    if cfg.mosaic or len(plans) < 2 or not cfg.output or Path(cfg.output).suffix != ".zarr":
        return
    by_crs: dict[str, list[str]] = {}
    for p in plans:
        label = _crs_key(p.source.grid)[1] if p.source.has_crs else "no CRS"
        by_crs.setdefault(label, []).append(Path(str(p.scene)).name)
    if len(by_crs) > 1:
        listing = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in by_crs.items())
        raise ConfigError(f"the scenes are in {len(by_crs)} CRSs ({listing}) and one cube holds one CRS: pass "
                          f"--mosaic for one cube per CRS in a directory (-o DIR), or give -o a directory for one "
                          f"cube per scene")


# -- running ------------------------------------------------------------------------------------------------
class _CubeRun(JobRun):
    """Book-keeping of one mosaic cube during a run: :class:`geodino.job.run.JobRun`'s (lease, resume, tile
    counts, failed tiles, the run's record when it finishes), over the parts of several scenes: the scene chosen
    for each tile is fixed before the cube is prepared and stored with it."""

    @classmethod
    def start(cls, plan: MosaicPlan, product=FEATURES, progress=None) -> "_CubeRun":
        out = plan.output
        if is_cube(out) and read_attrs(out).get("geodino", {}).get("fingerprint") == plan.fingerprint:
            plan.choice = tile_sources(out)  # a resumed cube keeps the choice it was begun with
        if plan.choice is None:
            plan.choice = choose_tiles(plan, plan.options.threads)
        return super().start(plan, product, progress)

    @classmethod
    def _begin(cls, plan: MosaicPlan, product, progress, lock, state: str) -> "_CubeRun":
        out = plan.output
        if state != "complete":
            if tile_sources(out) is None:
                write_tile_sources(out, plan.choice)
            w = cube_writer(out, read_attrs(out)["geodino"].get("cube_id", ""))
            for ty, tx in np.argwhere((plan.choice < 0) & (tile_status(out) == PENDING)):
                w.skip_tile(int(ty), int(tx))  # no scene covers it
        return super()._begin(plan, product, progress, lock, state)

    def works(self, first_index: int) -> list:
        plan = self.plan
        out = []
        for part in plan.parts:
            pending = [t for t in plan.tiles.tiles() if t.key in self.pending and plan.choice[t.ty, t.tx] == part.index]
            if pending:
                out.append(self.scene_work(first_index + len(out), part.source, part.plan.radiometry, pending))
        return out

    def close_sources(self) -> None:
        for part in self.plan.parts:
            part.source.close()
            part.plan.source.close()


def embed_mosaic(scenes: list[str], cfg: EmbedConfig, sched, *, command: str | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 on_plan: Callable | None = None, stop: Callable[[], int | None] | None = None) -> list:
    """Embed ``scenes`` as a mosaic on the scheduler ``sched`` (see the module docstring); the library behind
    ``geodino embed --mosaic`` (call :func:`geodino.embed.embed` with ``mosaic=True``). One summary per cube."""
    plans = plan_mosaic(scenes, cfg, lambda window, spec: sched.engine_report(spec, window), command, cfg.scheduler)
    outdir = location(cfg.output)  # checked by plan_mosaic
    return run_job(plans, FEATURES, sched, prefetch=cfg.prefetch, progress=progress, on_plan=on_plan, stop=stop,
                   run=_CubeRun, after=lambda runs: write_catalog(outdir, [r.plan.output for r in runs]))
