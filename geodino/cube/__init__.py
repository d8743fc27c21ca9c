"""Stage 4 of the pipeline: georeferenced zarr v3 feature cubes (writing, resuming, opening) on any zarr store:
local paths, s3:// and other object-store or fsspec URLs (storage.py: stores and the writer's lease); a mosaic
cube's per-tile scene choice and the manifest and STAC catalogue beside mosaic cubes (``mosaic.py``)."""

from geodino.cube.store import (FAILED, PENDING, SKIPPED, WRITTEN, CubeLayout, CubeLease, CubeLock, CubeWriter,
                                create_cube, finalize_cube, is_cube, open_cube, read_attrs, remove_cube, tile_status)

__all__ = ["CubeLayout", "create_cube", "CubeWriter", "CubeLock", "CubeLease", "finalize_cube", "open_cube",
           "read_attrs", "is_cube", "remove_cube", "tile_status", "PENDING", "WRITTEN", "SKIPPED", "FAILED"]
