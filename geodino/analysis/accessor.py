"""The ``.geodino`` xarray accessors: ``ds.geodino.pca_rgb()`` on an opened cube, ``m.geodino.to_cog(path)`` on a
map. Importing :mod:`geodino` registers them when a cube is opened; they only forward to the library functions."""

from __future__ import annotations

import xarray as xr

# Importing this module imports the package :mod:`geodino.analysis` first, which imports all of these: importing
# them here, rather than in each method, costs nothing.
from geodino.analysis.change import change
from geodino.analysis.cluster import cluster
from geodino.analysis.features import feature_map
from geodino.analysis.pca import pca, pca_rgb
from geodino.analysis.sample import sample
from geodino.analysis.similarity import similarity
from geodino.cube.compat import check_comparable

__all__ = ["CubeAccessor", "MapAccessor"]


@xr.register_dataset_accessor("geodino")
class CubeAccessor:
    """Analysis of a feature cube (``geodino.open_cube(path).geodino``)."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def provenance(self) -> dict:
        """The cube's provenance (model, weights, radiometry, tiling, source...)."""
        return dict(self._ds.attrs.get("geodino", {}))

    def pca(self, n_components: int = 3, **kw):
        return pca(self._ds, n_components, **kw)

    def pca_rgb(self, **kw):
        return pca_rgb(self._ds, **kw)

    def cluster(self, k: int = 8, **kw):
        return cluster(self._ds, k, **kw)

    def similarity(self, positives=None, negatives=None, **kw):
        return similarity(self._ds, positives, negatives, **kw)

    def sample(self, geometries, **kw):
        return sample(self._ds, geometries, **kw)

    def change(self, other, **kw):
        """``1 - cos`` between this cube (before) and ``other`` (after)."""
        return change(self._ds, other, **kw)

    def feature_map(self, bands=(0, 1, 2)):
        return feature_map(self._ds, bands)

    def check_comparable(self, other, *, relax=(), force: bool = False):
        """The :class:`~geodino.cube.compat.Comparison` with ``other`` (a cube or a stored fingerprint): refuses
        differences in model, weights, radiometry, numerics, compact-ness or tiling unless relaxed by name or
        forced (:func:`geodino.cube.compat.check_comparable`)."""
        return check_comparable(self._ds, other, relax=relax, force=force)


@xr.register_dataarray_accessor("geodino")
class MapAccessor:
    """Exports of a georeferenced map (``m.geodino.to_cog(path)``)."""

    def __init__(self, da: xr.DataArray):
        self._da = da

    def to_cog(self, path, *, nodata=None, overwrite: bool = False, tags: dict | None = None, colormap=None, **kw):
        """Write the map as a Cloud Optimized GeoTIFF (nodata defaults to the map's declared one). A display image
        (:func:`~geodino.analysis.pca_rgb`) becomes a 3-band uint8 RGB COG that GIS tools show in colour."""
        from geodino.export.cog import write_cog, write_rgb_cog

        if self._da.attrs.get("geodino_display") == "rgb" and nodata is None and colormap is None and not kw:
            return write_rgb_cog(self._da, path, overwrite=overwrite, tags=tags)
        if nodata is None:
            nodata = self._da.rio.nodata
        return write_cog(self._da, path, nodata=nodata, overwrite=overwrite, tags=tags, colormap=colormap, **kw)
