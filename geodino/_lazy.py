"""Lazy package exports (PEP 562): a package's ``__init__`` names what its submodules hold, and a name's submodule
is imported only when the name is first used.

So ``import geodino.embed.config`` (options, cheap) no longer runs ``geodino/embed/__init__.py``'s imports of the
job, the engine and torch, which is what lets the command line check its arguments and files before anything heavy
is imported (see :mod:`geodino.cli`). Written here rather than taken from ``lazy_loader`` (scientific-python's
SPEC 1): the mechanism is the dozen lines below and needs no dependency.

Use, in a package ``__init__``::

    from geodino._lazy import lazy_exports

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {
        "config": ["EmbedConfig"],
        "run": ["EmbedSummary", "embed"],
    })
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, list[str]]):
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public ``names`` live in submodules
    (``{submodule: names}``). A name is imported on first access and then cached on the package."""
    where = {name: sub for sub, names in exports.items() for name in names}

    def __getattr__(name: str):
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, list(where)
