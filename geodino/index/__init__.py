"""Similarity search across cubes: an approximate-nearest-neighbour index over valid patch vectors.

``build_index(cubes, "index/")`` streams the valid patches of complete cubes of one model into a faiss index (an
inverted file of float16 vectors; an exact scan below 50k vectors), with each vector's cube, CRS, x, y, row,
column and footprint in a GeoParquet sidecar; ``search`` answers k nearest neighbours (cosine similarity) as a
GeoDataFrame of patch footprints. Queries come from a point (the patch under it), from
positive and negative example points, or from any vectors. Which vectors are indexed is pluggable
(:mod:`geodino.index.vectors`: cube ``features``, decoded for compact cubes). The cubes of an index, and cubes
queries are taken from, are comparable by :mod:`geodino.cube.compat`; fields an index mixes on purpose are named
(``relax``) and recorded.
"""

from geodino.index.build import IndexInfo, build_index
from geodino.index.query import query_examples, query_near, sample_vectors
from geodino.index.search import VectorIndex, open_index, search
from geodino.index.vectors import VECTOR_SOURCES, FeatureVectors, VectorKind, register_vectors

__all__ = ["build_index", "IndexInfo", "open_index", "VectorIndex", "search", "query_near", "query_examples",
           "sample_vectors", "VECTOR_SOURCES", "FeatureVectors", "VectorKind", "register_vectors"]
