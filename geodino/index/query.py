"""Query vectors from places: the patch under a point, or positive and negative example points.

:func:`sample_vectors` is the one point-sampling step (points -> the vectors of the patches under them, in
whichever cube holds each point); a query from examples is the mean of the L2-normalised positive vectors minus
the mean of the negative ones. Vectors sampled from cubes outside the index must be comparable with the index's
cubes (:mod:`geodino.cube.compat`, relaxing what the index was built to mix, plus ``relax``; or ``force``).
"""

from __future__ import annotations

import os

import numpy as np

from geodino.errors import ConfigError, IndexMismatchError, VectorIndexError
from geodino.index.build import check_index_cube, indexable_cube
from geodino.index.search import VectorIndex, open_index
from geodino.index.vectors import VectorKind, vector_source

__all__ = ["sample_vectors", "query_near", "query_examples", "read_points"]


def read_points(path: str | os.PathLike):
    """Points from any vector file geopandas reads (GeoPackage, GeoJSON, GeoParquet...); polygons count by a
    point inside them."""
    import geopandas as gpd

    p = str(path)
    try:
        gdf = gpd.read_parquet(p) if p.endswith((".parquet", ".geoparquet")) else gpd.read_file(p)
    except Exception as e:  # pyogrio/pyarrow raise many types for unreadable files
        raise ConfigError(f"cannot read points from {p} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if gdf.crs is None:
        raise ConfigError(f"{p} has no CRS: save the points with one (e.g. EPSG:4326)")
    if len(gdf) == 0:
        raise ConfigError(f"{p} holds no points")
    geom = gdf.geometry.where(gdf.geom_type == "Point", gdf.geometry.representative_point())
    return gdf.set_geometry(geom)


def sample_vectors(index: VectorIndex, points, cubes: list[str] | None = None, *, relax=(),
                   force: bool = False) -> np.ndarray:
    """The vectors ``[n, dim]`` of the patches under ``points`` (a GeoDataFrame with a CRS), each taken from the
    first of ``cubes`` (default: the index's own cubes) whose grid holds it. Cubes outside the index must be
    comparable with it (the fields the index relaxed and ``relax`` may differ; ``force`` accepts any)."""
    from geodino.grid import cell_index, cube_geobox

    source = vector_source(index.meta["kind"]["name"])
    want = VectorKind(**index.meta["kind"])
    paths = cubes or [c["path"] for c in index.cubes]
    found = np.full(len(points), -1)
    out = np.zeros((len(points), want.dim), np.float32)
    for path in paths:
        todo = np.nonzero(found < 0)[0]
        if not len(todo):
            break
        attrs, ds = indexable_cube(path)
        if cubes:  # cubes outside the index: comparable and of the same vector kind, or the scores mean nothing
            check_index_cube(index.meta["fingerprint"], ds, relax=(*index.relaxed, *relax), force=force,
                             what="search the index with it", ref_name=f"the index {index.path}",
                             name=f"query cube {path}")
            if source.kind(ds) != want:
                raise IndexMismatchError(f"query cube {path} holds {source.kind(ds)} vectors, the index {want}")
        gbox = cube_geobox(ds)
        h, w = gbox.shape.yx
        pts = points.geometry.iloc[todo].to_crs(attrs["proj:wkt2"])
        row, col = cell_index(gbox, pts.x.to_numpy(), pts.y.to_numpy())
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        if inside.any():
            out[todo[inside]] = source.at(ds, row[inside], col[inside])
            found[todo[inside]] = 1
    if (found < 0).any():
        raise VectorIndexError(f"{int((found < 0).sum())} of {len(points)} point(s) lie outside every cube "
                               f"({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}): move them, or pass "
                               "the cubes that hold them")
    return out


def query_near(index: VectorIndex | str, lon: float, lat: float, cubes: list[str] | None = None, *, relax=(),
               force: bool = False) -> np.ndarray:
    """The vector ``[1, dim]`` of the patch under (``lon``, ``lat``), WGS 84 degrees."""
    import geopandas as gpd
    from shapely import Point

    idx = index if isinstance(index, VectorIndex) else open_index(index)
    return sample_vectors(idx, gpd.GeoDataFrame(geometry=[Point(lon, lat)], crs="EPSG:4326"), cubes, relax=relax,
                          force=force)


def query_examples(index: VectorIndex | str, positives, negatives=None, cubes: list[str] | None = None, *, relax=(),
                   force: bool = False) -> np.ndarray:
    """``mean(positives) - mean(negatives)`` of the L2-normalised vectors under the example points
    (GeoDataFrames or vector files), as one query ``[1, dim]``."""
    from geodino.cube.reading import unit_rows

    idx = index if isinstance(index, VectorIndex) else open_index(index)
    pos = positives if hasattr(positives, "geometry") else read_points(positives)
    q = unit_rows(sample_vectors(idx, pos, cubes, relax=relax, force=force)).mean(axis=0)
    if negatives is not None:
        neg = negatives if hasattr(negatives, "geometry") else read_points(negatives)
        q = q - unit_rows(sample_vectors(idx, neg, cubes, relax=relax, force=force)).mean(axis=0)
    return q[None, :]
