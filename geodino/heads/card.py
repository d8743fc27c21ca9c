"""A trained head on disk: its tensors as safetensors, and a JSON card (kind, classes, colours, the cube's model and
radiometry fingerprint, label source, split and metrics) stored in the safetensors metadata and, for people, in a
``.json`` file beside it.

:func:`check_head_fits` is the refusal a head and a cube go through before a prediction: the card's fingerprint
(``compat``: the comparable fields of the cube it was trained on, and the fields its trainer relaxed) against the
cube's, through :func:`geodino.cube.compat.check_comparable` (the rule every consumer that mixes cubes calls), and
the feature width. A head trained on full features is refused on a compact cube and the reverse, since decoded
compact features are unit vectors in the basis' subspace, not the features the head saw.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geodino.errors import HeadError, HeadMismatchError

__all__ = ["TrainedHead", "save_head", "load_head", "cube_fingerprint", "head_fingerprint", "check_head_fits",
           "CARD_FORMAT", "HEAD_KINDS", "PATCH_KINDS", "PIXEL_KINDS"]

CARD_FORMAT = "geodino-head/1"
PATCH_KINDS = ("logreg", "knn")  # one prediction per patch
PIXEL_KINDS = ("linear", "dpt")  # label maps at label_scale cells per patch side
HEAD_KINDS = PATCH_KINDS + PIXEL_KINDS
_META_KEY = "geodino_head_card"


@dataclass(frozen=True)
class TrainedHead:
    """A head's tensors (``name -> array``) and its card (a JSON-able dict; see :func:`save_head`)."""

    tensors: dict = field(repr=False)
    card: dict

    @property
    def kind(self) -> str:
        return self.card["head"]

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def scale(self) -> int:
        return int(self.card.get("label_scale", 1))


def cube_fingerprint(ds) -> dict:
    """The parts of a cube's provenance that decide its features (what :mod:`geodino.cube.compat` compares)."""
    prov = dict(ds.attrs.get("geodino") or {})
    model = dict(prov.get("model") or {})
    return {"model": {k: model.get(k) for k in ("name", "weights", "arch_overrides", "embed_dim", "patch_size",
                                                "random_weights")},
            "normalization": prov.get("normalization"), "radiometry": prov.get("radiometry"),
            "numerics": {k: (prov.get("numerics") or {}).get(k) for k in ("precision", "quantize")},
            "cube_id": prov.get("cube_id"), "source": (prov.get("source") or {}).get("path")}


def _json_default(o):  # json writes tuples as lists itself; numpy scalars and arrays become Python values
    return o.tolist() if isinstance(o, (np.generic, np.ndarray)) else str(o)


def card_json(card: dict) -> str:
    return json.dumps(card, default=_json_default, sort_keys=False)


def _card_path(out: str) -> str:
    """The ``.json`` card beside a head file (a local path or a URL): its suffix replaced, as Path.with_suffix."""
    return os.path.splitext(out)[0] + ".json"


def save_head(head: TrainedHead, path: str | os.PathLike, *, overwrite: bool = False,
              storage_options: dict | None = None) -> str:
    """Write ``path`` (safetensors, the card in its metadata) and ``path`` with suffix ``.json`` (the card).

    ``path`` is a local path or an object-store URL (``s3://bucket/head.safetensors``). Each file is written in
    full to a temporary name (or uploaded in one PUT) and published whole, the card last, so an interrupted save
    leaves no head that looks complete. Returns the output as a string (the local path, or the URL)."""
    from safetensors.numpy import save as save_bytes

    from geodino.cube.storage import delete, put_atomic
    from geodino.export.cog import check_output

    out = check_output(path, overwrite, storage_options=storage_options)
    side = _card_path(out)
    check_output(side, overwrite, storage_options=storage_options)
    text = card_json(head.card)
    tensors = {k: np.ascontiguousarray(v) for k, v in head.tensors.items()}
    data = save_bytes(tensors, metadata={_META_KEY: text, "format": "np"})
    put_atomic(out, data, overwrite=overwrite, storage_options=storage_options)
    try:
        put_atomic(side, (json.dumps(json.loads(text), indent=2) + "\n").encode(), overwrite=overwrite,
                   storage_options=storage_options)
    except BaseException:
        delete(out, storage_options=storage_options)
        raise
    return out


def load_head(path: str | os.PathLike, *, storage_options: dict | None = None) -> TrainedHead:
    """Read a head written by :func:`save_head` (a path or a URL); anything else raises :class:`HeadError` with
    one line."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_bytes

    from geodino.cube.storage import is_local, read_bytes

    p = Path(path) if is_local(path) else str(path)
    missing = HeadError(f"head file {p} does not exist: train one with `geodino train` (geodino.heads.train)")
    if isinstance(p, Path) and not p.is_file():
        raise missing
    try:
        data = read_bytes(p, storage_options=storage_options)
    except FileNotFoundError:
        raise missing from None
    try:
        tensors = load_bytes(data)
        meta = _safetensors_metadata(data)
    except (SafetensorError, OSError, ValueError) as e:  # foreign or damaged files
        raise HeadError(f"cannot read head file {p} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}):"
                        " give a .safetensors head written by `geodino train`") from None
    try:
        card = json.loads(meta[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise HeadError(f"{p} is a safetensors file but not a geodino head (no card in its metadata): train one "
                        "with `geodino train`") from None
    if card.get("format") != CARD_FORMAT or card.get("head") not in HEAD_KINDS:
        raise HeadError(f"{p} holds a head of format {card.get('format')!r} / kind {card.get('head')!r}, which this "
                        f"geodino does not read (expected {CARD_FORMAT}, one of {list(HEAD_KINDS)})")
    return TrainedHead(tensors, card)


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's header (the format: an 8-byte little-endian header length,
    then the JSON header), which safetensors' in-memory ``load`` does not return."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("the header length exceeds the file")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def head_fingerprint(head: TrainedHead) -> dict:
    """The comparable fields of the cube the head was trained on (cards written before the compat record carry
    the provenance subset in ``cube``: the fields it lacks compare as "not recorded")."""
    from geodino.cube.compat import fingerprint

    compat = head.card.get("compat") or {}
    if compat.get("fingerprint"):
        return fingerprint(compat["fingerprint"])
    fp = head.card.get("cube") or {}
    return fingerprint({"model": fp.get("model") or {}, "normalization": fp.get("normalization"),
                        "radiometry": fp.get("radiometry"), "numerics": fp.get("numerics") or {}})


def check_head_fits(head: TrainedHead, ds, *, head_label: str = "the head", relax=(), force: bool = False):
    """Refuse a cube whose features are not those the head was trained on: another model, weights, normalisation,
    radiometry, precision, quantisation, tiling, compact or full features (unless the field is relaxed, here in
    ``relax`` or by the head's trainer, or ``force``), or another width (never forced). Returns the
    :class:`~geodino.cube.compat.Comparison` for the prediction to record."""
    from geodino.cube.compat import check_comparable, cube_label

    trained_relax = (head.card.get("compat") or {}).get("relax") or ()
    res = check_comparable(head_fingerprint(head), ds, relax=(*trained_relax, *relax), force=force,
                           what="apply the head", a_name=head_label, b_name=f"cube {cube_label(ds)}",
                           hint="train a head on a cube made the same way (or on this cube)" if head.card.get("compat")
                           else "this head's card predates the fields geodino now compares (tiling, compact or "
                                "full): retrain it",
                           error=HeadMismatchError)
    dim = int(head.card.get("feature_dim", -1))
    if dim != int(ds.sizes["feature"]):
        raise HeadMismatchError(f"{head_label} takes {dim} features per patch but cube {cube_label(ds)} has "
                                f"{ds.sizes['feature']}: train a head on this cube's features")
    return res
