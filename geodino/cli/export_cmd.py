"""``geodino export cog`` and ``geodino export geoparquet``: maps and embeddings of a cube in exchange formats."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geodino.cli._app import app, err, guarded

export_app = typer.Typer(no_args_is_help=True, help="Write a cube's maps as COGs and its embeddings as GeoParquet.")
app.add_typer(export_app, name="export")

MAPS = ("pca-rgb", "pca", "cluster", "similarity", "change", "features", "valid")


def _ints(text: str | None, what: str) -> list[int]:
    from geodino.errors import ConfigError

    try:
        return [int(v) for v in (text or "").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated integers (e.g. 0,1,2), got {text!r}") from None


def _examples(values: list[str] | None, crs: str | None):
    """``X,Y`` pairs (in ``--crs``) and vector files (their own CRS) as one GeoSeries, or None."""
    import geopandas as gpd
    from shapely.geometry import Point

    from geodino.errors import ConfigError, MissingCRSError

    if not values:
        return None
    if crs is not None:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(crs)
        except CRSError as e:
            raise ConfigError(f"--crs {crs!r} is not a CRS pyproj knows ({str(e).splitlines()[0][:120]}): give e.g. "
                              "EPSG:4326") from None
    points, parts = [], []
    for v in values:
        bits = v.split(",")
        if len(bits) == 2:
            try:
                points.append(Point(float(bits[0]), float(bits[1])))
                continue
            except ValueError:
                pass
        if not Path(v).is_file():
            raise ConfigError(f"example {v!r} is neither X,Y nor a vector file (GeoJSON, GeoPackage, ...)")
        try:
            parts.append(gpd.read_file(v).geometry)
        except Exception as e:  # noqa: BLE001 - pyogrio's errors for files that are no vector data
            raise ConfigError(f"cannot read examples from {v} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}): give a vector file "
                              "(GeoJSON, GeoPackage, ...) or X,Y") from None
    if points:
        parts.insert(0, gpd.GeoSeries(points, crs=crs))
    if len(parts) == 1:
        return parts[0]
    if any(p.crs is None for p in parts):
        raise MissingCRSError("some examples have no CRS: pass --crs for X,Y examples (e.g. --crs EPSG:4326)")
    import pandas as pd

    return gpd.GeoSeries(pd.concat([p.to_crs(parts[0].crs) for p in parts], ignore_index=True), crs=parts[0].crs)


@export_app.command("cog")
@guarded(cubes=("cube", "other"), outputs=("output", "top"))
def cog_cmd(
    cube: str = typer.Argument(..., help="A geodino feature cube (.zarr)."),
    output: str = typer.Argument(..., help="Output GeoTIFF (a COG with overviews and nodata): a path or a URL "
                                           "(s3://bucket/map.tif; credentials and endpoint from the environment, "
                                           "as for cubes)."),
    map_: str = typer.Option("pca-rgb", "--map", help=f"What to export: {' | '.join(MAPS)}."),
    components: int = typer.Option(3, "--components", help="pca: number of components (bands)."),
    k: int = typer.Option(8, "--k", help="cluster: number of clusters."),
    bands: str = typer.Option("0,1,2", "--bands", help="features: feature channels to export (0-based)."),
    positive: list[str] = typer.Option(None, "--positive", help="similarity: a positive example, X,Y (in --crs) "
                                                                 "or a vector file; repeat for several."),
    negative: list[str] = typer.Option(None, "--negative", help="similarity: a negative example (as --positive)."),
    crs: str = typer.Option(None, "--crs", help="CRS of X,Y examples (e.g. EPSG:4326, lon,lat order)."),
    top: str = typer.Option(None, "--top", help="similarity: also write the top-k patches to this GeoParquet "
                                                 "(a path or a URL)."),
    top_k: int = typer.Option(100, "--top-k", help="similarity: patches in --top."),
    other: str = typer.Option(None, "--other", help="change: the second (later) cube."),
    align: str = typer.Option("exact", "--align", help="change: exact (same grid) | reproject (nearest patch; across CRSs too)."),
    force: bool = typer.Option(False, "--force", help="change: compare cubes with other models/radiometry."),
    sample: int = typer.Option(10_000, "--sample", help="Patches sampled to fit PCA / k-means."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and the fits."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export a map of the cube (PCA image, clusters, similarity, change, feature channels) as a COG."""
    from geodino.checks import require_cube
    from geodino.errors import ConfigError
    from geodino.export.cog import check_output

    if map_ not in MAPS:
        raise ConfigError(f"--map {map_!r}: choose one of {', '.join(MAPS)}")
    require_cube(cube)
    if other:
        require_cube(other)
    check_output(output, overwrite)  # before any work
    if top:
        check_output(top, overwrite)
        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        if map_ != "similarity":
            raise ConfigError(f"--top writes the best patches of --map similarity, not of --map {map_}")

    import contextlib
    import tempfile

    import numpy as np

    from geodino import analysis, open_cube
    from geodino.export.cog import provenance_tags, write_cog, write_labels_cog, write_rgb_cog
    from geodino.export.geoparquet import write_geoparquet
    from geodino._process import bound_memory
    from geodino.cube.storage import put_atomic

    bound_memory()  # the CLI's process-wide memory policy (the library leaves malloc alone)
    ds = open_cube(cube)
    staged = contextlib.ExitStack()  # --top: staged, and published with the COG, so a failed export leaves neither
    tags = {**provenance_tags(ds), "geodino_map": map_}
    if map_ == "pca-rgb":  # a colour image: 3-band uint8, declared RGB
        path = write_rgb_cog(analysis.pca_rgb(ds, sample=sample, seed=seed), output, overwrite=overwrite, tags=tags)
        err.print(f"[bold]{path}[/bold]: {map_} (RGB, uint8)")
        return
    elif map_ == "pca":
        m = analysis.pca(ds, components, sample=sample, seed=seed)
    elif map_ == "features":
        m = analysis.feature_map(ds, _ints(bands, "--bands"))
    elif map_ == "valid":
        m = ds["valid"].astype("uint8")
    elif map_ == "cluster":
        labels = analysis.cluster(ds, k, sample=sample, seed=seed)
        path = write_labels_cog(labels, output, overwrite=overwrite, tags=tags)
        err.print(f"[bold]{path}[/bold]: {k} clusters")
        return
    elif map_ == "similarity":
        pos = _examples(positive, crs)
        if pos is None:
            raise ConfigError("--map similarity needs --positive examples (X,Y with --crs, or a vector file)")
        res = analysis.similarity(ds, pos, _examples(negative, crs), top_k=top_k if top else 0)
        m = res.map
        if top:
            folder = tempfile.TemporaryDirectory(prefix="geodino-top-", ignore_cleanup_errors=True)
            staged_top = Path(staged.enter_context(folder)) / "top.parquet"
            write_geoparquet(res.top, staged_top, overwrite=True)
    else:  # change
        if not other:
            raise ConfigError("--map change needs --other CUBE (the later cube)")
        m = analysis.change(ds, open_cube(other), align=align, force=force)
        tags["geodino_other_cube_id"] = str(m.attrs.get("geodino_other_cube_id", ""))
        if m.attrs.get("geodino_compat"):  # what differed between the cubes and was relaxed or forced
            tags["geodino_compat"] = m.attrs["geodino_compat"]
    nodata = 255 if map_ == "valid" else np.nan  # valid: 1/0 everywhere, 255 never occurs
    with staged:
        path = write_cog(m, output, nodata=nodata, overwrite=overwrite, tags=tags)
        if top:
            put_atomic(top, staged_top, overwrite=overwrite)
    err.print(f"[bold]{path}[/bold]: {map_}" + (f"; top {top_k} patches in {top}" if top else ""))


@export_app.command("geoparquet")
@guarded(cubes=("cube",), outputs=("output",))
def geoparquet_cmd(
    cube: str = typer.Argument(..., help="A geodino feature cube (.zarr)."),
    output: str = typer.Argument(..., help="Output GeoParquet file: a path or a URL (s3://bucket/t.parquet)."),
    level: str = typer.Option("tile", "--level", help="tile (one row per tile) | patch (one row per valid patch)."),
    pool: str = typer.Option("cls", "--pool", help="tile level: cls (CLS token) | mean (mean of its patches)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout."),
) -> None:
    """Export tile or patch embeddings with footprint polygons in the cube's CRS."""
    from geodino.checks import require_cube
    from geodino.export.cog import check_output

    require_cube(cube)
    check_output(output, overwrite)

    import pyarrow.parquet as pq

    from geodino import open_cube
    from geodino.export.geoparquet import write_embeddings
    from geodino.cube.storage import open_input

    path = write_embeddings(open_cube(cube), output, level=level, pool=pool, overwrite=overwrite)
    with open_input(path) as f:  # the footer only (ranged reads on an object store)
        rows = pq.ParquetFile(f).metadata.num_rows
    if as_json:
        print(json.dumps({"output": str(path), "rows": rows, "level": level, "pool": pool}))
    err.print(f"[bold]{path}[/bold]: {rows} {level} embeddings" + (f" ({pool})" if level == "tile" else ""))
