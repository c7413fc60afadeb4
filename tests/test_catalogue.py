from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import pandas as pd
import pytest

from lensforge.catalogs.manifest import read_manifest, sha256_of, write_manifest
from lensforge.catalogs.truth import (
    labels_table,
    read_truth_catalogue,
    write_truth_catalogue,
    write_truth_catalogue_in_parts,
)
from lensforge.errors import InputError


def _labels(n=5):
    return {"object_id": np.arange(n), "g1": np.linspace(-0.05, 0.05, n), "flux": np.full(n, 1e3),
            "half_light_radius": np.full(n, 0.5)}


def test_fits_and_parquet_carry_the_same_columns_and_units(tmp_path):
    table = labels_table(_labels(), meta={"run_seed": 3})
    paths = write_truth_catalogue(table, tmp_path / "catalogs", "truth")
    fits, parquet = (read_truth_catalogue(paths[f]) for f in ("fits", "parquet"))
    assert fits.colnames == parquet.colnames == ["object_id", "g1", "flux", "half_light_radius"]
    for name in fits.colnames:
        np.testing.assert_array_equal(fits[name], parquet[name])
        assert fits[name].unit == parquet[name].unit
    assert fits["half_light_radius"].unit == u.arcsec and parquet["flux"].unit == u.Unit("adu")
    assert parquet.meta["run_seed"] == 3
    frame = pd.read_parquet(paths["parquet"])  # plain pandas reads it too
    assert list(frame.columns) == fits.colnames and len(frame) == 5


def test_writing_in_parts_gives_the_whole_table_with_its_units_and_meta(tmp_path):
    """The simulate stage writes its catalogue part by part; readers must see the in-memory path's table."""
    from lensforge.catalogs.schema import LABEL_ARRAYS

    rng = np.random.default_rng(5)
    n = 23
    labels = {name: (rng.normal(size=n) if spec.dtype.startswith("float") else rng.integers(0, 3, n)).astype(spec.dtype)
              for name, spec in LABEL_ARRAYS.items()}
    meta = {"RUNNAME": "parts", "RUNSEED": 7}
    whole = write_truth_catalogue(labels_table(labels, meta=meta), tmp_path / "whole", "truth")
    template = labels_table({name: values[:0] for name, values in labels.items()}, meta=meta)
    read = []
    parts = write_truth_catalogue_in_parts(template, n, lambda a, b: read.append((a, b)) or
                                           {k: v[a:b] for k, v in labels.items()}, tmp_path / "parts", "truth",
                                           rows_per_part=10)
    assert read == [(0, 10), (10, 20), (20, 23)]  # each part once, for both formats; never the whole table
    for fmt in ("fits", "parquet"):
        expected, got = read_truth_catalogue(whole[fmt]), read_truth_catalogue(parts[fmt])
        assert got.colnames == expected.colnames == list(LABEL_ARRAYS)
        for name in got.colnames:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{fmt} {name}")
            assert got[name].unit == expected[name].unit and got[name].dtype == expected[name].dtype, (fmt, name)
            assert got[name].description == expected[name].description, (fmt, name)
        assert got.meta["RUNNAME"] == "parts" and got.meta["RUNSEED"] == 7, fmt
    assert parts["fits"].read_bytes() == whole["fits"].read_bytes()  # astropy laid out the same HDU


def test_unknown_column_refused():
    with pytest.raises(InputError, match="unknown truth columns \\['shoe_size'\\]"):
        labels_table({"shoe_size": np.ones(2)})


@pytest.mark.parametrize("name, content, match", [
    ("cat.csv", b"a,b\n", "expected a .fits or .parquet"),
    ("cat.fits", b"SIMPLE  = garbage", "unreadable catalogue"),
    ("cat.parquet", b"PAR1 truncated", "unreadable catalogue"),
])
def test_bad_catalogue_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_truth_catalogue(path)


def test_manifest_checksums_products_and_is_written_last(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "b.bin").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="incomplete"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"seed": 1}, 1, ["a.txt", "dir"], {"stages": ["x"]})
    manifest = read_manifest(tmp_path)
    import hashlib
    assert manifest["products"]["a.txt"] == hashlib.sha256(b"alpha").hexdigest()
    assert manifest["products"]["dir"] == sha256_of(tmp_path / "dir")
    assert manifest["seed"] == 1 and manifest["stages"] == ["x"]
    assert manifest["package_versions"]["galsim"]
    assert set(manifest["code_revision"]) == {"commit", "dirty"}
    (tmp_path / "dir" / "b.bin").write_bytes(b"\x00\x02")
    assert sha256_of(tmp_path / "dir") != manifest["products"]["dir"]
    with pytest.raises(InputError, match="does not exist"):
        write_manifest(tmp_path, {}, 1, ["missing.txt"])
    json.loads((tmp_path / "manifest.json").read_text())  # the earlier manifest is intact


def test_refresh_manifest_follows_a_product_changed_in_place(tmp_path):
    from lensforge.catalogs.manifest import refresh_manifest

    assert refresh_manifest(tmp_path, "inpaint") is None  # an incomplete run stays incomplete
    assert not (tmp_path / "manifest.json").exists()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "c").write_bytes(b"\x00")
    write_manifest(tmp_path, {"seed": 3}, 3, ["store"], {"stages": ["simulate"], "timings": {"s": 1.0}})
    (tmp_path / "store" / "c").write_bytes(b"\x01")  # in-painting rewrote the store
    refresh_manifest(tmp_path, "inpaint")
    manifest = read_manifest(tmp_path)
    assert manifest["products"]["store"] == sha256_of(tmp_path / "store")
    assert manifest["config"] == {"seed": 3} and manifest["seed"] == 3 and manifest["timings"] == {"s": 1.0}
    assert manifest["stages"] == ["simulate", "inpaint"]
