"""Whether two cubes are comparable: the ONE rule that every place combining cubes, or applying something made on one
cube to another, goes through (``change`` and multi-cube analysis, heads, the index and its queries, mosaics).

Two cubes are *comparable* when their features are the same function of the pixels. :func:`fingerprint` reduces a
cube (an opened Dataset, its root attributes, its provenance, or a fingerprint stored earlier in a head card or an
index manifest) to the fields that decide that function, named as in :data:`FIELDS`:

====================  ===============================================================================
``model``             the registered backbone (``model.name``)
``weights``           the weights' sha256 (``random-init`` for seeded random weights)
``architecture``      architecture overrides (e.g. ``depth``)
``normalization``     the weights' mean/std
``radiometry``        the whole model-input radiometry (kind, gain, bias, levels, numeric parameters at any
                      depth; free text such as ``formula`` is ignored)
``precision``         the resolved precision the features were computed in (fp32, bf16, ...)
``quantization``      weight quantisation (int8, fp8, ...), or none
``compact``           full features, or the compact product (scheme, components and the basis' sha256)
``tile``, ``halo``    the tiling, in pixels
``blend``             blended patches at tile boundaries
``scale``             ``--scale`` (resampling in the read)
====================  ===============================================================================

A caller that may combine cubes differing in some of these says so by name (``relax=("radiometry",)``; a dotted
name such as ``"radiometry.gain"`` relaxes one part of a field), and ``force=True`` (``--force``) accepts any
difference. :func:`check_comparable` returns a :class:`Comparison`, a record of what differed and how it was
accepted, that the caller stores where it writes its result (:meth:`Comparison.to_dict`). A refusal raises
:class:`geodino.errors.CubeMismatchError` (or the caller's subclass) with one line naming the first differing field
and both values in words. Grids are a separate question (:func:`check_same_grid`) and are never forced.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geodino.errors import ConfigError, CubeMismatchError

__all__ = ["FIELDS", "RULE", "fingerprint", "Difference", "Comparison", "check_comparable", "compare",
           "differences", "comparable_fields", "normalize_relax", "basis_digest", "check_same_grid",
           "grid_differences", "cube_label"]

RULE = "geodino-compat/1"
FIELDS = ("model", "weights", "architecture", "normalization", "radiometry", "precision", "quantization", "compact",
          "tile", "halo", "blend", "scale")
_ALIASES = {"normalisation": "normalization", "quantisation": "quantization", "quantize": "quantization",
            "arch": "architecture", "arch_overrides": "architecture", "numerics": "precision"}
_IDENTIFYING_TEXT = {"kind"}  # strings of the radiometry that identify it (other text is free text, e.g. "formula")


# --------------------------------------------------------------------------------------------------- fingerprints
def _plain(v):
    """JSON-shaped values (tuples -> lists, numpy scalars -> Python), so that a fingerprint stored as JSON and one
    read from a live cube compare equal."""
    return json.loads(json.dumps(v, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _strip_free_text(value, key: str = ""):
    if isinstance(value, Mapping):
        return {k: _strip_free_text(v, k) for k, v in sorted(value.items())
                if not (isinstance(v, str) and k not in _IDENTIFYING_TEXT)}
    return value


def basis_digest(mean, components, scale) -> str:
    """The sha256 (first 16 hex digits) of a compact cube's basis: what makes two compact cubes' codes one space."""
    import numpy as np

    h = hashlib.sha256()
    for a in (mean, components, scale):
        a = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _compact_of(attrs: Mapping, ds=None):
    meta = attrs.get("geodino_compact")
    if not isinstance(meta, Mapping):
        return None
    basis = meta.get("basis_sha256")
    if basis is None and ds is not None and "compact_components" in getattr(ds, "variables", {}):
        basis = basis_digest(ds["compact_mean"].values, ds["compact_components"].values, ds["compact_scale"].values)
    return {"scheme": meta.get("scheme"), "components": meta.get("components"), "basis": basis}


def _scale_of(prov: Mapping):
    for where in (prov.get("source"), prov.get("settings")):
        if isinstance(where, Mapping) and where.get("scale") is not None:
            return float(where["scale"])
    scenes = (prov.get("settings") or {}).get("scenes") if isinstance(prov.get("settings"), Mapping) else None
    if scenes:
        scales = sorted({float(s.get("scale", 1.0)) for s in scenes})
        return scales[0] if len(scales) == 1 else scales
    return 1.0  # cubes made before --scale existed read at the native resolution


def _from_provenance(prov: Mapping, attrs: Mapping, ds=None) -> dict:
    model = prov.get("model") or {}
    weights = model.get("weights") or {}
    numerics = prov.get("numerics") or {}
    tiling = prov.get("tiling") or {}
    return _plain({
        "rule": RULE,
        "model": model.get("name"),
        "weights": weights.get("sha256") if isinstance(weights, Mapping) else None,
        "architecture": dict(sorted((model.get("arch_overrides") or {}).items())),
        "normalization": _strip_free_text(prov.get("normalization") or {}),
        "radiometry": _strip_free_text(prov.get("radiometry") or {}),
        "precision": numerics.get("precision"),
        "quantization": numerics.get("quantize"),
        "compact": _compact_of(attrs, ds),
        "tile": tiling.get("tile"),
        "halo": tiling.get("halo"),
        "blend": tiling.get("blend", 0 if tiling else None),
        "scale": _scale_of(prov),
    })


def _is_xarray(obj) -> bool:
    return hasattr(obj, "attrs") and hasattr(obj, "dims")  # Dataset or DataArray (a Dataset is also a Mapping)


def fingerprint(obj) -> dict:
    """The comparable fields of ``obj`` (JSON-able: store it, compare it later).

    ``obj``: an opened cube (an xarray Dataset), a cube's root attributes (a dict with ``geodino``), its provenance
    (the ``geodino`` dict itself), or a fingerprint made earlier (returned as it is).
    """
    if _is_xarray(obj):
        attrs = obj.attrs
        prov = attrs.get("geodino")
        if not isinstance(prov, Mapping):
            raise CubeMismatchError(f"{cube_label(obj)} carries no geodino provenance: open cubes with "
                                    "geodino.open_cube")
        return _from_provenance(prov, attrs, obj)
    if isinstance(obj, Mapping) and obj.get("rule") == RULE:
        return dict(obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("geodino"), Mapping):  # root attributes
        return _from_provenance(obj["geodino"], obj)
    if isinstance(obj, Mapping) and "model" in obj:  # a provenance dict
        return _from_provenance(obj, {})
    raise CubeMismatchError(f"{type(obj).__name__} is not a geodino cube, its attributes or a fingerprint: open "
                            "cubes with geodino.open_cube")


# --------------------------------------------------------------------------------------------------- differences
def _flat(v, prefix: str, out: dict) -> None:
    if isinstance(v, Mapping):  # an empty mapping adds no key: "nothing recorded" on both sides is equal
        for k in sorted(v):
            _flat(v[k], f"{prefix}.{k}", out)
    else:
        out[prefix] = v


def comparable_fields(obj) -> dict[str, object]:
    """``obj``'s fingerprint flattened: ``"radiometry.gain" -> [...]``, ``"halo" -> 32``..."""
    fp = fingerprint(obj)
    out: dict[str, object] = {}
    for name in FIELDS:
        if name == "compact":
            out[name] = fp.get(name)  # one value: full, or one compact basis
        else:
            _flat(fp.get(name), name, out)
    return out


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _words(detail: str, v) -> str:
    """A value in words, for one-line messages (never a raw dict)."""
    name = detail.split(".", 1)[0]
    if v is None:
        return {"quantization": "not quantised", "compact": "full features",
                "architecture": "the default"}.get(name, "not recorded")
    if name == "weights":
        return "random weights" if v == "random-init" else f"sha256 {str(v)[:12]}"
    if name == "compact":
        return (f"compact {v.get('components')}-d {v.get('scheme')} (basis {v.get('basis') or 'not recorded'})"
                if isinstance(v, Mapping) else str(v))
    if name in ("tile", "halo"):
        return f"{v} px"
    if name == "blend":
        return f"{v} patch{'es' if v != 1 else ''}"
    if name == "scale":
        return f"x{v:g}" if isinstance(v, (int, float)) else "x" + ", x".join(_num(s) for s in v)
    if isinstance(v, (list, tuple)):
        return ("[" + ", ".join(_num(x) for x in v[:4]) + (f", ... ({len(v)} values)" if len(v) > 4 else "") + "]")
    if isinstance(v, Mapping):
        return "none" if not v else ", ".join(f"{k}={_num(x)}" for k, x in sorted(v.items()))
    return _num(v)


_LABELS = {"normalization": "normalisation", "quantization": "quantisation", "compact": "feature encoding",
           "scale": "scale (--scale)"}  # the other fields are named as they are


@dataclass(frozen=True)
class Difference:
    """One differing part of two fingerprints: its ``field`` (one of :data:`FIELDS`), the ``detail`` path
    (``radiometry.gain``), both values, and how it was accepted (``relaxed``, ``forced``) or None (a refusal)."""

    field: str
    detail: str
    a: object
    b: object
    accepted: str | None = None

    def words(self, a_name: str = "the first", b_name: str = "the second") -> str:
        sub = self.detail[len(self.field) + 1:] if self.detail != self.field else ""
        what = _LABELS.get(self.field, self.field) + (f" {sub}" if sub else "")
        verb = "differ" if what == "weights" else "differs"
        return f"{what} {verb} ({_words(self.detail, self.a)} for {a_name}, {_words(self.detail, self.b)} for {b_name})"

    def to_dict(self) -> dict:
        return _plain({"field": self.field, "detail": self.detail, "a": self.a, "b": self.b,
                       "accepted": self.accepted})


@dataclass(frozen=True)
class Comparison:
    """What :func:`check_comparable` found: the differences (each accepted as ``relaxed`` or ``forced``), the
    fields the caller relaxed, and whether ``force`` was needed. ``to_dict()`` is what callers store with their
    result (index manifest, head card, map tags)."""

    a: str
    b: str
    differences: tuple[Difference, ...] = ()
    relaxed: tuple[str, ...] = ()
    forced: bool = False
    rule: str = RULE

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def refused(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.accepted is None)

    def __bool__(self) -> bool:  # "were they different?" (the former list of differences was truthy likewise)
        return bool(self.differences)

    def __iter__(self):
        """``(detail, a, b)`` per difference, as :func:`differences` gives them."""
        return iter((d.detail, d.a, d.b) for d in self.differences)

    def __len__(self) -> int:
        return len(self.differences)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "a": self.a, "b": self.b, "relaxed": list(self.relaxed), "forced": self.forced,
                "differences": [d.to_dict() for d in self.differences]}


def normalize_relax(relax: Iterable[str] | str | None) -> tuple[str, ...]:
    """Relaxation names checked against :data:`FIELDS` (British spellings accepted; a dotted name relaxes a part
    of a field: ``radiometry.gain``). Unknown names raise :class:`geodino.errors.ConfigError`."""
    if relax is None:
        return ()
    items = [relax] if isinstance(relax, str) else list(relax)
    out = []
    for r in items:
        for part in str(r).split(","):
            part = part.strip()
            if not part:
                continue
            head, _, rest = part.partition(".")
            head = _ALIASES.get(head, head)
            if head not in FIELDS:
                raise ConfigError(f"cannot relax {part!r}: comparable fields are {', '.join(FIELDS)}")
            name = f"{head}.{rest}" if rest else head
            if name not in out:
                out.append(name)
    return tuple(out)


def _relaxed_by(d_field: str, detail: str, relax: tuple[str, ...]) -> bool:
    return any(r == d_field or detail == r or detail.startswith(r + ".") for r in relax)


def _diffs(a, b) -> list[tuple[str, str, object, object]]:
    fa, fb = comparable_fields(a), comparable_fields(b)
    missing = object()
    out = []
    keys = sorted(set(fa) | set(fb), key=lambda k: (FIELDS.index(k.split(".", 1)[0]), not k.endswith(".kind"), k))
    for key in keys:
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va is missing or vb is missing or not _equal(va, vb):
            out.append((key.split(".", 1)[0], key, None if va is missing else va, None if vb is missing else vb))
    return out


def differences(a, b) -> list[tuple[str, object, object]]:
    """Every ``(detail, value in a, value in b)`` where the fingerprints of ``a`` and ``b`` differ."""
    return [(k, va, vb) for _, k, va, vb in _diffs(a, b)]


def compare(a, b, *, relax=(), force: bool = False, a_name: str | None = None,
            b_name: str | None = None) -> Comparison:
    """The :class:`Comparison` of ``a`` and ``b`` without raising (``refused`` lists what would be refused)."""
    relax = normalize_relax(relax)
    out, forced = [], False
    for fld, detail, va, vb in _diffs(a, b):
        how = "relaxed" if _relaxed_by(fld, detail, relax) else "forced" if force else None
        forced |= how == "forced"
        out.append(Difference(fld, detail, va, vb, how))
    return Comparison(a_name or _name(a), b_name or _name(b), tuple(out), relax, forced)


def check_comparable(a, b, *, relax=(), force: bool = False, what: str = "combine them",
                     a_name: str | None = None, b_name: str | None = None, hint: str | None = None,
                     error: type[Exception] = CubeMismatchError, forceable: bool = True) -> Comparison:
    """Refuse to combine ``a`` and ``b`` (cubes, their attributes, or stored fingerprints) unless every difference
    of their fingerprints is in a field named in ``relax`` or ``force`` is set.

    Returns the :class:`Comparison` (what differed, what was relaxed, whether force was needed) for the caller to
    record. Raises ``error`` with one line naming the first refused field and both values in words, ending with
    ``hint`` and, if ``forceable``, the way to force it.
    """
    res = compare(a, b, relax=relax, force=force, a_name=a_name, b_name=b_name)
    refused = res.refused
    if refused:
        first = refused[0]
        more = ""
        if len(refused) > 1:
            others = sorted({d.field for d in refused[1:]} - {first.field}) or [first.field]
            more = f" (and {len(refused) - 1} more: {', '.join(others)})"
        hint = hint or "use cubes made with the same model, weights, radiometry, numerics and tiling"
        tail = f", or pass --force (force=True) to {what} anyway" if forceable else ""
        raise error(f"{res.a} and {res.b} are not comparable: {first.words(res.a, res.b)}{more}; {hint}{tail}")
    return res


def cube_label(ds) -> str:
    """A short name for messages: the cube's path when known, else ``cube <id>``."""
    if isinstance(ds, Mapping) and not _is_xarray(ds):
        if ds.get("rule") == RULE:
            return "the recorded cube"
        prov = ds.get("geodino", ds)
        return f"cube {prov.get('cube_id', '?')}" if isinstance(prov, Mapping) else "the cube"
    enc = getattr(ds, "encoding", {}) or {}
    if enc.get("source"):
        return str(enc["source"])
    prov = ds.attrs.get("geodino", {}) if hasattr(ds, "attrs") else {}
    return f"cube {prov.get('cube_id', '?')}"


def _name(ds) -> str:
    label = cube_label(ds)
    return label if label.startswith(("cube ", "the ")) else f"cube {label}"


# --------------------------------------------------------------------------------------------------- grids
def _grid(ds):
    """(CRS, affine, shape) of a cube's patch grid, from odc-geo's ``ds.odc.geobox``."""
    from geodino.grid import cube_geobox

    g = cube_geobox(ds)
    return g.crs, tuple(g.affine)[:6], tuple(g.shape.yx)


def _crs_name(crs) -> str:
    return "none" if crs is None else f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt()


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
    detail = {"crs": f"CRS {_crs_name(ca)} vs {_crs_name(cb)}", "transform": f"transform {list(ta)} vs {list(tb)}",
              "shape": f"shape {sa} vs {sb}"}
    hint = ("warp one scene onto the other's grid before embedding" if not reproject_hint
            else "pass align='reproject' (--align reproject) to resample the second cube onto the first's grid")
    raise CubeMismatchError(f"cubes {cube_label(a)} and {cube_label(b)} are on different grids "
                            f"({'; '.join(detail[d] for d in diffs)}): {hint}")

