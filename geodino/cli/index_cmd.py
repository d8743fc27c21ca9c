"""``geodino index`` (build a similarity index over cubes) and ``geodino search`` (query it)."""

from __future__ import annotations

import json

import typer

from geodino.cli._app import app, err, guarded


@app.command("index")
@guarded(cubes=("cubes",), outputs=("output",))
def index_cmd(
    cubes: list[str] = typer.Argument(..., help="Complete feature cubes of one model."),
    output: str = typer.Option(..., "-o", "--output", help="Index directory to write: a path or a URL "
                                                            "(s3://bucket/idx; credentials from the environment)."),
    vectors: str = typer.Option("features", "--vectors", help="Which vectors to index (features)."),
    nprobe: int = typer.Option(None, "--nprobe", help="Inverted lists a search visits by default "
                                                      "(default 32); searches may override it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    relax: list[str] = typer.Option(None, "--relax", help="A comparable field the cubes may differ in, on purpose "
                                                          "(e.g. radiometry); recorded in the index."),
    force: bool = typer.Option(False, "--force", help="Index cubes however they differ (recorded in the index)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Build an approximate-nearest-neighbour index over the valid patch vectors of cubes."""
    from geodino.checks import require_cube

    for c in cubes:
        require_cube(c)

    from geodino.index import build_index

    info = build_index(cubes, output, vectors=vectors, nprobe=nprobe, overwrite=overwrite, relax=relax or (),
                       force=force)
    if as_json:
        print(json.dumps(info.to_dict(), indent=2))
    err.print(f"[bold]{info.path}[/bold]: {info.vectors} {info.kind['name']} vectors ({info.kind['dtype']} x "
              f"{info.kind['dim']}) from {info.cubes} cube(s); {info.bytes / 1e6:.1f} MB, {info.seconds:.1f} s")


def _lonlat(text: str) -> tuple[float, float]:
    from geodino.errors import ConfigError

    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--near takes LON,LAT in degrees (e.g. --near -8.5,29.4), got {text!r}") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ConfigError(f"--near {text}: longitude must be within ±180 and latitude within ±90 (LON,LAT order)")
    return lon, lat


@app.command("search")
@guarded(cubes=("cubes",), outputs=("output",))
def search_cmd(
    index: str = typer.Argument(..., help="An index directory (geodino index): a path or a URL."),
    near: str = typer.Option(None, "--near", help="LON,LAT: search for patches like the one under this point."),
    positives: str = typer.Option(None, "--positives", help="Points (GeoPackage, GeoJSON, GeoParquet) of examples."),
    negatives: str = typer.Option(None, "--negatives", help="Points of counter-examples (with --positives)."),
    k: int = typer.Option(100, "-k", "--k", help="Number of hits."),
    output: str = typer.Option("hits.parquet", "-o", "--output", help="GeoParquet of hits to write (a path or a "
                                                                      "URL)."),
    cubes: list[str] = typer.Option(None, "--cube", help="Take the query from these cubes (same model) instead "
                                                         "of the index's own."),
    nprobe: int = typer.Option(None, "--nprobe", help="Inverted lists to visit (more: slower, higher recall)."),
    relax: list[str] = typer.Option(None, "--relax", help="With --cube: a comparable field it may differ in."),
    force: bool = typer.Option(False, "--force", help="With --cube: query from a cube however it differs."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as GeoJSON on stdout."),
) -> None:
    """Find the k patches most similar to a point's patch, or to positive (minus negative) example points."""
    from geodino.checks import is_remote, require_cube, require_file, require_index
    from geodino.errors import ConfigError
    from geodino.export.cog import check_output

    if (near is None) == (positives is None):
        raise ConfigError("give exactly one of --near LON,LAT or --positives POINTS")
    if negatives is not None and positives is None:
        raise ConfigError("--negatives needs --positives")
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    if nprobe is not None and nprobe < 1:
        raise ConfigError(f"--nprobe must be at least 1, got {nprobe}")
    target = check_output(output, overwrite=True)  # the hits file is replaced, but never a folder
    lonlat = _lonlat(near) if near else None
    if not is_remote(index):  # a remote index is checked when opened
        require_index(index)
    for f in (positives, negatives):
        if f:
            require_file(f, "examples file", error=ConfigError)
    for c in cubes or []:
        require_cube(c)

    from geodino.export.geoparquet import write_geoparquet
    from geodino.index import open_index, query_examples, query_near

    idx = open_index(index)
    q = query_near(idx, *lonlat, cubes=cubes, relax=relax or (), force=force) if near else \
        query_examples(idx, positives, negatives, cubes=cubes, relax=relax or (), force=force)
    hits = idx.search(q, k, nprobe=nprobe)
    write_geoparquet(hits, target, overwrite=True)
    if as_json:
        print(hits.to_json())
    best = hits.iloc[0] if len(hits) else None
    err.print(f"[bold]{output}[/bold]: {len(hits)} hits" + (f", best score {best.score:.4f} in {best.cube} "
                                                           f"at ({best.x:.1f}, {best.y:.1f})" if best is not None
                                                           else ""))
