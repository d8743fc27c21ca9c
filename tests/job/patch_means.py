"""A third product of the streaming job, in one file: the per-patch means of each band of the radiometry-scaled
window (``clip(gain * raw + bias, 0, 1)``, as the model input contract scales it), with numpy as its "engine". It
has no context, so its independent truth is a block-reduce of the raster; everything else (tiles with halos,
the dask graph, pieces and blending, tile status, resume, refusals, --overwrite, faults) is geodino.job's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from geodino.cube.store import PRODUCT_ATTR, StoreWriter, create_store, status_array, store_attrs
from geodino.job.plan import fingerprint
from geodino.job.product import TaskOptions
from geodino.job.run import JobSummary, run_job
from geodino.job.schedule import Scheduler
from geodino.job.tasks import infer_windows, write_blended
from geodino.raster import RasterSource, resolve_radiometry
from geodino.tiling import TileGrid

KIND = "patch-means"


@dataclass(frozen=True)
class Options:
    tile: int = 64
    halo: int = 16
    patch: int = 8
    blend: int = 1
    minmax: tuple[float, float] = (0.0, 4000.0)
    batch_size: int = 2
    prefetch: int = 2
    overwrite: bool = False
    scheduler: str | None = None


@dataclass
class MeansPlan:
    scene: str
    output: str
    options: Options
    source: RasterSource
    tiles: TileGrid
    radiometry: object
    settings: dict
    provenance: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    engine_spec: None = None  # numpy needs no model

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)


def scaled_patch_means(raw: np.ndarray, radiometry: tuple, patch: int) -> np.ndarray:
    """[..., C, H, W] raw -> [..., H/p, W/p, C] means of the scaled values over each p x p patch (the engine)."""
    gain, bias, _levels = radiometry
    g = np.asarray(gain, np.float32)[:, None, None]
    b = np.asarray(bias, np.float32)[:, None, None]
    x = np.clip(raw.astype(np.float32) * g + b, 0.0, 1.0)
    *lead, c, h, w = x.shape
    x = x.reshape(*lead, c, h // patch, patch, w // patch, patch).mean(axis=(-3, -1))
    return np.moveaxis(x, -3, -1)


class MeansWriter(StoreWriter):
    ARRAYS = ("means",)

    def encode(self, t):
        t.patches[~t.valid] = np.nan
        return {"means": t.patches}


class PatchMeans:
    kind: ClassVar[str] = KIND

    def create(self, plan: MeansPlan, provenance: dict) -> None:
        t, bands = plan.tiles, len(plan.source.bands)
        means = dict(name="means", shape=(*t.patch_grid.shape.yx, bands), chunks=(t.tile_patches, t.tile_patches,
                     bands), dtype="float32", fill_value=np.nan, dimension_names=["y", "x", "band"])
        create_store(plan.output, store_attrs(KIND, t.patch_grid, provenance, **{PRODUCT_ATTR: KIND}),
                     [means, status_array(t.shape)])

    def task_options(self, plan: MeansPlan) -> TaskOptions:
        return TaskOptions("float32", 0.5, "fail", (1, 1))

    def infer_batch(self, spec, radiometry, batch, dtype):
        def run(raw, valid, tile):
            rows, cols = tile.extended_in_window
            return scaled_patch_means(raw, radiometry, tile.patch)[:, rows, cols], None

        return infer_windows(batch, run)

    def write_shard(self, url, cube_id, dests, counts, *piece_lists):
        return write_blended(MeansWriter, url, cube_id, dests, counts, piece_lists)


MEANS = PatchMeans()


def plan_means(scene: str, output: str, opts: Options) -> MeansPlan:
    source = RasterSource(str(scene))
    tiles = TileGrid.fit(source.grid, opts.tile, opts.halo, opts.patch, opts.blend)
    rad, why = resolve_radiometry("minmax", source, minmax=opts.minmax)
    settings = {"source": source.identity.to_dict(), "bands": source.bands, "tile": tiles.tile, "halo": tiles.halo,
                "patch": tiles.patch, "blend": tiles.blend, "radiometry": [rad.kind, list(rad.gain), list(rad.bias)]}
    plan = MeansPlan(str(scene), str(output), opts, source, tiles, rad, settings, messages=[why])
    plan.provenance = {"product": KIND, "settings": settings, "fingerprint": plan.fingerprint}
    return plan


def patch_means(scene: str, output: str, *, progress=None, stop=None, **options) -> JobSummary:
    """Per-patch means of ``scene`` into the store ``output`` (a path or URL), resumable."""
    opts = Options(**options)
    plan = plan_means(scene, output, opts)
    with Scheduler(opts.scheduler, threads=2) as sched:
        [summary] = run_job([plan], MEANS, sched, prefetch=opts.prefetch, progress=progress, stop=stop)
    return summary

