"""catalogs.open: the downstream loader of a training set (truth with units, pandas/arrow, xarray, torch)."""

from __future__ import annotations

import numpy as np
import pytest

from lensforge import catalogs
from lensforge.catalogs.store import create_store, finalize_store, open_store
from lensforge.errors import InputError
from lensforge.pipeline.config import build_config
from lensforge.pipeline.stamps.simulate import simulate_stamps


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "trainset.zarr"
    config = build_config({"survey": {"stamp_size": 32}, "seed": 9})
    create_store(path, n_objects=24, stamp_size=32, chunk_size=8)
    for start in (0, 8, 16):
        simulate_stamps(config, start, start + 8).write(path)
    finalize_store(path)
    return path


def test_open_gives_the_truth_with_units_and_the_arrays(store):
    ts = catalogs.open(store)
    assert len(ts) == 24 and {"images", "masks", "psf", "noiseless"} <= set(ts.arrays)
    assert str(ts.truth["flux"].unit) == "adu" and str(ts.truth["half_light_radius"].unit) == "arcsec"
    assert np.array_equal(ts.truth["g1"], open_store(store)["g1"][:])
    frame = ts.to_pandas()
    assert frame.attrs["units"]["field_x"] == "arcsec" and len(frame) == 24
    arrow = ts.to_arrow()
    assert arrow.schema.field("flux").metadata[b"unit"] == b"adu"
    assert ts.manifest is None  # no manifest next to a bare store: the run is not complete


def test_xarray_view_is_lazy_and_named(store):
    view = catalogs.open(store).xarray()
    assert view["images"].dims == ("object", "y", "x") and view["images"].shape == (24, 32, 32)


def test_torch_dataset_yields_image_mask_labels_in_store_order(store):
    import torch

    ts = catalogs.open(store)
    dataset = ts.torch_dataset(labels=("g1", "g2", "snr"))
    image, mask, labels = dataset[13]
    raw = open_store(store)
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and mask.dtype == torch.bool
    assert np.array_equal(image[0].numpy(), raw["images"][13])
    assert np.array_equal(mask[0].numpy(), raw["masks"][13] != 0)
    expected = [float(raw[name][13]) for name in ("g1", "g2", "snr")]
    assert labels.numpy() == pytest.approx(expected, rel=1e-6)
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=10))
    assert [len(b[0]) for b in batches] == [10, 10, 4]
    subset = ts.torch_dataset(images="noiseless", indices=[3, 20])
    assert len(subset) == 2 and np.array_equal(subset[1][0][0].numpy(), raw["noiseless"][20])


def test_bad_requests_and_foreign_stores_are_one_line_errors(store, tmp_path):
    ts = catalogs.open(store)
    with pytest.raises(InputError, match="unknown labels"):
        ts.torch_dataset(labels=("shear",))
    with pytest.raises(InputError, match="no array 'inpainted'"):
        ts.torch_dataset(images="inpainted")
    with pytest.raises(InputError, match="no such store"):
        catalogs.open(tmp_path / "missing.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(InputError, match="not a readable Zarr v3 store|not a lensforge training set"):
        catalogs.open(tmp_path / "junk.zarr")
