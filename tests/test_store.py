from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from lensforge.catalogs.schema import IMAGE_ARRAYS, LABEL_ARRAYS, MASK_BITS, SCHEMA_VERSION, STAMP_MASK_BITS
from lensforge.catalogs.store import (
    add_image_array,
    create_store,
    finalize_store,
    open_store,
    read_labels,
    write_objects,
)
from lensforge.errors import InputError


def _store(tmp_path: Path, n=10, size=8, chunk=4) -> Path:
    path = tmp_path / "set.zarr"
    create_store(path, n, size, chunk, attrs={"run_name": "t"})
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        write_objects(path, start, {"images": rng.normal(size=(m, size, size)),
                                    "masks": np.full((m, size, size), MASK_BITS["BLANK"]),
                                    "object_id": np.arange(start, start + m), "flux": np.full(m, 2.5)})
    finalize_store(path)
    return path


def test_store_is_zarr_v3_chunked_compressed_with_dimension_names(tmp_path):
    group = zarr.open_group(_store(tmp_path), mode="r")
    images = group["images"]
    assert group.metadata.zarr_format == 3
    assert images.chunks == (4, 8, 8)
    assert images.metadata.dimension_names == ("object", "y", "x")
    assert "lz4" in str(images.compressors[0]) and "bitshuffle" in str(images.compressors[0])
    assert images.attrs["units"] == "adu"
    # The attributes list exactly the planes the uint8 masks can hold (tiles' HOT_PIXEL is bit 8).
    assert group["masks"].attrs["mask_bits"] == group.attrs["mask_bits"] == STAMP_MASK_BITS
    assert max(STAMP_MASK_BITS.values()) <= np.iinfo(group["masks"].dtype).max
    assert set(MASK_BITS) - set(STAMP_MASK_BITS) == {"HOT_PIXEL"}
    assert group.attrs["schema_version"] == SCHEMA_VERSION and group.attrs["run_name"] == "t"


def test_xarray_and_dask_read_the_documented_variables(tmp_path):
    path = _store(tmp_path)
    ds = xr.open_zarr(path)
    assert set(ds.data_vars) >= {"images", "masks", "psf", "noiseless", *LABEL_ARRAYS}
    assert ds["images"].dims == ("object", "y", "x") and ds["flux"].dims == ("object",)
    assert ds["half_light_radius"].attrs["units"] == "arcsec"
    assert ds["masks"].dtype == np.uint8 and int(ds["masks"][0, 0, 0]) == MASK_BITS["BLANK"]
    np.testing.assert_array_equal(ds["object_id"].values, np.arange(10))
    lazy = da.from_zarr(str(path), component="images")
    assert lazy.chunks[0] == (4, 4, 2)
    np.testing.assert_array_equal(lazy.compute(), zarr.open_group(path)["images"][:])


def test_unwritten_float_values_are_nan(tmp_path):
    labels = read_labels(open_store(_store(tmp_path)))
    assert np.isnan(labels["g1"]).all() and (labels["flux"] == 2.5).all()


def test_reopening_same_layout_keeps_data_other_layout_refused(tmp_path):
    path = _store(tmp_path)
    before = zarr.open_group(path)["images"][:]
    create_store(path, 10, 8, 4, attrs={"run_name": "t"})
    np.testing.assert_array_equal(zarr.open_group(path)["images"][:], before)
    with pytest.raises(InputError, match="different layout"):
        create_store(path, 11, 8, 4)


def test_optional_arrays(tmp_path):
    path = _store(tmp_path)
    add_image_array(path, "inpainted")
    assert open_store(path)["inpainted"].shape == (10, 8, 8)
    with pytest.raises(InputError, match="unknown image array"):
        add_image_array(path, "bogus")
    assert set(IMAGE_ARRAYS) >= {"inpainted", "inpainted_std"}


@pytest.mark.parametrize("damage, match", [
    (lambda g, p: g.attrs.update({"schema_version": "0.1"}), "schema version '0.1'"),
    (lambda g, p: g.attrs.update({"schema_name": "other"}), "not a lensforge training set"),
    (lambda g, p: zarr.storage.LocalStore(p), None),
])
def test_foreign_or_other_version_store_is_refused(tmp_path, damage, match):
    path = _store(tmp_path)
    damage(zarr.open_group(path, mode="r+"), path)
    if match is None:  # delete a required array: a damaged store
        import shutil
        shutil.rmtree(path / "psf")
        match = "missing arrays \\['psf'\\]"
    with pytest.raises(InputError, match=match):
        open_store(path)


def test_missing_and_non_zarr_paths(tmp_path):
    with pytest.raises(InputError, match="no such store"):
        open_store(tmp_path / "absent.zarr")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable Zarr v3 store"):
        open_store(tmp_path / "junk.zarr")


def test_write_to_unknown_array_is_refused(tmp_path):
    with pytest.raises(InputError, match="no array 'bogus'"):
        write_objects(_store(tmp_path), 0, {"bogus": np.zeros(2)})


def test_written_chunks_are_flushed_to_disk_before_write_objects_returns(tmp_path, monkeypatch):
    """Every chunk file of the range written, and only those, is fdatasync'ed (then dropped from the page
    cache): the chunk's done-marker, written after write_objects returns, vouches for bytes on disk."""
    import os

    path = tmp_path / "set.zarr"
    create_store(path, 12, 8, 4)
    flushed = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                      real_fdatasync(fd)))
    values = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    write_objects(path, 4, {"images": values, "flux": np.arange(8.0)})  # objects 4..11: chunks 1 and 2
    assert sorted(Path(p).relative_to(path).as_posix() for p in flushed) == [
        "flux/c/1", "flux/c/2", "images/c/1/0/0", "images/c/2/0/0"]
    group = open_store(path)
    np.testing.assert_array_equal(group["images"][4:12], values)
    np.testing.assert_array_equal(read_labels(group, 4, 12)["flux"], np.arange(8.0))
    assert np.isnan(read_labels(group)["flux"][:4]).all() and np.isnan(read_labels(group)["g1"]).all()
