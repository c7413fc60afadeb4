"""Ordinary kriging of sky holes (lensforge.pipeline.inpaint.kriging): covariance, exactness, calibration."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lensforge.pipeline.inpaint.kriging import MAX_CONTEXT_PIXELS, kriging_fill, sky_autocovariance


def _beam_sky(seed: int, shape=(256, 256), smoothing: float = 1.2) -> np.ndarray:
    """Unit-variance white noise smoothed by a Gaussian of ``smoothing`` pixels (periodic): its correlation
    at lag d is exp(-d^2 / (4 smoothing^2))."""
    sky = gaussian_filter(np.random.default_rng(seed).normal(0.0, 1.0, shape), smoothing, mode="wrap")
    return sky / sky.std()


def test_the_autocovariance_of_a_smoothed_field_matches_its_analytic_correlation():
    smoothing = 1.2
    sky = _beam_sky(0, (512, 512), smoothing)
    covariance = sky_autocovariance(sky, np.ones(sky.shape, bool), max_lag=6)
    lag = np.arange(-6, 7)
    expected = np.exp(-(lag[:, None] ** 2 + lag[None, :] ** 2) / (4.0 * smoothing**2))
    np.testing.assert_allclose(covariance, expected, atol=0.03)
    # White noise: a variance and nothing else; pixels outside ``sky`` are never read.
    white = np.random.default_rng(1).normal(0.0, 2.0, (300, 300))
    white[:, :50] = 1e6
    use = np.ones(white.shape, bool)
    use[:, :50] = False
    covariance = sky_autocovariance(white, use, max_lag=3)
    assert covariance[3, 3] == pytest.approx(4.0, rel=0.02)
    off_centre = np.delete(covariance.ravel(), covariance.size // 2)
    assert np.abs(off_centre).max() < 0.05
    assert not sky_autocovariance(white, np.zeros(white.shape, bool)).any()


def test_the_covariance_is_the_same_summed_over_tiles():
    from lensforge.pipeline.inpaint import kriging

    sky = _beam_sky(2, (300, 300))
    known = np.random.default_rng(3).random(sky.shape) > 0.1
    whole = sky_autocovariance(sky, known, max_lag=5)
    tiled_size, kriging.COVARIANCE_TILE_PIXELS = kriging.COVARIANCE_TILE_PIXELS, 128
    try:
        tiled = sky_autocovariance(sky, known, max_lag=5)
    finally:
        kriging.COVARIANCE_TILE_PIXELS = tiled_size
    # Pairs across tile edges are lost (a fraction lag / 128 of them at most); the mean per pair stays.
    np.testing.assert_allclose(tiled, whole, atol=0.02 * whole.max())


def test_kriging_predicts_a_correlated_sky_better_than_its_mean_and_says_how_well():
    sky = _beam_sky(4)
    holes = np.zeros(sky.shape, bool)
    holes[40, 10:240] = True  # a trail
    holes[60:240, 128] = True  # a bad column
    holes[150:170, 30:50] = True  # a blank patch
    rows, cols = np.nonzero(holes)
    known = ~holes
    covariance = sky_autocovariance(sky, known)
    mean, std = kriging_fill(np.where(known, sky, 0.0), known, rows, cols, covariance)
    error = mean - sky[rows, cols]
    rmse = np.sqrt(np.mean(error**2))
    assert rmse < 0.65 * np.sqrt(np.mean((sky[rows, cols] - sky[known].mean()) ** 2))
    # Its std is the Gaussian field's conditional std: in the blank patch about 68 % of the errors lie within
    # it (in the thin holes the errors are a few hundredths of sigma, and a small error of the estimated
    # covariance dominates them: the card's kriging_sky_std_scale calibrates the std on real skies).
    patch = (rows >= 150) & (rows < 170) & (cols >= 30) & (cols < 50)
    coverage = np.mean(np.abs(error[patch]) <= std[patch])
    assert 0.6 < coverage < 0.76, coverage
    assert np.sqrt(np.mean(error[~patch] ** 2)) < 0.1 < np.sqrt(np.mean(error[patch] ** 2))
    # It grows with the distance from the nearest known pixel.
    assert std[(rows == 160) & (cols == 40)][0] > 2.0 * std[(rows == 40) & (cols == 100)][0]


def test_kriging_is_exact_on_a_constant_sky_whatever_its_level_and_needs_known_pixels():
    covariance = sky_autocovariance(_beam_sky(5), np.ones((256, 256), bool))
    image = np.full((64, 64), 1234.5)
    holes = np.zeros(image.shape, bool)
    holes[10:30, 10:30] = True
    rows, cols = np.nonzero(holes)
    mean, std = kriging_fill(image, ~holes, rows, cols, covariance)  # weights sum to one: the level needs no estimate
    np.testing.assert_allclose(mean, 1234.5, rtol=1e-9)
    assert np.isfinite(std).all()
    # A hole wider than twice the widest context: its middle has no known pixel near and is left NaN.
    holes = np.zeros((120, 120), bool)
    holes[10:110, 10:110] = True
    rows, cols = np.nonzero(holes)
    mean, std = kriging_fill(np.zeros(holes.shape), ~holes, rows, cols, covariance)
    centre = (np.abs(rows - 60) < 10) & (np.abs(cols - 60) < 10)
    assert np.isnan(mean[centre]).all() and np.isnan(std[centre]).all()
    edge = (rows == 10) | (cols == 10)
    assert np.isfinite(mean[edge]).all()
    assert MAX_CONTEXT_PIXELS < 40
