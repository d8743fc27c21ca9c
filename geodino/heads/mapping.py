"""A trained head applied to a whole cube: :func:`predict_proba` gives the class probabilities as a lazy,
georeferenced ``xarray.DataArray``; :func:`predict_map` writes them as COGs.

:func:`predict_proba` is ``dask.array.map_overlap`` over the cube's chunks (tile cores) with a halo of
neighbouring patches for pixel-level heads (1 patch for the linear head's bilinear upsampling, 4 for the DPT head's
convolutions; clipped at the cube's edges, as the head applied to the whole cube would see it), so the map has no
seams at chunk boundaries and memory stays that of a few chunks whatever the cube's size. Its grid is the cube's
(patch heads) or the cube's refined ``label_scale`` times (pixel heads), from odc-geo (``wrap_xr`` of the zoomed
``GeoBox``); NaN where the cube is invalid.

:func:`predict_map` runs the head once, into a temporary zarr array beside the output (in bands of chunk rows),
and from it streams two COGs by :func:`geodino.export.write_cog`:

* ``map.tif``: the class map (uint8, nodata 255, the head's colour table);
* ``map_proba.tif``: one float32 band per class (NaN nodata), or ``map_score.tif`` for a detection head (the
  probability of ``positive``).

(Handing the lazy probabilities to both writers instead would run the head twice, once per file: the writers
compute window by window, each on its own.) Both carry the head's card and the cube's provenance in their tags. A
head trained on another model, weights, radiometry or feature width is refused before anything is written
(:func:`geodino.heads.card.check_head_fits`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodino.heads.card import TrainedHead, card_json, check_head_fits, load_head

__all__ = ["predict_proba", "predict_map", "PredictResult", "head_proba", "HALO"]

log = logging.getLogger(__name__)

HALO = {"logreg": 0, "knn": 0, "linear": 1, "dpt": 4}  # patches of context a head needs around a chunk


@dataclass(frozen=True)
class PredictResult:
    class_map: str  # the local path, or the URL
    probabilities: str
    classes: tuple[str, ...]
    scale: int
    chunks: int
    seconds: float


def _applier(head: TrainedHead) -> Callable[[np.ndarray], np.ndarray]:
    """``apply(f)``: probabilities ``[K, h*s, w*s]`` float32 from features ``f [D, h, w]`` (NaN-free)."""
    k, s = len(head.classes), head.scale
    if head.kind == "logreg":
        from scipy.special import softmax

        from geodino.heads.train import linear_logits

        def logreg(f):  # the patches as rows [h*w, D], their probabilities back as [K, h, w]
            p = softmax(linear_logits(head.tensors, f.reshape(len(f), -1).T), axis=1)
            return p.T.reshape(k, *f.shape[1:]).astype(np.float32)

        return logreg
    if head.kind == "knn":
        from geodino.heads.train import knn_proba

        n = int((head.card.get("fit") or {}).get("k", 20))
        return lambda f: knn_proba(head.tensors, f.reshape(len(f), -1).T, n, k).T.reshape(k, *f.shape[1:])
    import torch
    import torch.nn.functional as F

    from geodino.heads.segmentation import DPTHead, LinearHead

    d, feats = int(head.card["feature_dim"]), (head.card.get("fit") or {}).get("dpt_features") or 64
    module = LinearHead(d, k) if head.kind == "linear" else DPTHead(d, k, features=int(feats))
    module.load_state_dict({name: torch.as_tensor(np.asarray(v)) for name, v in head.tensors.items()})
    module.eval()

    @torch.inference_mode()
    def apply(f):
        logits = F.interpolate(module(torch.as_tensor(f, dtype=torch.float32)[None, None]),
                               size=(f.shape[1] * s, f.shape[2] * s), mode="bilinear", align_corners=False)
        return torch.softmax(logits[0], dim=0).numpy().astype(np.float32)

    return apply


def head_proba(head: TrainedHead, features: np.ndarray) -> np.ndarray:
    """Class probabilities ``[K, h*s, w*s]`` of one window of features ``[D, h, w]`` (NaN read as 0)."""
    return _applier(head)(np.nan_to_num(np.asarray(features, np.float32), nan=0.0))


def _predict_block(f: np.ndarray, v: np.ndarray, *, apply, k: int, s: int, halo: int, block_info=None) -> np.ndarray:
    """Probabilities ``[K, h*s, w*s]`` of one chunk's core from its window (the core and up to ``halo`` patches
    around it, fewer at the cube's edges); NaN on invalid patches, all NaN without a valid one."""
    _, (y0, y1), (x0, x1) = block_info[None]["array-location"]
    h, w = (y1 - y0) // s, (x1 - x0) // s
    oy, ox = min(halo, y0 // s), min(halo, x0 // s)  # the halo above and left of the core in this window
    core = v[oy:oy + h, ox:ox + w]
    if not core.any():
        return np.full((k, h * s, w * s), np.nan, np.float32)
    f = np.asarray(f, np.float32)
    p = apply(np.where(v[None] & np.isfinite(f), f, 0.0))[:, oy * s:(oy + h) * s, ox * s:(ox + w) * s]
    p[:, ~np.repeat(np.repeat(core, s, 0), s, 1)] = np.nan
    return p


def _head(head) -> tuple[TrainedHead, str]:
    """The head and how messages name it."""
    if isinstance(head, (str, os.PathLike)):
        return load_head(head), f"head {head}"
    return head, "the head"


def predict_proba(cube, head, *, relax=(), force: bool = False):
    """Class probabilities of ``head`` (a :class:`TrainedHead` or its ``.safetensors`` path) on every valid patch of
    ``cube``: a lazy ``(band, y, x)`` float32 DataArray, one band per class, on the cube's grid refined
    ``head.scale`` times, NaN where the cube is invalid. Nothing is computed until asked. Refuses a head that does
    not fit the cube (:func:`geodino.heads.card.check_head_fits`; ``relax``/``force`` as there; what was relaxed
    or forced is in the ``geodino_compat`` attribute)."""
    from geodino.cube.reading import as_cubes

    [ds], _ = as_cubes(cube)
    return _predict(ds, *_head(head), relax=relax, force=force)


def _predict(ds, head: TrainedHead, label: str, *, relax, force):
    import dask.array as da
    from odc.geo.xr import wrap_xr

    from geodino.cube.reading import patch_grid
    from geodino.cube.sampling import feature_blocks
    from geodino.grid import crs_wkt

    comparison = check_head_fits(head, ds, head_label=label, relax=relax, force=force)
    k, s, halo = len(head.classes), head.scale, HALO[head.kind]
    f, v = feature_blocks(ds)
    probs = da.map_overlap(_predict_block, f, v, depth=[{0: 0, 1: halo, 2: halo}, {0: halo, 1: halo}],
                           boundary="none", trim=False, dtype=np.float32, apply=_applier(head), k=k, s=s, halo=halo,
                           chunks=((k,), tuple(c * s for c in f.chunks[1]), tuple(c * s for c in f.chunks[2])),
                           name=f"geodino-predict-{uuid.uuid4().hex}")
    gbox = patch_grid(ds, s)
    out = wrap_xr(probs, gbox, axis=1, dims=("band", "y", "x")).assign_coords(band=np.arange(1, k + 1))
    # the CRS as the cube gives it (rasterio's WKT: odc-geo writes another flavour of the same CRS)
    out = out.rio.write_crs(crs_wkt(gbox)).rio.write_transform(gbox.affine).rio.write_nodata(np.nan, encoded=False)
    out.name = "probabilities"
    out.attrs.update({"long_name": "class probabilities", "classes": json.dumps(list(head.classes)),
                      "geodino_head": head.kind})
    if comparison:
        out.attrs["geodino_compat"] = json.dumps(comparison.to_dict())
    if ds.attrs.get("geodino", {}).get("cube_id"):
        out.attrs["geodino_cube_id"] = ds.attrs["geodino"]["cube_id"]
    return out


def _outputs(output: str | os.PathLike, detection: bool):
    """The class map and the probabilities (or score) beside it: paths for a local ``output``, URLs for an object
    store (a URL is not a path: ``Path`` would fold its ``//``)."""
    import posixpath

    from geodino.cube.storage import cube_url, is_local

    suffix = "_score" if detection else "_proba"
    url = cube_url(output)
    if is_local(url):
        out = Path(url)
        return out, out.with_name(out.stem + suffix + (out.suffix or ".tif"))
    stem, ext = posixpath.splitext(url)
    return url, stem + suffix + (ext or ".tif")


def predict_map(cube, head, output: str | os.PathLike, *, overwrite: bool = False, relax=(), force: bool = False,
                progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Apply ``head`` (a :class:`TrainedHead` or its ``.safetensors`` path) to every valid patch of ``cube`` and
    write the class map to ``output`` and the probabilities (or detection score) beside it (module docstring).
    Refuses a head trained on features of another kind (:class:`geodino.errors.HeadMismatchError`; ``relax``
    names comparable fields that may differ, ``force`` accepts any difference but the feature width; what was
    relaxed or forced is recorded in the maps' ``geodino_compat`` tag) and existing outputs without
    ``overwrite``. ``progress(done, total)`` counts chunks."""
    import dask.array as da
    import zarr

    from geodino.cube.reading import as_cubes, local_scheduler
    from geodino.cube.sampling import row_bands
    from geodino.cube.storage import delete, put_atomic
    from geodino.export.cog import check_output, provenance_tags, write_cog, write_labels_cog

    t0 = time.perf_counter()
    head, label = _head(head)
    [ds], _ = as_cubes(cube)
    probs = _predict(ds, head, label, relax=relax, force=force)  # refuses a misfit head before any output
    card = head.card
    detection = bool(card.get("detection"))
    out_map, out_proba = _outputs(output, detection)
    check_output(out_map, overwrite)
    check_output(out_proba, overwrite)
    k, s = len(head.classes), head.scale
    p = probs.data
    run_id = uuid.uuid4().hex[:8]
    local = isinstance(out_map, Path)
    # an object-store pair is made in a local temporary folder, then uploaded (probabilities first, the map last)
    work = out_map.parent if local else Path(tempfile.mkdtemp(prefix="geodino-predict-"))
    names = [str(o).rpartition("/")[2] for o in (out_map, out_proba)]
    tmp = work / f".{names[0]}.{run_id}.proba.zarr"
    # the pair is one product: both are written under staging names and renamed into place together, so a run
    # stopped anywhere leaves neither half of it, nor changes an earlier pair
    staged = [work / f".{names[0]}.{run_id}.staged.tif", work / f".{names[1]}.{run_id}.staged.tif"]
    try:
        # one pass of the head, into zarr chunks that are the map's chunks (so the stores never share a chunk),
        # in bands of chunk rows: each graph, and what dask holds for it, is one band
        arr = zarr.create_array(str(tmp), shape=p.shape, dtype="float32", fill_value=np.nan,
                                chunks=(k, max(p.chunks[1]), max(p.chunks[2])), zarr_format=3)
        n_chunks, done = len(p.chunks[1]) * len(p.chunks[2]), 0
        for r0, band in row_bands(p, axis=1):
            da.store(band, arr, regions=(slice(None), slice(r0, r0 + band.shape[1]), slice(None)), lock=False,
                     scheduler=local_scheduler())
            done += len(band.chunks[1]) * len(band.chunks[2])
            if progress:
                progress(done, n_chunks)
        stored = probs.copy(data=da.from_zarr(arr))
        missing = da.isnan(stored.data[0])
        classes = da.where(missing, -1, da.argmax(da.where(da.isnan(stored.data), -1.0, stored.data), axis=0))
        tags = {**provenance_tags(ds), "geodino_head": head.kind, "geodino_classes": json.dumps(head.classes),
                "geodino_head_card": card_json(card)}
        if "geodino_compat" in probs.attrs:
            tags["geodino_compat"] = probs.attrs["geodino_compat"]
        if card.get("random_weights"):
            tags["geodino_note"] = "the cube's backbone had random weights: this map is meaningless"
        cmap = {i: (*[int(c) for c in card["colours"][i]], 255) for i in range(k)}
        cls_arr = stored[0].drop_vars("band").copy(data=classes.astype(np.int16)).rename("classes")
        cls_arr.attrs = {"n_classes": k}
        write_labels_cog(cls_arr, staged[0], nodata_label=-1, overwrite=True, tags=tags, colormap=cmap)
        second, what = ((stored[1].drop_vars("band").rename("score"), {"geodino_band": "probability of positive"})
                        if detection else
                        (stored, {"geodino_bands": json.dumps([f"probability of {c}" for c in head.classes])}))
        second.attrs = {}
        write_cog(second, staged[1], nodata=np.nan, overwrite=True, tags={**tags, **what})
        check_output(out_map, overwrite)  # again: nothing may have appeared there meanwhile
        check_output(out_proba, overwrite)
        put_atomic(out_proba, staged[1], overwrite=overwrite)  # local: renamed into place; remote: uploaded
        try:
            put_atomic(out_map, staged[0], overwrite=overwrite)
        except BaseException:
            delete(out_proba)  # neither half of the pair
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for q in staged:
            q.unlink(missing_ok=True)
        if not local:
            shutil.rmtree(work, ignore_errors=True)
    return PredictResult(str(out_map), str(out_proba), tuple(head.classes), s, n_chunks, time.perf_counter() - t0)
