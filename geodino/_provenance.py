"""What a product's provenance records as its origin: the command line when the CLI ran it, or the library call
and its arguments when Python did (in a notebook ``sys.argv`` is the kernel launcher, which says nothing).

The origin is provenance only: it is never part of a fingerprint, so a cube begun from Python resumes from the
CLI and the other way round.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["library_call", "origin"]


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _options(v)
    return repr(v)


def _options(obj) -> dict:
    """A dataclass of options as the fields that differ from their defaults (what the caller chose)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or v != default:
            out[f.name] = _jsonable(v)
    return out


def library_call(function: str, **args) -> dict:
    """``{"function": "geodino.embed.embed", "args": {...}}``: a dataclass of options is flattened into the
    arguments it holds that differ from their defaults."""
    flat: dict = {}
    for k, v in args.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            flat.update(_options(v))
        else:
            flat[k] = _jsonable(v)
    return {"function": function, "args": flat}


def origin(invocation) -> dict:
    """The provenance fields of ``invocation``: the CLI's command line (a string), or a :func:`library_call`."""
    if isinstance(invocation, dict):
        return {"command": None, "call": invocation}
    return {"command": invocation}
