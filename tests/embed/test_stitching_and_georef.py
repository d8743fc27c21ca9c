"""The cube against independent truth: patch features recomputed window by window, and coordinates
recomputed from the source transform; rioxarray and odc-geo read the same georeference."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine

from geodino.cube import open_cube
from geodino.embed import EmbedConfig, embed
from geodino.models import load_backbone
from tests.embed.conftest import MODEL, TINY
from tests.rasters import texture, write_raster

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _ramp(t: np.ndarray, lo: float, hi: float, n: int, b: int) -> np.ndarray:
    """1-D blending weight of a core spanning patches [lo, hi) of n, at patch centres t (the spec: linear across
    2b patches around each interior boundary, 1/2 on it; no ramp at the grid's outer edges)."""
    if b == 0:
        return ((t > lo) & (t < hi)).astype(np.float64)
    w = np.ones_like(t)
    if lo > 0:
        w = np.minimum(w, np.clip(0.5 + (t - lo) / (2 * b), 0, 1))
    if hi < n:
        w = np.minimum(w, np.clip(0.5 + (hi - t) / (2 * b), 0, 1))
    return w


def expected_features(path, tile, halo, weights, lo=0.0, hi=4000.0, nodata=None, min_valid=0.5, blend=0):
    """Assemble the cube independently: whole raster -> reflect pad (pixels and their validity) -> each tile's
    window -> model -> its core (plus ``blend`` patches around it) -> weighted mean where windows overlap."""
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
        H, W = ds.height, ds.width
    valid_px = np.ones((H, W), bool) if nodata is None else ~np.any(data == nodata, axis=0)
    ph, pw = -(-H // 16), -(-W // 16)
    big = tile + halo + 16  # more than any window reaches past an edge
    padded = np.pad(data, ((0, 0), (big, big), (big, big)), mode="reflect")
    vpad = np.pad(valid_px, big, mode="reflect")  # the model sees mirrored pixels as real data
    inside = np.pad(np.ones((H, W), bool), big, mode="constant", constant_values=False)
    model = load_backbone(MODEL, weights, **TINY)
    d = model.embed_dim
    acc = np.zeros((d, ph, pw))
    wsum = np.zeros((ph, pw))
    valid = np.zeros((ph, pw), bool)
    written = np.zeros((ph, pw), bool)
    n = tile // 16
    hp = halo // 16
    for ty in range(-(-ph // n)):
        for tx in range(-(-pw // n)):
            r, c = ty * tile - halo + big, tx * tile - halo + big
            win = padded[:, r:r + tile + 2 * halo, c:c + tile + 2 * halo]
            vwin = vpad[r:r + tile + 2 * halo, c:c + tile + 2 * halo]
            h_p, w_p = min(n, ph - ty * n), min(n, pw - tx * n)
            core_px = (vwin & inside[r:r + tile + 2 * halo, c:c + tile + 2 * halo])[halo:halo + h_p * 16,
                                                                                  halo:halo + w_p * 16]
            if not core_px.any():
                continue  # skipped tile: no window, features stay NaN
            x = np.clip((win - lo) / (hi - lo), 0, 1)
            x = (x - MEAN) / STD * vwin
            with torch.no_grad():
                out = model.forward_features(torch.from_numpy(x[None].astype(np.float32)))["patches"][0].numpy()
            out = out.astype(np.float16).astype(np.float64)  # the engine casts to the cube's dtype
            written[ty * n:ty * n + h_p, tx * n:tx * n + w_p] = True
            frac = core_px.reshape(h_p, 16, w_p, 16).mean(axis=(1, 3))
            valid[ty * n:ty * n + h_p, tx * n:tx * n + w_p] = (frac >= min_valid) & (frac > 0)
            rows = np.arange(max(0, ty * n - blend), min(ph, ty * n + h_p + blend))
            cols = np.arange(max(0, tx * n - blend), min(pw, tx * n + w_p + blend))
            wy = _ramp(rows + 0.5, ty * n, ty * n + h_p, ph, blend)
            wx = _ramp(cols + 0.5, tx * n, tx * n + w_p, pw, blend)
            wgt = wy[:, None] * wx[None, :]
            o = out[rows[:, None] - ty * n + hp, cols[None, :] - tx * n + hp].transpose(2, 0, 1)
            acc[:, rows[:, None], cols[None, :]] += o * wgt
            wsum[rows[:, None], cols[None, :]] += wgt
    feats = np.full((d, ph, pw), np.nan)
    feats[:, written] = acc[:, written] / wsum[written]
    return feats, valid


@pytest.mark.parametrize("tile,halo,blend", [(64, 0, 0), (64, 32, 0), (96, 16, 0), (64, 32, 2), (96, 16, 1)])
def test_every_patch_equals_its_own_window(tmp_path, tiny_opts, tile, halo, blend):
    # 200 x 170 px: partial patches and partial edge tiles on both axes
    data = texture((170, 200), seed=1)
    data[:, 96:170, 0:96] = 0  # a nodata block: covers whole tile cores -> skipped tiles
    src = write_raster(tmp_path / "scene.tif", data, nodata=0)
    cfg = EmbedConfig.build(**tiny_opts, tile=tile, halo=halo, blend=blend, dtype="float16", batch_size=3,
                            precision="fp32", output=str(tmp_path / "c.zarr"))
    [s] = embed([src], cfg)
    assert s.status == "complete"
    ds = open_cube(tmp_path / "c.zarr")
    exp, exp_valid = expected_features(src, tile, halo, tiny_opts["weights"], nodata=0, blend=blend)
    got = ds.features.values.astype(np.float64)
    assert got.shape == exp.shape
    assert np.array_equal(np.isnan(got), np.isnan(exp))
    assert np.nanmax(np.abs(got - exp)) <= 2e-3 * np.nanmax(np.abs(exp))
    np.testing.assert_array_equal(ds.valid.values, exp_valid)
    status = ds.tile_status.values
    assert (status == 2).sum() >= 1 and s.tiles_skipped == (status == 2).sum()
    if halo:  # context matters: without the halo the border patches would differ
        exp0, _ = expected_features(src, tile, 0, tiny_opts["weights"], nodata=0)
        assert np.nanmax(np.abs(exp0 - exp)) > 1e-2 * np.nanmax(np.abs(exp))
    if blend:  # blending changes the patches near core boundaries, and only those
        unblended, _ = expected_features(src, tile, halo, tiny_opts["weights"], nodata=0)
        diff = np.abs(np.nan_to_num(unblended) - np.nan_to_num(exp)).max(axis=0)
        n = tile // 16
        near = np.zeros(diff.shape, bool)
        for b in range(n, max(diff.shape) + n, n):
            near[max(0, b - blend):b + blend, :] = True
            near[:, max(0, b - blend):b + blend] = True
        assert diff[near].max() > 1e-2 and diff[~near].max() == 0


def test_georeference_matches_the_source_transform(tmp_path, tiny_opts):
    t = Affine(30.0, 0, 300000.0, 0, -30.0, 5000000.0)
    src = write_raster(tmp_path / "s.tif", texture((150, 230), seed=2), crs="EPSG:32632", transform=t)
    [s] = embed([src], EmbedConfig.build(**tiny_opts, tile=64, halo=16))
    ds = xr.open_zarr(s.output)  # plain xarray, no geodino
    rng = np.random.default_rng(0)
    for _ in range(20):
        i, j = rng.integers(0, ds.sizes["y"]), rng.integers(0, ds.sizes["x"])
        x, y = t @ ((j + 0.5) * 16, (i + 0.5) * 16)
        assert ds.x.values[j] == pytest.approx(x) and ds.y.values[i] == pytest.approx(y)
    assert ds.rio.crs.to_epsg() == 32632
    assert tuple(ds.rio.transform())[:6] == pytest.approx(tuple(t @ Affine.scale(16))[:6])
    gt = [float(v) for v in ds.spatial_ref.attrs["GeoTransform"].split()]
    assert gt == pytest.approx([t.c, 16 * t.a, 0, t.f, 0, 16 * t.e])
    pytest.importorskip("odc.geo.xr")
    gbox = ds.odc.geobox
    assert gbox.crs.epsg == 32632 and tuple(gbox.affine)[:6] == pytest.approx(tuple(t @ Affine.scale(16))[:6])
    assert ds.attrs["proj:code"] == "EPSG:32632"
    assert ds.attrs["spatial:transform"] == pytest.approx(list(t @ Affine.scale(16))[:6])
    # tile footprints: core bounds of the first tile
    assert ds.tile_x_bounds.values[0].tolist() == pytest.approx([t.c, t.c + 64 * 30])
    assert ds.cls.dims == ("tile_y", "tile_x", "feature")
    # geodino.open_cube is lazy and dask-backed
    cube = open_cube(s.output)
    assert hasattr(cube.features.data, "dask") and cube.rio.crs.to_epsg() == 32632


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:32629"])
def test_several_crs(tmp_path, tiny_opts, crs):
    t = Affine(0.001, 0, 10.0, 0, -0.001, 50.0) if crs == "EPSG:4326" else Affine(5, 0, 1000, 0, -5, 9000)
    src = write_raster(tmp_path / "s.tif", texture((80, 96), seed=3), crs=crs, transform=t)
    [s] = embed([src], EmbedConfig.build(**tiny_opts, tile=64, halo=16))
    ds = open_cube(s.output)
    assert ds.rio.crs == rasterio.crs.CRS.from_string(crs)
    assert ds.x.values[0] == pytest.approx(t.c + 8 * t.a)


def test_scale_resamples_in_the_read_and_the_grid_follows(tmp_path, tiny_opts):
    t = Affine(10, 0, 600000, 0, -10, 4000000)
    src = write_raster(tmp_path / "s.tif", texture((60, 70), seed=4), transform=t)
    [s] = embed([src], EmbedConfig.build(**tiny_opts, tile=64, halo=16, scale=4))
    ds = open_cube(s.output)
    assert (ds.sizes["y"], ds.sizes["x"]) == (-(-240 // 16), -(-280 // 16))
    assert tuple(ds.rio.transform())[:6] == pytest.approx((40.0, 0, 600000, 0, -40.0, 4000000))
    assert ds.attrs["geodino"]["source"]["scale"] == 4


def test_raster_smaller_than_one_tile(tmp_path, tiny_opts):
    src = write_raster(tmp_path / "small.tif", texture((40, 50), seed=5, dtype="uint8"), tiled=False)
    [s] = embed([src], EmbedConfig.build(**{**tiny_opts, "radiometry": None}))  # default tile 512 shrinks to 64
    ds = open_cube(s.output)
    assert s.status == "complete" and s.tiles_total == 1
    assert ds.features.shape == (64, 3, 4)
    # 50 px wide: the last patch column holds 2 of 16 real columns (< min_valid 0.5); 40 px high: 8 of 16 rows
    assert ds.valid.values[:, :3].all() and not ds.valid.values[:, 3].any()
    assert "tile shrunk to 64 px" in " ".join(s.messages)
