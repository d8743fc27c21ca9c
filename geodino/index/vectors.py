"""Which vectors of a cube are indexed: a small registry of vector sources.

A vector source says what kind of vectors it yields (:class:`VectorKind`: name, dtype, dimension), yields the
cube's valid patch vectors chunk by chunk (never the whole cube at once), and reads the vectors of given patches
(for queries). Sources read a cube opened with :func:`geodino.open_cube` (the public reading layer), so
``features`` are the stored features of a full cube and the decoded ones (float32) of a compact cube. Other
sources register under their own name with :func:`register_vectors`.
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

    def kind(self, ds) -> VectorKind:
        """The kind of vectors this source yields from the opened cube ``ds``."""

    def count(self, ds) -> int:
        """How many vectors :meth:`blocks` yields."""

    def blocks(self, ds) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(vectors [n, dim], rows [n], cols [n])`` of the valid patches, one tile chunk at a time."""

    def at(self, ds, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The vectors ``[n, dim]`` of patches (rows, cols); invalid patches are refused."""


class FeatureVectors:
    """The cube's ``features(feature, y, x)`` at its valid patches (float16 or float32; compact cubes decoded)."""

    name = "features"

    def kind(self, ds) -> VectorKind:
        f = ds["features"]
        return VectorKind(self.name, str(f.dtype), int(f.shape[0]))

    def count(self, ds) -> int:
        from geodino.cube.sampling import valid_counts

        written = np.asarray(ds["tile_status"].values) == WRITTEN
        counts = valid_counts(ds)
        return int(counts[written[:counts.shape[0], :counts.shape[1]]].sum())

    def blocks(self, ds):
        from geodino.cube.sampling import feature_blocks

        f, v = feature_blocks(ds)  # one tile core per chunk
        status = np.asarray(ds["tile_status"].values)
        ye = np.concatenate([[0], np.cumsum(v.chunks[0])])
        xe = np.concatenate([[0], np.cumsum(v.chunks[1])])
        for ty, tx in zip(*np.nonzero(status == WRITTEN)):
            valid = np.asarray(v.blocks[ty, tx].compute(), bool)
            if not valid.any():
                continue
            r, c = np.nonzero(valid)
            block = np.asarray(f.blocks[0, ty, tx].compute())
            yield np.ascontiguousarray(block[:, r, c].T), r + ye[ty], c + xe[tx]

    def at(self, ds, rows, cols):
        from geodino.cube.reading import read_patches

        vectors, ok = read_patches(ds, rows, cols)
        if not ok.all():
            raise CubeError(f"{int((~ok).sum())} of the query points fall on patches without valid features "
                            "(nodata or masked): move them onto the scene")
        return vectors


VECTOR_SOURCES: dict[str, Callable[[], VectorSource]] = {"features": FeatureVectors}


def register_vectors(name: str, factory: Callable[[], VectorSource]) -> None:
    """Make ``factory()`` the vector source called ``name`` (e.g. the compact int8 product)."""
    VECTOR_SOURCES[name] = factory


def vector_source(name: str) -> VectorSource:
    try:
        return VECTOR_SOURCES[name]()
    except KeyError:
        raise VectorIndexError(f"unknown vector source {name!r}; choose one of {', '.join(VECTOR_SOURCES)}") from None
