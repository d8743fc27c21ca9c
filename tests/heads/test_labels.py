"""Labels that mean what the user drew: cells outside a label raster's footprint, or under its nodata, mask or alpha
band, are never a class; vector labels leave cells outside every geometry unlabelled unless a background class is
asked for; the warp is odc-geo's (any CRS) and reads a large raster in windows."""

from __future__ import annotations

import tracemalloc

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from shapely.geometry import box

import geodino
from geodino.errors import LabelError
from geodino.heads import align_labels, train_on_cube
from tests.cubes import make_cube, structured_features

SHAPE = (16, 24)  # patches of 160 m


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    return geodino.open_cube(make_cube(d / "c.zarr", structured_features(SHAPE, 8, seed=4)))


def _write(path, data, transform, crs, *, nodata=None, alpha=None, mask=None, **extra):
    count = 1 + (alpha is not None)
    prof = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=count, dtype=data.dtype.name,
                crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=64, blockysize=64, **extra)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as r:
        r.write(data, 1)
        if alpha is not None:
            r.write(alpha, 2)
            r.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
        if mask is not None:
            r.write_mask(mask)
    return path


def _classes_at(grid, values):
    """The class names at each cell (None where unlabelled)."""
    return np.where(grid.labels >= 0, np.asarray(grid.classes, object)[grid.labels], None)


@pytest.mark.parametrize("scale", [1, 2])
def test_raster_without_nodata_covering_half_the_cube(cube, tmp_path, scale):
    """Classes 1 and 2 at 4x the patch resolution on the left half only, no nodata declared: the right half is
    unlabelled, never a class "0"."""
    t = cube.rio.transform()
    rng = np.random.default_rng(0)
    half = np.kron(rng.integers(1, 3, (SHAPE[0], SHAPE[1] // 2)), np.ones((4, 4))).astype(np.uint8)
    path = _write(tmp_path / "half.tif", half, t * Affine.scale(1 / 4), cube.rio.crs)
    grid = align_labels(cube, path, scale=scale)
    assert grid.classes == ("1", "2")
    w = SHAPE[1] // 2 * scale
    assert (grid.labels[:, w:] == -1).all() and (grid.labels[:, :w] >= 0).all()
    want = np.kron(half[::4, ::4], np.ones((scale, scale), int))
    assert (np.asarray(grid.classes)[grid.labels[:, :w]] == want.astype(str)).all()
    assert sum(grid.counts().values()) == SHAPE[0] * w * scale


def test_a_head_on_half_covering_labels_never_learns_outside(cube, tmp_path):
    t = cube.rio.transform()
    half = np.zeros((SHAPE[0], SHAPE[1] // 2), np.uint8)
    half[:, 6:] = 1  # classes 0 and 1 inside the footprint; outside it was once class 0 as well
    path = _write(tmp_path / "half01.tif", half, t, cube.rio.crs)
    grid = align_labels(cube, path)
    assert grid.counts() == {"0": SHAPE[0] * 6, "1": SHAPE[0] * 6}
    head = train_on_cube(cube, grid, head="knn", k=3, block=4, buffer=2)
    assert head.card["label_counts"] == grid.counts()


def test_alpha_band_internal_mask_and_nodata_are_unlabelled(cube, tmp_path):
    t = cube.rio.transform()
    data = np.ones(SHAPE, np.uint8)
    data[:, 12:] = 2
    alpha = np.full(SHAPE, 255, np.uint8)
    alpha[:4] = 0
    mask = np.full(SHAPE, 255, np.uint8)
    mask[:, :3] = 0
    nod = data.copy()
    nod[10:, :] = 9
    for name, kw, hidden in (("alpha", {"alpha": alpha}, np.s_[:4, :]),
                             ("mask", {"mask": mask}, np.s_[:, :3]),
                             ("nodata", {"nodata": 9, "data": nod}, np.s_[10:, :])):
        kw = {"data": data, **kw}
        path = _write(tmp_path / f"{name}.tif", kw.pop("data"), t, cube.rio.crs, **kw)
        grid = align_labels(cube, path)
        assert grid.classes == ("1", "2"), name
        assert (grid.labels[hidden] == -1).all(), name
        shown = np.ones(SHAPE, bool)
        shown[hidden] = False
        assert (grid.labels[shown] >= 0).all(), name


def test_raster_in_another_crs(cube, tmp_path):
    """A label raster in EPSG:4326 (declared nodata 0, covering the middle): warped by odc-geo onto the grid."""
    from pyproj import Transformer

    t = cube.rio.transform()
    to_ll = Transformer.from_crs(cube.rio.crs, 4326, always_xy=True)
    x0, y0 = to_ll.transform(t.c + 4 * 160, t.f - 4 * 160)
    x1, y1 = to_ll.transform(t.c + 20 * 160, t.f - 12 * 160)
    n = 200
    data = np.where(np.arange(n)[None, :] < n // 2, 3, 7).repeat(n, 0).astype(np.uint8)
    path = _write(tmp_path / "ll.tif", data, Affine((x1 - x0) / n, 0, x0, 0, (y1 - y0) / n, y0), "EPSG:4326",
                  nodata=0)
    grid = align_labels(cube, path)
    assert grid.classes == ("3", "7")
    assert (grid.labels[:3] == -1).all() and (grid.labels[13:] == -1).all() and (grid.labels[:, :3] == -1).all()
    assert grid.labels[8, 6] == 0 and grid.labels[8, 17] == 1


def test_vector_cells_outside_every_geometry_are_unlabelled_unless_background(cube, tmp_path):
    t = cube.rio.transform()
    left = box(t.c, t.f - 16 * 160, t.c + 8 * 160, t.f)
    right = box(t.c + 16 * 160, t.f - 16 * 160, t.c + 24 * 160, t.f)
    gpd.GeoDataFrame({"lc": ["field", "forest"]}, geometry=[left, right], crs=cube.rio.crs).to_file(tmp_path / "v.gpkg")
    grid = align_labels(cube, tmp_path / "v.gpkg", class_column="lc")
    assert grid.classes == ("field", "forest") and (grid.labels[:, 8:16] == -1).all()
    bg = align_labels(cube, tmp_path / "v.gpkg", class_column="lc", background="other")
    assert bg.classes == ("field", "forest", "other")
    assert (bg.labels[:, 8:16] == 2).all() and (bg.labels[:, :8] == 0).all() and (bg.labels[:, 16:] == 1).all()
    named = align_labels(cube, tmp_path / "v.gpkg", class_column="lc", background="field")  # an existing class
    assert named.classes == ("field", "forest") and (named.labels[:, 8:16] == 0).all()
    with pytest.raises(LabelError, match="background class applies to points or polygons"):
        align_labels(cube, _write(tmp_path / "r.tif", np.ones(SHAPE, np.uint8), t, cube.rio.crs), background="x")


def test_background_from_the_command_line(cube, tmp_path, capfd):
    from geodino.cli import main

    t = cube.rio.transform()
    polys = [box(t.c, t.f - 16 * 160, t.c + 8 * 160, t.f), box(t.c + 16 * 160, t.f - 16 * 160, t.c + 24 * 160, t.f)]
    gpd.GeoDataFrame({"lc": ["a", "b"]}, geometry=polys, crs=cube.rio.crs).to_file(tmp_path / "v.gpkg")
    code = main(["train", cube.encoding["source"], "--labels", str(tmp_path / "v.gpkg"), "--class-column", "lc",
                 "--background", "rest", "--block", "4", "--buffer", "2", "--head", "knn", "-o",
                 str(tmp_path / "h.safetensors")])
    assert code == 0, capfd.readouterr().err
    import json

    card = json.loads((tmp_path / "h.json").read_text())
    assert card["classes"] == ["a", "b", "rest"] and card["label_counts"]["rest"] == 16 * 8
    assert card["split"]["buffer_patches"] == 2 and card["split"]["optimistic"]
    assert "optimistic" in capfd.readouterr().err


def test_a_large_label_raster_is_read_in_windows(cube, tmp_path, monkeypatch):
    """Peak memory of the warp stays a few windows, not the raster: a 3072 x 3072 raster (36 MiB as float32)
    over the cube, read in 256-px windows and warped 32 cells at a time."""
    import geodino.heads.labels as labels

    t = cube.rio.transform()
    n = 3072
    big = np.zeros((n, n), np.uint8)
    big[:, n // 2:] = 1
    path = _write(tmp_path / "big.tif", big, t * Affine.scale(SHAPE[1] / n, SHAPE[0] / n), cube.rio.crs,
                  compress="deflate")
    del big
    monkeypatch.setattr(labels, "_READ_CHUNK", 256)
    monkeypatch.setattr(labels, "_WARP_CHUNK", 4)
    tracemalloc.start()
    try:
        grid = align_labels(cube, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grid.classes == ("0", "1") and (grid.labels[:, 12:] == 1).all() and (grid.labels[:, :12] == 0).all()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_wide_and_negative_label_values(cube, tmp_path):
    """Label values beyond 8 bits (int32, negative, a declared nodata) keep their names."""
    t = cube.rio.transform()
    data = np.full((SHAPE[0] * 2, SHAPE[1] * 2), -5, np.int32)
    data[:, 24:] = 1_000_000
    data[:8] = -9999
    grid = align_labels(cube, _write(tmp_path / "wide.tif", data, t * Affine.scale(0.5), cube.rio.crs, nodata=-9999))
    assert grid.classes == ("-5", "1000000")
    assert (grid.labels[:4] == -1).all() and (grid.labels[4:, :12] == 0).all() and (grid.labels[4:, 12:] == 1).all()


@pytest.mark.parametrize("n, dtype", [(256, "int16"), (255, "int16"), (256, "float32")])
def test_a_non_uint8_raster_with_256_distinct_values_is_encoded_by_value(cube, tmp_path, n, dtype):
    """Exactly 256 distinct values that are not uint8 (here 1000..1255) are 256 classes named by their values;
    the codes were once taken to be the values (the uint8 rule) and indexing crashed as an internal error."""
    t = cube.rio.transform()
    vals = (1000 + np.arange(SHAPE[0] * SHAPE[1]) % n).reshape(SHAPE).astype(dtype)
    grid = align_labels(cube, _write(tmp_path / "many.tif", vals, t, cube.rio.crs))
    assert grid.classes == tuple(str(1000 + i) for i in range(n))
    assert (_classes_at(grid, vals) == vals.astype(int).astype(str)).all()
