"""Cheap checks that what a command names exists, and where to get it when it does not.

Standard library only (and ``huggingface_hub.constants`` for the cache folder), so the command line runs them
before it imports torch, GDAL or xarray and answers a wrong path in a fraction of a second (see
:mod:`geodino.cli`). The library runs the same checks where it opens those inputs, so a wrong path reads the same
one line from a notebook as from the shell. The hints say what README's "Getting the weights and the data" says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from geodino.errors import (CubeError, DatasetError, GeodinoError, RasterError, RasterNotFoundError, VectorIndexError,
                            WeightsNotFoundError)

__all__ = ["is_remote", "require_scene", "require_raster", "require_cube", "require_index", "require_file",
           "require_weights", "weights_hint", "geobench_root", "GEOBENCH_HINT", "META_DOWNLOADS"]

META_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
GEOBENCH_HF = "recursix/geo-bench-1.0"
GEOBENCH_HINT = (f"get GEO-Bench v1 with `hf download {GEOBENCH_HF} --repo-type dataset --local-dir DIR`, unzip its "
                 "zips in place, and set GEO_BENCH_DIR=DIR (README: Getting the weights and the data)")
CLASSIFICATION_DIR, SEGMENTATION_DIR = "classification_v1.0", "segmentation_v1.0"

# Meta's file names and the Hugging Face repos of the same weights: dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth is
# facebook/dinov3-vitl16-pretrain-sat493m, dinov3_vitl16_chmv2_dpt_head-3703d643.pth is
# facebook/dinov3-vitl16-chmv2-dpt-head
_OFFICIAL = re.compile(r"(dinov3_[a-z0-9]+_[a-z0-9_]+?)(?:-[0-9a-f]{8})?\.pth")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_remote(path: str) -> bool:
    """A URL or a GDAL virtual-filesystem path (``/vsi...``), rather than a local file."""
    return "://" in path or path.startswith("/vsi")


def require_raster(path: str | os.PathLike) -> None:
    """A local input raster must exist and be a file (URLs and ``/vsi`` paths are checked where they are opened)."""
    s = str(path)
    if is_remote(s) or s.lstrip().startswith("<"):  # a URL, or VRT XML text
        return
    p = Path(s)
    if not p.exists():
        raise RasterNotFoundError(f"input raster {s} does not exist")
    if p.is_dir():
        raise RasterError(f"{s} is a directory, not a raster")


def require_scene(arg: str | os.PathLike) -> None:
    """A scene argument: a raster, or a STAC Item/ItemCollection JSON file (``collection.json#ITEM_ID`` too)."""
    s = str(arg)
    if is_remote(s):
        return
    base = s.partition("#")[0] if "#" in s else s
    if base.lower().endswith(".json"):
        if not Path(base).is_file():
            raise RasterNotFoundError(f"STAC file {base} does not exist")
        return
    require_raster(s)


def require_cube(path: str | os.PathLike, what: str = "cube") -> None:
    """A local geodino cube must be a zarr v3 store (a folder with ``zarr.json``); URLs are checked when opened."""
    s = str(path)
    if is_remote(s):
        return
    p = Path(s)
    if not p.exists():
        raise CubeError(f"{what} {s} does not exist: give the path of a geodino cube (.zarr)")
    if p.is_file():
        raise CubeError(f"{s} is a file, not a cube (a zarr folder): give the path of a geodino cube")
    if not (p / "zarr.json").is_file():
        raise CubeError(f"{s} is not a zarr v3 store (no zarr.json): give the path of a geodino cube")


def require_index(path: str | os.PathLike) -> None:
    """A similarity index is a folder that ``geodino index`` wrote (with its ``index.json``)."""
    p = Path(path)
    if not (p / "index.json").is_file():
        what = "does not exist" if not p.exists() else "is not a geodino index (no index.json; an interrupted build?)"
        raise VectorIndexError(f"{p} {what}: build one with `geodino index CUBES... -o {p}`")


def require_file(path: str | os.PathLike, what: str, hint: str = "", error=None) -> None:
    """``path`` must be an existing file (``what`` names it in the message; ``hint`` says how to make or get it)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return
    why = "is a directory, not a file" if p.is_dir() else "does not exist"
    raise (error or GeodinoError)(f"{what} {path} {why}{': ' + hint if hint else ''}")


def weights_hint(source: str) -> str:
    """Where the weights ``source`` names come from (Meta's download form, the Hugging Face repo), in one clause."""
    name = Path(str(source)).name
    m = _OFFICIAL.fullmatch(name)
    if m:
        repo = "facebook/" + m.group(1).replace("_", "-")
        return (f"it is Meta's official checkpoint: request the download links at {META_DOWNLOADS} and give the "
                f"file's path, or take the same weights from Hugging Face: accept the licence at "
                f"https://huggingface.co/{repo}, run `hf download {repo}`, then pass --weights {repo} "
                "(README: Getting the weights and the data)")
    if _REPO_ID.fullmatch(str(source)) and not str(source).startswith((".", "/")):
        return (f"accept the licence at https://huggingface.co/{source}, run `hf download {source}` once (or pass "
                "--allow-download on a machine with network access), or give a local file "
                "(README: Getting the weights and the data)")
    return ("give a .pth or .safetensors file, an HF snapshot directory, or a Hugging Face repo id in the local "
            "cache (README: Getting the weights and the data)")


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import constants  # light: paths only

    snaps = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snaps.is_dir() and any(snaps.iterdir())


def require_weights(weights: str | os.PathLike | None, allow_download: bool = False) -> None:
    """Weights a command names must be a local file or folder, or a hub id in the local Hugging Face cache (or
    downloadable with ``allow_download``); ``None`` and ``"random"`` need nothing."""
    if weights is None or str(weights) == "random":
        return
    s = str(weights)
    if Path(os.path.expanduser(s)).exists():
        return
    if _REPO_ID.fullmatch(s) and not s.startswith((".", "/")):
        if allow_download or _in_hf_cache(s):
            return
        raise WeightsNotFoundError(f"weights {s} are not in the local Hugging Face cache: {weights_hint(s)}")
    raise WeightsNotFoundError(f"weights file {s} not found: {weights_hint(s)}")


def geobench_root(path: str | os.PathLike | None = None) -> Path:
    """The GEO-Bench root: ``path``, else ``$GEO_BENCH_DIR``; it must hold ``classification_v1.0/`` or
    ``segmentation_v1.0/``."""
    p = path or os.environ.get("GEO_BENCH_DIR")
    if not p:
        raise DatasetError(f"no GEO-Bench directory: pass --benchmark-dir or set GEO_BENCH_DIR to the folder holding "
                           f"{CLASSIFICATION_DIR}/ and {SEGMENTATION_DIR}/; {GEOBENCH_HINT}")
    root = Path(p).expanduser()
    if not root.is_dir():
        raise DatasetError(f"GEO-Bench directory {root} does not exist; {GEOBENCH_HINT}")
    if not ((root / CLASSIFICATION_DIR).is_dir() or (root / SEGMENTATION_DIR).is_dir()):
        raise DatasetError(f"{root} holds neither {CLASSIFICATION_DIR}/ nor {SEGMENTATION_DIR}/: point "
                           f"--benchmark-dir at the GEO-Bench root; {GEOBENCH_HINT}")
    return root
