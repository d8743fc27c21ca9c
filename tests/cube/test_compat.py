"""The one comparability rule (geodino.cube.compat): every field it compares, refusals in one line naming the field
and both values in words, relaxations by name and force recorded, stored fingerprints that compare equal to the
live cube, compact cubes; grids compared exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from affine import Affine

import geodino
from geodino.cube.compat import check_comparable, check_same_grid, differences
from geodino.errors import ConfigError, CubeMismatchError
from tests.cubes import PROVENANCE, make_cube, structured_features


def _cube(tmp_path, name, prov=None, transform=None, shape=(8, 8), crs="EPSG:32633"):
    f = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    kw = {"transform": transform} if transform is not None else {}
    return geodino.open_cube(make_cube(tmp_path / name, f, provenance=prov, crs=crs, **kw))


def _prov(**changes):
    p = copy.deepcopy(PROVENANCE)
    for path, value in changes.items():
        d = p
        keys = path.split("__")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return p


# (field, provenance change, words of the first cube's value, words of the second's)
CASES = [
    ("model", {"model__name": "dinov3-vitl16-sat493m"}, "dinov3-vits16-lvd1689m", "dinov3-vitl16-sat493m"),
    ("weights", {"model__weights__sha256": "f" * 64}, "sha256 000000000000", "sha256 ffffffffffff"),
    ("weights", {"model__weights__sha256": "random-init"}, "sha256 000000000000", "random weights"),
    ("architecture", {"model__arch_overrides": {"depth": 2}}, "the default", "2"),
    ("normalization", {"normalization__std": [0.1, 0.1, 0.1]}, "[0.229, 0.224, 0.225]", "[0.1, 0.1, 0.1]"),
    ("radiometry", {"radiometry__kind": "percentile"}, "s2-l2a", "percentile"),
    ("radiometry", {"radiometry__gain": [2e-4] * 3}, "[0.0001, 0.0001, 0.0001]", "[0.0002, 0.0002, 0.0002]"),
    ("radiometry", {"radiometry__params__offset": -1000.0}, "0", "-1000"),
    ("radiometry", {"radiometry__gamma": 1.2}, "not recorded", "1.2"),  # a numeric key added later is compared too
    ("precision", {"numerics__precision": "bf16"}, "fp32", "bf16"),
    ("quantization", {"numerics__quantize": "int8"}, "not quantised", "int8"),
    ("tile", {"tiling__tile": 512}, "128 px", "512 px"),
    ("halo", {"tiling__halo": 32}, "0 px", "32 px"),
    ("blend", {"tiling__blend": 1}, "0 patches", "1 patch"),
    ("scale", {"source__scale": 4.0}, "x1", "x4"),
]


@pytest.mark.parametrize("fld,change,wa,wb", CASES, ids=[f"{c[0]}-{list(c[1])[0]}" for c in CASES])
def test_every_field_is_compared_and_named_in_words(tmp_path, fld, change, wa, wb):
    a = _cube(tmp_path, "a.zarr")
    b = _cube(tmp_path, "b.zarr", _prov(**change))
    with pytest.raises(CubeMismatchError) as e:
        check_comparable(a, b)
    msg = str(e.value)
    assert "\n" not in msg and "{" not in msg and "--force" in msg and "force=True" in msg, msg
    assert f"({wa} for cube {a.encoding['source']}, {wb} for cube {b.encoding['source']})" in msg, msg
    from geodino.cube.compat import compare

    assert [d.field for d in compare(a, b).differences] == [fld]
    # relaxed by name (also with the British spelling), or forced: returned and recorded
    relaxed = check_comparable(a, b, relax=({"normalization": "normalisation",
                                              "quantization": "quantisation"}.get(fld, fld),))
    assert relaxed.relaxed == (fld,) and not relaxed.forced and relaxed.differences[0].accepted == "relaxed"
    forced = check_comparable(a, b, force=True)
    rec = json.loads(json.dumps(forced.to_dict()))
    assert rec["forced"] and rec["differences"][0]["field"] == fld and rec["differences"][0]["accepted"] == "forced"


def test_fields_are_the_documented_ones():
    from geodino.cube.compat import FIELDS, normalize_relax

    assert FIELDS == ("model", "weights", "architecture", "normalization", "radiometry", "precision",
                      "quantization", "compact", "tile", "halo", "blend", "scale")
    assert normalize_relax("radiometry.gain, halo") == ("radiometry.gain", "halo")
    with pytest.raises(ConfigError, match="cannot relax 'colour'"):
        normalize_relax(["colour"])


def test_a_dotted_relaxation_relaxes_only_that_part(tmp_path):
    a = _cube(tmp_path, "a.zarr")
    b = _cube(tmp_path, "b.zarr", _prov(radiometry__gain=[2e-4] * 3, radiometry__params__offset=-1000.0))
    check_comparable(a, b, relax=("radiometry.gain", "radiometry.params"))
    with pytest.raises(CubeMismatchError, match="radiometry params.offset differs"):
        check_comparable(a, b, relax=("radiometry.gain",))
    c = _cube(tmp_path, "c.zarr", _prov(radiometry__kind="percentile"))
    with pytest.raises(CubeMismatchError, match="radiometry kind differs"):
        check_comparable(a, c, relax=("radiometry.gain", "radiometry.params"))


def test_free_text_is_ignored_and_equal_cubes_pass(tmp_path):
    a = _cube(tmp_path, "a.zarr")
    b = _cube(tmp_path, "b.zarr", _prov(radiometry__params__formula="DN/1e4", radiometry__params__offset_source="x",
                                          source={"path": "elsewhere.tif"}))
    assert differences(a, b) == [] and check_comparable(a, b).identical


def test_a_stored_fingerprint_compares_equal_to_its_cube(tmp_path):
    """What a head card or an index stores (JSON) is the cube's fingerprint: lists where the live cube may hold
    tuples, random weights included."""
    from geodino.cube.compat import fingerprint

    prov = _prov(model__weights={"source": "random", "sha256": "random-init", "random": True, "seed": 0},
                 model__random_weights=True, model__arch_overrides={"depth": 2})
    a = _cube(tmp_path, "a.zarr", prov)
    stored = json.loads(json.dumps(fingerprint(a)))
    assert check_comparable(stored, a).identical and check_comparable(a, stored).identical
    assert fingerprint(stored) == stored and stored["rule"] == "geodino-compat/1"
    from geodino.cube.store import read_attrs

    assert fingerprint(read_attrs(a.encoding["source"])) == stored  # from the root attributes alike


def test_compact_cubes_are_a_field_of_their_own(tmp_path):
    from geodino.analysis import change
    from geodino.cube.compress import compress
    from geodino.cube.compat import fingerprint

    f = structured_features((16, 16), 16, seed=1, rank=4, noise=0.02)
    full = geodino.open_cube(make_cube(tmp_path / "full.zarr", f))
    compress(full, tmp_path / "c8.zarr", k=8, sample=200)
    compress(full, tmp_path / "c8b.zarr", k=8, sample=200, seed=1)
    c8, c8b = geodino.open_cube(tmp_path / "c8.zarr"), geodino.open_cube(tmp_path / "c8b.zarr")
    fp = fingerprint(c8)["compact"]
    assert fp["scheme"] == "pca-unit-int8" and fp["components"] == 8 and len(fp["basis"]) == 16
    with pytest.raises(CubeMismatchError, match=r"feature encoding differs \(full features for cube .*full.zarr, "
                                                r"compact 8-d pca-unit-int8 \(basis [0-9a-f]{16}\) for cube"):
        check_comparable(full, c8)
    with pytest.raises(CubeMismatchError, match="feature encoding differs"):  # another basis: another space
        check_comparable(c8, c8b)
    assert check_comparable(c8, geodino.open_cube(tmp_path / "c8.zarr")).identical
    # analysis that unit-normalises first takes both
    m = change(full, c8).values
    assert np.nanmax(m) < 0.05 and np.isfinite(m).all()


def test_grids_are_compared_exactly(tmp_path):
    a = _cube(tmp_path, "a.zarr")
    check_same_grid(a, _cube(tmp_path, "same.zarr"))
    shifted = _cube(tmp_path, "b.zarr", transform=Affine(160.0, 0, 500160.0, 0, -160.0, 4500000.0))
    with pytest.raises(CubeMismatchError, match="transform .* reproject"):
        check_same_grid(a, shifted)
    with pytest.raises(CubeMismatchError, match="shape"):
        check_same_grid(a, _cube(tmp_path, "c.zarr", shape=(8, 9)))
    with pytest.raises(CubeMismatchError, match="CRS"):
        check_same_grid(a, _cube(tmp_path, "d.zarr", crs="EPSG:32632"))


def test_grid_compare_reads_odc_geobox_as_rioxarray_did(tmp_path):
    """The grid each comparison reads (odc-geo's ds.odc.geobox) is bit for bit rioxarray's transform and the
    cube's shape, on awkward grids, geographic and custom CRSs and a cube without one; within 1e-9 relative is the same
    grid (1e-6 px here), 1e-3 px another; the CRS is named in the refusal."""
    from geodino.cube.compat import _grid, grid_differences

    grids = [(Affine(10.000001, 0, 300123.3, 0, -9.99999, 5000000.7), "EPSG:32633"),
             (Affine(0.000123456789, 0, 10.123456789, 0, -0.000123456789, 45.987654321), "EPSG:4326"),
             (Affine(30.0, 0, -2356785.0, 0, -30.0, 3172605.0),
              "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23 +lon_0=-96 +datum=WGS84 +units=m"),
             (Affine(16.0, 0, 0, 0, 16.0, 0), None)]
    for i, (t, crs) in enumerate(grids):
        ds = _cube(tmp_path, f"g{i}.zarr", transform=t, shape=(7, 5), crs=crs)
        gcrs, affine, shape = _grid(ds)
        assert affine == tuple(ds.rio.transform())[:6] and shape == (7, 5)
        assert (gcrs is None) == (ds.rio.crs is None)
        assert grid_differences(ds, ds) == []
    t = grids[0][0]
    a = _cube(tmp_path, "near.zarr", transform=t, shape=(7, 5))
    near = _cube(tmp_path, "near2.zarr", transform=t * Affine.translation(1e-6, 0), shape=(7, 5))
    far = _cube(tmp_path, "far.zarr", transform=t * Affine.translation(1e-3, 0), shape=(7, 5))
    assert grid_differences(a, near) == [] and grid_differences(a, far) == ["transform"]
    with pytest.raises(CubeMismatchError, match="CRS EPSG:32633 vs EPSG:4326"):
        check_same_grid(a, _cube(tmp_path, "geo.zarr", transform=grids[1][0], shape=(7, 5), crs="EPSG:4326"))
