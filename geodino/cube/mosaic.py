"""Mosaic cubes: which scene fills each tile, and the catalogue written beside them.

A mosaic cube (``geodino embed SCENES... --mosaic``) is an ordinary feature cube plus

* ``tile_source(tile_y, tile_x)`` int16: the index, in the cube's ``geodino.mosaic.scenes`` list, of the scene
  chosen for each tile (-1: no scene covers it); with ``tile_status`` it says which scene *filled* a tile;
* ``geodino.mosaic`` provenance: the overlap rule and, per scene, its path, date, footprint, radiometry and
  how it was read onto the cube's grid.

:func:`write_catalog` derives from the cubes alone (so it can be rewritten at any time):

* ``manifest.parquet``: GeoParquet, one row per scene: footprint (EPSG:4326 geometry; ``bounds_cube_crs`` in the
  cube's CRS), date, cube, CRS, provenance (JSON) and the tiles it filled;
* ``collection.json`` and ``items/<cube>.json``: a STAC Collection with one Item per output cube, with the
  projection extension (``proj:code``/``proj:wkt2``, ``proj:bbox``, ``proj:shape``, ``proj:transform`` of the patch
  grid) and a zarr asset; each Item says ``geodino:status`` (complete or incomplete).

The cubes and the folder are local paths or object-store URLs (``s3://bucket/region``, through
:mod:`geodino.cube.storage`); each catalogue file is published whole or not at all (a local file renamed into
place, one upload to an object store).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np

from geodino.cube.storage import cube_url, is_local, join, put_atomic, staged_output
from geodino.cube.store import (PENDING, SKIPPED, STATUS_ATTR, WRITTEN, _consolidate, _open_root, read_attrs,
                                tile_status)

__all__ = ["TILE_SOURCE", "write_tile_sources", "tile_sources", "write_catalog", "MANIFEST", "COLLECTION"]

TILE_SOURCE = "tile_source"
MANIFEST = "manifest.parquet"
COLLECTION = "collection.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"


def write_tile_sources(path: str | os.PathLike, choice: np.ndarray, *, storage_options: dict | None = None) -> None:
    """Store the (tile_y, tile_x) scene choice of a mosaic cube (written once, when the cube is created)."""
    root = _open_root(path, "r+", storage_options)
    a = root.create_array(TILE_SOURCE, shape=choice.shape, chunks=choice.shape, dtype="int16", fill_value=-1,
                          dimension_names=["tile_y", "tile_x"], overwrite=True,
                          attributes={"long_name": "index of the scene chosen for each tile (geodino.mosaic.scenes)",
                                      "missing_value": -1})
    a[...] = choice.astype("int16")
    _consolidate(path, storage_options)


def tile_sources(path: str | os.PathLike, *, storage_options: dict | None = None) -> np.ndarray | None:
    """The (tile_y, tile_x) scene choice of a mosaic cube (a path or URL), or None for a cube of one scene."""
    root = _open_root(path, "r", storage_options)
    return root[TILE_SOURCE][...] if TILE_SOURCE in root else None


def _to_4326(geoms: list, crs: str):
    """Footprints in EPSG:4326, densified so that reprojected edges follow the curve."""
    import geopandas as gpd

    s = gpd.GeoSeries(geoms, crs=crs)
    step = max(1.0, float(np.nanmax([max(g.bounds[2] - g.bounds[0], g.bounds[3] - g.bounds[1]) for g in geoms]))
               / 8)
    return s.segmentize(step).to_crs(4326)


def _publish(dest: str, data: bytes | None = None, write=None, storage_options: dict | None = None) -> str:
    """Publish a catalogue file whole (``data``, or what ``write(local_path)`` writes) at the path or URL ``dest``,
    replacing the previous one."""
    if is_local(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
    if write is None:
        put_atomic(dest, data, overwrite=True, storage_options=storage_options)
        return dest
    with staged_output(dest, overwrite=True, storage_options=storage_options) as tmp:
        write(tmp)
    return dest


def _json(obj) -> str:
    """A STAC object as self-contained JSON: relative links, no absolute ``self`` link."""
    d = obj.to_dict(transform_hrefs=True)
    d["links"] = [link for link in d["links"] if link.get("rel") != "self"]
    return json.dumps(d, indent=1)


def write_catalog(outdir: str | os.PathLike, cubes: list[str | os.PathLike], title: str | None = None, *,
                  storage_options: dict | None = None) -> dict:
    """Write the manifest and the STAC Collection of mosaic ``cubes`` into ``outdir`` (see the module docstring);
    the folder and the cubes are local paths or object-store URLs. Returns the paths written."""
    import geopandas as gpd
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from shapely.geometry import box, mapping
    from shapely.geometry import shape as to_shape
    from shapely.ops import unary_union

    folder = os.fspath(outdir) if is_local(outdir) else cube_url(outdir)
    name = Path(folder).name if is_local(folder) else folder.rpartition("/")[2]
    rows: list[dict] = []
    items: list[pystac.Item] = []
    for cube in cubes:
        cube_name = PurePosixPath(os.fspath(cube).rstrip("/")).name
        attrs = read_attrs(cube, storage_options=storage_options)
        prov = attrs["geodino"]
        mosaic = prov.get("mosaic") or {}
        scenes = mosaic.get("scenes") or []
        status = tile_status(cube, storage_options=storage_options)
        choice = tile_sources(cube, storage_options=storage_options)
        crs = attrs.get("proj:wkt2")
        feet = [box(*s["bounds"]) for s in scenes]
        feet_ll = list(_to_4326(feet, crs)) if feet else []
        for i, s in enumerate(scenes):
            chosen = np.argwhere(choice == i) if choice is not None else np.zeros((0, 2), int)
            filled = [f"{ty}-{tx}" for ty, tx in chosen if status[ty, tx] == WRITTEN]
            rows.append({
                "scene": s["scene"], "date": s.get("date"), "cube": cube_name, "crs": attrs.get("proj:code") or crs,
                "scene_index": i, "warp": s.get("warp"), "tiles_chosen": len(chosen), "tiles_filled": len(filled),
                "tiles_skipped": int(sum(status[ty, tx] == SKIPPED for ty, tx in chosen)),
                "tiles_pending": int(sum(status[ty, tx] == PENDING for ty, tx in chosen)),
                "filled_tiles": filled, "bounds_cube_crs": list(s["bounds"]),
                "provenance": json.dumps({k: v for k, v in s.items() if k not in ("scene", "date", "bounds")},
                                         sort_keys=True, default=str),
                "geometry": feet_ll[i],
            })
        # the Item: footprint = union of the scenes' footprints (EPSG:4326); its grid = the patch grid
        geom = unary_union(feet_ll) if feet_ll else _to_4326([box(*attrs["spatial:bbox"])], crs)[0]
        dates = sorted(datetime.fromisoformat(s["date"]) for s in scenes if s.get("date"))
        complete = attrs.get(STATUS_ATTR) == "complete"
        props = {"geodino:status": "complete" if complete else "incomplete",
                 "geodino:model": prov.get("model", {}).get("name"),
                 "geodino:weights_sha256": prov.get("model", {}).get("weights", {}).get("sha256"),
                 "geodino:overlap_rule": mosaic.get("rule"), "geodino:scenes": len(scenes),
                 "geodino:tiles": {"written": int(np.sum(status == WRITTEN)), "skipped": int(np.sum(status == SKIPPED)),
                                   "pending": int(np.sum(status == PENDING))}}
        if dates:
            props["start_datetime"], props["end_datetime"] = dates[0].isoformat(), dates[-1].isoformat()
        # STAC needs a datetime: the latest scene's, else (no scene is dated) the cube's creation time
        latest = dates[-1] if dates else datetime.fromisoformat(prov["created"])
        item = pystac.Item(id=PurePosixPath(cube_name).stem, geometry=mapping(geom), bbox=list(geom.bounds),
                           datetime=latest, properties=props, start_datetime=dates[0] if dates else None,
                           end_datetime=latest if dates else None)
        code = attrs.get("proj:code")
        epsg = int(code.split(":")[1]) if code and code.startswith("EPSG:") else None
        ProjectionExtension.ext(item, add_if_missing=True).apply(
            epsg=epsg, wkt2=None if epsg else crs, bbox=list(attrs["spatial:bbox"]),
            shape=list(attrs["spatial:shape"]), transform=list(attrs["spatial:transform"]))
        item.add_asset("features", pystac.Asset(href=f"../{cube_name}", media_type=ZARR_MEDIA_TYPE,
                                                roles=["data"], title="DINOv3 patch-feature cube (zarr v3)",
                                                extra_fields={"geodino:variables": ["features", "valid", "cls",
                                                                                    "tile_status", TILE_SOURCE]}))
        items.append(item)

    written = {}
    if rows:
        gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
        written["manifest"] = _publish(join(folder, MANIFEST), write=lambda p: gdf.to_parquet(p, index=False),
                                       storage_options=storage_options)
    geoms = [it.geometry for it in items]
    union = unary_union([to_shape(g) for g in geoms]) if geoms else None
    starts = [it.common_metadata.start_datetime or it.datetime for it in items]
    ends = [it.common_metadata.end_datetime or it.datetime for it in items]
    extent = pystac.Extent(pystac.SpatialExtent([list(union.bounds)] if union is not None else [[-180, -90, 180, 90]]),
                           pystac.TemporalExtent([[min(starts) if starts else None, max(ends) if ends else None]]))
    coll = pystac.Collection(id=name or "mosaic", title=title or f"geodino mosaic {name}",
                             description="DINOv3 patch-feature cubes, one per CRS, made by geodino embed --mosaic "
                                         "(manifest.parquet lists the scenes and the tiles each filled)",
                             extent=extent, license="other",
                             stac_extensions=[ProjectionExtension.get_schema_uri()])
    coll.add_asset("manifest", pystac.Asset(href=f"./{MANIFEST}", media_type="application/vnd.apache.parquet",
                                            roles=["metadata"], title="scenes, footprints and the tiles each filled"))
    for item in items:
        coll.add_item(item)
    coll.catalog_type = pystac.CatalogType.SELF_CONTAINED  # relative links: the folder can move as a whole
    coll.normalize_hrefs(str(Path(folder).resolve()) if is_local(folder) else folder,
                         strategy=pystac.layout.TemplateLayoutStrategy(item_template="items"))
    # write the items first, the collection last, so a collection never names a missing item
    for item in items:
        _publish(item.get_self_href(), _json(item).encode(), storage_options=storage_options)
    written["collection"] = _publish(join(folder, COLLECTION), _json(coll).encode(), storage_options=storage_options)
    return written
