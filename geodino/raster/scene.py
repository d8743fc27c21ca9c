"""What a scene argument names, turned into what :class:`geodino.raster.RasterSource` opens.

* a local raster path: unchanged;
* a remote raster (``https://.../x.tif``, ``s3://bucket/key.tif``, ``/vsi...``): its GDAL path, opened once here
  so that an unreachable server, a missing object or refused credentials fail with one clear line;
* a STAC Item (``item.json``, an item URL, or ``collection.json#ITEM_ID``): the chosen bands' assets stacked
  into VRT XML, with the item's metadata (:class:`geodino.raster.stac.StacScene`) alongside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from geodino.raster.remote import gdal_path, is_remote, object_url, open_remote
from geodino.raster.source import SourceIdentity, refresh_identity
from geodino.raster.stac import StacScene, identity_mtime, is_stac, item_refs, stac_scene, stac_vrt

__all__ = ["ResolvedScene", "resolve_scene", "scene_name", "expand_scenes"]


@dataclass(frozen=True)
class ResolvedScene:
    """``path`` and ``bands`` are what RasterSource takes; ``identity`` (None: RasterSource's own, from the file)
    is what a resumed run must see again; ``stac`` holds an item's metadata (None for plain rasters)."""

    path: str
    bands: str | list | None
    identity: SourceIdentity | None = None
    stac: StacScene | None = None

    def describe(self) -> dict | None:
        """The STAC part of a cube's provenance (None for plain rasters)."""
        return None if self.stac is None else self.stac.to_dict()


def resolve_scene(scene: str | os.PathLike, bands=None) -> ResolvedScene:
    """Resolve one scene argument (see the module docstring); ``bands`` is the user's ``--bands``."""
    arg = str(scene)
    if is_stac(arg):
        st = stac_scene(arg, bands)
        xml = stac_vrt(st)  # opens each asset (a missing or refused one is named here)
        # the item, and each asset read (a remote one by its ETag/Last-Modified/size, a local one by size/mtime)
        seen = [refresh_identity(p) for p in dict.fromkeys(b.path for b in st.bands)]
        objects = tuple(o for o, _ in seen)
        if any(changed for _, changed in seen):  # an asset was replaced since this process read it: again
            xml = stac_vrt(st)
        ident = SourceIdentity(f"stac:{st.item_href}#{st.item_id}?bands={','.join(b.token for b in st.bands)}",
                               len(xml), identity_mtime(st), objects)
        return ResolvedScene(xml, list(range(1, len(st.bands) + 1)), ident, st)
    if is_remote(arg):
        path = gdal_path(arg)
        with open_remote(path, arg):  # a missing object, refused credentials: said here
            pass
        ident = None
        if object_url(path) is not None:  # its ETag, Last-Modified and size (and GDAL's cache dropped if replaced)
            obj = refresh_identity(path)[0]
            ident = SourceIdentity(path, int(obj[3] or 0), 0.0, (obj,))
        return ResolvedScene(path, bands, ident)
    return ResolvedScene(arg, bands)


def scene_name(scene: str | os.PathLike) -> Path:
    """The path a scene's default cube name derives from: ``a/b.tif`` itself, ``c.json#ID`` -> ``c/../ID.json``
    beside the collection, and a URL's last path element in the working directory."""
    arg = str(scene)
    base, _, item = arg.partition("#")
    if item and is_stac(arg):
        parent = Path(".") if "://" in base else Path(base).parent
        return parent / f"{item}.json"
    if "://" in arg or arg.startswith("/vsi"):
        name = Path(urlparse(arg.split("://", 1)[-1] if arg.startswith("/vsi") else arg).path).name
        return Path(name or "scene")
    return Path(arg)


def expand_scenes(scenes: list[str]) -> list[str]:
    """Scene arguments with every multi-item STAC ItemCollection replaced by one ``collection.json#ITEM_ID``
    reference per item."""
    out: list[str] = []
    for s in scenes:
        out.extend(item_refs(str(s)) if is_stac(str(s)) else [str(s)])
    return out
