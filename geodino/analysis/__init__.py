"""Analysis of feature cubes of any size: PCA images, similarity search, clustering, sampling at geometries and
change between cubes. Every function takes a cube (a Dataset from :func:`geodino.open_cube`) or its path, and returns
one type: ``pca(cube)`` one DataArray, ``pca_maps(cubes)`` a list (one map per cube, on one shared fit; likewise
``pca_rgb_maps``, ``cluster_maps``, ``feature_maps``; ``similarity(...).maps``). Maps come back lazy (dask), NaN or a
declared nodata on invalid patches, with the cube's georeference. Fits use a seeded random sample of valid patches,
so memory does not grow with the cube. Opened cubes also offer the same functions as ``ds.geodino.<name>(...)``.
"""

from geodino.analysis import accessor as _accessor  # noqa: F401  (registers ds.geodino / da.geodino)
from geodino.analysis.features import feature_map, feature_maps
from geodino.analysis.change import change
from geodino.analysis.cluster import cluster, cluster_maps, fit_clusters
from geodino.analysis.pca import PCAFit, fit_pca, pca, pca_maps, pca_rgb, pca_rgb_maps
from geodino.analysis.sample import PartlyOutsideWarning, sample
from geodino.analysis.similarity import SimilarityResult, query_vector, similarity, top_patches

__all__ = ["pca", "pca_maps", "pca_rgb", "pca_rgb_maps", "fit_pca", "PCAFit", "similarity", "SimilarityResult",
           "query_vector", "top_patches", "cluster", "cluster_maps", "fit_clusters", "sample", "PartlyOutsideWarning",
           "change", "feature_map", "feature_maps"]
