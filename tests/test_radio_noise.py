"""Empirical radio noise: the correlation function measured from source-free corners, and GalSim drawing it.

Synthetic checks draw noise of a known correlation with GalSim; the FIRST check skips without
``../shared/data``.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.pipeline.datasets import corpus
from lensforge.pipeline.datasets import radio_generator as rg
from lensforge.pipeline.datasets.radio_noise import correlated_noise, measure_noise_correlation, noise_kernel

DATA = corpus.shared_data_dir()
needs_first = pytest.mark.skipif(not (DATA / corpus.FIRST_FILE).is_file(), reason=f"no FIRST cube under {DATA}")
SCALE = 1.8  # FIRST pixel [arcsec]
BEAM = 5.4  # FIRST restoring beam FWHM [arcsec]


def beam_noise(sigma: float) -> galsim.BaseCorrelatedNoise:
    return galsim.UncorrelatedNoise(1.0, scale=SCALE).convolvedWith(galsim.Gaussian(fwhm=BEAM)).withVariance(sigma**2)


def noise_images(noise: galsim.BaseCorrelatedNoise, n: int, pixels: int, seed: int) -> np.ndarray:
    out = []
    for i in range(n):
        image = galsim.ImageD(pixels, pixels, scale=SCALE)
        image.addNoise(noise.copy(rng=galsim.BaseDeviate(seed + i)))
        out.append(image.array)
    return np.array(out)


def lag_correlations(images: np.ndarray, max_lag: int) -> np.ndarray:
    """Correlation at lags 1..max_lag along x, pooled over the stack (the truth the tests compare with)."""
    images = images - images.mean(axis=(1, 2), keepdims=True)
    variance = (images**2).mean()
    return np.array([(images[:, :, k:] * images[:, :, :-k]).mean() / variance for k in range(1, max_lag + 1)])


def test_measured_correlation_matches_the_drawn_noise_and_skips_sources():
    sigmas = np.linspace(1e-4, 3e-4, 30)
    images = np.array([image * s for image, s in zip(noise_images(beam_noise(1.0), 30, 96, 1), sigmas, strict=True)])
    images[0, 5, 5] += 40 * sigmas[0]  # a source in one corner patch: that patch is skipped
    images[:, 40:56, 40:56] += 1.0  # a bright central source in every image: outside every 32-pixel corner
    correlation, n_patches = measure_noise_correlation(images, sigmas, SCALE, patch_pixels=32)
    assert n_patches == 4 * 30 - 1
    assert correlation.shape == (63, 63) and correlation[31, 31] == 1.0
    assert np.array_equal(correlation, correlation[::-1, ::-1])
    # GalSim's own correlation function of the beam noise, at lags 1..4 along x. The estimate is the
    # biased one: lag k is scaled by (32 - k) / 32, and each patch's mean removal takes a little more.
    truth = beam_noise(1.0).drawImage(galsim.ImageD(9, 9, scale=SCALE)).array[4, 5:9]
    measured = correlation[31, 32:36]
    bias = (32 - np.arange(1, 5)) / 32
    assert measured == pytest.approx(truth * bias, abs=0.015)
    # Not the white-noise answer: the correlation at lag 1 is far above zero.
    assert measured[0] > 0.7
    # No source-free patch at all: a one-line error.
    with pytest.raises(InputError, match="no source-free 32x32 corner patch"):
        measure_noise_correlation(images[:1] * 0 + 1.0, sigmas[:1] * 1e-3, SCALE, patch_pixels=32)
    with pytest.raises(InputError, match="at least 64 pixels"):
        measure_noise_correlation(images[:, :40, :40], sigmas, SCALE, patch_pixels=32)
    with pytest.raises(InputError, match="one positive noise sigma per image"):
        measure_noise_correlation(images, sigmas[:3], SCALE, patch_pixels=32)


def test_correlated_noise_draws_the_measured_variance_and_correlation():
    # A correlation with long-range structure along x only, as sidelobe stripes give: the noise
    # drawn from it must carry that correlation and exactly the requested variance.
    stripes = galsim.UncorrelatedNoise(1.0, scale=SCALE).convolvedWith(
        galsim.Gaussian(fwhm=BEAM).shear(g1=0.6, g2=0.0))
    correlation, _ = measure_noise_correlation(noise_images(stripes, 40, 112, 7), np.ones(40), SCALE)
    drawn = noise_images(correlated_noise(correlation, SCALE, variance=4.0), 60, 128, 1000)
    assert drawn.var() == pytest.approx(4.0, rel=0.015)
    expected = correlation[55, 56:60]
    assert lag_correlations(drawn, 4) == pytest.approx(expected, abs=0.01)
    along_y = (drawn[:, 3:, :] * drawn[:, :-3, :]).mean() / drawn.var()
    assert along_y == pytest.approx(correlation[58, 55], abs=0.01) and along_y < expected[2] - 0.1
    with pytest.raises(InputError, match="odd square"):
        correlated_noise(np.ones((4, 4)), SCALE)
    lopsided = np.zeros((5, 5))
    lopsided[2, 2], lopsided[2, 3] = 1.0, 0.5
    with pytest.raises(InputError, match="180-degree"):
        correlated_noise(lopsided, SCALE)
    peaked_off_centre = np.zeros((5, 5))
    peaked_off_centre[2, 2], peaked_off_centre[2, 3], peaked_off_centre[2, 1] = 1.0, 2.0, 2.0
    with pytest.raises(InputError, match="peaks at zero lag"):
        correlated_noise(peaked_off_centre, SCALE)


def test_rendering_with_a_measured_correlation_carries_it_and_keeps_the_default_bytes():
    rng = np.random.default_rng(0)
    profiles = rng.random((3, 64, 64))
    profiles /= profiles.sum(axis=(1, 2), keepdims=True)
    flux, sigma = np.array([0.01, 0.02, 0.03]), np.full(3, 1e-3)
    default = rg.observe_radio_profiles(profiles, flux, sigma, BEAM, SCALE, seed=2)
    stripes = galsim.UncorrelatedNoise(1.0, scale=SCALE).convolvedWith(
        galsim.Gaussian(fwhm=BEAM).shear(g1=0.6, g2=0.0))
    correlation, _ = measure_noise_correlation(noise_images(stripes, 20, 112, 3), np.ones(20), SCALE)
    measured = rg.observe_radio_profiles(profiles, flux, sigma, BEAM, SCALE, seed=2, noise_correlation=correlation)
    assert np.array_equal(measured["noiseless"], default["noiseless"])  # noise only
    noise = measured["images"] - measured["noiseless"]
    # Stripes along x survive the 2x2 binning: 2 stamp pixels apart along x, far more correlated than along y.
    along_x = (noise[:, :, 2:] * noise[:, :, :-2]).mean() / noise.var()
    along_y = (noise[:, 2:, :] * noise[:, :-2, :]).mean() / noise.var()
    assert along_x > along_y + 0.15
    # Object i's noise comes from (seed, i) alone.
    first = rg.observe_radio_profiles(profiles[:1], flux[:1], sigma[:1], BEAM, SCALE, seed=2,
                                      noise_correlation=correlation)
    assert first["images"].tobytes() == measured["images"][:1].tobytes()


def test_noise_kernel_reproduces_the_correlation_for_training_fakes():
    """White noise convolved by the kernel (what training's fakes get) has the measured correlation."""
    from scipy.signal import correlate2d

    stripes = galsim.UncorrelatedNoise(1.0, scale=3.6).convolvedWith(galsim.Gaussian(fwhm=BEAM).shear(g1=0.6, g2=0.0))
    correlation, _ = measure_noise_correlation(noise_images(stripes, 40, 64, 11), np.ones(40), 3.6, patch_pixels=28)
    kernel = noise_kernel(correlation, 15)
    assert kernel.shape == (15, 15) and (kernel**2).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)
    autocorrelation = correlate2d(kernel, kernel)
    centre, c = autocorrelation.shape[0] // 2, correlation.shape[0] // 2
    np.testing.assert_allclose(autocorrelation[centre, centre:centre + 6], correlation[c, c:c + 6], atol=0.01)
    np.testing.assert_allclose(autocorrelation[centre:centre + 6, centre], correlation[c:c + 6, c], atol=0.01)
    with pytest.raises(InputError, match="odd"):
        noise_kernel(correlation, 14)


@needs_first
def test_first_noise_is_correlated_further_than_the_beam_alone():
    """The finding behind the empirical model: FIRST noise 4-5 pixels apart is still correlated."""
    train = corpus.load_first("train")
    correlation, n_patches = measure_noise_correlation(train.images, train.noise_sigma, train.pixel_scale_arcsec)
    centre = correlation.shape[0] // 2
    beam = beam_noise(1.0).drawImage(galsim.ImageD(11, 11, scale=SCALE)).array[5, 5:11]
    assert n_patches > 2000  # most of 4 x 913 corners hold no source
    far = correlation[centre, centre + 4:centre + 6]
    assert np.all(far > beam[4:6] + 0.1)
    # On the generator's 3.6" stamp grid (what training's fakes carry), still correlated 3 pixels (11") apart.
    stamp = rg.stamp_noise_correlation(train)
    assert stamp.shape == (55, 55) and stamp[27, 30] > 0.1


def test_train_radio_generator_hands_the_measured_noise_to_the_fakes(monkeypatch, tmp_path):
    """With a correlation the fakes' kernel is its square root; without one, the beam model's kernel as before."""
    seen = {}

    def capture(images, masks, sigma, model_settings, settings, *args, noise_kernel=None, **kwargs):
        seen["kernel"], seen["stretch"] = noise_kernel, settings.likelihood_stretch

    monkeypatch.setattr(rg, "train", capture)
    rng = np.random.default_rng(0)
    stamps = rg.RadioStamps(images=rng.normal(size=(2, 64, 64)).astype(np.float32), noise_sigma=np.ones(2),
                            conditions=np.array([[0.01, 20.0, 1.0], [0.02, 30.0, 2.0]]), native_noise_sigma=np.ones(2),
                            pixel_scale_arcsec=3.6, beam_fwhm_arcsec=BEAM, names=("a", "b"))
    stripes = galsim.UncorrelatedNoise(1.0, scale=3.6).convolvedWith(galsim.Gaussian(fwhm=BEAM).shear(g1=0.6, g2=0.0))
    correlation, _ = measure_noise_correlation(noise_images(stripes, 4, 64, 11), np.ones(4), 3.6, patch_pixels=28)
    from lensforge.models.train import TrainSettings

    rg.train_radio_generator(stamps, tmp_path, TrainSettings(steps=1), noise_correlation=correlation)
    np.testing.assert_array_equal(seen["kernel"], noise_kernel(correlation))
    rg.train_radio_generator(stamps, tmp_path, TrainSettings(steps=1))
    np.testing.assert_array_equal(seen["kernel"], rg.stamp_noise_kernel(BEAM, 3.6))
    # The radio likelihood is stretched above 3 sigma unless the caller says otherwise.
    assert seen["stretch"] == rg.LIKELIHOOD_STRETCH == 3.0
    rg.train_radio_generator(stamps, tmp_path, TrainSettings(steps=1), likelihood_stretch=0.0)
    assert seen["stretch"] == 0.0
