"""Which vectors of a cube are indexed: a small registry of vector sources.

A vector source says what kind of vectors it yields (:class:`VectorKind`: name, dtype, dimension), yields the
cube's valid patch vectors chunk by chunk (never the whole cube at once), and reads the vectors of given patches
(for queries). ``features`` reads the cube's ``features`` array; the compact int8 product registers its own
source under another name with :func:`register_vectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from geodino.cube.store import WRITTEN
from geodino.errors import CubeError, VectorIndexError

__all__ = ["VectorKind", "VectorSource", "FeatureVectors", "VECTOR_SOURCES", "register_vectors", "vector_source"]


@dataclass(frozen=True)
class VectorKind:
    """What an index holds: ``name`` (the source), element ``dtype`` and dimension ``dim``."""

    name: str
    dtype: str
    dim: int

    def __str__(self) -> str:
        return f"{self.name} ({self.dtype} x {self.dim})"

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dim": self.dim}


class VectorSource(Protocol):
    name: str

    def kind(self, root) -> VectorKind:
        """The kind of vectors this source yields from the cube's zarr group ``root``."""

    def blocks(self, root) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(vectors [n, dim], rows [n], cols [n])`` of the valid patches, one tile chunk at a time."""

    def at(self, root, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The vectors ``[n, dim]`` of patches (rows, cols); invalid patches are refused."""


class FeatureVectors:
    """The cube's ``features(feature, y, x)`` at its valid patches (float16 or float32)."""

    name = "features"

    def kind(self, root) -> VectorKind:
        f = root["features"]
        return VectorKind(self.name, str(f.dtype), int(f.shape[0]))

    def blocks(self, root):
        feats, valid, status = root["features"], root["valid"], root["tile_status"][...]
        n = feats.chunks[1]
        for ty, tx in zip(*np.nonzero(status == WRITTEN)):
            rs = slice(ty * n, min((ty + 1) * n, feats.shape[1]))
            cs = slice(tx * n, min((tx + 1) * n, feats.shape[2]))
            v = valid[rs, cs]
            if not v.any():
                continue
            r, c = np.nonzero(v)
            block = feats[:, rs, cs]
            yield np.ascontiguousarray(block[:, r, c].T), r + rs.start, c + cs.start

    def at(self, root, rows, cols):
        feats, valid = root["features"], root["valid"]
        rows, cols = np.asarray(rows, int), np.asarray(cols, int)
        ok = np.array([bool(valid[r, c]) for r, c in zip(rows, cols)])
        if not ok.all():
            raise CubeError(f"{int((~ok).sum())} of the query points fall on patches without valid features "
                            "(nodata or masked): move them onto the scene")
        return np.stack([feats[:, r, c] for r, c in zip(rows, cols)]) if len(rows) else \
            np.zeros((0, feats.shape[0]), feats.dtype)


VECTOR_SOURCES: dict[str, Callable[[], VectorSource]] = {"features": FeatureVectors}


def register_vectors(name: str, factory: Callable[[], VectorSource]) -> None:
    """Make ``factory()`` the vector source called ``name`` (e.g. the compact int8 product)."""
    VECTOR_SOURCES[name] = factory


def vector_source(name: str) -> VectorSource:
    try:
        return VECTOR_SOURCES[name]()
    except KeyError:
        raise VectorIndexError(f"unknown vector source {name!r}; choose one of {', '.join(VECTOR_SOURCES)}") from None
