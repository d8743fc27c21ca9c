"""The one comparability check: model, weights, arch overrides, normalisation and the whole radiometry dict
(numeric keys added later included, free text ignored); grids compared exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from affine import Affine

import geodino
from geodino.cube.compat import check_comparable, check_same_grid, differences
from geodino.errors import CubeMismatchError
from tests.cubes import PROVENANCE, make_cube


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


@pytest.mark.parametrize("field,path,value", [
    ("model.name", "model__name", "dinov3-vitl16-sat493m"),
    ("model.weights.sha256", "model__weights__sha256", "f" * 64),
    ("model.arch_overrides.depth", "model__arch_overrides", {"depth": 2}),
    ("normalization.std", "normalization__std", [0.1, 0.1, 0.1]),
    ("radiometry.kind", "radiometry__kind", "percentile"),
    ("radiometry.gain", "radiometry__gain", [2e-4] * 3),
    ("radiometry.params.offset", "radiometry__params__offset", -1000.0),
    ("radiometry.gamma", "radiometry__gamma", 1.2),  # a numeric key added after this module was written
    ("radiometry.params.levels", "radiometry__params__levels", [0, 1, 2]),
])
def test_every_field_is_compared(tmp_path, field, path, value):
    a = _cube(tmp_path, "a.zarr")
    b = _cube(tmp_path, "b.zarr", _prov(**{path: value}))
    assert field in [d[0] for d in differences(a, b)]
    with pytest.raises(CubeMismatchError) as e:
        check_comparable(a, b)
    msg = str(e.value)
    assert "\n" not in msg and field in msg and "--force" in msg and "force=True" in msg
    assert [d[0] for d in check_comparable(a, b, force=True)] == [d[0] for d in differences(a, b)]


def test_free_text_is_ignored_and_equal_cubes_pass(tmp_path):
    a = _cube(tmp_path, "a.zarr")
    b = _cube(tmp_path, "b.zarr", _prov(radiometry__params__formula="DN/1e4", radiometry__params__offset_source="x",
                                          source={"path": "elsewhere.tif"}))
    assert differences(a, b) == [] and check_comparable(a, b) == []


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
