"""Cloud Optimized GeoTIFFs of any georeferenced map: PCA images, clusters, similarity, change, chosen feature
channels, and the class maps and heights of later products.

The map (lazy or not) is streamed chunk by chunk into a tiled intermediate GeoTIFF (rioxarray), turned into a COG
with internal overviews by rio-cogeo, checked with rio-cogeo's validator, and only then moved to its name (a local
path) or uploaded (``s3://`` and other object stores, through :mod:`geodino.cube.storage`), so a failed or
interrupted export never leaves a file or object that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geodino.cube.storage import check_folder  # noqa: F401  (re-exported: commands check folders through it)
from geodino.errors import ConfigError, GeodinoError, OutputExistsError, folder_fault

__all__ = ["write_cog", "write_rgb_cog", "write_labels_cog", "provenance_tags", "palette", "check_output",
           "check_folder", "CogError"]


class CogError(GeodinoError, RuntimeError):
    """The written file did not validate as a Cloud Optimized GeoTIFF."""


def check_output(path: str | os.PathLike, overwrite: bool, *, storage_options: dict | None = None) -> str:
    """Refuse an existing output without ``overwrite`` (and any output whose folder does not exist). ``path`` is a
    local path or an object-store URL such as ``s3://bucket/map.tif`` (an existing object is refused the same
    way). Returns the output as a string: the local path, or the URL."""
    from geodino.cube.storage import cube_url, exists, is_dir, is_local

    if not is_local(path):
        url = cube_url(path)
        if is_dir(url, storage_options=storage_options):
            raise OutputExistsError(f"{url} is a folder (a prefix holding objects): choose a file name for the "
                                    "output")
        if exists(url, storage_options=storage_options) and not overwrite:
            raise OutputExistsError(f"{url} exists: pass --overwrite (overwrite=True) to replace it, or choose "
                                    "another output path")
        return url
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{p} is a folder: choose a file name for the output")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists: pass --overwrite (overwrite=True) to replace it, or choose another "
                                "output path")
    blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot write {p}: {blocker} is a file, not a folder; choose another output path")
    if not p.parent.is_dir():
        raise ConfigError(f"cannot write {p}: the folder {p.parent} does not exist")
    return os.fspath(p)


def _overview_levels(h: int, w: int, bs: int) -> int:
    """How many overview levels (each half the last) the COG gets: rio-cogeo's own rule (halve while the smaller
    side exceeds a block), less trailing levels that would be one block across yet more than 512 px along.

    Such a level is tiled (bs x bs blocks), but rio-cogeo's validator takes "block width == overview width" for
    a striped overview once a side exceeds 512 px, and refuses the file: a 1024-px-wide, 4096-px-tall map at
    256-px blocks did so at its second overview. Those levels add nothing one tile across would not.
    """
    levels, f = 0, 1
    while min(w // f, h // f) > bs:
        f *= 2
        levels += 1
    while levels:
        ow, oh = -(-w // 2**levels), -(-h // 2**levels)  # GDAL rounds overview sizes up
        if not (ow <= bs and max(ow, oh) > 512):
            break
        levels -= 1
    return levels


def _as_2d_or_3d(data):
    import xarray as xr

    if not isinstance(data, xr.DataArray):
        raise ConfigError(f"write_cog takes an xarray.DataArray with x/y dims and a CRS, got {type(data).__name__}")
    if "x" not in data.dims or "y" not in data.dims:
        raise ConfigError(f"the map needs x and y dimensions, it has {data.dims}")
    other = [d for d in data.dims if d not in ("y", "x")]
    if len(other) > 1:
        raise ConfigError(f"the map may have at most one dimension besides y and x (bands), it has {other}")
    data = data.transpose(*other, "y", "x")
    return data.rename({other[0]: "band"}) if other and other[0] != "band" else data


def _write_stage(arr, path: Path, dtype: np.dtype, nodata, bs: int, scale_offset: tuple | None = None,
                 photometric: str | None = None, colormap: dict | None = None) -> None:
    """The map into a tiled GeoTIFF, one block-aligned window at a time (each a small dask compute).

    Written here rather than with ``rio.to_raster``: rioxarray reopens the file for every dask chunk and, with
    chunks smaller than the GeoTIFF's blocks, rewrites compressed blocks again and again (time and file size grow
    with the map); aligned windows through one open handle keep both linear and memory to one window.
    """
    import dask
    import rasterio
    from rasterio.windows import Window

    from geodino.cube.reading import local_scheduler

    h, w = arr.sizes["y"], arr.sizes["x"]
    bands = arr.sizes["band"] if "band" in arr.dims else 1
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=dtype.name, crs=arr.rio.crs,
                   transform=arr.rio.transform(), nodata=nodata, tiled=True, blockxsize=bs, blockysize=bs,
                   compress="deflate", BIGTIFF="IF_SAFER")
    if photometric:  # the COG driver copies the stage's colour interpretation
        profile["photometric"] = photometric
    tags = {k: str(v) for k, v in arr.attrs.items() if not k.startswith("_") and k not in ("grid_mapping",)}
    with rasterio.open(path, "w", **profile) as dst:
        if tags:
            dst.update_tags(**tags)
        if colormap is not None:  # a palette band from the start: rio-cogeo keeps it (and has nothing to warn about)
            dst.write_colormap(1, colormap)
        if scale_offset is not None:  # GDAL band scale/offset: value = stored * scale + offset (rio-cogeo keeps it)
            dst.scales, dst.offsets = (scale_offset[0],) * bands, (scale_offset[1],) * bands
        for r0 in range(0, h, bs):
            for c0 in range(0, w, bs):
                win = arr.isel(y=slice(r0, r0 + bs), x=slice(c0, c0 + bs))
                block = np.asarray(dask.compute(win.data, scheduler=local_scheduler())[0])
                if block.dtype.kind == "f" and not np.isnan(nodata):
                    block = np.where(np.isnan(block), nodata, block)
                block = block.astype(dtype, copy=False)
                if block.ndim == 2:
                    block = block[None]
                dst.write(block, window=Window(c0, r0, block.shape[2], block.shape[1]))


# Why rio-cogeo and not odc-geo's save_cog_with_dask (issue 24, point 1; measured on a 2-core Intel Xeon, the
# bench_analysis cubes of dim 384, maps at patch resolution, each run a fresh process under /usr/bin/time -v, the two
# writers interleaved, two repetitions): on the 20000 px cube's 1250 x 1250 px 3-band float32 maps, this writer took
# 9.2/7.8 s (features 0,1,2) and 11.6/10.4 s (pca_rgb) at a peak RSS of 276/269 and 372/375 MiB; save_cog_with_dask
# (256-px dask chunks, blocksize [256, 128], deflate + float predictor, tifffile/imagecodecs) took 18.2/14.9 s and
# 20.4/18.4 s at 384/382 and 525/525 MiB. At 2000 px both took 0.3-0.4 s at the same RSS (248-250, 357-358 MiB).
# Both outputs passed cog_validate, with identical pixels over the map; but odc-geo's 20000 px files came out
# 1264 x 1264 px (14 extra rows and columns of nodata past the 1250 px map, same origin; not investigated further),
# and odc-geo has no public way to write GDAL metadata tags (provenance, the head's card): they went in through its
# private ``_gdal_sample_descriptions`` hook. So it is slower,
# its memory grows with the map (+108 MiB features, +167 MiB pca_rgb from 2000 to 20000 px against +21 and +15 here)
# and it needs a private hook and two more dependencies: the staged rio-cogeo writer stays. Object stores are served
# by staging locally and uploading once (geodino.cube.storage.staged_output), not by odc-geo's boto3 multipart path.
def write_cog(data, path: str | os.PathLike, *, nodata, overwrite: bool = False, tags: dict | None = None,
              colormap: dict | None = None, dtype: str | None = None, blocksize: int | None = None,
              overview_resampling: str | None = None, compress: str = "deflate", scale: float | None = None,
              offset: float | None = None, photometric: str | None = None,
              storage_options: dict | None = None) -> str:
    """Write a georeferenced ``DataArray`` (``(y, x)`` or ``(band, y, x)``, lazy or not) as a validated COG.

    ``nodata`` is required (``np.nan`` for float maps): NaN cells are written as it and declared. ``tags`` go into
    the GeoTIFF metadata; ``scale``/``offset`` declare GDAL band scaling of stored integers (``value = stored *
    scale + offset``); ``colormap`` (``{value: (r, g, b[, a])}``) suits single-band integer maps. Overviews use
    ``nearest`` for integer maps and ``average`` for float ones unless ``overview_resampling`` says otherwise.
    ``photometric="RGB"`` declares a 3-band uint8 map a colour image (GIS tools then show it in colour).
    ``path`` is a local path or an object-store URL (``s3://bucket/map.tif``; ``storage_options`` are obstore's
    settings, credentials otherwise come from the environment as for cubes): the COG is made and validated in a
    local staging folder, then uploaded in one go, so a failed export leaves no object.
    Returns the output as a string (the local path, or the URL). Raises
    :class:`OutputExistsError` if the output exists and ``overwrite`` is false.
    """
    import rasterio
    from rasterio.env import GDALVersion
    from rio_cogeo.cogeo import cog_translate, cog_validate
    from rio_cogeo.profiles import cog_profiles

    from geodino.cube.storage import staged_output

    out = check_output(path, overwrite, storage_options=storage_options)
    arr = _as_2d_or_3d(data)
    if arr.rio.crs is None:
        raise ConfigError("the map has no CRS: a COG needs one (write it with .rio.write_crs, or export a map "
                          "made from a georeferenced cube)")
    dtype = np.dtype(dtype or (np.float32 if arr.dtype.kind == "f" else arr.dtype))
    if nodata is None:
        raise ConfigError("nodata is required (np.nan for float maps, a value outside the data for integer ones)")
    if np.isnan(nodata) and dtype.kind != "f":
        raise ConfigError(f"nodata NaN needs a float dtype, not {dtype}: give an integer nodata value")
    if colormap is not None and ("band" in arr.dims and arr.sizes["band"] > 1 or dtype not in (np.uint8, np.uint16)):
        raise ConfigError("a colormap needs a single-band uint8 or uint16 map")
    h, w = arr.sizes["y"], arr.sizes["x"]
    # GDAL's COG driver takes tiles of 128 px and more (its BLOCKSIZE option declares min='128'; smaller values
    # are used but warned about on every write); 512-px tiles cost GDAL more memory for no gain at patch
    # resolution. The larger side (256 or 128 px) that gives the map an overview level; 128 for maps too small
    # for one (under 256 px a side they need none).
    bs = blocksize or next((b for b in (256, 128) if max(h, w) >= 2 * b and _overview_levels(h, w, b)), 128)
    resampling = overview_resampling or ("average" if dtype.kind == "f" else "nearest")
    # the stage and the COG are made beside a local output (renamed into place) or in a temporary folder for an
    # object store (then one upload): either way the output appears only once the COG validated
    with staged_output(out, overwrite=overwrite, storage_options=storage_options, suffix=".tif") as final:
        stage = final.with_name(final.name[:-len(".tif")] + ".stage.tif")
        try:
            # GDAL's block cache: 16 MB (overviews are built from disk block by block), unless the user set
            # GDAL_CACHEMAX; a larger cache only fills up with the map and makes memory grow with its size
            with rasterio.Env(**({} if os.environ.get("GDAL_CACHEMAX") else {"GDAL_CACHEMAX": 16})):
                so = None if scale is None and offset is None else (1.0 if scale is None else scale, offset or 0.0)
                _write_stage(arr, stage, dtype, nodata, bs, so, photometric, colormap)
                profile = {**cog_profiles.get(compress), "blockxsize": bs, "blockysize": bs}
                if not GDALVersion.runtime().at_least("3.11"):
                    profile.pop("interleave", None)  # the COG driver has INTERLEAVE from GDAL 3.11 (pixel before)
                if dtype.kind == "f":
                    profile["predictor"] = 3
                with rasterio.open(stage) as src:
                    cog_translate(src, final, profile, nodata=nodata, overview_resampling=resampling,
                                  in_memory=False, overview_level=_overview_levels(h, w, bs),
                                  quiet=True, colormap=colormap, use_cog_driver=True,
                                  additional_cog_metadata={str(k): str(v) for k, v in (tags or {}).items()})
            ok, errors, _warnings = cog_validate(final, quiet=True)
            if not ok:
                raise CogError(f"the exported file is not a valid COG ({'; '.join(errors)}): please report this")
        except Exception as e:  # GDAL words a failed write without its errno: ask the folder (disk full...)
            code = None if isinstance(e, GeodinoError) or isinstance(e, OSError) and isinstance(e.errno, int) \
                else folder_fault(final.parent)
            if code is None:
                raise
            raise OSError(code, f"{os.strerror(code)}; GDAL could not write the COG", str(out)) from e
        finally:
            if stage.exists():
                stage.unlink()
    return out


def provenance_tags(ds) -> dict[str, str]:
    """GeoTIFF tags that tie an export to its cube: cube id, model, weights sha256, radiometry, source."""
    prov = ds.attrs.get("geodino", {}) if hasattr(ds, "attrs") else {}
    model = prov.get("model", {}) or {}
    tags = {"geodino_cube_id": prov.get("cube_id"), "geodino_model": model.get("name"),
            "geodino_weights_sha256": (model.get("weights") or {}).get("sha256"),
            "geodino_random_weights": model.get("random_weights"),
            "geodino_radiometry": (prov.get("radiometry") or {}).get("kind"),
            "geodino_source": (prov.get("source") or {}).get("path")}
    return {k: str(v) for k, v in tags.items() if v is not None}


def palette(n: int) -> dict[int, tuple[int, int, int, int]]:
    """``n`` distinguishable colours (matplotlib's tab20, then a seeded spread) for a class-map colormap."""
    base = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
            (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
            (219, 219, 141), (158, 218, 229)]
    rng = np.random.default_rng(0)
    extra = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(max(0, n - len(base)))]
    return {i: (*rgb, 255) for i, rgb in enumerate((base + extra)[:n])}


RGB_NODATA = 0  # an RGB image's valid pixels are 1..255 in every band, so 0 marks nodata in all three


def write_rgb_cog(rgb, path: str | os.PathLike, *, overwrite: bool = False, tags: dict | None = None,
                  storage_options: dict | None = None) -> str:
    """A display image (``(band=3, y, x)`` in 0..1, NaN nodata, such as :func:`geodino.analysis.pca_rgb`) as a
    3-band uint8 COG declared RGB, so that GIS tools show it in colour: ``1 + round(254 * v)``, nodata 0."""
    arr = _as_2d_or_3d(rgb)
    if "band" not in arr.dims or arr.sizes["band"] != 3:
        raise ConfigError(f"an RGB image needs 3 bands, this map has {arr.sizes.get('band', 1)}")
    valid = arr.notnull().all("band")
    out = (1 + (arr.clip(0, 1) * 254).round()).where(valid, RGB_NODATA).astype(np.uint8)
    out.attrs = {k: v for k, v in rgb.attrs.items() if k not in ("_FillValue",)}
    out.attrs["rgb_encoding"] = "1 + round(254 x value in 0..1); 0 = nodata"
    return write_cog(out, path, nodata=RGB_NODATA, overwrite=overwrite, tags=tags, photometric="RGB",
                     overview_resampling="average", storage_options=storage_options)


def write_labels_cog(labels, path: str | os.PathLike, *, nodata_label: int = -1, overwrite: bool = False,
                     tags: dict | None = None, colormap: dict | None = None,
                     storage_options: dict | None = None) -> str:
    """A class map (integer labels ``0..n-1``, ``nodata_label`` elsewhere) as a uint8 COG (uint16 beyond 255
    classes) with nodata the dtype's largest value and a colormap (:func:`palette` unless given)."""
    n = int(labels.attrs.get("n_clusters") or labels.attrs.get("n_classes") or int(labels.max().compute()) + 1)
    dtype, nodata = (np.uint8, 255) if n < 255 else (np.uint16, 65535)
    if n >= 65535:
        raise ConfigError(f"{n} classes do not fit a uint16 class map")
    out = labels.where(labels != nodata_label, nodata).astype(dtype)
    out.attrs = dict(labels.attrs)
    return write_cog(out, path, nodata=nodata, overwrite=overwrite, tags=tags,
                     colormap=colormap if colormap is not None else palette(n), overview_resampling="nearest",
                     storage_options=storage_options)
