"""geodino cubes as a TorchGeo ``GeoDataset``, so that TorchGeo's samplers and collate functions pair patch features
with any label dataset TorchGeo reads:

.. code-block:: python

    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler
    from geodino.torchgeo import CubeDataset

    class Labels(RasterDataset):
        is_image = False

    data = CubeDataset("scene.zarr") & Labels("labels.tif")       # or & VectorDataset(..., label_name="class")
    sampler = RandomGeoSampler(data, size=16, length=100)          # 16 x 16 patches
    loader = DataLoader(data, sampler=sampler, batch_size=8, collate_fn=stack_samples)
    batch["image"]   # [B, D, 16, 16] float32 features (0 on invalid patches); batch["valid"] [B, 16, 16]
    batch["mask"]    # [B, 16, 16] labels on the same cells

The dataset's CRS and resolution are the cube's (one cell per patch: ``res`` = the patch size in CRS units), its
bounds the cubes' footprints, its time interval the STAC date the cube records (else open-ended). A query at
another resolution (``labels & cube`` samples at the labels' resolution) returns the features of the patch under
each cell's centre (nearest), so features and labels always come on the query's grid. Several cubes are one
dataset when they are comparable (:mod:`geodino.cube.compat`) and share CRS and patch size.

TorchGeo is imported by this module only: ``import geodino`` does not need it (``pip install 'geodino[torchgeo]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geodino.cube.compat import cube_label
from geodino.cube.reading import as_cubes
from geodino.errors import ConfigError, CubeMismatchError
from geodino.grid import cell_index, cube_geobox

try:
    import torch
    from torchgeo.datasets import GeoDataset
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("geodino.torchgeo needs TorchGeo: pip install 'geodino[torchgeo]' (or pip install torchgeo)") \
        from e

__all__ = ["CubeDataset"]


def _interval(ds):
    stac = (ds.attrs.get("geodino") or {}).get("stac") or {}
    when = stac.get("datetime") or (stac.get("properties") or {}).get("datetime")
    if when:
        try:
            t = pd.Timestamp(when).tz_localize(None) if pd.Timestamp(when).tzinfo else pd.Timestamp(when)
            return t, t
        except (ValueError, TypeError):
            pass
    return pd.Timestamp.min, pd.Timestamp.max


class CubeDataset(GeoDataset):
    """A TorchGeo ``GeoDataset`` over one or more geodino feature cubes (module docstring).

    ``cubes``: a cube path, an opened cube (:func:`geodino.open_cube`), or a list of them. ``transforms``: as in
    TorchGeo, applied to each sample. Samples hold ``image`` (``[D, h, w]`` float32 features, 0 where no valid
    patch), ``valid`` (``[h, w]`` bool), ``crs`` and ``bounds``.
    """

    def __init__(self, cubes, transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        items = list(cubes) if isinstance(cubes, (list, tuple)) else [cubes]
        self.cubes, _ = as_cubes(items if len(items) > 1 else items[0])
        self.transforms = transforms
        self.paths = [str(c) if isinstance(c, (str, os.PathLike)) else cube_label(ds) for c, ds in
                      zip(items, self.cubes)]
        first = self.cubes[0]
        if first.rio.crs is None:
            raise ConfigError(f"cube {cube_label(first)} has no CRS: TorchGeo datasets need one")
        self._grids = [cube_geobox(ds) for ds in self.cubes]
        g0 = self._grids[0]
        if not g0.axis_aligned:
            raise ConfigError(f"cube {cube_label(first)} has a rotated grid, which TorchGeo cannot sample")
        res0 = tuple(map(abs, g0.resolution.xy))
        for ds, g in zip(self.cubes[1:], self._grids[1:]):
            if ds.rio.crs != first.rio.crs or tuple(map(abs, g.resolution.xy)) != res0:
                raise CubeMismatchError(f"cubes {cube_label(first)} and {cube_label(ds)} differ in CRS or patch size: "
                                        "a CubeDataset holds cubes of one CRS and resolution")
        self._res = res0
        self.dim = int(first.sizes["feature"])
        index = pd.IntervalIndex.from_tuples([_interval(ds) for ds in self.cubes], closed="both", name="datetime")
        self.index = gpd.GeoDataFrame({"cube": list(range(len(self.cubes))), "filepath": self.paths}, index=index,
                                      geometry=[g.extent.geom for g in self._grids], crs=first.rio.crs)

    @property
    def crs(self):
        return self.index.crs

    @crs.setter
    def crs(self, new_crs) -> None:
        if new_crs == self.crs:
            return
        raise ConfigError(f"a CubeDataset is in its cube's CRS ({self.crs.to_string()}) and does not reproject: put "
                          "the cube first (cube & labels) so the labels are warped onto it")

    def __getitem__(self, query) -> dict[str, Any]:
        """Features of the cells of ``query`` (``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax:tres]``)."""
        x, y, t = self._disambiguate_slice(query)
        hits = self.index.iloc[self.index.index.overlaps(pd.Interval(t.start, t.stop, closed="both"))]
        hits = hits.cx[x.start:x.stop, y.start:y.stop]
        if hits.empty:
            raise IndexError(f"query: {query} not found in index with bounds: {self.bounds}")
        w = max(1, int(round((x.stop - x.start) / x.step)))
        h = max(1, int(round((y.stop - y.start) / y.step)))
        cx = x.start + (np.arange(w) + 0.5) * (x.stop - x.start) / w  # cell centres, row 0 at the top
        cy = y.stop - (np.arange(h) + 0.5) * (y.stop - y.start) / h
        image = np.zeros((self.dim, h, w), np.float32)
        valid = np.zeros((h, w), bool)
        for i in hits["cube"]:
            self._fill(self.cubes[int(i)], self._grids[int(i)], cx, cy, image, valid)
        sample: dict[str, Any] = {"crs": self.crs, "bounds": query, "image": torch.from_numpy(image),
                                  "valid": torch.from_numpy(valid)}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    @staticmethod
    def _fill(ds, gbox, cx: np.ndarray, cy: np.ndarray, image: np.ndarray, valid: np.ndarray) -> None:
        """Nearest patch under each cell centre, where no earlier cube gave a valid one. Reads one window."""
        H, W = gbox.shape.yx
        rows, _ = cell_index(gbox, cx[:1], cy)
        _, cols = cell_index(gbox, cx, cy[:1])
        cin, rin = (cols >= 0) & (cols < W), (rows >= 0) & (rows < H)
        if not cin.any() or not rin.any():
            return
        c0, c1 = int(cols[cin].min()), int(cols[cin].max()) + 1
        r0, r1 = int(rows[rin].min()), int(rows[rin].max()) + 1
        f = np.asarray(ds["features"][:, r0:r1, c0:c1].values, np.float32)
        v = np.asarray(ds["valid"][r0:r1, c0:c1].values, bool)
        ri, ci = np.flatnonzero(rin), np.flatnonzero(cin)
        rr, cc = rows[ri] - r0, cols[ci] - c0
        fv = f[:, rr[:, None], cc[None, :]]
        take = v[rr[:, None], cc[None, :]] & np.isfinite(fv).all(0) & ~valid[np.ix_(ri, ci)]
        image[:, ri[:, None], ci[None, :]] = np.where(take, fv, image[:, ri[:, None], ci[None, :]])
        valid[np.ix_(ri, ci)] |= take

    def __str__(self) -> str:
        return (f"CubeDataset Dataset\n    type: GeoDataset\n    bbox: {self.bounds}\n    size: {len(self)}\n"
                f"    features: {self.dim}")
