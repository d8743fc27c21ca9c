"""An interactive map over feature cubes, in the browser (``geodino explore CUBE...``) and in Jupyter
(``geodino.explore(cubes)``): click a patch and see every place like it.

Small modules, in the order a request meets them: ``app`` (the Starlette routes and JSON errors), ``engine`` (the
session of cubes and the queries: :func:`geodino.analysis.query_vector`, heat maps, ranking, exact re-ranking),
``vectors`` (the in-memory vectors and PCA-RGB image, built in one pass per cube), ``tiles`` (Web Mercator PNG
tiles cut from small arrays and windowed source reads), ``export`` (GeoJSON, GeoParquet, COG of a result),
``server`` (uvicorn, foreground or background), ``jupyter`` (the inline page), ``cubes`` (opening and the one
comparability check). The page itself is ``static/`` (MapLibre GL JS vendored in ``static/vendor/`` with its
licence). The module is callable: ``geodino.explore(cubes)`` is :func:`geodino.explore.jupyter.explore`.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["explore", "Explorer", "Session", "create_app"]


def explore(cubes, **kwargs):
    """Explore cubes in Jupyter (see :func:`geodino.explore.jupyter.explore`)."""
    from geodino.explore.jupyter import explore as _explore

    return _explore(cubes, **kwargs)


_LAZY = {"Explorer": "jupyter", "Session": "engine", "create_app": "app"}  # name -> the module that holds it


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"geodino.explore.{_LAZY[name]}"), name)
    raise AttributeError(name)


class _CallableModule(types.ModuleType):
    """``geodino.explore`` is both this package and the function: ``geodino.explore(cubes)``."""

    __call__ = staticmethod(explore)


sys.modules[__name__].__class__ = _CallableModule
