"""STAC Items for tests, shaped like Earth Search's sentinel-2-l2a items, over real Sentinel-2 band files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import rasterio

S2_BANDS = {"blue": ("B02", "s2l2a_29RKH_20200219_B02.tif"), "green": ("B03", "s2l2a_29RKH_20200219_B03.tif"),
            "red": ("B04", "s2l2a_29RKH_20200219_B04.tif"), "nir": ("B08", "s2l2a_29RKH_20200219_B08.tif")}
ITEM_ID = "S2A_29RKH_20200219_0_L2A"


def s2_item(base: str, data_dir: Path, *, relative: bool = False, **props) -> dict:
    """An Item whose assets are the four band files of ../shared/data, at ``base + "/" + file`` (or relative
    hrefs with ``relative``); ``props`` override or (value None) remove properties."""
    with rasterio.open(data_dir / S2_BANDS["red"][1]) as ds:
        epsg, transform, shape, bounds = ds.crs.to_epsg(), list(ds.transform)[:6], [ds.height, ds.width], ds.bounds
    assets = {}
    for key, (name, file) in S2_BANDS.items():
        assets[key] = {
            "href": file if relative else f"{base}/{file}",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data", "reflectance"],
            "eo:bands": [{"name": name, "common_name": key}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0}],
            "proj:shape": shape, "proj:transform": transform,
        }
        assets[f"{key}-jp2"] = {**copy.deepcopy(assets[key]), "href": f"{base}/{name}.jp2", "type": "image/jp2"}
    assets["thumbnail"] = {"href": f"{base}/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    properties = {"datetime": "2020-02-19T11:21:53Z", "platform": "sentinel-2a", "constellation": "sentinel-2",
                  "instruments": ["msi"], "proj:epsg": epsg, "s2:processing_baseline": "02.14",
                  "earthsearch:boa_offset_applied": False, "processing:level": "L2A", "eo:cloud_cover": 12.5,
                  "updated": "2022-11-06T13:05:00Z"}
    for k, v in props.items():
        if v is None:
            properties.pop(k, None)
        else:
            properties[k] = v
    w, s, e, n = bounds.left, bounds.bottom, bounds.right, bounds.top
    return {"type": "Feature", "stac_version": "1.0.0", "id": props.get("id", ITEM_ID), "collection": "sentinel-2-l2a",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [[[-9.0, 29.0], [-8.0, 29.0], [-8.0, 30.0], [-9.0, 30.0],
                                                              [-9.0, 29.0]]]},
            "bbox": [-9.0, 29.0, -8.0, 30.0], "properties": properties, "links": [], "assets": assets,
            "_proj_bounds": [w, s, e, n]}


def write(path: Path, obj: dict) -> Path:
    obj = {k: v for k, v in obj.items() if not k.startswith("_")}
    path.write_text(json.dumps(obj, indent=1))
    return path


def collection(*items: dict) -> dict:
    return {"type": "FeatureCollection", "features": [{k: v for k, v in it.items() if not k.startswith("_")}
                                                      for it in items]}
