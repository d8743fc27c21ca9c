"""Writing a cube's compact version (``geodino compress``): the int8 unit-vector product of
:mod:`geodino.cube.compact`, fitted on a sample of the source's valid patches, with its cosine fidelity on
held-out patches.

The output is a path or a URL (``s3://bucket/compact.zarr``), written through :func:`geodino.cube.storage
.zarr_store`. A local output is written under a staging name and renamed into place once complete (a compact cube
it replaces stays until then). An object store has no rename: the cube is written in place under its lease
(:class:`~geodino.cube.storage.CubeLease`), marked ``incomplete`` until its last chunk is written, and a failed
write removes what it wrote; a compact cube it replaces (``overwrite``) is removed first.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from geodino.cube.compact import ATTR, DEFAULT_COMPONENTS, DEFAULT_SAMPLE, SCHEME, _encode_fn, fit_basis
from geodino.cube.reading import as_cube, feature_arrays, is_count
from geodino.cube.sampling import random_patches, row_bands, unit_rows, valid_counts
from geodino.cube.storage import CubeLease, check_folder, cube_url, delete_keys, is_local, zarr_store
from geodino.cube.store import STATUS_ATTR, _open_root, is_cube, remove_cube, stray_keys
from geodino.errors import ConfigError, CubeError, CubeExistsError, SampleError

__all__ = ["CompressSummary", "compress", "stored_bytes"]


@dataclass(frozen=True)
class CompressSummary:
    """What ``geodino compress`` made and how faithful it is (cosine of decoded vs source features, on held-out
    sample patches)."""

    output: str
    components: int
    source_features: int
    sample: int
    bytes_per_patch: int
    float16_bytes_per_patch: int
    stored_bytes_per_patch: float
    source_stored_bytes_per_patch: float
    cosine_mean: float
    cosine_p01: float
    cosine_min: float
    explained_variance: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_output(out: str, overwrite: bool, storage_options: dict | None = None) -> None:
    if is_local(out):
        check_folder(out, "the compact cube")
        present = os.path.exists(out)
    else:
        present = bool(stray_keys(out, storage_options=storage_options))  # the lease is not the cube
    if not present:
        return
    if not overwrite:
        raise CubeExistsError(f"{out} exists: pass --overwrite (overwrite=True) to replace it, or choose another "
                              "output path")
    if not is_cube(out, storage_options=storage_options):
        raise CubeExistsError(f"{out} exists and is not a geodino cube: refusing to delete it even with "
                              "--overwrite; choose another output path")


def compress(cube, output: str | os.PathLike, *, k: int = DEFAULT_COMPONENTS, sample: int = DEFAULT_SAMPLE,
             seed: int = 0, overwrite: bool = False, storage_options: dict | None = None) -> CompressSummary:
    """Write the compact version of ``cube`` (a Dataset from :func:`geodino.open_cube` or a path) to ``output``.

    The basis is fitted on ``sample`` random valid patches, less a fifth (at most 2,000) held out to measure the
    cosine fidelity, which is recorded in the cube. The output is marked complete only once every chunk is
    written. ``output`` is a path or a URL (``storage_options``: obstore's settings for it).
    """
    import xarray as xr
    from zarr.codecs import BloscCodec

    ds = as_cube(cube)
    out = cube_url(output)
    if isinstance(cube, (str, os.PathLike)) and cube_url(cube) == out or ds.encoding.get("source") and \
            cube_url(ds.encoding["source"]) == out:
        raise CubeExistsError("the compact cube cannot replace its source: choose another output path")
    _check_output(out, overwrite, storage_options)
    if "features" not in ds or "valid" not in ds:
        raise CubeError("not a geodino cube (it needs `features` and `valid`): open one with geodino.open_cube")
    d = int(ds.sizes["feature"])
    if not is_count(k) or k > d:
        raise ConfigError(f"k must be an integer in 1..{d} (the cube's features), got {k!r}")
    counts = valid_counts(ds)
    total = int(counts.sum())
    if total and k > total:
        raise SampleError(f"k={k} is larger than the number of valid patches ({total}): choose k <= {total}")
    x = random_patches(ds, sample, seed, counts=[counts])
    x = x[np.random.default_rng(seed).permutation(len(x))]
    n_held = min(2000, len(x) // 5)  # held out of the fit, to measure fidelity on unseen patches
    fit_x, held = x[n_held:], x[:n_held] if n_held else x
    if len(fit_x) < k:
        raise SampleError(f"k={k} is larger than the sample ({len(fit_x)} patches to fit on): raise the sample "
                          "size (--sample) or lower k")
    basis = fit_basis(fit_x, k, seed)
    codes, norm = basis.encode(held)
    cos = np.sum(unit_rows(basis.decode(codes, norm)) * unit_rows(held), axis=-1)

    feats, valid = feature_arrays(ds)
    f = feats.data
    enc = xr.apply_ufunc(_encode_fn(basis), feats, valid, input_core_dims=[["feature"], []],
                         output_core_dims=[["component"]], dask="parallelized", output_dtypes=[np.float32],
                         dask_gufunc_kwargs={"output_sizes": {"component": k + 1}})
    gm = {"grid_mapping": "spatial_ref"}
    codes_da = enc.isel(component=slice(0, k)).astype(np.int8).transpose("component", "y", "x")
    codes_da.attrs = {"long_name": f"{k}-d unit vectors quantised to int8 (x 127 / compact_scale)", **gm}
    norm_da = enc.isel(component=k).astype(np.float16)
    norm_da.attrs = {"long_name": "norm of the PCA projection (decoding scale)", **gm}
    keep = [n for n in ("valid", "cls", "tile_status") if n in ds]
    prov = dict(ds.attrs.get("geodino", {}))
    src_id = prov.get("cube_id")
    prov["cube_id"] = uuid.uuid4().hex
    explained = float(np.sum(basis.explained_variance_ratio))
    from geodino.cube.compat import basis_digest

    meta = {"scheme": SCHEME, "version": 1, "components": k, "source_features": d, "sample": int(len(fit_x)),
            "basis_sha256": basis_digest(basis.mean, basis.components, basis.scale),
            "held_out": int(len(held)), "seed": int(seed), "source_cube_id": src_id,
            "source": str(ds.encoding.get("source", "")), "quantisation": "codes = round(127 * (z / |z|) / scale)",
            "explained_variance": explained,
            "explained_variance_ratio": [float(r) for r in basis.explained_variance_ratio],
            "fidelity": {"cosine_mean": float(np.mean(cos)), "cosine_p01": float(np.percentile(cos, 1)),
                         "cosine_min": float(np.min(cos)), "patches": int(len(held))}}
    attrs = {key: val for key, val in ds.attrs.items() if key not in ("geodino", "geodino_status", ATTR)}
    attrs.update({"title": "geodino compact feature cube", "geodino": prov, "geodino_status": "incomplete",
                  ATTR: meta})
    out_ds = xr.Dataset(
        {"codes": codes_da, "norm": norm_da, "valid": ds["valid"],
         **{n: ds[n].load() for n in keep if n != "valid"},  # per-tile arrays: small
         "compact_mean": (("feature",), basis.mean, {"long_name": "mean of the unit features (PCA centre)"}),
         "compact_components": (("component", "feature"), basis.components, {"long_name": "PCA basis (rows)"}),
         "compact_scale": (("component",), basis.scale, {"long_name": "int8 scale per component"})},
        attrs=attrs)
    out_ds = out_ds.assign_coords({n: ds[n] for n in ("spatial_ref", "tile_x_bounds", "tile_y_bounds")
                                   if n in ds.coords})
    cy, cx = f.chunks[1][0], f.chunks[2][0]
    blosc = [BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")]
    encoding = {"codes": {"chunks": (k, cy, cx), "compressors": blosc},
                "norm": {"chunks": (cy, cx), "compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]}}
    for name in keep:
        out_ds[name].encoding = {k2: v2 for k2, v2 in ds[name].encoding.items() if k2 in ("chunks", "compressors")}
    for name in list(out_ds.variables):
        if name not in encoding and name not in keep:
            out_ds[name].encoding = {}
    if is_local(out):
        _write_local(out_ds, f, encoding, out, overwrite)
    else:
        _write_remote(out_ds, f, encoding, out, overwrite, storage_options)
    stored = stored_bytes(out, ("codes", "norm"), storage_options=storage_options) / max(total, 1)
    src_stored = stored_bytes(ds.encoding.get("source"), ("features",)) / max(total, 1)
    return CompressSummary(out, k, d, int(len(fit_x)), k + 2, 2 * d, round(stored, 2), round(src_stored, 2),
                           meta["fidelity"]["cosine_mean"], meta["fidelity"]["cosine_p01"],
                           meta["fidelity"]["cosine_min"], explained)


def _write(out_ds, f, encoding, target: str, storage_options: dict | None = None) -> None:
    """The cube into ``target``'s store, marked complete last."""
    store = zarr_store(target, read_only=False, storage_options=storage_options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")  # the lease object
        # metadata and small arrays now; the (y, x) arrays a band of chunk rows at a time, so that each dask
        # graph, and the scheduler memory it takes, stays bounded however large the cube
        # a new local staging folder must be empty ("w-"); a remote prefix holds this run's lease ("a": the checks
        # before, under the lease, left nothing else there)
        out_ds.to_zarr(store, mode="w-" if is_local(target) else "a", zarr_format=3, consolidated=True,
                       encoding=encoding, compute=False)
        spatial = out_ds[["codes", "norm", "valid"]]
        spatial = spatial.drop_vars([c for c in spatial.coords if "y" not in spatial[c].dims])
        for r0, band in row_bands(f, 1):
            rs = slice(r0, r0 + band.shape[1])
            spatial.isel(y=rs).to_zarr(store, region={"y": rs}, zarr_format=3, consolidated=False)
    _mark_complete(store)


def _mark_complete(store) -> None:
    import zarr

    root = zarr.open_group(store, mode="r+", zarr_format=3)
    root.attrs[STATUS_ATTR] = "complete"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store)


def _write_local(out_ds, f, encoding, out: str, overwrite: bool) -> None:
    """Written under a staging name beside the output and renamed into place once complete: a run stopped
    anywhere (disk full, a signal) leaves no partial compact cube, and an earlier one it replaces stays until
    then."""
    run_id = uuid.uuid4().hex[:8]
    outp = Path(out)
    staging, old = outp.with_name(f".{outp.name}.{run_id}.partial"), outp.with_name(f".{outp.name}.{run_id}.old")
    try:
        _write(out_ds, f, encoding, str(staging))
        _check_output(out, overwrite)  # again: nothing may have appeared there meanwhile
        if outp.exists():
            outp.rename(old)
        staging.rename(outp)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not outp.exists():
            old.rename(outp)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_remote(out_ds, f, encoding, out: str, overwrite: bool, storage_options: dict | None) -> None:
    """On an object store (no rename): in place under the cube's lease, marked incomplete until done; a failed
    write removes every object it wrote (an earlier compact cube at ``out`` was removed before, with
    ``overwrite``)."""
    with CubeLease(out, storage_options=storage_options):
        _check_output(out, overwrite, storage_options)  # under the lease: no other writer meanwhile
        if stray_keys(out, storage_options=storage_options):
            remove_cube(out, storage_options=storage_options)  # a geodino cube (checked again here)
        try:
            _write(out_ds, f, encoding, out, storage_options)
        except BaseException:
            try:  # the prefix held nothing but the lease before: every other object is this run's
                delete_keys(out, stray_keys(out, storage_options=storage_options), storage_options=storage_options)
            except Exception:  # noqa: BLE001 - the store may be what failed; the cube stays marked incomplete
                pass
            raise


def stored_bytes(path, names, *, storage_options: dict | None = None) -> float:
    """Compressed bytes of some arrays of a cube (through zarr's API), 0 when unknown."""
    if not path:
        return 0.0
    try:
        root = _open_root(path, "r", storage_options)
        return float(sum(root[n].nbytes_stored() for n in names if n in root))
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0
