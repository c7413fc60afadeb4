"""Evaluation metrics: each checked against a value computed independently of the code under test."""

from __future__ import annotations

import math

import galsim
import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.pipeline.evaluation import metrics

SCALE = 0.2  # arcsec / pixel
SIZE = 48


def _gaussian(sigma_arcsec: float = 0.5, g1: float = 0.0, g2: float = 0.0, flux: float = 1000.0,
              offset: tuple[float, float] = (0.0, 0.0), size: int = SIZE) -> np.ndarray:
    """A GalSim Gaussian drawn without pixel convolution, so its moments are exactly known."""
    profile = galsim.Gaussian(sigma=sigma_arcsec, flux=flux).shear(g1=g1, g2=g2)
    return profile.drawImage(nx=size, ny=size, scale=SCALE, method="no_pixel", offset=offset).array


# --- hsm_shapes ---------------------------------------------------------------------------

def test_hsm_recovers_gaussian_size_shear_and_centroid():
    images = np.stack([_gaussian(0.5, g1=0.2, g2=-0.1),
                       _gaussian(0.8, g1=-0.05, g2=0.3, offset=(1.5, -2.0))])
    shapes = metrics.hsm_shapes(images, SCALE)
    assert shapes["flag"].tolist() == [True, True]
    # Shears preserve area, so |det M|^(1/4) stays the Gaussian's sigma.
    np.testing.assert_allclose(shapes["sigma_arcsec"], [0.5, 0.8], rtol=2e-3)
    np.testing.assert_allclose(shapes["e1"], [0.2, -0.05], atol=2e-3)
    np.testing.assert_allclose(shapes["e2"], [-0.1, 0.3], atol=2e-3)
    np.testing.assert_allclose(shapes["flux_adu"], [1000.0, 1000.0], rtol=5e-3)
    # GalSim centres an even stamp at pixel index (SIZE - 1) / 2 = 23.5; offset is in pixels.
    np.testing.assert_allclose(shapes["x_centroid"], [23.5, 25.0], atol=1e-3)
    np.testing.assert_allclose(shapes["y_centroid"], [23.5, 21.5], atol=1e-3)


def test_hsm_snr_is_the_matched_filter_snr():
    image = _gaussian(0.6, g1=0.1)
    noise = 3.0
    shapes = metrics.hsm_shapes(image[None], SCALE, noise_sigma=np.array([noise]))
    # Optimal S/N of a known profile in white noise: sqrt(sum I^2) / sigma.
    expected = math.sqrt(np.sum(image**2)) / noise
    assert shapes["snr"][0] == pytest.approx(expected, rel=1e-2)


def test_hsm_failures_are_nan_not_exceptions():
    images = np.stack([np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), np.nan), _gaussian()])
    shapes = metrics.hsm_shapes(images, SCALE)
    assert shapes["flag"].tolist() == [False, False, True]
    for key in ("sigma_arcsec", "e1", "e2", "x_centroid"):
        assert np.isnan(shapes[key][:2]).all()
        assert np.isfinite(shapes[key][2])


# --- morphology ---------------------------------------------------------------------------

def test_morphology_gini_and_concentration_rank_sersic_indices():
    rng = np.random.default_rng(7)
    noise = 0.5
    psf = galsim.Gaussian(fwhm=0.3)
    stamps = []
    for n in (4.0, 1.0):
        galaxy = galsim.Convolve(galsim.Sersic(n=n, half_light_radius=0.8, flux=5000.0), psf)
        stamps.append(galaxy.drawImage(nx=64, ny=64, scale=SCALE).array + rng.normal(0, noise, (64, 64)))
    stamps.append(np.zeros((64, 64)))  # nothing to segment
    morph = metrics.morphology(np.stack(stamps), np.full(3, noise), pixel_scale_arcsec=SCALE)
    assert morph["ok"].tolist() == [True, True, False]
    assert morph["gini"][0] > morph["gini"][1] + 0.05
    assert morph["concentration"][0] > morph["concentration"][1] + 0.5
    for key in metrics.MORPHOLOGY_KEYS:
        assert np.isnan(morph[key][2])
    assert np.all(morph["rpetro_circ_arcsec"][:2] > 0)


def test_morphology_max_stamps_skips_the_rest():
    morph = metrics.morphology(np.stack([_gaussian()] * 2), 1.0, max_stamps=0)
    assert morph["flag"].tolist() == [-1, -1]
    assert np.isnan(morph["gini"]).all()


# --- wasserstein_table ---------------------------------------------------------------------

def test_wasserstein_identical_is_zero_and_shift_equals_shift():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=500)
    reference = {"a": sample, "b": sample, "flag": np.ones(500, dtype=bool)}
    other = {"a": sample.copy(), "b": np.append(sample + 3.0, np.nan)}
    table = metrics.wasserstein_table(reference, other)
    assert set(table) == {"a", "b"}  # default keys: common float statistics
    assert table["a"] == pytest.approx(0.0, abs=1e-12)
    assert table["b"] == pytest.approx(3.0, rel=1e-9)  # NaN dropped, pure translation


def test_wasserstein_too_few_values_is_nan_and_missing_key_raises():
    table = metrics.wasserstein_table({"a": np.array([1.0, 2.0])}, {"a": np.array([1.0, np.nan])}, ["a"])
    assert np.isnan(table["a"])
    with pytest.raises(InputError):
        metrics.wasserstein_table({"a": np.ones(3)}, {"b": np.ones(3)}, ["a"])


# --- coverage / density ----------------------------------------------------------------------

def _brute_force_coverage_density(real, fake, k):
    mean, std = real.mean(axis=0), real.std(axis=0)
    real, fake = (real - mean) / std, (fake - mean) / std
    real_real = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radius = np.sort(real_real, axis=1)[:, k]  # column 0 is the sample itself
    real_fake = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    inside = real_fake < radius[:, None]
    return inside.any(axis=1).mean(), inside.sum() / (k * len(fake))


def test_coverage_and_density_match_brute_force():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(150, 3)) * [1.0, 5.0, 0.1]
    fake = rng.normal(size=(120, 3)) * [1.2, 4.0, 0.1] + [0.3, 0.0, 0.0]
    coverage, density = _brute_force_coverage_density(real, fake, k=4)
    assert metrics.coverage_knn(real, fake, k=4) == pytest.approx(coverage)
    assert metrics.density_knn(real, fake, k=4) == pytest.approx(density)
    # Rows with NaN are dropped, not propagated.
    with_nan = np.vstack([fake, [[np.nan, 0.0, 0.0]]])
    assert metrics.coverage_knn(real, with_nan, k=4) == pytest.approx(coverage)


def test_coverage_same_distribution_near_one_and_shifted_zero():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(2000, 4))
    same = rng.normal(size=(2000, 4))
    far = rng.normal(size=(2000, 4)) + 10.0
    # Naeem et al.: expected coverage 1 - 2^-k for equal sizes of one distribution.
    assert metrics.coverage_knn(real, same, k=5) == pytest.approx(1 - 2**-5, abs=0.02)
    assert metrics.coverage_knn(real, far, k=5) == 0.0
    assert metrics.density_knn(real, same, k=5) == pytest.approx(1.0, abs=0.1)
    assert metrics.density_knn(real, far, k=5) == 0.0
    assert np.isnan(metrics.coverage_knn(real[:5], same, k=5))


# --- high_frequency_power_fraction --------------------------------------------------------------

def test_high_frequency_fraction_white_noise_vs_smooth_gaussian():
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(4, 64, 64))
    smooth = _gaussian(1.0, size=64)[None]
    fraction_noise = metrics.high_frequency_power_fraction(noise)
    fraction_smooth = metrics.high_frequency_power_fraction(smooth)
    # Flat spectrum: the fraction is the area of the Fourier square outside radius Nyquist/2.
    np.testing.assert_allclose(fraction_noise, 1 - math.pi * 0.25**2, atol=0.03)
    assert fraction_smooth[0] < 1e-6
    assert np.isnan(metrics.high_frequency_power_fraction(np.zeros((1, 8, 8)))[0])


# --- aperture_flux_errors --------------------------------------------------------------------------

def test_aperture_flux_errors_relative_error_and_touched():
    truth = np.stack([_gaussian(0.6)] * 3)
    predicted = truth * np.array([1.0, 1.1, 2.0])[:, None, None]
    masks = np.zeros(truth.shape, dtype=np.uint8)
    masks[0, 22:25, 20:30] = 4  # across the centre
    masks[1, 26, 23] = 1  # one pixel inside a radius-5 aperture
    masks[2, :3, :3] = 1  # a corner, far outside it
    result = metrics.aperture_flux_errors(predicted, truth, masks, radius_pixels=5.0)
    assert result["touched"].tolist() == [True, True, False]
    np.testing.assert_allclose(result["relative_error"][:2], [0.0, 0.1], atol=1e-12)
    assert np.isnan(result["relative_error"][2])
    assert result["median_abs_relative_error"] == pytest.approx(0.05)
    assert result["rms_relative_error"] == pytest.approx(math.sqrt(0.1**2 / 2))
    assert result["n_stamps"] == 2
    assert result["masked_area_pixels"][1] == pytest.approx(1.0)


def test_aperture_flux_is_exact_circle_area_on_flat_image():
    flat = np.ones((2, SIZE, SIZE))
    masks = np.ones(flat.shape)
    result = metrics.aperture_flux_errors(flat, flat, masks, radius_pixels=np.array([3.0, 7.5]))
    np.testing.assert_allclose(result["flux_truth"], math.pi * np.array([3.0, 7.5]) ** 2, rtol=1e-9)


# --- ellipticity_errors ----------------------------------------------------------------------------

def test_ellipticity_errors_on_touched_stamps_only():
    reference = np.stack([_gaussian(0.5, g1=0.1)] * 3)
    predicted = np.stack([_gaussian(0.5, g1=0.1), _gaussian(0.5, g1=0.1, g2=0.15), _gaussian(0.5, g1=0.4)])
    masks = np.zeros(reference.shape, dtype=bool)
    masks[0, 24, 24] = True
    masks[1, 20, 26] = True  # ~4.3 px from the centre, inside 2 sigma = 5 px
    masks[2, :2, :2] = True  # corner: off the galaxy
    result = metrics.ellipticity_errors(predicted, reference, masks, SCALE)
    assert result["touched"].tolist() == [True, True, False]
    np.testing.assert_allclose(result["abs_delta_e"][:2], [0.0, 0.15], atol=2e-3)
    assert np.isnan(result["abs_delta_e"][2])
    assert result["n_stamps"] == 2
    assert result["mean_abs_delta_e"] == pytest.approx(0.075, abs=2e-3)
    # A footprint covering the corner makes the third stamp count.
    footprint = np.zeros(reference.shape, dtype=bool)
    footprint[2, :5, :5] = True
    with_footprint = metrics.ellipticity_errors(predicted, reference, masks, SCALE, footprint=footprint)
    assert with_footprint["touched"].tolist() == [False, False, True]
    assert with_footprint["abs_delta_e"][2] == pytest.approx(0.3, abs=3e-3)


# --- uncertainty_coverage ---------------------------------------------------------------------------

def test_uncertainty_coverage_of_calibrated_gaussian():
    rng = np.random.default_rng(6)
    shape = (8, 64, 64)
    mean = rng.uniform(-2, 10, size=shape)
    std = rng.uniform(0.5, 2.0, size=shape)
    extra = np.linspace(0.5, 3.0, shape[0])
    truth = mean + std * rng.normal(size=shape)
    masks = rng.uniform(size=shape) < 0.5
    result = metrics.uncertainty_coverage(mean, std, truth, masks, noise_sigma=np.full(shape[0], 4.0))
    assert result["n_pixels"] == int(masks.sum())
    assert result["coverage_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert result["coverage_2sigma"] == pytest.approx(0.9545, abs=0.005)
    assert result["on_galaxy_n_pixels"] == int(np.sum(masks & (truth > 4.0)))
    assert result["on_galaxy_coverage_1sigma"] == pytest.approx(0.6827, abs=0.015)

    noisy_truth = mean + np.sqrt(std**2 + extra[:, None, None] ** 2) * rng.normal(size=shape)
    naive = metrics.uncertainty_coverage(mean, std, noisy_truth, masks)
    fixed = metrics.uncertainty_coverage(mean, std, noisy_truth, masks, extra_sigma=extra)
    assert naive["coverage_1sigma"] < 0.5
    assert fixed["coverage_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert "on_galaxy_coverage_1sigma" not in naive

    none_masked = metrics.uncertainty_coverage(mean, std, truth, np.zeros(shape))
    assert np.isnan(none_masked["coverage_1sigma"]) and none_masked["n_pixels"] == 0


def test_on_galaxy_coverage_selects_galaxy_pixels_by_the_noiseless_image():
    """Pure sky with a perfectly calibrated std: selected on the noisy value, the 16% of sky pixels whose
    noise exceeds 1 sigma pass as "galaxy" and none of them is within 1 sigma; selected on the noiseless
    image, the sky has no galaxy pixels, and a galaxy's pixels cover at the calibrated rate."""
    rng = np.random.default_rng(3)
    shape, sigma = (16, 64, 64), np.full(16, 1.0)
    noiseless = np.zeros(shape)
    noiseless[:, 24:40, 24:40] = 5.0  # a bright square "galaxy" in every stamp
    observed = noiseless + rng.normal(size=shape)
    masks = np.ones(shape, bool)
    mean, std = noiseless, np.ones(shape)
    by_noisy = metrics.uncertainty_coverage(mean, std, observed, masks, noise_sigma=sigma)
    by_galaxy = metrics.uncertainty_coverage(mean, std, observed, masks, noise_sigma=sigma, galaxy=noiseless)
    assert by_galaxy["on_galaxy_n_pixels"] == 16 * 16 * 16
    assert by_galaxy["on_galaxy_coverage_1sigma"] == pytest.approx(0.6827, abs=0.015)
    assert by_noisy["on_galaxy_n_pixels"] > 1.4 * by_galaxy["on_galaxy_n_pixels"]
    assert by_noisy["on_galaxy_coverage_1sigma"] < 0.5


# --- input validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: metrics.hsm_shapes(np.zeros((SIZE, SIZE)), SCALE),
    lambda: metrics.hsm_shapes(np.zeros((2, SIZE, SIZE)), -1.0),
    lambda: metrics.hsm_shapes(np.zeros((2, SIZE, SIZE)), SCALE, noise_sigma=np.ones(3)),
    lambda: metrics.morphology(np.zeros((2, SIZE, SIZE)), np.array([1.0, 0.0])),
    lambda: metrics.high_frequency_power_fraction(np.zeros((2, 8))),
    lambda: metrics.high_frequency_power_fraction(np.zeros((2, 8, 8)), cutoff=2.0),
    lambda: metrics.aperture_flux_errors(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), 2.0),
    lambda: metrics.aperture_flux_errors(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), -2.0),
    lambda: metrics.ellipticity_errors(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)), np.zeros((2, 8, 8)), SCALE),
    lambda: metrics.uncertainty_coverage(*[np.zeros((2, 8, 8))] * 4, extra_sigma=np.ones(5)),
    lambda: metrics.coverage_knn(np.zeros((10, 2)), np.zeros((10, 3))),
    lambda: metrics.density_knn(np.zeros((10, 2)), np.zeros((10, 2)), k=0),
])
def test_bad_inputs_raise_input_error(call):
    with pytest.raises(InputError):
        call()


def test_stamp_inpainting_evaluation_sizes_apertures_of_real_galaxies_from_their_stamps(tiny_config_values):
    """Real galaxies (cosmos_real) have no half-light radius label: the aperture uses the stamp's HSM size."""
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.evaluation.inpainting import GAUSSIAN_SIGMA_TO_HLR, evaluate_inpainting

    config = build_config(tiny_config_values)
    scale, size = config.survey.pixel_scale_arcsec, config.survey.stamp_size
    truth = np.stack([galsim.Gaussian(half_light_radius=r).drawImage(nx=size, ny=size, scale=scale).array * 1e3
                      for r in (0.6, 0.9)]).astype(np.float32)
    masks = np.zeros(truth.shape, np.uint8)
    masks[:, size // 2 - 1:size // 2 + 1, :] = 1
    prediction = np.where(masks != 0, 0.8 * truth, truth)
    data = {"noiseless": truth, "images": truth, "masks": masks, "noise_sigma": np.ones(2),
            "half_light_radius": np.full(2, np.nan)}
    unknown = evaluate_inpainting(config, data, {"biharmonic": (prediction, None)})
    measured = metrics.hsm_shapes(truth, scale)["sigma_arcsec"] * GAUSSIAN_SIGMA_TO_HLR
    known = evaluate_inpainting(config, {**data, "half_light_radius": measured}, {"biharmonic": (prediction, None)})
    flux_unknown = unknown["methods"]["biharmonic"]["aperture_flux"]
    assert flux_unknown == known["methods"]["biharmonic"]["aperture_flux"] and flux_unknown["n_stamps"] == 2
    np.testing.assert_allclose(measured, [0.6, 0.9], rtol=0.15)  # the pixel-convolved size: a little larger
