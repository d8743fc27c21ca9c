"""geodino.torchgeo.CubeDataset with TorchGeo's own datasets, samplers and collate functions (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

pytest.importorskip("torchgeo", reason="TorchGeo is an extra: pip install -e '.[dev]'")

import geopandas as gpd  # noqa: E402
import torch  # noqa: E402
from shapely.geometry import box  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchgeo.datasets import RasterDataset, VectorDataset, stack_samples  # noqa: E402
from torchgeo.samplers import GridGeoSampler, RandomBatchGeoSampler, RandomGeoSampler  # noqa: E402

import geodino  # noqa: E402
from geodino.errors import ConfigError  # noqa: E402
from geodino.torchgeo import CubeDataset  # noqa: E402
from tests.cubes import make_cube, structured_features  # noqa: E402

SHAPE, DIM = (24, 32), 8


class Labels(RasterDataset):
    is_image = False


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("tg")
    feats = structured_features(SHAPE, DIM, seed=2)
    valid = np.ones(SHAPE, bool)
    valid[:8, 24:] = False  # a skipped tile
    path = make_cube(d / "c.zarr", feats, valid)
    ds = geodino.open_cube(path)
    truth = (np.arange(SHAPE[0])[:, None] * 100 + np.arange(SHAPE[1])[None]).astype(np.uint16)  # a cell's id
    prof = dict(driver="GTiff", width=SHAPE[1], height=SHAPE[0], count=1, dtype="uint16", crs=ds.rio.crs,
                transform=ds.rio.transform())
    with rasterio.open(d / "ids.tif", "w", **prof) as r:
        r.write(truth[None])
    return d, path, ds, truth


def _cell(ds, sample):
    """Row/col of the top-left cell of a sample's bounds on the cube grid."""
    x, y = sample["bounds"][0], sample["bounds"][1]
    t = ds.rio.transform()
    return int(round((y.stop - t.f) / t.e)), int(round((x.start - t.c) / t.a))


def test_is_a_geodataset_with_the_cubes_grid(scene):
    _, path, ds, _ = scene
    cd = CubeDataset(path)
    t = ds.rio.transform()
    assert cd.crs == ds.rio.crs and cd.res == (160.0, 160.0) and len(cd) == 1
    x, y, _ = cd.bounds
    assert (x.start, x.stop, y.stop, y.start) == (t.c, t.c + SHAPE[1] * 160, t.f, t.f - SHAPE[0] * 160)


def test_intersection_with_a_raster_dataset_pairs_features_and_labels(scene):
    _, path, ds, truth = scene
    data = CubeDataset(path) & Labels(paths=str(scene[0] / "ids.tif"))
    feats = ds.features.values.astype(np.float32)
    valid = ds.valid.values
    sampler = RandomGeoSampler(data, size=8, length=6, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(data, sampler=sampler, batch_size=3, collate_fn=stack_samples)
    n = 0
    for batch in loader:
        assert batch["image"].shape == (3, DIM, 8, 8) and batch["mask"].shape == (3, 8, 8)
        for i in range(3):
            ids = batch["mask"][i].numpy()
            r, c = ids // 100, ids % 100  # the label raster says which cell each pixel is: features must match
            want_valid = valid[r, c]
            assert np.array_equal(batch["valid"][i].numpy(), want_valid)
            got = batch["image"][i].numpy()
            want = np.where(want_valid[None], np.nan_to_num(feats[:, r, c]), 0)
            np.testing.assert_array_equal(got, want)
            n += 1
    assert n == 6


def test_grid_and_batch_samplers(scene):
    _, path, ds, truth = scene
    data = CubeDataset(path) & Labels(paths=str(scene[0] / "ids.tif"))
    grid = GridGeoSampler(data, size=8, stride=8)
    seen = set()
    for q in grid:
        s = data[q]
        r, c = _cell(ds, s)
        assert s["mask"][0, 0].item() == truth[r, c]
        seen.add((r, c))
    assert seen == {(r, c) for r in range(0, 24, 8) for c in range(0, 32, 8)}
    batches = list(DataLoader(data, batch_sampler=RandomBatchGeoSampler(data, size=4, batch_size=5, length=10),
                              collate_fn=stack_samples))
    assert len(batches) == 2 and batches[0]["image"].shape == (5, DIM, 4, 4)


def test_intersection_with_a_vector_dataset(scene, tmp_path):
    _, path, ds, _ = scene
    t = ds.rio.transform()
    poly = box(t.c + 2 * 160, t.f - 12 * 160, t.c + 16 * 160, t.f - 3 * 160)
    other = box(t.c + 20 * 160, t.f - 20 * 160, t.c + 28 * 160, t.f - 14 * 160)
    gpd.GeoDataFrame({"cls": [3, 5]}, geometry=[poly, other], crs=ds.rio.crs).to_file(tmp_path / "p.gpkg")
    data = CubeDataset(path) & VectorDataset(paths=str(tmp_path / "p.gpkg"), label_name="cls")
    assert data.crs == ds.rio.crs and data.res == (160.0, 160.0)
    feats = np.nan_to_num(ds.features.values.astype(np.float32))
    n = 0
    for batch in DataLoader(data, sampler=GridGeoSampler(data, size=4, stride=4), batch_size=4,
                            collate_fn=stack_samples):
        for i in range(len(batch["image"])):
            x, y = batch["bounds"][i][0], batch["bounds"][i][1]
            r0, c0 = int(round((y.stop - t.f) / t.e)), int(round((x.start - t.c) / t.a))
            cx = x.start + (np.arange(4) + 0.5) * 160
            cy = y.stop - (np.arange(4) + 0.5) * 160
            want = np.zeros((4, 4), int)
            for g, v in ((poly, 3), (other, 5)):
                b = g.bounds
                want[np.ix_((cy > b[1]) & (cy < b[3]), (cx > b[0]) & (cx < b[2]))] = v
            np.testing.assert_array_equal(batch["mask"][i].numpy(), want)
            np.testing.assert_array_equal(batch["image"][i].numpy(), feats[:, r0:r0 + 4, c0:c0 + 4])
            n += 1
    assert n > 0


def test_labels_first_samples_features_at_the_labels_resolution(scene, tmp_path):
    d, path, ds, truth = scene
    with rasterio.open(d / "ids.tif") as src:  # the same ids at 4x the resolution (40 m cells)
        prof = src.profile | {"width": SHAPE[1] * 4, "height": SHAPE[0] * 4,
                              "transform": src.transform * src.transform.scale(0.25)}
        fine = np.repeat(np.repeat(truth, 4, 0), 4, 1)
    with rasterio.open(tmp_path / "fine.tif", "w", **prof) as r:
        r.write(fine[None])
    data = Labels(paths=str(tmp_path / "fine.tif")) & CubeDataset(path)
    assert data.res == (40.0, 40.0)
    s = data[next(iter(GridGeoSampler(data, size=16, stride=16)))]
    ids = s["mask"].numpy()
    feats = np.nan_to_num(ds.features.values.astype(np.float32))
    np.testing.assert_array_equal(s["image"].numpy(), np.where(ds.valid.values[ids // 100, ids % 100][None],
                                                               feats[:, ids // 100, ids % 100], 0))


def test_refuses_to_reproject(scene):
    _, path, _, _ = scene
    cd = CubeDataset(path)
    with pytest.raises(ConfigError, match="cube first"):
        cd.crs = "EPSG:4326"


def test_two_cubes_are_one_dataset(scene, tmp_path):
    """The scene cut into two cubes (left and right halves): one dataset whose samples across the cut equal the
    whole cube's."""
    from affine import Affine

    _, path, ds, _ = scene
    f = ds.features.values.astype(np.float32)
    v = ds.valid.values
    t = ds.rio.transform()
    left = make_cube(tmp_path / "l.zarr", f[:, :, :16], v[:, :16], transform=t)
    right = make_cube(tmp_path / "r.zarr", f[:, :, 16:], v[:, 16:], transform=t * Affine.translation(16, 0))
    both = CubeDataset([left, right])
    whole = CubeDataset(path)
    assert len(both) == 2 and both.bounds[:2] == whole.bounds[:2]
    q = (slice(t.c + 12 * 160, t.c + 20 * 160), slice(t.f - 20 * 160, t.f - 12 * 160))
    a, b = both[q], whole[q]
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_array_equal(a["valid"].numpy(), b["valid"].numpy())
