"""A trained head applied to a whole cube, chunk by chunk, into georeferenced COGs.

The cube is read one chunk (a tile core) at a time, with a halo of neighbouring patches for pixel-level heads (1
patch for the linear head's bilinear upsampling, 4 for the DPT head's convolutions), so the map has no seams at
chunk boundaries and memory stays that of one chunk whatever the cube's size. Class probabilities go into a
temporary zarr array beside the output; from it two COGs are streamed by :func:`geodino.export.write_cog`:

* ``map.tif``: the class map (uint8, nodata 255, the head's colour table), on the cube's grid (patch heads) or the
  cube's grid refined ``label_scale`` times (pixel heads);
* ``map_proba.tif``: one float32 band per class (NaN nodata), or ``map_score.tif`` for a detection head (the
  probability of ``positive``).

Both carry the head's card and the cube's provenance in their tags. A head trained on another model, weights,
radiometry or feature width is refused before anything is written (:func:`geodino.heads.card.check_head_fits`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodino.heads.card import PATCH_KINDS, TrainedHead, card_json, check_head_fits, load_head

__all__ = ["predict_map", "PredictResult", "head_proba", "HALO"]

log = logging.getLogger(__name__)

HALO = {"logreg": 0, "knn": 0, "linear": 1, "dpt": 4}  # patches of context a head needs around a chunk


@dataclass(frozen=True)
class PredictResult:
    class_map: Path
    probabilities: Path
    classes: tuple[str, ...]
    scale: int
    chunks: int
    seconds: float


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class _Applier:
    """``probs [K, h*s, w*s]`` float32 from features ``[D, h, w]`` (NaN-free) for one kind of head."""

    def __init__(self, head: TrainedHead):
        self.head = head
        self.kind = head.kind
        self.k = len(head.classes)
        self.s = head.scale
        self.module = None
        if self.kind not in PATCH_KINDS:
            import torch

            from geodino.heads.segmentation import DPTHead, LinearHead

            d = int(head.card["feature_dim"])
            feats = (head.card.get("fit") or {}).get("dpt_features") or 64
            m = LinearHead(d, self.k) if self.kind == "linear" else DPTHead(d, self.k, features=int(feats))
            m.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in head.tensors.items()})
            self.module = m.eval()

    def __call__(self, f: np.ndarray) -> np.ndarray:
        d, h, w = f.shape
        if self.kind == "logreg":
            from geodino.heads.train import linear_logits

            p = _softmax(linear_logits(self.head.tensors, f.reshape(d, -1).T), axis=1)
            return p.T.reshape(self.k, h, w).astype(np.float32)
        if self.kind == "knn":
            from geodino.heads.train import knn_proba

            k = int((self.head.card.get("fit") or {}).get("k", 20))
            return knn_proba(self.head.tensors, f.reshape(d, -1).T, k, self.k).T.reshape(self.k, h, w)
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.as_tensor(f, dtype=torch.float32)[None, None]
            logits = F.interpolate(self.module(x), size=(h * self.s, w * self.s), mode="bilinear",
                                   align_corners=False)
            return torch.softmax(logits[0], dim=0).numpy().astype(np.float32)


def head_proba(head: TrainedHead, features: np.ndarray) -> np.ndarray:
    """Class probabilities ``[K, h*s, w*s]`` of one window of features ``[D, h, w]`` (NaN read as 0)."""
    return _Applier(head)(np.nan_to_num(np.asarray(features, np.float32), nan=0.0))


def _grid_array(data, ds, scale: int, dims, name: str, attrs: dict):
    """``data`` on the cube's patch grid refined ``scale`` times, coordinates as cubes write them."""
    import xarray as xr

    from geodino.cube.georef import grid_coords
    from geodino.heads.labels import _label_geobox

    g = _label_geobox(ds, scale)
    arr = xr.DataArray(data, dims=dims, coords=grid_coords(g), name=name, attrs=attrs)
    return arr.rio.write_crs(ds.rio.crs).rio.write_transform(g.affine)


def _outputs(output: Path, detection: bool) -> tuple[Path, Path]:
    suffix = "_score" if detection else "_proba"
    return output, output.with_name(output.stem + suffix + (output.suffix or ".tif"))


def predict_map(cube, head, output: str | os.PathLike, *, overwrite: bool = False, relax=(), force: bool = False,
                progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Apply ``head`` (a :class:`TrainedHead` or its ``.safetensors`` path) to every valid patch of ``cube`` and
    write the class map to ``output`` and the probabilities (or detection score) beside it (module docstring).
    Refuses a head trained on features of another kind (:class:`geodino.errors.HeadMismatchError`; ``relax``
    names comparable fields that may differ, ``force`` accepts any difference but the feature width; what was
    relaxed or forced is recorded in the maps' ``geodino_compat`` tag) and existing outputs without
    ``overwrite``."""
    import dask.array as da
    import zarr

    from geodino.cube.reading import as_cubes
    from geodino.cube.sampling import feature_blocks
    from geodino.export.cog import check_output, provenance_tags, write_cog, write_labels_cog

    t0 = time.perf_counter()
    label = str(head) if isinstance(head, (str, os.PathLike)) else "the head"
    head = load_head(head) if isinstance(head, (str, os.PathLike)) else head
    [ds], _ = as_cubes(cube)
    comparison = check_head_fits(head, ds, head_label=f"head {label}" if label != "the head" else label,
                                 relax=relax, force=force)
    card = head.card
    detection = bool(card.get("detection"))
    out_map, out_proba = _outputs(Path(output), detection)
    check_output(out_map, overwrite)
    check_output(out_proba, overwrite)
    apply = _Applier(head)
    s, k, halo = apply.s, apply.k, HALO[head.kind]
    f, v = feature_blocks(ds)
    ye = np.concatenate([[0], np.cumsum(f.chunks[1])]).astype(int)
    xe = np.concatenate([[0], np.cumsum(f.chunks[2])]).astype(int)
    H, W = int(ye[-1]), int(xe[-1])
    run_id = uuid.uuid4().hex[:8]
    tmp = out_map.with_name(f".{out_map.name}.{run_id}.proba.zarr")
    # the pair is one product: both are written under staging names and renamed into place together, so a run
    # stopped anywhere leaves neither half of it, nor changes an earlier pair
    staged = [out_map.with_name(f".{out_map.name}.{run_id}.staged.tif"),
              out_proba.with_name(f".{out_proba.name}.{run_id}.staged.tif")]
    try:
        arr = zarr.create_array(str(tmp), shape=(k, H * s, W * s), dtype="float32", fill_value=np.nan,
                                chunks=(k, int(max(f.chunks[1])) * s, int(max(f.chunks[2])) * s), zarr_format=3)
        n_chunks = (len(ye) - 1) * (len(xe) - 1)
        done = 0
        for by in range(len(ye) - 1):
            for bx in range(len(xe) - 1):
                r0, r1, c0, c1 = ye[by], ye[by + 1], xe[bx], xe[bx + 1]
                R0, R1, C0, C1 = max(0, r0 - halo), min(H, r1 + halo), max(0, c0 - halo), min(W, c1 + halo)
                vwin = np.asarray(v[R0:R1, C0:C1].compute(), bool)
                core = vwin[r0 - R0:r1 - R0, c0 - C0:c1 - C0]
                done += 1
                if core.any():
                    fwin = np.asarray(f[:, R0:R1, C0:C1].compute(), np.float32)
                    fwin = np.where(vwin[None] & np.isfinite(fwin), fwin, 0.0)
                    p = apply(fwin)[:, (r0 - R0) * s:(r1 - R0) * s, (c0 - C0) * s:(c1 - C0) * s]
                    p[:, ~np.repeat(np.repeat(core, s, 0), s, 1)] = np.nan
                    arr[:, r0 * s:r1 * s, c0 * s:c1 * s] = p
                if progress:
                    progress(done, n_chunks)
        probs = da.from_zarr(arr)
        missing = da.isnan(probs[0])
        classes = da.where(missing, -1, da.argmax(da.where(da.isnan(probs), -1.0, probs), axis=0)).astype(np.int16)
        tags = {**provenance_tags(ds), "geodino_head": head.kind, "geodino_classes": json.dumps(head.classes),
                "geodino_head_card": card_json(card)}
        if comparison:
            tags["geodino_compat"] = json.dumps(comparison.to_dict())
        if card.get("random_weights"):
            tags["geodino_note"] = "the cube's backbone had random weights: this map is meaningless"
        cmap = {i: (*[int(c) for c in card["colours"][i]], 255) for i in range(k)}
        cls_arr = _grid_array(classes, ds, s, ("y", "x"), "classes", {"n_classes": k})
        write_labels_cog(cls_arr, staged[0], nodata_label=-1, overwrite=True, tags=tags, colormap=cmap)
        if detection:
            score = _grid_array(probs[1], ds, s, ("y", "x"), "score", {})
            write_cog(score, staged[1], nodata=np.nan, overwrite=True,
                      tags={**tags, "geodino_band": "probability of positive"})
        else:
            pr = _grid_array(probs, ds, s, ("band", "y", "x"), "probabilities", {})
            write_cog(pr, staged[1], nodata=np.nan, overwrite=True,
                      tags={**tags, "geodino_bands": json.dumps([f"probability of {c}" for c in head.classes])})
        check_output(out_map, overwrite)  # again: nothing may have appeared there meanwhile
        check_output(out_proba, overwrite)
        os.replace(staged[1], out_proba)
        os.replace(staged[0], out_map)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for q in staged:
            q.unlink(missing_ok=True)
    return PredictResult(out_map, out_proba, tuple(head.classes), s, n_chunks, time.perf_counter() - t0)
