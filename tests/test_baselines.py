"""Contracts of the classical in-painting baselines (biharmonic, astropy Gaussian-kernel interpolation)."""

import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.models.baselines import inpaint_biharmonic, inpaint_interpolate_nans

BASELINES = [inpaint_biharmonic, inpaint_interpolate_nans]


def _plane(n: int = 3, size: int = 32) -> np.ndarray:
    """(n, size, size) float32 linear gradients, ADU: 100 + 0.3 y + 0.2 x, shifted per stamp."""
    y, x = np.mgrid[:size, :size]
    return np.stack([100.0 + 10 * i + 0.3 * y + 0.2 * x for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("inpaint", BASELINES)
def test_known_pixels_unchanged_bit_for_bit(inpaint):
    rng = np.random.default_rng(1)
    images = rng.normal(40.0, 5.0, size=(4, 32, 32)).astype(np.float32)
    masks = rng.random(images.shape) < 0.15
    masks[1] = False  # nothing to fill: passes through
    images[masks] = np.nan  # garbage behind the holes must not leak
    out = inpaint(images, masks)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.array_equal(out[~masks], images[~masks])
    assert np.array_equal(out[1], images[1])
    assert np.isfinite(out).all()


@pytest.mark.parametrize(("inpaint", "tolerance"), [(inpaint_biharmonic, 1e-3), (inpaint_interpolate_nans, 0.5)])
def test_small_hole_in_a_plane_is_recovered(inpaint, tolerance):
    images = _plane()
    truth = images.copy()
    masks = np.zeros(images.shape, dtype=bool)
    masks[:, 14:17, 10:13] = True  # 3x3 hole; the gradient is 0.36 ADU per pixel
    images[masks] = -1e6
    out = inpaint(images, masks)
    assert np.abs(out - truth)[masks].max() < tolerance


@pytest.mark.parametrize("inpaint", BASELINES)
def test_large_hole_leaves_no_nan(inpaint):
    images = _plane(n=2, size=48)
    masks = np.zeros(images.shape, dtype=bool)
    masks[0, 4:44, 4:44] = True  # the kernel of the first passes cannot reach the middle
    masks[1, :, :40] = True  # only an 8-pixel strip known
    out = inpaint(images, masks)
    assert np.isfinite(out).all()
    # Filled values stay within the range of the known ones for this smooth field.
    for i in range(2):
        known = images[i][~masks[i]]
        assert known.min() - 1 <= out[i][masks[i]].min() and out[i][masks[i]].max() <= known.max() + 1


def test_interpolate_nans_fallback_fills_with_the_known_median():
    images = _plane(n=1, size=48)
    masks = np.zeros(images.shape, dtype=bool)
    masks[0, 2:46, 2:46] = True
    out = inpaint_interpolate_nans(images, masks, kernel_stddev_pixels=0.5, max_iterations=1)
    assert np.isfinite(out).all()
    median = np.median(images[0][~masks[0]])
    assert np.any(out[0][masks[0]] == np.float32(median))  # the middle was out of reach of one pass


@pytest.mark.parametrize("inpaint", BASELINES)
def test_fully_masked_stamp_is_zero(inpaint):
    images = _plane(n=2)
    masks = np.zeros(images.shape, dtype=bool)
    masks[0] = True
    out = inpaint(images, masks)
    assert np.all(out[0] == 0)
    assert np.array_equal(out[1], images[1])


def test_integer_images_give_float64():
    images = np.arange(2 * 16 * 16, dtype=np.int32).reshape(2, 16, 16)
    masks = np.zeros(images.shape, dtype=bool)
    masks[:, 8, 8] = True
    for inpaint in BASELINES:
        assert inpaint(images, masks).dtype == np.float64


@pytest.mark.parametrize("inpaint", BASELINES)
def test_shape_mismatch_raises(inpaint):
    images = np.zeros((2, 16, 16), dtype=np.float32)
    with pytest.raises(InputError, match="must both be"):
        inpaint(images, np.zeros((2, 16, 15), dtype=bool))
    with pytest.raises(InputError, match="must both be"):
        inpaint(images[0], np.zeros((16, 16), dtype=bool))


def test_interpolate_nans_rejects_bad_settings():
    images = np.zeros((1, 16, 16), dtype=np.float32)
    masks = np.zeros(images.shape, dtype=bool)
    with pytest.raises(InputError, match="kernel_stddev_pixels"):
        inpaint_interpolate_nans(images, masks, kernel_stddev_pixels=0.0)
    with pytest.raises(InputError, match="max_iterations"):
        inpaint_interpolate_nans(images, masks, max_iterations=0)
