"""Stage 4 of the pipeline: georeferenced zarr v3 feature cubes (writing, resuming, opening) on any zarr store:
local paths, s3:// and other object-store or fsspec URLs (storage.py: stores and the writer's lease); a mosaic
cube's per-tile scene choice and the manifest and STAC catalogue beside mosaic cubes (``mosaic.py``)."""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "store": ["CubeLayout", "create_cube", "CubeWriter", "CubeLock", "CubeLease", "finalize_cube", "open_cube",
              "read_attrs", "is_cube", "remove_cube", "tile_status", "PENDING", "WRITTEN", "SKIPPED", "FAILED"],
})
