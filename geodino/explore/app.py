"""The ASGI application (Starlette): the static page, the JSON API and the map tiles of one :class:`Session`.

Every error is a JSON object ``{"error": "..."}`` with a 4xx status (400 bad request, 404 unknown query, cube or
route, 410 a cube or source that is gone), or 500 for a bug: never a traceback page, and the server keeps serving.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from geodino.errors import GeodinoError, QueryError
import geodino.explore.tiles as tiles
from geodino.explore.engine import GoneError, Session, UnknownQueryError, check_k

__all__ = ["create_app", "STATIC"]

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("geodino.explore")


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _on_geodino_error(request, exc):
    return _error(404 if isinstance(exc, UnknownQueryError) else 410 if isinstance(exc, GoneError) else 400, str(exc))


async def _on_http_error(request, exc):
    return _error(exc.status_code, str(exc.detail))


async def _on_internal_error(request, exc):
    log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc, exc_info=exc)
    return _error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                  " (a bug: please report it)")


def _float(value, name: str, default=None):
    if value in (None, "", "null"):
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise QueryError(f"{name} must be a finite number, got {value!r}")
    return v


def _int(value, name: str):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a whole number, got {value!r}") from None


async def _body(request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise QueryError(f"the request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise QueryError("the request body must be a JSON object")
    return body


def _list(body: dict, name: str) -> list:
    v = body.get(name) or []
    if not isinstance(v, list):
        raise QueryError(f"{name} must be a list")
    return v


def _hits_json(session: Session, res, k: int, threshold):
    from geodino.explore.engine import hit_table

    res, keep = session.keep(res.id, k, threshold)
    session.view = {"query": res.id, "k": k, "threshold": threshold}
    t = hit_table(session, res, keep)
    names = ("rank", "score", "exact", "cube", "row", "col", "lon", "lat", "x", "y")
    hits = []
    for *values, footprint in zip(*(t[n].tolist() for n in names), t["footprint"].tolist()):
        h = dict(zip(names, values))
        hits.append({**h, "date": session.cubes[h["cube"]].date, "footprint": footprint,
                     "thumb": f"api/thumb/{h['cube']}/{h['row']}/{h['col']}.png" if session.sources.get(h["cube"])
                     else None})
    lo, hi = res.value_range
    return {"id": res.id, "mode": res.mode, "date": res.date, "date_b": res.date_b, "hits": hits,
            "cubes": sorted(int(ci) for ci in res.maps),
            "total": int(len(res.score)), "range": [lo, hi], "seconds": round(res.seconds, 4),
            "timings": {k2: round(v, 4) for k2, v in res.timings.items()},
            "exact_hits": int(np.sum(t["exact"]))}


def create_app(session: Session):
    """The Starlette application serving ``session``."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    session.view = {"query": None, "k": 100, "threshold": None}

    def page(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def info(request):
        return JSONResponse(session.describe())

    async def ranked(request, run):
        """A query or change (the routes bind ``run``): ``run(body)`` (its Result) in the thread pool, answered
        with its hits."""
        from starlette.concurrency import run_in_threadpool

        body = await _body(request)
        k, threshold = check_k(body.get("k", 100)), _float(body.get("threshold"), "threshold")
        return JSONResponse(await run_in_threadpool(lambda: _hits_json(session, run(body), k, threshold)))

    def run_query(body):
        from geodino.cube.store import is_cube

        positives, negatives, polygons = _list(body, "positives"), _list(body, "negatives"), _list(body, "polygons")
        for c in session.cubes_of(body.get("date")):  # a local cube of the query removed while serving
            if c.path and "://" not in c.path and not is_cube(c.path):
                raise GoneError(f"cube {c.path} is gone (removed or moved while the server runs): restore it, or "
                                "restart geodino explore without it")
        return session.query(body.get("date"), positives, negatives, polygons)

    def run_change(body):
        return session.change(body.get("date"), body.get("date_b"))

    def hits(request):
        p = request.query_params
        res = session.result(p.get("query"))
        return JSONResponse(_hits_json(session, res, check_k(p.get("k", 100)), _float(p.get("threshold"),
                                                                                      "threshold")))

    def png(body: bytes):
        return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    def tile(request):
        p, q = request.path_params, request.query_params
        layer = p["layer"]
        z, x, y = _int(p["z"], "z"), _int(p["x"], "x"), _int(p["y"], "y")
        tiles.check_tile(z, x, y)
        rgba = None
        if layer == "heat":
            res = session.result(q.get("query"))
            threshold = _float(q.get("threshold"), "threshold")
            dst = None
            for ci, m in res.maps.items():
                lookup = session.tile_lookup(ci, z, x, y)
                if lookup is not None:
                    vals = tiles.gather(m.ravel(), lookup, np.nan)
                    dst = vals if dst is None else np.where(np.isfinite(vals), vals, dst)
            if dst is not None:
                return png(tiles.encode_heat_png(tiles.heat_index(dst, *res.value_range, threshold)))
        elif layer == "pca":
            for c in session.cubes_of(q.get("date")):
                lookup = session.tile_lookup(c.index, z, x, y)
                if lookup is not None:
                    vals = tiles.gather(session.vectors[c.index].rgba.reshape(-1, 4), lookup, 0)
                    rgba = vals if rgba is None else np.where(vals[..., 3:] > 0, vals, rgba)
        elif layer == "source":
            images = [s for c in session.cubes_of(q.get("date")) for s in session.sources[c.index]]
            try:
                rgba = tiles.render_source(images, z, x, y)
            except Exception as e:  # rasterio raises its own types for a file removed or damaged since start-up
                raise GoneError(f"the source imagery cannot be read any more ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160]})") from None
        else:
            raise HTTPException(404, f"no tile layer {layer!r}: choose heat, pca or source")
        return png(tiles.encode_png(rgba) if rgba is not None else tiles.empty_png())

    def thumb(request):
        p = request.path_params
        c = session.cube(p["cube"])
        row, col = _int(p["row"], "row"), _int(p["col"], "col")
        h, w = c.shape
        if not (0 <= row < h and 0 <= col < w):
            raise QueryError(f"patch ({row}, {col}) is outside cube {c.index} ({h} x {w} patches)")
        xs, ys = c.gbox.pix2wld(np.array([col - 1, col + 2]), np.array([row - 1, row + 2]))  # the patch and a ring
        bounds = (xs.min(), ys.min(), xs.max(), ys.max())
        if not session.sources.get(c.index):
            raise HTTPException(404, f"cube {c.index} has no readable source imagery")
        try:
            image = tiles.thumbnail(session.sources[c.index], bounds, c.crs)
        except Exception as e:
            raise GoneError(f"the source imagery of cube {c.index} cannot be read any more ({type(e).__name__})") \
                from None
        return png(image or tiles.empty_png())

    def export(request):
        from geodino.explore.export import export_file

        p, q = request.path_params, request.query_params
        res = session.result(p["query"])
        fmt = p["fmt"]
        fd, tmp = tempfile.mkstemp(prefix="geodino-explore-", suffix=f".{fmt}")
        os.close(fd)
        os.unlink(tmp)  # the writers refuse to overwrite
        try:
            name, media = export_file(session, res, fmt, tmp, k=check_k(q.get("k", 100)),
                                      threshold=_float(q.get("threshold"), "threshold"), cube=q.get("cube"))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return FileResponse(tmp, media_type=media, filename=name, background=BackgroundTask(os.unlink, tmp))

    routes = [
        Route("/", page),
        Route("/api/session", info),
        Route("/api/query", functools.partial(ranked, run=run_query), methods=["POST"]),
        Route("/api/change", functools.partial(ranked, run=run_change), methods=["POST"]),
        Route("/api/hits", hits),
        Route("/api/thumb/{cube}/{row}/{col}.png", thumb),
        Route("/api/export/{query}.{fmt}", export),
        Route("/tiles/{layer}/{z}/{x}/{y}.png", tile),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {GeodinoError: _on_geodino_error, HTTPException: _on_http_error, Exception: _on_internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)
