"""The ground resolution of a raster, in metres, and the resampling that brings it to the model's.

CHMv2 was trained on imagery of about 0.6 m (Maxar, as SAT-493M); heights from other resolutions are wrong in a
systematic way (trees look taller or smaller than they are), so the read resamples. The ground size of a pixel
is measured, not read off the CRS units: the geodesic distance (pyproj's ``Geod`` on the CRS's ellipsoid) of a
step of pixels across the scene centre. So feet, Web Mercator (whose "metres" are 1/cos(latitude) too small on
the ground) and geographic degrees all come out in true metres. A raster without a CRS or a geotransform says
nothing about its ground resolution and is refused.

Resampling happens when the measured resolution differs from the target by more than :data:`TOLERANCE` (10 %),
with one factor for both axes (:class:`geodino.raster.RasterSource` ``scale``, a GDAL WarpedVRT of the same CRS);
pixels whose ground width and height differ by more than :data:`MAX_ANISOTROPY` (e.g. degrees far from the
equator) are refused with the command that reprojects them, and so is imagery more than
:data:`MAX_UPSAMPLING` times coarser than the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geodino.errors import ResolutionError
from geodino.grid import GeoBox

__all__ = ["GroundResolution", "ground_resolution", "TOLERANCE", "MAX_ANISOTROPY"]

TOLERANCE = 0.10
MAX_ANISOTROPY = 1.25
MAX_UPSAMPLING = 8.0  # coarser input than 8x the target (4.8 m for CHMv2) is refused: no canopy to see
_STEP = 64  # pixels: long enough for exact geodesics, short enough to be local


@dataclass(frozen=True)
class GroundResolution:
    """Ground size of a pixel at the scene centre (metres) and the read's resampling to ``target``."""

    x_m: float
    y_m: float
    target_m: float
    scale: float  # pixels per native pixel along each axis (1.0: no resampling)

    @property
    def gsd_m(self) -> float:
        return math.sqrt(self.x_m * self.y_m)

    @property
    def resampled(self) -> bool:
        return self.scale != 1.0

    def to_dict(self) -> dict:
        return {"input_gsd_m": round(self.gsd_m, 4), "input_gsd_xy_m": [round(self.x_m, 4), round(self.y_m, 4)],
                "target_gsd_m": self.target_m, "scale": self.scale}


def ground_resolution(gbox: GeoBox, target_m: float, name: str = "the raster") -> GroundResolution:
    """Measure ``gbox``'s ground resolution and choose the scale that brings it to ``target_m`` (see module doc).
    Raises :class:`ResolutionError` (one line) when the grid cannot say it."""
    if gbox.crs is None:
        raise ResolutionError(f"{name} has no CRS, so its ground resolution is unknown and it cannot be resampled "
                              f"to the {target_m:g} m CHMv2 expects: assign one (gdal_edit.py -a_srs EPSG:<code> "
                              "-a_ullr ...) or warp it onto a map grid")
    t = gbox.affine
    if t.is_identity:
        raise ResolutionError(f"{name} has a CRS but no geotransform (pixel size unknown): georeference it "
                              "(gdal_edit.py -a_ullr ... or gdalwarp) before mapping canopy height")
    from pyproj import Transformer

    try:
        crs = gbox.crs.proj  # pyproj's CRS
        geod = crs.get_geod()
        to_ll = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    except Exception as e:  # pyproj raises several types for CRSs it cannot handle
        raise ResolutionError(f"{name}: cannot compute ground distances in its CRS ({e}); reproject it "
                              "(gdalwarp -t_srs EPSG:<UTM zone> in.tif out.tif)") from e
    if geod is None:
        raise ResolutionError(f"{name}: its CRS has no ellipsoid, so pixel sizes cannot be measured in metres; "
                              "reproject it (gdalwarp -t_srs EPSG:<UTM zone> in.tif out.tif)")
    r, c = gbox.height / 2, gbox.width / 2
    pts = [t * (c, r), t * (c + _STEP, r), t * (c, r + _STEP)]
    lon, lat = to_ll.transform([p[0] for p in pts], [p[1] for p in pts])
    if not all(map(math.isfinite, [*lon, *lat])):
        raise ResolutionError(f"{name}: its scene centre does not map to longitude/latitude; check its CRS")
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    x_m, y_m = dx / _STEP, dy / _STEP
    if not (x_m > 0 and y_m > 0):
        raise ResolutionError(f"{name}: pixels of zero ground size; check its geotransform")
    if max(x_m, y_m) / min(x_m, y_m) > MAX_ANISOTROPY:
        raise ResolutionError(f"{name}: pixels are {x_m:.3g} m wide but {y_m:.3g} m tall on the ground (a "
                              "geographic CRS away from the equator?): reproject it to square pixels "
                              "(gdalwarp -t_srs EPSG:<UTM zone> in.tif out.tif)")
    gsd = math.sqrt(x_m * y_m)
    if gsd / target_m > MAX_UPSAMPLING:
        raise ResolutionError(f"{name} has {gsd:.3g} m pixels; CHMv2 maps canopy height from imagery of about "
                              f"{target_m:g} m, and upsampling more than {MAX_UPSAMPLING:g}x invents no trees: "
                              "use sub-metre imagery (aerial, NAIP, Maxar-like)")
    scale = 1.0 if abs(gsd / target_m - 1.0) <= TOLERANCE else gsd / target_m
    return GroundResolution(x_m, y_m, float(target_m), float(scale))
