"""GeoParquet tables of embeddings with footprint polygons in the cube's CRS (geopandas and DuckDB read them).

Two kinds of row:
- ``level="tile"``: one row per written tile, its CLS token (``pool="cls"``) or the mean of its valid patches'
  features (``pool="mean"``), with the tile core's footprint;
- ``level="patch"``: one row per valid patch with its feature vector and its cell's footprint, streamed one chunk
  row at a time into row groups, so cubes larger than memory export in bounded memory.

Embeddings are a fixed-size list column of float32 (``FLOAT[D]`` in DuckDB). The output is a local path or an
object-store URL (``s3://bucket/table.parquet``): everything is written to a hidden file beside a local output and
renamed when complete, or to a local temporary file and uploaded in one go (:func:`geodino.cube.storage
.staged_output`), so a failed export leaves no file or object.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from geodino.cube.store import WRITTEN
from geodino.errors import ConfigError, EmptySampleError

__all__ = ["write_geoparquet", "tile_embeddings", "write_embeddings"]


def _staged(out, overwrite: bool, storage_options: dict | None):
    from geodino.cube.storage import staged_output

    return staged_output(out, overwrite=overwrite, storage_options=storage_options, suffix=".parquet")


def write_geoparquet(frame, path: str | os.PathLike, *, overwrite: bool = False,
                     storage_options: dict | None = None) -> str:
    """Write a GeoDataFrame (e.g. top-k similar patches) as GeoParquet, atomically, to a local path or an
    object-store URL; returns it as a string."""
    from geodino.export.cog import check_output

    out = check_output(path, overwrite, storage_options=storage_options)
    if frame.crs is None:
        raise ConfigError("the GeoDataFrame has no CRS: set one (GeoDataFrame.set_crs) before exporting")
    with _staged(out, overwrite, storage_options) as tmp:
        frame.to_parquet(tmp, index=False)
    return out


def _cube(cube):
    from geodino.cube.reading import as_cubes

    (ds,), _ = as_cubes(cube)
    return ds


def _embedding_array(x: np.ndarray):
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), type=pa.float32()), x.shape[1])


def tile_embeddings(cube, *, pool: str = "cls"):
    """One row per written tile: ``tile_y``, ``tile_x``, ``n_valid`` patches, ``embedding`` (CLS token or the mean
    of its valid patches' features) and the tile core's footprint polygon."""
    import dask
    import dask.array as da
    import geopandas as gpd
    from shapely.geometry import box

    from geodino.cube.sampling import feature_blocks

    if pool not in ("cls", "mean"):
        raise ConfigError(f"pool={pool!r}: choose 'cls' (the tile's CLS token) or 'mean' (mean of its patches)")
    ds = _cube(cube)
    ybounds, xbounds = ds["tile_y_bounds"].values, ds["tile_x_bounds"].values
    f, v = feature_blocks(ds)
    ty, tx = np.nonzero(ds["tile_status"].values == WRITTEN)
    tiling = ds.attrs.get("geodino", {}).get("tiling", {})  # patches per tile-core side (a tile core is a chunk)
    n = (int(tiling["tile"]) // int(tiling["patch"]) if tiling.get("tile") and tiling.get("patch")
         else int(np.ceil(ds.sizes["y"] / ds.sizes["tile_y"])))
    spans = [(slice(a * n, min((a + 1) * n, ds.sizes["y"])), slice(b * n, min((b + 1) * n, ds.sizes["x"])))
             for a, b in zip(ty.tolist(), tx.tolist())]
    counts, sums = dask.compute([v[rs, cs].sum() for rs, cs in spans],
                                [da.where(v[rs, cs][None], f[:, rs, cs].astype(np.float32), 0).sum(axis=(1, 2))
                                 for rs, cs in spans] if pool == "mean" else [])
    counts = np.asarray(counts, np.int64)
    if pool == "cls":
        emb = ds["cls"].values[ty, tx].astype(np.float32)
    else:
        sums = np.stack(sums) if sums else np.zeros((0, ds.sizes["feature"]))
        with np.errstate(invalid="ignore", divide="ignore"):
            emb = (sums / counts[:, None]).astype(np.float32)
    geoms = [box(min(xbounds[b]), min(ybounds[a]), max(xbounds[b]), max(ybounds[a])) for a, b in zip(ty, tx)]
    frame = gpd.GeoDataFrame({"tile_y": ty.astype(np.int32), "tile_x": tx.astype(np.int32),
                              "n_valid": np.asarray(counts, np.int32),
                              "embedding": list(emb) if len(emb) else []}, geometry=geoms, crs=ds.rio.crs)
    frame.attrs["pool"] = pool
    return frame


def _geo_metadata(crs, geometry_types: list[str]) -> bytes:
    """The GeoParquet ``geo`` metadata exactly as geopandas writes it (version, encoding, PROJJSON CRS), taken from
    a one-row frame so that the streamed file follows geopandas' reading of the spec; bbox is left out (optional)."""
    import geopandas as gpd
    import pyarrow.parquet as pq
    from shapely.geometry import box

    buf = io.BytesIO()
    gpd.GeoDataFrame({"a": [0]}, geometry=[box(0, 0, 1, 1)], crs=crs).to_parquet(buf, index=False)
    buf.seek(0)
    geo = json.loads(pq.read_schema(buf).metadata[b"geo"])
    col = geo["columns"]["geometry"]
    col.pop("bbox", None)
    col["geometry_types"] = geometry_types
    return json.dumps(geo).encode()


def write_embeddings(cube, path: str | os.PathLike, *, level: str = "tile", pool: str = "cls",
                     overwrite: bool = False, storage_options: dict | None = None) -> str:
    """Write tile (``level="tile"``, ``pool`` cls|mean) or patch (``level="patch"``) embeddings as GeoParquet.

    ``path`` is a local path or an object-store URL (``storage_options``: obstore's settings). Returns the output as
    a string (the local path, or the URL); the file or object appears only when complete. Raises
    :class:`EmptySampleError` if there is nothing to write (no written tile, no valid patch).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from geodino.export.cog import check_output

    out = check_output(path, overwrite, storage_options=storage_options)
    if level not in ("tile", "patch"):
        raise ConfigError(f"level={level!r}: choose 'tile' (one row per tile) or 'patch' (one row per valid patch)")
    ds = _cube(cube)
    if level == "tile":
        frame = tile_embeddings(ds, pool=pool)
        if len(frame) == 0:
            raise EmptySampleError(f"the cube has no written tile: nothing to export to {out}")
        cols = {c: pa.array(frame[c].to_numpy()) for c in frame.columns if c not in ("embedding", "geometry")}
        cols["embedding"] = _embedding_array(np.stack(frame["embedding"].to_numpy()))
        cols["geometry"] = pa.array(shapely.to_wkb(frame.geometry.values), type=pa.binary())
        with _staged(out, overwrite, storage_options) as tmp:
            pq.write_table(pa.table(cols, metadata={b"geo": _geo_metadata(ds.rio.crs, ["Polygon"])}), tmp)
        return out
    return _write_patches(ds, out, overwrite, storage_options)


def _write_patches(ds, out, overwrite: bool, storage_options: dict | None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from geodino.cube.sampling import feature_blocks

    f, v = feature_blocks(ds)
    t = ds.rio.transform()
    d = f.shape[0]
    edges = np.concatenate([[0], np.cumsum(f.chunks[1])])
    schema = pa.schema([("row", pa.int32()), ("col", pa.int32()), ("x", pa.float64()), ("y", pa.float64()),
                        ("embedding", pa.list_(pa.float32(), d)), ("geometry", pa.binary())],
                       metadata={b"geo": _geo_metadata(ds.rio.crs, ["Polygon"])})
    rows_written = 0
    with _staged(out, overwrite, storage_options) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for r0, r1 in zip(edges[:-1], edges[1:]):  # one chunk row at a time: bounded memory
                fv, vv = f[:, r0:r1].compute(), v[r0:r1].compute()
                rr, cc = np.nonzero(vv)
                if not len(rr):
                    continue
                emb = fv[:, rr, cc].T.astype(np.float32)
                x0, x1 = t.c + cc * t.a, t.c + (cc + 1) * t.a
                y0, y1 = t.f + (rr + r0) * t.e, t.f + (rr + r0 + 1) * t.e
                boxes = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))
                writer.write_table(pa.table({
                    "row": pa.array((rr + r0).astype(np.int32)), "col": pa.array(cc.astype(np.int32)),
                    "x": pa.array((x0 + x1) / 2), "y": pa.array((y0 + y1) / 2), "embedding": _embedding_array(emb),
                    "geometry": pa.array(shapely.to_wkb(boxes), type=pa.binary())}, schema=schema))
                rows_written += len(rr)
        if rows_written == 0:
            raise EmptySampleError(f"the cube has no valid patch: nothing to export to {out}")
    return out
