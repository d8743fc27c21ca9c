"""COG exports: valid per rio-cogeo's validator, with overviews, declared nodata and the cube's georeference;
never a partial file."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from rio_cogeo.cogeo import cog_validate

import geodino
from geodino import analysis
from geodino.errors import OutputExistsError
from geodino.export import write_cog
from geodino.export.cog import provenance_tags, write_labels_cog
from tests.cubes import make_cube, structured_features


@pytest.fixture(scope="module")
def big_cube(tmp_path_factory):
    """160 x 176 patches: large enough for an internal overview (at 128-px tiles, the COG driver's smallest)."""
    f = structured_features((160, 176), 16, seed=2)
    v = np.ones((160, 176), bool)
    v[:, :16] = False
    v[40:44, 50:60] = False
    return make_cube(tmp_path_factory.mktemp("cog") / "big.zarr", f, v, chunk=32), v


def _read(path):
    with rasterio.open(path) as r:
        return r.read(masked=False), r.profile, r.overviews(1), r.tags(), r.colormap(1) if r.count == 1 and \
            r.dtypes[0] == "uint8" else None


def test_pca_rgb_cog_is_valid_with_overviews_and_nodata(tmp_path, big_cube):
    path, v = big_cube
    ds = geodino.open_cube(path)
    m = analysis.pca_rgb(ds, sample=2000)
    out = write_cog(m, tmp_path / "rgb.tif", nodata=np.nan, tags=provenance_tags(ds))
    ok, errors, warnings = cog_validate(out, strict=True)
    assert ok and not errors and not warnings
    data, prof, ovr, tags, _ = _read(out)
    assert ovr and prof["count"] == 3 and prof["dtype"] == "float32" and np.isnan(prof["nodata"])
    assert prof["crs"] == ds.rio.crs and prof["transform"] == ds.rio.transform()
    np.testing.assert_array_equal(np.isnan(data[0]), ~v)
    np.testing.assert_allclose(data, m.values, equal_nan=True)
    assert tags["geodino_cube_id"] == ds.attrs["geodino"]["cube_id"]
    assert [p.name for p in tmp_path.iterdir()] == ["rgb.tif"]  # no staging files left


def test_integer_nodata_and_class_map_with_colormap(tmp_path, big_cube):
    path, v = big_cube
    ds = geodino.open_cube(path)
    labels = analysis.cluster(ds, 6, sample=2000)
    out = write_labels_cog(labels, tmp_path / "clusters.tif")
    assert cog_validate(out)[0]
    data, prof, ovr, _, cmap = _read(out)
    assert prof["dtype"] == "uint8" and prof["nodata"] == 255 and ovr
    np.testing.assert_array_equal(data[0] == 255, ~v)
    np.testing.assert_array_equal(data[0][v], labels.values[v])
    assert cmap[0][:3] == (31, 119, 180)
    sim = analysis.similarity(ds, vector=np.ones(16), top_k=0).map
    out = write_cog(sim, tmp_path / "sim_i16.tif", nodata=-9999, dtype="float32")
    data, prof, *_ = _read(out)
    assert prof["nodata"] == -9999 and (data[0][~v] == -9999).all()


def test_existing_file_is_kept_without_overwrite(tmp_path, big_cube):
    ds = geodino.open_cube(big_cube[0])
    target = tmp_path / "x.tif"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_cog(ds["valid"].astype("uint8"), target, nodata=0)
    assert target.read_bytes() == b"precious"
    write_cog(ds["valid"].astype("uint8"), target, nodata=0, overwrite=True)
    assert cog_validate(target)[0]


def test_a_failing_map_leaves_no_file(tmp_path, big_cube):
    import dask.array as da

    ds = geodino.open_cube(big_cube[0])

    def boom(block):
        raise RuntimeError("disk on fire")

    bad = xr.DataArray(da.map_blocks(boom, ds["valid"].data.astype("float32"), dtype="float32"),
                       dims=("y", "x"), coords={"y": ds.y, "x": ds.x}).rio.write_crs(ds.rio.crs)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_cog(bad, tmp_path / "bad.tif", nodata=np.nan)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(4096, 1024), (1024, 4096), (2048, 512), (3000, 600), (8192, 300)])
def test_elongated_maps_get_valid_cogs_with_overviews(tmp_path, shape):
    """A map one or a few blocks across: rio-cogeo's validator refuses an overview one block wide and over 512 px
    long (a 4096 x 1024 canopy map at 256-px blocks failed so); the block size and overview count avoid it."""
    import rioxarray  # noqa: F401

    h, w = shape
    m = xr.DataArray(np.arange(h * w, dtype=np.float32).reshape(h, w) % 97, dims=("y", "x"),
                     coords={"y": 5e6 - 0.6 * np.arange(h), "x": 5e5 + 0.6 * np.arange(w)}).rio.write_crs(32633)
    out = write_cog(m, tmp_path / "m.tif", nodata=np.nan)
    assert out == str(tmp_path / "m.tif")  # one return type for paths and URLs: the output as a string
    ok, errors, warnings = cog_validate(out, strict=True)
    assert ok and not errors and not warnings
    data, prof, ovr, _, _ = _read(out)
    assert ovr and (prof["height"], prof["width"]) == shape
    np.testing.assert_array_equal(data[0], m.values)


def test_pca_rgb_is_an_rgb_uint8_cog(tmp_path, big_cube):
    """A GIS shows the PCA image in colour: three uint8 bands declared red, green, blue, nodata 0 on invalid patches
    and 1 + round(254 v) elsewhere (v the 0..1 stretch)."""
    from rasterio.enums import ColorInterp

    path, v = big_cube
    ds = geodino.open_cube(path)
    m = analysis.pca_rgb(ds, sample=2000)
    out = m.geodino.to_cog(tmp_path / "rgb.tif")
    assert cog_validate(out, strict=True)[0]
    data, prof, ovr, *_ = _read(out)
    with rasterio.open(out) as r:
        assert r.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    assert prof["count"] == 3 and prof["dtype"] == "uint8" and prof["nodata"] == 0 and ovr
    assert (data[:, ~v] == 0).all() and (data[:, v] >= 1).all()
    np.testing.assert_array_equal(data[:, v], 1 + np.round(np.clip(m.values[:, v], 0, 1) * 254))


@pytest.mark.parametrize("shape", [(32, 32), (300, 300)])
def test_cog_writes_raise_no_gdal_or_library_warnings(tmp_path, shape, caplog, recwarn):
    """The COG driver's creation options (no INTERLEAVE before GDAL 3.11, tiles of at least 128 px), a class map's
    palette written before rio-cogeo copies it: nothing for GDAL or rio-cogeo to warn about."""
    import logging

    import rioxarray  # noqa: F401

    h, w = shape
    m = xr.DataArray(np.arange(h * w, dtype=np.float32).reshape(h, w) % 7, dims=("y", "x"),
                     coords={"y": 5e6 - 10 * np.arange(h), "x": 5e5 + 10 * np.arange(w)}).rio.write_crs(32633)
    with caplog.at_level(logging.DEBUG, logger="rasterio"):
        write_cog(m, tmp_path / "f.tif", nodata=np.nan)
        write_labels_cog(m.astype("int16"), tmp_path / "l.tif")
        write_cog(xr.concat([m / 7] * 3, "band"), tmp_path / "rgb.tif", nodata=0, dtype="uint8", photometric="RGB")
    gdal = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not gdal, gdal
    assert not [str(w.message) for w in recwarn.list if not issubclass(w.category, PendingDeprecationWarning)]


_LOCAL_COG = """
import sys
import numpy as np, rioxarray, xarray as xr
from geodino.export import write_cog
m = xr.DataArray(np.arange(600 * 500, dtype=np.float32).reshape(600, 500) % 97, dims=("y", "x"),
                 coords={"y": 5e6 - 0.6 * np.arange(600), "x": 5e5 + 0.6 * np.arange(500)}).rio.write_crs(32633)
write_cog(m.chunk(128), sys.argv[1], nodata=np.nan)
print(sorted({"distributed", "obstore"} & set(sys.modules)))
"""


def test_a_local_cog_of_a_dask_map_imports_neither_distributed_nor_obstore(tmp_path):
    """dask imports ``distributed`` (+11 MiB) to look for a client whenever a compute names no scheduler or a
    scheduler by name, and obstore (+4 MiB) served only object stores: a process that reads a cube and writes a
    local map (``predict``, ``export cog``) needs neither. The COG is the same as from a numpy map."""
    import subprocess
    import sys

    out = tmp_path / "m.tif"
    r = subprocess.run([sys.executable, "-c", _LOCAL_COG, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    with rasterio.open(out) as f:
        data = f.read(1)
    np.testing.assert_array_equal(data, np.arange(600 * 500, dtype=np.float32).reshape(600, 500) % 97)


def test_local_scheduler_defers_to_a_configured_scheduler_or_a_possible_client():
    import dask
    import dask.threaded

    from geodino.cube.reading import local_scheduler

    if "distributed" in __import__("sys").modules:  # another test imported it: dask's own choice
        assert local_scheduler() is None
    else:
        assert local_scheduler() is dask.threaded.get
    with dask.config.set(scheduler="sync"):
        assert local_scheduler() is None
