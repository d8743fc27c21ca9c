"""STAC Items and ItemCollections as scenes: the chosen bands' assets stacked into one virtual raster.

An Item (a JSON file, an http(s) URL, or ``collection.json#ITEM_ID`` for one item of an ItemCollection) becomes a
:class:`StacScene`: the assets holding the requested bands (``--bands red,green,blue`` by ``eo:bands`` common
name, band name or asset key), their GDAL paths (``/vsicurl/``, ``/vsis3/``...), the item's projection
(``proj:code``/``proj:epsg``/``proj:wkt2``, ``proj:transform``, ``proj:shape``), its date, platform and
processing metadata, and the Sentinel-2 BOA offset that follows from them. :func:`stac_vrt` stacks the bands
into VRT XML that :class:`geodino.raster.RasterSource` opens like any raster; the metadata rides along as the
VRT's tags (``BOA_ADD_OFFSET``, ``PROCESSING_BASELINE``, ``PLATFORM``...), where the radiometry step reads it.

The Sentinel-2 L2A offset (DN to add before dividing by 10000), first rule that applies:

1. ``earthsearch:boa_offset_applied`` present: 0 if true (Earth Search already shifted the DNs; its maintainers
   call this flag the truth where its ``raster:bands`` offsets disagree), else -1000 for processing baseline
   >= 04.00 and 0 before;
2. ``raster:bands`` (or STAC 1.1 ``raster:``) offset and scale on every chosen asset, all equal: offset / scale;
3. processing baseline (``s2:processing_baseline``): -1000 from 04.00, else 0;
4. otherwise unknown (no ``BOA_ADD_OFFSET`` tag; the radiometry step decides).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from urllib.parse import urljoin, urlparse

from geodino.errors import BandError, CredentialsError, RasterNotFoundError, RemoteError, StacError
from geodino.raster.remote import gdal_path
from geodino.raster.vrt import VrtBand, stack_vrt

__all__ = ["StacBand", "StacScene", "is_stac", "load_items", "item_refs", "stac_scene", "stac_vrt"]

_RASTER_EXT = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf", ".h5")
_NOT_DATA = {"thumbnail", "overview", "metadata"}
_PROCESSING = ("s2:", "earthsearch:", "processing:", "landsat:", "sentinel:", "sat:", "view:", "eo:cloud_cover")
DEFAULT_BANDS = ("red", "green", "blue")


@dataclass(frozen=True)
class StacBand:
    """One chosen band: band ``band`` (1-based) of asset ``asset`` at ``href`` (GDAL path ``path``)."""

    token: str
    asset: str
    band: int
    href: str
    path: str
    name: str | None = None
    common_name: str | None = None
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class StacScene:
    """What geodino takes from a STAC Item: the chosen bands and the metadata radiometry and provenance need."""

    item_id: str
    item_href: str
    collection: str | None
    datetime: str | None
    platform: str | None
    constellation: str | None
    instruments: tuple[str, ...]
    crs: str | None  # as the item gives it: "EPSG:32629", or WKT2 / PROJJSON text
    epsg: int | None
    transform: tuple[float, ...] | None  # proj:transform of the first chosen asset (or the item)
    shape: tuple[int, int] | None  # proj:shape (rows, cols)
    bands: tuple[StacBand, ...]
    processing: dict = field(default_factory=dict, hash=False, compare=False)
    updated: str | None = None
    radiometry_hint: str | None = None  # "s2-l2a" | "landsat-c2-l2" | None
    boa_add_offset: float | None = None  # Sentinel-2 L2A offset in DN (see the module docstring)
    boa_offset_source: str | None = None

    def tags(self) -> dict[str, str]:
        """The VRT's dataset metadata (plain strings; what ``RasterSource.tags`` then holds)."""
        applied = self.processing.get("earthsearch:boa_offset_applied")
        offset = self.boa_add_offset is not None
        t = {"STAC_ITEM_ID": self.item_id, "STAC_ITEM_HREF": self.item_href, "STAC_COLLECTION": self.collection,
             "DATETIME": self.datetime, "PLATFORM": self.platform, "CONSTELLATION": self.constellation,
             "INSTRUMENTS": ",".join(self.instruments) or None, "RADIOMETRY_HINT": self.radiometry_hint,
             "PROCESSING_BASELINE": _baseline(self.processing),
             "BOA_OFFSET_APPLIED": None if applied is None else "true" if applied else "false",
             "BOA_ADD_OFFSET": _num(self.boa_add_offset) if offset else None,
             "STAC_BOA_OFFSET_RULE": self.boa_offset_source if offset else None}
        return {k: str(v) for k, v in t.items() if v is not None}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = [asdict(b) for b in self.bands]
        return d


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# -- reading --------------------------------------------------------------------------------------------
def is_stac(arg: str) -> bool:
    """Whether a scene argument names STAC JSON: a ``.json``/``.geojson`` file or URL (optionally with
    ``#ITEM_ID``), or a STAC API item URL (``.../items/ID``)."""
    base = str(arg).split("#", 1)[0]
    path = urlparse(base).path if "://" in base else base
    if path.lower().endswith((".json", ".geojson")):
        return True
    return "://" in base and "/items/" in path and not path.lower().endswith(_RASTER_EXT)


def _read_json(href: str) -> dict:
    if href.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(href, timeout=60) as r:
                text = r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise CredentialsError(f"{href}: the server refused access (HTTP {e.code}); check the URL's "
                                       "credentials or token") from None
            if e.code == 404:
                raise RasterNotFoundError(f"STAC item {href} does not exist (HTTP 404); check the URL") from None
            raise RemoteError(f"cannot read {href}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RemoteError(f"cannot reach {href} ({reason}); check the URL and the network") from None
    elif "://" in href:
        raise StacError(f"{href}: STAC JSON is read from a local file or an http(s) URL; download it first")
    else:
        p = Path(href)
        if not p.is_file():
            raise RasterNotFoundError(f"STAC file {href} does not exist")
        text = p.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as e:
        raise StacError(f"{href} is not valid JSON ({e}); give a STAC Item or ItemCollection") from None


def load_items(href: str) -> list:
    """The ``pystac.Item`` objects of an Item or ItemCollection (FeatureCollection) at ``href``."""
    import pystac

    d = _read_json(href)
    kind = d.get("type") if isinstance(d, dict) else None
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(d, migrate=True)]
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(d, preserve_dict=False))
    except Exception as e:  # pystac raises KeyError/ValueError/STACTypeError on malformed items
        raise StacError(f"{href} is not a valid STAC Item or ItemCollection ({type(e).__name__}: {e})") from None
    what = f"a STAC {kind}" if kind in ("Collection", "Catalog") else "not a STAC Item or ItemCollection"
    raise StacError(f"{href} is {what}: give an Item, an ItemCollection or an item URL")


def item_refs(arg: str) -> list[str]:
    """One scene reference per item of ``arg``: the argument itself for an Item, ``href#ITEM_ID`` for each
    item of an ItemCollection (so that each becomes its own cube)."""
    if "#" in arg:
        return [arg]
    items = load_items(arg)
    return [arg] if len(items) == 1 else [f"{arg}#{it.id}" for it in items]


def _pick_item(ref: str):
    href, _, want = ref.partition("#")
    items = load_items(href)
    if want:
        hits = [it for it in items if it.id == want]
        if not hits:
            raise StacError(f"{href} has no item {want!r} (items: {', '.join(it.id for it in items[:10])}"
                            f"{' ...' if len(items) > 10 else ''})")
        return href, hits[0]
    if len(items) != 1:
        raise StacError(f"{href} holds {len(items)} items: name one as {href}#ITEM_ID, or pass the collection to "
                        "`geodino embed`, which makes one cube per item")
    return href, items[0]


# -- choosing assets ------------------------------------------------------------------------------------
def _absolute(href: str, base: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    if "://" in base:
        return urljoin(base, href)
    return str((Path(base).resolve().parent / href).resolve())


def _asset_bands(a: dict) -> list[dict]:
    """Per-band info of an asset (STAC 1.1 ``bands`` or 1.0 ``eo:bands`` + ``raster:bands``), merged."""
    if isinstance(a.get("bands"), list):
        return [{"name": b.get("name"), "common_name": b.get("eo:common_name") or b.get("common_name"),
                 "scale": b.get("raster:scale", a.get("raster:scale")), "offset": b.get("raster:offset",
                 a.get("raster:offset")), "nodata": b.get("nodata", a.get("nodata"))} for b in a["bands"]]
    return [{"name": e.get("name"), "common_name": e.get("common_name"), "scale": r.get("scale"),
             "offset": r.get("offset"), "nodata": r.get("nodata")}
            for e, r in zip_longest(a.get("eo:bands") or [], a.get("raster:bands") or [], fillvalue={})]


def _is_data(a: dict) -> bool:
    roles = set(a.get("roles") or [])
    if roles & _NOT_DATA and "data" not in roles:
        return False
    mt = (a.get("type") or "").lower()
    if mt:
        return "tiff" in mt or "jp2" in mt or "x-hdf" in mt or "netcdf" in mt or "vnd.gdal" in mt
    return urlparse(a.get("href", "")).path.lower().endswith(_RASTER_EXT)


def _rank(a: dict) -> int:
    mt = (a.get("type") or "").lower()
    if "cloud-optimized" in mt:
        return 0
    if "tiff" in mt or urlparse(a.get("href", "")).path.lower().endswith((".tif", ".tiff")):
        return 1
    return 2 if "jp2" in mt else 3


def _listing(assets: dict) -> str:
    names = []
    for key, a in assets.items():
        labels = [f"{b['name'] or ''}/{b['common_name']}" if b["common_name"] else (b["name"] or "")
                  for b in _asset_bands(a)]
        labels = [x for x in labels if x]
        names.append(f"{key}" + (f" ({', '.join(labels)})" if labels and labels != [key] else ""))
    return ", ".join(names) or "none"


def _choose(tokens: list[str], assets: dict, item_id: str, explicit: bool) -> list[tuple[str, str, int | None]]:
    """(token, asset key, band in asset or None for the whole asset) for each requested token."""
    out = []
    for token in tokens:
        t = token.lower()
        if t.isdigit():
            if len(assets) != 1:
                raise BandError(f"band {token!r}: item {item_id} has {len(assets)} data assets, so bands are chosen "
                                f"by name (assets: {_listing(assets)})")
            out.append((token, next(iter(assets)), int(t)))
            continue
        hits = []
        for key, a in assets.items():
            if key.lower() == t:
                hits.append((0, _rank(a), key, None))
            for j, b in enumerate(_asset_bands(a)):
                if t in ((b["name"] or "").lower(), (b["common_name"] or "").lower()):
                    hits.append((1, _rank(a), key, j + 1))
        if not hits:
            how = "" if explicit else " (the default; choose bands with --bands)"
            raise BandError(f"band {token!r}{how} is not in STAC item {item_id}: no asset, eo:bands name or common "
                            f"name matches (data assets: {_listing(assets)})")
        _, _, key, band = min(hits, key=lambda h: h[:2])
        out.append((token, key, band))
    return out


# -- metadata -------------------------------------------------------------------------------------------
def _baseline(processing: dict) -> str | None:
    for k in ("s2:processing_baseline", "sentinel:processing_baseline"):
        if processing.get(k) not in (None, ""):
            return str(processing[k])
    return None


def _crs_of(fields: dict) -> tuple[str | None, int | None]:
    code, epsg = fields.get("proj:code"), fields.get("proj:epsg")
    if epsg is not None:
        return f"EPSG:{int(epsg)}", int(epsg)
    if code:
        m = re.fullmatch(r"EPSG:(\d+)", str(code), re.I)
        return str(code), int(m.group(1)) if m else None
    if fields.get("proj:wkt2"):
        return fields["proj:wkt2"], None
    if fields.get("proj:projjson"):
        from pyproj import CRS

        return CRS.from_json_dict(fields["proj:projjson"]).to_wkt(), None
    return None, None


def _radiometry_hint(p: dict, collection: str | None) -> str | None:
    platform = str(p.get("platform") or "").lower()
    constellation = str(p.get("constellation") or "").lower()
    text = " ".join(str(x).lower() for x in (collection, p.get("processing:level"), p.get("s2:product_type"),
                                              p.get("landsat:correction")) if x)
    if constellation == "sentinel-2" or platform.startswith("sentinel-2"):
        return "s2-l2a" if "l2a" in text else None
    if platform.startswith("landsat") and ("c2-l2" in text or "l2sp" in text or "l2sr" in text):
        return "landsat-c2-l2"
    return None


def _boa_offset(processing: dict, bands: list[StacBand], hint: str | None) -> tuple[float | None, str | None]:
    if hint != "s2-l2a":
        return None, None
    baseline = _baseline(processing)
    try:
        new = baseline is not None and float(baseline) >= 4.0
    except ValueError:
        new, baseline = False, None
    applied = processing.get("earthsearch:boa_offset_applied")
    if applied is not None:
        if applied:
            return 0.0, "earthsearch:boa_offset_applied is true (offset already in the DNs)"
        if baseline is not None:
            return (-1000.0 if new else 0.0), f"earthsearch:boa_offset_applied is false, processing baseline {baseline}"
    offsets = {b.offset / b.scale for b in bands if b.offset is not None and b.scale}
    if len(offsets) == 1 and all(b.offset is not None and b.scale for b in bands):
        return float(round(offsets.pop(), 6)), "raster:bands offset / scale of the chosen assets"
    if baseline is not None:
        return (-1000.0 if new else 0.0), f"processing baseline {baseline}"
    return None, None


def stac_scene(ref: str, bands: str | list | tuple | None = None) -> StacScene:
    """The :class:`StacScene` of the item ``ref`` names, with ``bands`` (names, common names, asset keys, or
    1-based indexes into a single-asset item; default red, green, blue) resolved to assets."""
    href, item = _pick_item(ref)
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    props = d.get("properties", {})
    assets = {k: a for k, a in (d.get("assets") or {}).items() if _is_data(a)}
    if not assets:
        raise StacError(f"STAC item {item.id} has no raster data assets (assets: {', '.join(d.get('assets') or {})})")
    explicit = bands not in (None, "", [], ())
    tokens = [s.strip() for s in bands.split(",")] if isinstance(bands, str) else \
        [str(s).strip() for s in bands] if explicit else list(DEFAULT_BANDS)
    chosen: list[StacBand] = []
    for token, key, band in _choose(tokens, assets, item.id, explicit):
        a = assets[key]
        info = _asset_bands(a)
        abs_href = _absolute(a["href"], href)
        indexes = [band] if band is not None else (list(range(1, len(info) + 1)) or [1])
        for i in indexes:
            b = info[i - 1] if i <= len(info) else {}
            chosen.append(StacBand(token, key, i, abs_href, gdal_path(abs_href), b.get("name"), b.get("common_name"),
                                   b.get("scale"), b.get("offset"), b.get("nodata")))
    first = {**props, **assets[chosen[0].asset]}
    crs, epsg = _crs_of(first)
    if crs is None:
        raise StacError(f"STAC item {item.id} has no projection information (proj:code, proj:epsg or proj:wkt2 of "
                        "the projection extension): add it to the item, or embed the asset files directly "
                        f"(geodino embed {chosen[0].href})")
    tr, shape = first.get("proj:transform"), first.get("proj:shape")
    processing = {k: v for k, v in props.items() if k.startswith(_PROCESSING)}
    hint = _radiometry_hint(props, d.get("collection"))
    offset, why = _boa_offset(processing, chosen, hint)
    dt = props.get("datetime") or props.get("start_datetime")
    return StacScene(item.id, href, d.get("collection"), dt, props.get("platform"), props.get("constellation"),
                     tuple(props.get("instruments") or ()), crs, epsg,
                     tuple(float(x) for x in tr[:6]) if tr else None, tuple(int(x) for x in shape[:2]) if shape else None,
                     tuple(chosen), processing, props.get("updated") or props.get("created"), hint, offset, why)


def stac_vrt(scene: StacScene) -> str:
    """VRT XML stacking the scene's bands in order, tagged with its metadata."""
    vbands = []
    for b in scene.bands:
        label = b.name or (b.asset if b.common_name is None else b.common_name)
        tags = {"STAC_ASSET": b.asset, "STAC_HREF": b.href, "EO_NAME": b.name, "EO_COMMON_NAME": b.common_name,
                "RASTER_SCALE": b.scale, "RASTER_OFFSET": b.offset}
        vbands.append(VrtBand(b.path, b.band, label, b.common_name,
                              {k: str(v) for k, v in tags.items() if v is not None},
                              what=f"asset {b.asset!r} of STAC item {scene.item_id} ({b.href})"))
    return stack_vrt(vbands, crs=scene.crs, tags=scene.tags())


def identity_mtime(scene: StacScene) -> float:
    """The item's ``updated`` (or ``created``) time in seconds, standing in for a file's mtime (0 without one)."""
    try:
        return datetime.fromisoformat(str(scene.updated).replace("Z", "+00:00")).timestamp() if scene.updated else 0.0
    except ValueError:
        return 0.0
