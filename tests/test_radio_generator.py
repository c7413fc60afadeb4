"""The FIRST radio generator (its data, beam layer, conditions and GalSim rendering) and the realism statistics.

Physics checks use GalSim-drawn sources in Jy/beam; the tests that read the real FIRST cube skip
without ``../shared/data``.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest
import torch

from lensforge.errors import InputError, ModelError
from lensforge.models.checkpoint import load_checkpoint, save_checkpoint
from lensforge.models.vaegan import VAEGAN, ModelSettings
from lensforge.pipeline.datasets import corpus
from lensforge.pipeline.datasets import radio_generator as rg
from lensforge.pipeline.evaluation.metrics import power_spectrum_slope
from lensforge.pipeline.evaluation.realism import REALISM_KEYS, realism_table

DATA = corpus.shared_data_dir()
needs_first = pytest.mark.skipif(not (DATA / corpus.FIRST_FILE).is_file(), reason=f"no FIRST cube under {DATA}")
BEAM = 5.4  # FIRST restoring beam FWHM [arcsec]


def jy_per_beam_image(flux_jy: float, size_arcsec: float, pixels: int = 150, scale: float = 1.8) -> np.ndarray:
    """A Gaussian source of ``flux_jy`` seen through a peak-1 Gaussian beam, sampled in Jy/beam by GalSim."""
    sky = galsim.Gaussian(fwhm=size_arcsec, flux=flux_jy)
    beam = galsim.Gaussian(fwhm=BEAM, flux=rg.GAUSSIAN_BEAM_AREA * BEAM**2 / scale**2)
    return galsim.Convolve(sky, beam).drawImage(nx=pixels, ny=pixels, scale=scale, method="no_pixel").array


def small_radio_model(seed: int = 0) -> VAEGAN:
    settings = ModelSettings(stamp_size=16, latent_dim=4, base_channels=4, oversampling=2, pixel_scale_arcsec=3.6,
                             conditions=rg.RADIO_CONDITIONS)
    torch.manual_seed(seed)
    model = VAEGAN(settings)
    model.fit_conditions(np.array([[0.01, 20.0, 1.0], [0.1, 60.0, 2.0], [0.05, 40.0, 1.5]]))
    return model.eval()


def test_fr_class_maps_mirabest_codes_and_refuses_unknown_ones():
    np.testing.assert_array_equal(rg.fr_class([100, 110, 200, 214, 300]), [1.0, 1.0, 2.0, 2.0, 1.5])
    with pytest.raises(InputError, match="fr_code"):
        rg.fr_class([400])


def test_bin_stamps_averages_the_central_square_and_keeps_the_unit():
    images = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)
    binned = rg.bin_stamps(images, stamp_pixels=4, binning=2)
    assert binned.shape == (2, 4, 4) and binned.dtype == np.float32
    np.testing.assert_allclose(binned[0, 0, 0], images[0, 1:3, 1:3].mean())
    np.testing.assert_allclose(binned.mean(axis=(1, 2)), images[:, 1:9, 1:9].mean(axis=(1, 2)))
    with pytest.raises(InputError, match="at least 8"):
        rg.bin_stamps(images[:, :6, :6], stamp_pixels=4, binning=2)


def test_integrated_flux_of_a_beam_convolved_source_is_its_flux_in_jy():
    image = jy_per_beam_image(0.05, 10.0)
    stamps = rg.bin_stamps(image[None])
    flux = rg.integrated_flux_jy(stamps, np.array([1e-7]), BEAM, 3.6)
    assert flux[0] == pytest.approx(0.05, rel=2e-3)  # the wings below 3 sigma of 1e-7 Jy/beam hold < 0.2%


def test_beam_psf_is_the_gaussian_beam_centred_on_the_fine_grid():
    psf = rg.beam_psf(BEAM, 64, 1.8)
    assert psf.sum() == pytest.approx(1.0, rel=1e-6)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (32, 32)
    fwhm = galsim.Image(psf.astype(np.float64), scale=1.8).calculateFWHM(center=galsim.PositionD(32 + 1, 32 + 1))
    assert fwhm == pytest.approx(BEAM, rel=0.02)


def test_dihedral_augment_gives_the_eight_orientations():
    image = np.arange(9.0).reshape(1, 3, 3)
    augmented = rg.dihedral_augment(image)
    assert augmented.shape == (8, 3, 3)
    assert len({a.tobytes() for a in augmented}) == 8 == rg.ORIENTATIONS
    np.testing.assert_array_equal(augmented[1], np.rot90(image[0]))


def test_model_settings_carry_their_conditions_through_a_checkpoint(tmp_path):
    model = small_radio_model()
    save_checkpoint(model, tmp_path / "m")
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert loaded.conditions == rg.RADIO_CONDITIONS and meta["model_settings"]["conditions"] == list(
        rg.RADIO_CONDITIONS)
    with pytest.raises(InputError, match="flux and size_arcsec conditions must be > 0"):
        loaded.prepare_conditions(torch.tensor([[0.01, -3.0, 1.0]]), 1)
    with pytest.raises(ModelError, match="distinct"):
        ModelSettings(conditions=("flux", "flux"))
    # A checkpoint written before conditions were a setting loads with the default ones.
    assert ModelSettings.from_dict({"stamp_size": 16}).conditions == ("flux", "half_light_radius")


def test_rendered_galaxies_carry_the_conditioned_flux_and_the_native_noise():
    model = small_radio_model()
    conditions = np.array([[0.02, 30.0, 1.0], [0.2, 50.0, 2.0], [0.05, 40.0, 1.5]])
    native_sigma = np.array([1.5e-4, 1.5e-4, 3e-3])
    out = rg.render_radio_galaxies(model, conditions, native_sigma, BEAM, seed=3)
    assert out["images"].shape == (3, 16, 16) and out["profiles"].shape == (3, 32, 32)
    # The noiseless stamp in Jy/beam integrates to the requested flux over the beam area (what the
    # training conditions measure), up to light outside the 58" stamp.
    totals = out["noiseless"].sum(axis=(1, 2)) / rg.beam_area_pixels(BEAM, 3.6)
    inside = out["profiles"][:, 4:-4, 4:-4].sum(axis=(1, 2))  # light well inside the stamp
    assert np.all(totals <= conditions[:, 0] * 1.001) and np.all(totals >= conditions[:, 0] * inside * 0.98)
    # Noise: beam-correlated, of the requested native sigma (checked on a pure-noise render).
    noise_only = rg.render_radio_galaxies(model, np.array([[1e-12, 30.0, 1.0]] * 8), np.full(8, 1e-3), BEAM, seed=5)
    native_std = np.std(noise_only["images"] - noise_only["noiseless"]) / rg.bin_stamps(
        np.ones((1, 32, 32)), 16, 2).mean()
    assert 0.7e-3 < native_std < 1.0e-3  # binning 2x2 of beam-correlated noise keeps ~90% of sigma
    # Object i's bytes depend on (seed, i) only, not on which others are drawn with it.
    first_two = rg.render_radio_galaxies(model, conditions[:2], native_sigma[:2], BEAM, seed=3)
    assert first_two["images"].tobytes() == out["images"][:2].tobytes()
    other_seed = rg.render_radio_galaxies(model, conditions[:2], native_sigma[:2], BEAM, seed=4)
    assert np.abs(other_seed["images"] - first_two["images"]).max() > 0.5 * native_sigma[0]
    with pytest.raises(InputError, match="native_noise_sigma"):
        rg.render_radio_galaxies(model, conditions, native_sigma[:2], BEAM)


def test_power_spectrum_slope_is_flat_for_white_noise_and_steep_for_a_smooth_profile():
    rng = np.random.default_rng(0)
    white = power_spectrum_slope(rng.normal(size=(4, 64, 64)))
    assert np.all(np.abs(white) < 0.35)
    smooth = galsim.Gaussian(sigma=3.0).drawImage(nx=64, ny=64, scale=1.0).array
    assert power_spectrum_slope(smooth[None])[0] < -3
    assert np.isnan(power_spectrum_slope(np.zeros((1, 64, 64)))[0])


def test_realism_table_divides_by_the_truth_vs_truth_distance():
    rng = np.random.default_rng(1)

    def sample(shift: float, n: int = 400) -> dict:
        return {key: rng.normal(shift, 1.0, n) for key in REALISM_KEYS}

    table = realism_table(sample(0.0), sample(0.0), {"same": sample(0.0), "shifted": sample(1.0)})
    same, shifted = table["candidates"]["same"], table["candidates"]["shifted"]
    assert all(r < 2.5 for r in same["ratio"].values())
    assert all(r > 5 for r in shifted["ratio"].values()) and shifted["n_passed"] == 0
    assert table["measured"]["shifted"]["gini"] == 1.0


@needs_first
def test_first_stamps_have_positive_fluxes_catalogue_sizes_and_fr_classes():
    real = corpus.load_first("calibration")
    stamps = rg.radio_stamps(real)
    assert stamps.images.shape == (len(real), 64, 64) and stamps.pixel_scale_arcsec == pytest.approx(3.6)
    assert np.all(stamps.conditions[:, 0] > 0) and set(np.unique(stamps.conditions[:, 2])) <= {1.0, 1.5, 2.0}
    np.testing.assert_array_equal(stamps.conditions[:, 1], real.extra["size_arcsec"])
    # Binning beam-correlated noise 2x2 lowers sigma by ~10% only (white noise would halve it).
    ratio = np.median(stamps.noise_sigma / stamps.native_noise_sigma)
    assert 0.8 < ratio < 0.98


def test_discriminator_fakes_carry_each_stamps_noise_level_and_the_beams_correlation():
    """Fakes get the real stamps' noise (level per stamp, texture of the beam), not the likelihood's white noise."""
    from lensforge.models.objectives import Batch, _noisy
    from lensforge.models.train import _fake_noise

    kernel = rg.stamp_noise_kernel(BEAM, 3.6)
    assert kernel.shape == (7, 7) and kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-8)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-8)
    # Likelihood sigma tempered to 4x and 1x the pixel noise: model-space stds 1/32 and 1/8.
    std, unit_kernel = _fake_noise(np.array([4.0, 1.0]), np.array([1.0, 1.0]), kernel)
    np.testing.assert_allclose(std.numpy(), [0.125 / 4, 0.125], rtol=1e-6)
    assert float((unit_kernel**2).sum()) == pytest.approx(1.0, rel=1e-5)
    batch = Batch(target=torch.zeros(2, 1, 96, 96), mask=torch.zeros(2, 1, 96, 96, dtype=torch.bool),
                  conditions=torch.zeros(2, 6), noise_std=std, noise_kernel=unit_kernel)
    # Two stacked batches (reconstructions and prior samples): stamp i and i + 2 share stamp i's level.
    fakes = _noisy(torch.zeros(4, 1, 96, 96), torch.Generator().manual_seed(0), batch)[:, 0, 8:-8, 8:-8]
    measured = fakes.flatten(1).std(dim=1).numpy()
    np.testing.assert_allclose(measured, [0.125 / 4, 0.125, 0.125 / 4, 0.125], rtol=0.06)
    # Neighbour correlation is the kernel's autocorrelation at one pixel (white noise would give 0).
    k = unit_kernel[0, 0].double().numpy()
    expected = float((k[:, :-1] * k[:, 1:]).sum())
    lag1 = float((fakes[:, :, :-1] * fakes[:, :, 1:]).mean(dim=(1, 2)).div(fakes.var(dim=(1, 2))).mean())
    assert expected > 0.3 and lag1 == pytest.approx(expected, abs=0.03)
    # Without them: the likelihood's white noise, as before.
    white = _noisy(torch.zeros(2, 1, 96, 96), torch.Generator().manual_seed(0))
    assert float(white.std()) == pytest.approx(0.125, rel=0.03)
    assert abs(float((white[..., :-1] * white[..., 1:]).mean() / white.var())) < 0.03
    with pytest.raises(InputError, match="pixel_noise_sigma"):
        _fake_noise(np.array([1.0, 1.0]), np.array([1.0, 0.0]), None)
    with pytest.raises(InputError, match="noise_kernel"):
        _fake_noise(np.array([1.0]), None, np.ones((4, 4)))
