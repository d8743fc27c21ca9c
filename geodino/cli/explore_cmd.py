"""``geodino explore``: the interactive map over cubes, served on this machine."""

from __future__ import annotations

import typer

from geodino.cli._app import app, guarded


@app.command("explore")
@guarded(cubes=("cubes",))
def explore_cmd(
    cubes: list[str] = typer.Argument(..., help="Feature cubes (full or compact; paths or URLs) of one model: "
                                                "scenes, a mosaic's per-CRS cubes, several dates of one grid."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    basemap: str = typer.Option(None, "--basemap", help="An XYZ tile URL offered as a base layer, e.g. "
                                                        "https://tile.openstreetmap.org/{z}/{x}/{y}.png"),
    vectors: str = typer.Option("auto", "--vectors", help="Vectors held in memory: full (exact), compact (64-d "
                                                          "int8, re-ranked with full features) or auto."),
    rerank: int = typer.Option(1000, "--rerank", help="Compact candidates re-scored with full features per query "
                                                      "(engine.DEFAULT_RERANK)."),
    force: bool = typer.Option(False, "--force", help="Explore cubes together even when they are not comparable."),
) -> None:
    """Serve an interactive map of cubes: click a patch and see every place like it."""
    import sys
    import webbrowser

    from geodino.checks import require_cube
    from geodino.errors import ConfigError
    from geodino.explore.server import bind, url_of

    if vectors not in ("auto", "full", "compact"):
        raise ConfigError(f"--vectors must be auto, full or compact, got {vectors!r}")
    if rerank < 0:
        raise ConfigError(f"--rerank must be a number of candidates >= 0, got {rerank!r}")
    for cube in cubes:  # a wrong path is answered before torch, GDAL and xarray are imported
        require_cube(cube)
    sock = bind(host, port)  # then the port: one in use is one line before the cubes are read

    from geodino._process import bound_memory
    from geodino.explore.app import create_app
    from geodino.explore.engine import Session
    from geodino.explore.server import serve

    bound_memory()  # the CLI's process-wide memory policy: RSS stays flat over the start-up pass and queries
    try:
        session = Session(cubes, vectors=vectors, rerank=rerank, force=force, basemap=basemap)
    except BaseException:
        sock.close()
        raise
    info = session.describe()
    n = sum(c["valid"] for c in info["cubes"])
    url = url_of(sock)
    print(f"geodino explore: {len(session.cubes)} cube(s), {len(session.dates)} date(s), {n} valid patches, "
          f"{session.kind} vectors ({info['memory_mb']} MiB), ready in {session.startup_s:.1f} s", file=sys.stderr)
    print(url, flush=True)
    if open_browser:
        webbrowser.open(url)
    serve(create_app(session), sock)
