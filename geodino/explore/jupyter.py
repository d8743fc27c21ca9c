"""``geodino.explore(...)`` in Jupyter: the same page inline (an IFrame on a server started in the background), and
an object to read the current query's positives, negatives and hits from as GeoDataFrames."""

from __future__ import annotations

import html

__all__ = ["Explorer", "explore"]


class Explorer:
    """A running explorer: ``url``, the ``session`` (cubes, in-memory vectors, results) and the page's current
    query as GeoDataFrames (``positives``, ``negatives`` in EPSG:4326, ``hits`` with the page's k and threshold)."""

    def __init__(self, session, server, height: int = 600):
        self.session = session
        self.server = server
        self.url = server.url
        self.height = int(height)

    def _repr_html_(self) -> str:
        return (f'<iframe src="{html.escape(self.url)}" width="100%" height="{self.height}" '
                'style="border:1px solid #ccc" allow="clipboard-write"></iframe>'
                f'<div style="font:12px sans-serif">geodino explore: <a href="{html.escape(self.url)}" '
                'target="_blank">open in a browser tab</a></div>')

    def __repr__(self) -> str:
        return f"Explorer({self.url}, {len(self.session.cubes)} cube(s), {self.session.kind} vectors)"

    def _examples(self, role: str):
        import geopandas as gpd

        res = self._current()
        gs = [] if res is None else res.positives if role == "positive" else res.negatives
        return gpd.GeoDataFrame({"role": [role] * len(gs)}, geometry=list(gs), crs="EPSG:4326")

    def _current(self):
        from geodino.explore.engine import UnknownQueryError

        try:
            return self.session.result(None)
        except UnknownQueryError:
            return None

    @property
    def positives(self):
        """The current query's positive examples (points and polygons, EPSG:4326)."""
        return self._examples("positive")

    @property
    def negatives(self):
        """The current query's negative examples (EPSG:4326)."""
        return self._examples("negative")

    @property
    def hits(self):
        """The current result's hits with the page's k and threshold (footprints in the first cube's CRS)."""
        import geopandas as gpd

        res = self._current()
        if res is None:
            return gpd.GeoDataFrame({"rank": [], "score": []}, geometry=[])
        view = getattr(self.session, "view", {}) or {}
        return self.session.hits(res.id, view.get("k") or 100, view.get("threshold"))

    def query(self, positives=(), negatives=(), polygons=(), date=None):
        """Run a query from code (points as ``(lon, lat)``); the page shows it on its next refresh."""
        return self.session.query(date, positives, negatives, polygons)

    def stop(self) -> None:
        """Stop the background server."""
        self.server.stop()


def explore(cubes, *, host: str = "127.0.0.1", port: int = 0, vectors: str = "auto", rerank: int | None = None,
            force: bool = False, basemap: str | None = None, height: int = 600) -> Explorer:
    """Explore cubes (paths, URLs or Datasets from :func:`geodino.open_cube`) in the notebook: starts the server
    in the background (``port=0``: a free port) and returns an :class:`Explorer` that displays the page inline."""
    from geodino.explore.app import create_app
    from geodino.explore.engine import DEFAULT_RERANK, Session
    from geodino.explore.server import BackgroundServer, bind

    sock = bind(host, port)
    try:
        session = Session(cubes, vectors=vectors, rerank=DEFAULT_RERANK if rerank is None else rerank, force=force,
                          basemap=basemap)
    except BaseException:
        sock.close()
        raise
    return Explorer(session, BackgroundServer(create_app(session), sock), height)
