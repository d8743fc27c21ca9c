"""Whether two cubes can be combined: the ONE check every consumer that mixes cubes calls.

Two cubes are *comparable* when their features come from the same function of the pixels: the same model name,
weights (sha256), architecture overrides, normalisation, precision and quantisation, and the same radiometry. The radiometry dict is compared
whole (every numeric, boolean or list value, at any depth), except free-text fields such as ``formula`` or
``offset_source``, so numeric keys added to it later are covered without touching this module. Cubes *share a
grid* when CRS, patch transform and shape agree exactly.

Mismatches raise :class:`geodino.errors.CubeMismatchError` with one line naming the first differing field and the
way out (``force=True`` in the library, ``--force`` on the command line); grids are never forced (use
``align="reproject"`` for another grid of the same CRS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from geodino.errors import CubeMismatchError

__all__ = ["comparable_fields", "differences", "check_comparable", "check_same_grid", "grid_differences",
           "cube_label"]

# Strings under the radiometry dict that identify it (everything else textual is free text, e.g. "formula").
_IDENTIFYING_TEXT = {"kind"}


def _provenance(ds) -> dict:
    prov = ds.attrs.get("geodino") if hasattr(ds, "attrs") else ds
    if not isinstance(prov, Mapping):
        raise CubeMismatchError(f"{cube_label(ds)} carries no geodino provenance: open cubes with geodino.open_cube")
    return dict(prov)


def cube_label(ds) -> str:
    """A short name for messages: the cube's path when known, else its id."""
    enc = getattr(ds, "encoding", {}) or {}
    if enc.get("source"):
        return str(enc["source"])
    prov = ds.attrs.get("geodino", {}) if hasattr(ds, "attrs") else {}
    return f"cube {prov.get('cube_id', '?')}"


def _flatten(value, prefix: str, out: dict, *, free_text: bool) -> None:
    if isinstance(value, Mapping):
        for k in sorted(value):
            _flatten(value[k], f"{prefix}.{k}", out, free_text=free_text)
    elif isinstance(value, str) and free_text and prefix.rsplit(".", 1)[-1] not in _IDENTIFYING_TEXT:
        return  # free text: describes, does not change the features
    elif isinstance(value, (list, tuple)):
        out[prefix] = tuple(value)
    else:
        out[prefix] = value


def comparable_fields(ds) -> dict[str, object]:
    """The flattened provenance fields that must agree between comparable cubes (``field path -> value``)."""
    prov = _provenance(ds)
    model = prov.get("model", {}) or {}
    out: dict[str, object] = {
        "model.name": model.get("name"),
        "model.weights.sha256": (model.get("weights") or {}).get("sha256"),
    }
    _flatten(model.get("arch_overrides") or {}, "model.arch_overrides", out, free_text=False)
    _flatten(prov.get("normalization") or {}, "normalization", out, free_text=False)
    _flatten(prov.get("radiometry") or {}, "radiometry", out, free_text=True)
    numerics = prov.get("numerics") or {}  # what changes the features measurably: precision and quantisation
    out["numerics.precision"] = numerics.get("precision")
    out["numerics.quantize"] = numerics.get("quantize")
    return out


def _equal(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def differences(a, b) -> list[tuple[str, object, object]]:
    """Every ``(field, value in a, value in b)`` where the two cubes' comparable fields differ."""
    fa, fb = comparable_fields(a), comparable_fields(b)
    missing = object()
    out = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va is missing or vb is missing or not _equal(va, vb):
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def _short(v) -> str:
    s = repr(list(v) if isinstance(v, tuple) else v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_comparable(a, b, *, force: bool = False, what: str = "combine them") -> list[tuple[str, object, object]]:
    """Refuse to combine cubes whose features come from different models, weights or radiometry.

    Returns the differences (empty when comparable). With ``force=True`` differences are returned, not raised.
    """
    diffs = differences(a, b)
    if diffs and not force:
        key, va, vb = diffs[0]
        more = f" (and {len(diffs) - 1} more field{'s' if len(diffs) > 2 else ''})" if len(diffs) > 1 else ""
        raise CubeMismatchError(
            f"cubes {cube_label(a)} and {cube_label(b)} are not comparable: {key} differs ({_short(va)} vs "
            f"{_short(vb)}){more}; use cubes made with the same model, weights and radiometry, or pass --force "
            f"(force=True) to {what} anyway")
    return diffs


def _grid(ds):
    crs = ds.rio.crs
    t = ds.rio.transform()
    return crs, tuple(t)[:6], (int(ds.sizes["y"]), int(ds.sizes["x"]))


def grid_differences(a, b) -> list[str]:
    """What differs between the two cubes' patch grids ("crs", "transform", "shape"); empty if the same grid."""
    (ca, ta, sa), (cb, tb, sb) = _grid(a), _grid(b)
    out = []
    if (ca is None) != (cb is None) or (ca is not None and ca != cb):
        out.append("crs")
    if not all(math.isclose(x, y, rel_tol=0, abs_tol=1e-9 * max(1.0, abs(x))) for x, y in zip(ta, tb)):
        out.append("transform")
    if sa != sb:
        out.append("shape")
    return out


def check_same_grid(a, b, *, reproject_hint: bool = True) -> None:
    """Refuse two cubes on different patch grids (exact join); names what differs and the way out."""
    diffs = grid_differences(a, b)
    if not diffs:
        return
    (ca, ta, sa), (cb, tb, sb) = _grid(a), _grid(b)
    detail = {"crs": f"CRS {ca} vs {cb}", "transform": f"transform {list(ta)} vs {list(tb)}",
              "shape": f"shape {sa} vs {sb}"}
    hint = ("warp one scene onto the other's grid before embedding" if "crs" in diffs or not reproject_hint
            else "pass align='reproject' (--align reproject) to resample the second cube onto the first's grid")
    raise CubeMismatchError(f"cubes {cube_label(a)} and {cube_label(b)} are on different grids "
                            f"({'; '.join(detail[d] for d in diffs)}): {hint}")
