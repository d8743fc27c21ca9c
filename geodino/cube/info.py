"""A summary of a cube: grid, provenance and completeness (what `geodino info` prints), for feature cubes, their
compact product and the height cubes of `geodino canopy`. A tile status that cannot be read, or that contradicts a
cube marked complete, makes the completeness ``damaged`` with the reason."""

from __future__ import annotations

import numpy as np

from geodino.cube.store import (FAILED, HEIGHTS_PRODUCT, PENDING, PRODUCT_ATTR, SKIPPED, STATUS_ATTR, WRITTEN,
                                _open_root, read_attrs, tile_status)
from geodino.errors import CubeError

__all__ = ["cube_info"]


def cube_info(path, *, storage_options: dict | None = None) -> dict:
    """What `geodino info` prints of the cube at ``path`` (a path or URL)."""
    attrs = read_attrs(path, storage_options=storage_options)
    if "geodino" not in attrs:
        raise CubeError(f"{path} is a zarr store but not a geodino cube")
    root = _open_root(path, "r", storage_options)
    compact = attrs.get("geodino_compact")
    product = attrs.get(PRODUCT_ATTR, "features")
    if product == HEIGHTS_PRODUCT:  # (y, x) metres at pixel resolution, one tile core per chunk
        data = root["heights"]
        shape, features, tile = list(data.shape), None, data.chunks[0]
    else:
        data = root["codes"] if compact and "features" not in root else root["features"]
        shape, features, tile = list(data.shape[1:]), data.shape[0], data.chunks[1]
    status, problem = _status(path, storage_options, shape, tile, attrs)
    crs = attrs.get("proj:code") or ("custom WKT" if attrs.get("proj:wkt2") else "no CRS (pixel coordinates)")
    state = "damaged" if problem else attrs.get(STATUS_ATTR)
    return {
        "product": product,
        "grid": {"shape": shape, "features": features, "dtype": str(data.dtype),
                 "crs": crs, "transform": attrs.get("spatial:transform"), "bounds": attrs.get("spatial:bbox"),
                 "chunks": list(data.chunks), "shards": list(data.shards) if data.shards else None},
        "completeness": {"status": state, **({"problem": problem} if problem else {}), "total": int(status.size),
                         "written": int(np.sum(status == WRITTEN)), "skipped": int(np.sum(status == SKIPPED)),
                         "pending": int(np.sum(status == PENDING)), "failed": int(np.sum(status == FAILED)),
                         "failed_tiles": _failed_tiles(status, attrs["geodino"].get("failed_tiles", {}))},
        "provenance": attrs["geodino"],
        **({"compact": compact} if compact else {}),
    }


def _status(path, storage_options, grid: list[int], n: int, attrs) -> tuple[np.ndarray, str | None]:
    """The tile status array and, when it cannot be trusted, why: unreadable, or contradicting a cube marked
    complete (pending or failed tiles in a complete cube: the array was damaged or emptied). ``grid`` is the (y, x)
    shape of the cube's data, ``n`` the side of a tile in it."""
    shape = (-(-grid[0] // n), -(-grid[1] // n))
    fix = "re-create the cube (the same `geodino embed` command with --overwrite) or restore it from a copy"
    try:
        status = np.asarray(tile_status(path, storage_options=storage_options))
    except Exception as e:  # noqa: BLE001 - a missing or undecodable array: the cube is damaged, say so
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return np.full(shape, PENDING, np.uint8), f"its tile_status cannot be read ({first}): {fix}"
    if attrs.get(STATUS_ATTR) == "complete":
        bad = int(np.sum((status == PENDING) | (status == FAILED)))
        if bad:
            return status, (f"it is marked complete, but its tile_status says {bad} of {status.size} tiles are not "
                            f"done: tile_status was damaged or emptied; {fix}")
    return status, None


def _failed_tiles(status: np.ndarray, reasons: dict) -> list[dict]:
    """Each tile marked failed ("ty,tx") and why, as the last run recorded it."""
    return [{"tile": f"{ty},{tx}", "reason": reasons.get(f"{ty},{tx}", "source window could not be read")}
            for ty, tx in zip(*np.nonzero(status == FAILED))]
