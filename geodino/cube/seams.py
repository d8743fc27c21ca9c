"""The seam metric: how much more neighbouring patches differ across tile-core boundaries than inside cores.

``seam_ratio = mean distance(adjacent pairs straddling a core boundary) / mean distance(adjacent pairs inside
cores)``, over horizontal and vertical neighbours whose patches are both valid. 1.0 means seamless: crossing a
boundary changes features no more than moving one patch inside a core does. Distances are cosine distances for
feature vectors and absolute differences for scalar maps (e.g. canopy heights).

The cube is read one strip of tile rows at a time (plus one row of the next strip), so the metric runs in
bounded memory on cubes of any size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SeamReport", "seam_ratio", "cube_seam_ratio"]


@dataclass(frozen=True)
class SeamReport:
    ratio: float
    straddling: float  # mean distance of pairs across core boundaries
    inside: float  # mean distance of pairs inside cores
    n_straddling: int
    n_inside: int

    def to_dict(self) -> dict:
        return asdict(self)


def _distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Per-position distance of two aligned blocks: [D, ...] vectors (cosine) or [...] scalars (absolute)."""
    if metric == "absolute":
        return np.abs(a.astype(np.float64) - b.astype(np.float64))
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = np.sum(a * b, axis=0)
    den = np.sqrt(np.sum(a * a, axis=0) * np.sum(b * b, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - num / den


class _Acc:
    def __init__(self):
        self.s = np.zeros(2)
        self.n = np.zeros(2, dtype=np.int64)

    def add(self, d: np.ndarray, ok: np.ndarray, straddle: np.ndarray) -> None:
        ok = ok & np.isfinite(d)
        for i, sel in enumerate((~straddle & ok, straddle & ok)):
            self.s[i] += float(d[sel].sum())
            self.n[i] += int(sel.sum())

    def report(self) -> SeamReport:
        inside, strad = (self.s / np.maximum(self.n, 1)).tolist()
        ratio = strad / inside if self.n[0] and self.n[1] and inside > 0 else float("nan")
        return SeamReport(ratio, strad, inside, int(self.n[1]), int(self.n[0]))


def _accumulate(acc: _Acc, block: np.ndarray, valid: np.ndarray, row0: int, core_y: int, core_x: int,
                metric: str, rows: int) -> None:
    """Pairs of ``block`` ([D,] h, w, starting at global row ``row0``) whose first patch lies in its first
    ``rows`` rows: horizontal pairs in those rows, vertical pairs (r, r+1) for r in those rows."""
    h, w = valid.shape
    r = min(rows, h)
    # horizontal neighbours (x, x+1); ``...`` keeps a vector block's leading feature axis
    strad = np.broadcast_to((np.arange(1, w) % core_x == 0)[None, :], (r, w - 1))
    acc.add(_distances(block[..., :r, :-1], block[..., :r, 1:], metric), valid[:r, :-1] & valid[:r, 1:], strad)
    # vertical neighbours (y, y+1)
    r = min(rows, h - 1)
    if r > 0:
        strad = np.broadcast_to(((row0 + np.arange(1, r + 1)) % core_y == 0)[:, None], (r, w))
        acc.add(_distances(block[..., :r, :], block[..., 1:r + 1, :], metric), valid[:r] & valid[1:r + 1], strad)


def seam_ratio(values, core: int | tuple[int, int], valid=None, metric: str = "cosine",
               strip_rows: int | None = None) -> SeamReport:
    """Seam ratio of a patch grid ``values``: ``[D, H, W]`` vectors (``metric="cosine"``) or ``[H, W]`` scalars
    (``metric="absolute"``), whose tile cores are ``core`` patches (or pixels) on a side, aligned to the origin.

    ``values``/``valid`` may be numpy arrays or lazy arrays (xarray/dask/zarr): they are read in strips of
    ``strip_rows`` rows (default: one tile-core row).
    """
    if metric not in ("cosine", "absolute"):
        raise ValueError(f"metric must be 'cosine' or 'absolute', not {metric!r}")
    cy, cx = (core, core) if isinstance(core, int) else core
    shape = values.shape[-2:]
    if valid is None:
        valid = np.ones(shape, dtype=bool)
    step = strip_rows or cy
    acc = _Acc()
    H = shape[0]
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step + 1)  # one extra row for the vertical pairs of the strip's last row
        block = np.asarray(values[..., r0:r1, :])
        finite = np.isfinite(block)
        v = np.asarray(valid[r0:r1, :]).astype(bool) & (np.all(finite, axis=0) if metric == "cosine" else finite)
        _accumulate(acc, block, v, r0, cy, cx, metric, min(step, H - r0))
    return acc.report()


def cube_seam_ratio(cube) -> SeamReport:
    """The seam ratio of a feature cube (path or opened Dataset) at its tile-core size."""
    from geodino.cube.store import open_cube

    ds = cube if hasattr(cube, "features") else open_cube(cube)
    core = int(ds.features.encoding.get("chunks", ds.features.data.chunksize)[-1])
    tiling = ds.attrs.get("geodino", {}).get("tiling", {})
    if tiling.get("tile") and tiling.get("patch"):
        core = int(tiling["tile"]) // int(tiling["patch"])
    return seam_ratio(ds.features.data, core, ds.valid.data)
