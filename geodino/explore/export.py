"""Exports of a result, written by :mod:`geodino.export` (GeoParquet, COG) or geopandas (GeoJSON): the hits with
their score, cube, date, the query and each cube's provenance fingerprint, and a cube's heat map as a COG."""

from __future__ import annotations

import json

import numpy as np

from geodino.errors import QueryError

__all__ = ["export_file", "query_description", "heatmap"]


def query_description(res) -> dict:
    """The query of a result as plain JSON: its mode, dates and examples (GeoJSON geometries in EPSG:4326)."""
    from shapely.geometry import mapping

    return {"id": res.id, "mode": res.mode, "date": res.date, "date_b": res.date_b,
            "positives": [mapping(g) for g in res.positives], "negatives": [mapping(g) for g in res.negatives],
            "definition": ("cosine to mean unit feature of positives minus that of negatives "
                           "(geodino.analysis.similarity)" if res.mode == "similarity" else
                           "1 - cos between the two dates (geodino.analysis.change)")}


def heatmap(session, res, cube=None):
    """A result's map on one cube's grid as a georeferenced ``DataArray`` (NaN off valid patches)."""
    import xarray as xr

    ci = int(cube) if cube not in (None, "") else min(res.maps)
    if ci not in res.maps:
        raise QueryError(f"the result has no map on cube {ci}: choose one of {sorted(res.maps)}")
    c = session.cubes[ci]
    da = xr.DataArray(res.maps[ci], dims=("y", "x"), coords={"y": c.ds["y"].values, "x": c.ds["x"].values},
                      name="similarity" if res.mode == "similarity" else "change")
    return da.rio.write_crs(c.ds.rio.crs).rio.write_transform(c.gbox.affine), c


def export_file(session, res, fmt: str, path: str, *, k: int, threshold, cube=None) -> tuple[str, str]:
    """Write ``res`` as ``fmt`` (geojson, parquet, tif) to ``path``; returns the download name and media type."""
    if fmt in ("geojson", "parquet"):
        gdf = session.hits(res.id, k, threshold)
        gdf["query_id"], gdf["query"] = res.id, json.dumps(query_description(res))
        if fmt == "parquet":
            from geodino.export import write_geoparquet

            write_geoparquet(gdf, path)
            return f"geodino-hits-{res.id}.parquet", "application/vnd.apache.parquet"
        gdf.to_file(path, driver="GeoJSON")
        return f"geodino-hits-{res.id}.geojson", "application/geo+json"
    if fmt == "tif":
        from geodino.export import write_cog
        from geodino.export.cog import provenance_tags

        da, c = heatmap(session, res, cube)
        tags = {**provenance_tags(c.ds), "geodino_query": json.dumps(query_description(res)),
                "geodino_map": "exact cosine" if session.vectors[c.index].exact else
                "cosine of compact (64-d int8) vectors; re-ranked hits exact"}
        write_cog(da.astype(np.float32), path, nodata=np.nan, tags=tags)
        return f"geodino-{da.name}-{res.id}-cube{c.index}.tif", "image/tiff"
    raise QueryError(f"unknown export format {fmt!r}: choose geojson, parquet or tif")
