"""The cubes an explorer session shows: opened once through :func:`geodino.open_cube`, checked comparable with the
project's one rule (:mod:`geodino.cube.compat`), labelled with a date, and grouped into dates (the cubes of one
date may be a mosaic's per-CRS cubes; several dates of one grid allow the change mode)."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from geodino.errors import CubeError
from geodino.grid import GeoBox, cube_geobox

__all__ = ["ExploreCube", "open_cubes", "cube_date"]

_NAME_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})-?(\d{2})-?(\d{2})(?!\d)")


def _iso_date(text) -> str | None:
    try:
        return datetime.fromisoformat(str(text).strip().replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        return None


def cube_date(ds) -> str:
    """A cube's acquisition date (``YYYY-MM-DD``): its STAC item's ``datetime``, else a ``YYYYMMDD`` in the source
    file's name, else in the cube's own name; a mosaic's when all its scenes share one date. "" when none says."""
    prov = ds.attrs.get("geodino", {}) or {}
    stac = prov.get("stac") or {}
    if stac.get("datetime") and _iso_date(stac["datetime"]):
        return _iso_date(stac["datetime"])
    scenes = (prov.get("mosaic") or {}).get("scenes") or []
    dates = {(_iso_date(s.get("date")) if s.get("date") else None) for s in scenes}
    if scenes and len(dates) == 1 and None not in dates:
        return dates.pop()
    for name in (str((prov.get("source") or {}).get("path", "")), str(ds.encoding.get("source", ""))):
        m = _NAME_DATE.search(Path(name.split("#")[-1]).name)
        if m:
            return "-".join(m.groups())
    return ""


@dataclass
class ExploreCube:
    """One opened cube: ``index`` in the session, its ``path`` (or "" for an in-memory Dataset), ``ds`` (lazy),
    ``date`` and its patch grid ``gbox`` (``ds.odc.geobox``: every pixel <-> world step of the explorer goes
    through it)."""

    index: int
    path: str
    ds: object
    date: str
    gbox: GeoBox
    compact: bool
    provenance: dict = field(repr=False, default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.gbox.shape.yx)

    @property
    def crs(self) -> str:
        """The CRS's WKT as the cube stores it (rasterio's text: ``crs_wkt`` of ``spatial_ref``)."""
        return str(self.gbox.crs)

    @functools.cached_property
    def lean(self):
        """The cube as ``features``, ``valid`` and their grid only: what a query reads. rioxarray's accessors scan
        every variable and coordinate of a Dataset on each call, so the query vector of a click took 84 ms on the
        whole cube's Dataset and 27 ms on this one (same bits)."""
        ds = self.ds[["features", "valid"]]
        return ds.drop_vars([c for c in ds.coords if c not in ("x", "y", "spatial_ref")])

    @property
    def name(self) -> str:
        return Path(self.path.rstrip("/")).name if self.path else f"cube {self.index}"

    @property
    def fingerprint(self) -> str:
        return str(self.provenance.get("fingerprint") or self.provenance.get("cube_id") or "")

    def bounds_lonlat(self) -> list[float]:
        from rasterio.warp import transform_bounds

        return list(transform_bounds(self.crs, "EPSG:4326", *self.gbox.boundingbox, densify_pts=21))

    def describe(self) -> dict:
        return {"index": self.index, "name": self.name, "path": self.path, "date": self.date,
                "crs": (self.ds.rio.crs.to_string() if self.ds.rio.crs else None), "shape": list(self.shape),
                "features": int(self.ds.sizes["feature"]), "compact": self.compact,
                "fingerprint": self.fingerprint, "bounds": self.bounds_lonlat(),
                "random_weights": bool((self.provenance.get("model") or {}).get("random_weights"))}


def _open_one(obj, index: int) -> ExploreCube:
    import xarray as xr

    from geodino.cube.reading import open_cube

    if isinstance(obj, xr.Dataset):
        ds, path = obj, str(obj.encoding.get("source", ""))
    elif isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        ds = open_cube(path)
    else:
        raise CubeError(f"expected a cube path or a Dataset from geodino.open_cube, got {type(obj).__name__}")
    if "features" not in ds or "valid" not in ds:
        raise CubeError(f"{path or 'the Dataset'} is not a geodino feature cube (it needs `features` and `valid`)")
    if ds.rio.crs is None:
        raise CubeError(f"cube {path} has no CRS (pixel coordinates): it cannot be placed on a map")
    gbox = cube_geobox(ds)  # (its affine is bit for bit rioxarray's transform: tests/cube/test_compat.py)
    if gbox.affine.b or gbox.affine.d:  # (odc-geo's axis_aligned lets |b|, |d| < 1e-10 pass)
        raise CubeError(f"cube {path} is not north-up: the explorer shows north-up cubes only")
    prov = dict(ds.attrs.get("geodino", {}) or {})
    return ExploreCube(index, path, ds, cube_date(ds), gbox, "geodino_compact" in ds.attrs, prov)


def open_cubes(items, *, force: bool = False) -> list[ExploreCube]:
    """Open ``items`` (paths, URLs or Datasets) and refuse, with one line, cubes that are not comparable with the
    first (unless ``force``), by the project's one comparability rule. The explorer scores cosines of
    unit-normalised features, as ``geodino.analysis`` does, so it relaxes what analysis relaxes: a compact cube
    beside a full one (its decoded features are unit vectors)."""
    from geodino.cube.reading import NORMALISED, check_comparable

    items = list(items) if isinstance(items, (list, tuple)) else [items]
    if not items:
        raise CubeError("give at least one cube to explore")
    cubes = [_open_one(obj, i) for i, obj in enumerate(items)]
    for c in cubes[1:]:
        check_comparable(cubes[0].ds, c.ds, relax=NORMALISED, force=force, what="explore them together")
        if int(c.ds.sizes["feature"]) != int(cubes[0].ds.sizes["feature"]):
            raise CubeError(f"cubes {cubes[0].path} and {c.path} hold {cubes[0].ds.sizes['feature']} and "
                            f"{c.ds.sizes['feature']} features: they cannot be searched together")
    return cubes

