from __future__ import annotations

import numpy as np
import pytest

from lensforge.catalogs.schema import MASK_BITS, mask_bit_names
from lensforge.errors import ConfigError
from lensforge.pipeline.config import MaskConfig
from lensforge.pipeline.stamps.defects import DefectModel, draw_bitmask, register_defect

SHAPE = (32, 32)
NONE = {"cosmic_rays_per_stamp": 0, "bad_column_probability": 0, "blank_patch_probability": 0}


def _masks(n=50, seed=3, **rates):
    config = MaskConfig(**{**NONE, **rates})
    return np.stack([draw_bitmask(config, seed, i, SHAPE) for i in range(n)])


def test_no_rates_no_defects():
    assert not _masks().any()


def test_bad_columns_are_single_columns_from_the_readout_edge():
    masks = _masks(bad_column_probability=1.0)
    assert set(np.unique(masks)) == {0, MASK_BITS["BAD_COLUMN"]}
    for mask in masks:
        columns = np.flatnonzero(mask.any(axis=0))
        assert len(columns) == 1
        rows = np.flatnonzero(mask[:, columns[0]])
        np.testing.assert_array_equal(rows, np.arange(len(rows)))  # contiguous from row 0
        assert len(rows) >= SHAPE[0] // 4


def test_blank_patches_are_rectangles_of_the_configured_size():
    masks = _masks(blank_patch_probability=1.0, blank_patch_size_min_pixels=3, blank_patch_size_max_pixels=6)
    for mask in masks:
        rows, cols = np.nonzero(mask == MASK_BITS["BLANK"])
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 3 <= height <= 6 and 3 <= width <= 6
        assert len(rows) == height * width  # filled rectangle


def test_cosmic_ray_count_follows_the_rate():
    few = _masks(n=200, cosmic_rays_per_stamp=0.2)
    many = _masks(n=200, cosmic_rays_per_stamp=3.0)
    assert set(np.unique(many)) == {0, MASK_BITS["COSMIC_RAY"]}
    assert (few != 0).any(axis=(1, 2)).mean() < 0.35  # P(at least one) = 1 - exp(-0.2) = 0.18
    assert (many != 0).any(axis=(1, 2)).mean() > 0.85  # 1 - exp(-3) = 0.95


def test_bits_combine_and_name_themselves():
    masks = _masks(n=40, cosmic_rays_per_stamp=5, bad_column_probability=1, blank_patch_probability=1)
    combined = np.bitwise_or.reduce(masks.ravel())
    assert mask_bit_names(int(combined)) == ["COSMIC_RAY", "BAD_COLUMN", "BLANK"]


def test_masks_depend_only_on_seed_and_index():
    config = MaskConfig(cosmic_rays_per_stamp=2, bad_column_probability=0.5, blank_patch_probability=0.5)
    a = draw_bitmask(config, 7, 11, SHAPE)
    np.testing.assert_array_equal(a, draw_bitmask(config, 7, 11, SHAPE))
    assert not np.array_equal(np.stack([draw_bitmask(config, 7, i, SHAPE) for i in range(5)]),
                              np.stack([draw_bitmask(config, 8, i, SHAPE) for i in range(5)]))


def test_unknown_defect_bit_is_refused():
    class Bogus(DefectModel):
        bit_name = "GREMLIN"

        def draw(self, rng, shape, masks):
            return np.zeros(shape, bool)

    with pytest.raises(ConfigError, match="GREMLIN"):
        register_defect(Bogus())
