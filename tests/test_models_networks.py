"""Network output shapes and the loss classes against hand computations."""

import math

import pytest
import torch

from lensforge.errors import InputError, ModelError
from lensforge.models.losses import (
    FeatureMatching,
    KLDivergence,
    MaskedGaussianNLL,
    NonSaturatingGANLoss,
    StretchedGaussianNLL,
)
from lensforge.models.vaegan import VAEGAN, ModelSettings


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("oversampling", [1, 2])
def test_shapes(size, oversampling):
    settings = ModelSettings(stamp_size=size, latent_dim=10, base_channels=4, oversampling=oversampling)
    model = VAEGAN(settings)
    fine = size * oversampling
    x = torch.randn(3, 1, size, size)
    mask = torch.zeros(3, 1, size, size, dtype=torch.bool)
    cond = model.prepare_conditions(torch.tensor([[1e3, 0.5], [float("nan"), 0.4], [2e3, float("nan")]]), 3)
    assert cond.shape == (3, 4)
    assert torch.equal(cond[:, 2:], torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    assert cond[1, 0] == 0 and cond[2, 1] == 0  # unknown values are zeroed
    mu, logvar = model.encoder(torch.cat([x, mask.float()], dim=1), cond)
    assert mu.shape == logvar.shape == (3, 10)
    logits, log_flux = model.decoder(mu, cond)
    assert logits.shape == (3, 1, fine, fine) and log_flux.shape == (3,)
    profile, log_flux = model.decode_intrinsic(mu, cond)
    assert profile.shape == (3, 1, fine, fine) and bool((profile > 0).all())
    assert torch.allclose(profile.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)  # unit flux: flux is GalSim's
    observed = model.decode(mu, cond)
    assert observed.shape == (3, 1, size, size)
    # No PSF installed (a delta): the observed stamp carries exactly the total flux.
    assert torch.allclose(observed.sum(dim=(1, 2, 3)), torch.exp(log_flux), rtol=1e-4)
    logits, features = model.discriminator(x, cond)
    assert logits.shape == (3,)
    assert [f.shape for f in features] == [
        (3, 4, size // 2, size // 2),
        (3, 8, size // 4, size // 4),
        (3, 16, size // 8, size // 8),
    ]
    assert model.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 1, size, size)
    assert model.reconstruct(x, mask, n_samples=4).shape == (3, 4, size, size)
    assert model.reconstruct(x, mask, n_samples=2, conditions=cond).shape == (3, 2, size, size)


def test_conditions_are_standardised_from_training_data():
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=6, base_channels=4))
    raw = torch.tensor([[1e2, 0.3], [1e4, 0.7]], dtype=torch.float64)
    model.fit_conditions(raw)
    # log10 flux: 2 and 4 -> centre 3, std 1.414; hlr: 0.3, 0.7 -> centre 0.5, std 0.283
    cond = model.prepare_conditions(torch.tensor([[1e3, 0.5], [1e4, 0.7]]), 2)
    assert torch.allclose(cond[0, :2], torch.zeros(2), atol=1e-6)
    assert torch.allclose(cond[1, :2], torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(2)]), atol=1e-5)
    with pytest.raises(InputError, match="flux conditions must be > 0"):
        model.prepare_conditions(torch.tensor([[-1.0, 0.5]]), 1)
    with pytest.raises(InputError, match="shape"):
        model.prepare_conditions(torch.ones(2, 3), 2)


# Max |PSF layer - GalSim| / peak and |flux difference| / flux on a 64x64 stamp (0.2"/pixel,
# oversampling 2, FWHM 0.8"). Moffat and Kolmogorov+optics meet README's 0.1% of the peak (measured
# 0.059% and 0.057%); Kolmogorov does not: 0.18%. Its wings, which fall off slower than the
# Moffat's, reach beyond the stamp and the layer's circular FFT wraps them back in (on 128x128 it is
# 0.052%), which is also what the flux bounds allow for (measured 0.016%, 0.25%, 0.35%).
PSF_LAYER_BOUNDS = {"moffat": (1e-3, 1e-3), "kolmogorov": (2e-3, 3e-3), "kolmogorov_optical": (1e-3, 4e-3)}


@pytest.mark.parametrize("psf_type", sorted(PSF_LAYER_BOUNDS))
def test_psf_layer_matches_galsim(psf_type):
    """Fine intrinsic image -> PSF layer equals GalSim's own PSF ⊗ pixel rendering (bounds: PSF_LAYER_BOUNDS)."""
    galsim = pytest.importorskip("galsim")
    from lensforge.pipeline.config import SurveyConfig
    from lensforge.pipeline.stamps.surveys import build_psf, draw_fine_psf_image

    peak_bound, flux_bound = PSF_LAYER_BOUNDS[psf_type]
    survey = SurveyConfig(stamp_size=64, psf_type=psf_type, psf_fwhm_arcsec=0.8)
    model = VAEGAN(ModelSettings(stamp_size=64, latent_dim=6, base_channels=4, oversampling=2))
    model.observe.set_psf(draw_fine_psf_image(survey, 2))
    galaxy = galsim.Add([galsim.Exponential(half_light_radius=0.5, flux=0.7),
                         galsim.DeVaucouleurs(half_light_radius=0.25, flux=0.3)]).shear(g1=0.2, g2=-0.1)
    fine = galaxy.drawImage(nx=128, ny=128, scale=0.1, method="auto").array.astype("float32")
    observed = model.observe(torch.from_numpy(fine)[None, None])[0, 0].numpy()
    reference = galsim.Convolve(galaxy, build_psf(survey)).drawImage(nx=64, ny=64, scale=0.2, method="auto").array
    assert abs(observed - reference).max() < peak_bound * reference.max()
    assert abs(observed.sum() - reference.sum()) < flux_bound * reference.sum()  # wings wrap back in
    with pytest.raises(InputError, match="PSF image must be"):
        model.observe.set_psf(fine[:10])


def test_encoder_ignores_values_behind_mask():
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=6, base_channels=4))
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 5:9, :] = True
    changed = torch.where(mask, x + 100.0, x)
    for a, b in zip(model.encode(x, mask), model.encode(changed, mask), strict=True):
        assert torch.equal(a, b)


def test_settings_validation_and_dict():
    settings = ModelSettings(stamp_size=32, latent_dim=7, base_channels=4)
    assert ModelSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ModelError, match="multiple of 8"):
        ModelSettings(stamp_size=30)
    with pytest.raises(ModelError, match="unknown"):
        ModelSettings.from_dict({"stamp_size": 32, "depth": 3})
    with pytest.raises(ModelError, match="oversampling"):
        ModelSettings(oversampling=5)
    assert ModelSettings(stamp_size=32, oversampling=2, pixel_scale_arcsec=0.2).fine_pixel_scale_arcsec == 0.1


def test_masked_gaussian_nll_hand_value_and_invalid_pixels():
    loss = MaskedGaussianNLL(pixel_sigma=0.5)
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    # valid residuals / sigma: 2, 0, 2 -> 0.5 * (4 + 0 + 4) / 3
    assert loss(pred, target, valid).item() == pytest.approx(4.0 / 3.0)
    pred_changed = pred.clone()
    pred_changed[1, 1] = float("nan")
    assert loss(pred_changed, target, valid).item() == pytest.approx(4.0 / 3.0)
    assert loss(pred, target, torch.ones_like(valid)).item() == pytest.approx(0.5 * (4 + 0 + 4 + 64) / 4)


def test_stretched_nll_is_linear_below_the_knee_and_relative_above_it():
    stretched, linear = StretchedGaussianNLL(pixel_sigma=0.125, knee=3.0), MaskedGaussianNLL(pixel_sigma=0.125)
    valid = torch.ones(1, 1, 2, 2)
    # Half a noise sigma from a blank sky: S(x) = x (1 - x^2 / (6 s^2) ...) with s = 3 sigma, 0.5 % below linear.
    sky, faint = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.0625)
    assert stretched(faint, sky, valid).item() == pytest.approx(linear(faint, sky, valid).item(), rel=0.01)
    # Far above the knee a 10 % error costs the same at 100 and 1000 sigma (s^2 ln(1.1)^2 / (2 sigma^2) = 4.1),
    # where the linear likelihood grows 100x.
    for peak_sigma in (100.0, 1000.0):
        truth = torch.full((1, 1, 2, 2), peak_sigma * 0.125)
        assert stretched(1.1 * truth, truth, valid).item() == pytest.approx(0.5 * 9 * math.log(1.1) ** 2, rel=2e-3)
        assert linear(1.1 * truth, truth, valid).item() == pytest.approx(0.5 * (0.1 * peak_sigma) ** 2, rel=1e-5)
    # The knee follows each stamp's own noise: a stamp with a tenth of the noise has a tenth of the softening,
    # so the same 10 % error costs it 100x less.
    truth = torch.full((2, 1, 2, 2), 100 * 0.125)
    per_stamp = stretched(1.1 * truth, truth, torch.ones_like(truth), torch.tensor([0.125, 0.0125]))
    assert per_stamp.item() == pytest.approx(0.5 * (9 + 0.09) * math.log(1.1) ** 2 / 2, rel=2e-3)
    with pytest.raises(ModelError, match="knee"):
        StretchedGaussianNLL(pixel_sigma=0.125, knee=0.0)


def test_kl_divergence():
    kl = KLDivergence()
    assert kl(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 0: 0.5*(1) + 0.5*(2 - 1 - ln 2); sample 1: 0.5*4
    expected = (0.5 + 0.5 * (1 - math.log(2.0)) + 2.0) / 2
    assert kl(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert KLDivergence(n_pixels=16)(mu, logvar).item() == pytest.approx(expected / 16, rel=1e-6)


def test_gan_losses_softplus():
    gan = NonSaturatingGANLoss()
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 0.0])

    def softplus(v):
        return math.log1p(math.exp(v))

    assert gan.generator(fake).item() == pytest.approx((softplus(1.0) + softplus(0.0)) / 2)
    assert gan(fake).item() == gan.generator(fake).item()
    expected_d = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(0.0)) / 2
    assert gan.discriminator(real, fake).item() == pytest.approx(expected_d)


def test_feature_matching():
    fm = FeatureMatching()
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 5)]
    assert fm(feats, [f.clone() for f in feats]).item() == 0.0
    shifted = [feats[0] + 1.0, feats[1] + 3.0]
    assert fm(feats, shifted).item() == pytest.approx((1.0 + 9.0) / 2)


def test_latent_density_conditions_latents_exactly():
    """z and a condition perfectly correlated in the training set: conditioning pins z down."""
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=3, base_channels=4))
    gen = torch.Generator().manual_seed(0)
    hlr = 0.3 + 0.7 * torch.rand(500, generator=gen, dtype=torch.float64)
    flux = 10 ** (2 + 2 * torch.rand(500, generator=gen, dtype=torch.float64))
    raw = torch.stack([flux, hlr], dim=1)
    model.fit_conditions(raw)
    standard_hlr = (hlr - model.condition_center[1].double()) / model.condition_scale[1].double()
    mu = torch.stack([2.0 * standard_hlr, torch.randn(500, generator=gen, dtype=torch.float64),
                      0.5 * torch.randn(500, generator=gen, dtype=torch.float64)], dim=1).float()
    noise = torch.randn(4, 3, generator=gen)
    assert model.noise_dim == 3
    z, cond = model.latents_from_noise(noise, None)
    assert torch.equal(z, noise) and cond is None  # not fitted: the N(0, I) prior, conditions as given
    model.fit_latent_density(mu, raw)
    assert bool(model.latent_fitted) and model.noise_dim == 5  # + one draw per condition
    wanted = torch.tensor([[1e3, 0.4], [1e3, 0.9], [float("nan"), 0.65], [float("nan"), float("nan")]])
    z, cond = model.latents_from_noise(torch.randn(4, 5, generator=gen), wanted)
    expected_first = 2.0 * (wanted[:3, 1].double() - model.condition_center[1].double()) / model.condition_scale[1]
    torch.testing.assert_close(z[:3, 0].double(), expected_first, atol=1e-2, rtol=0)  # pinned by hlr (z spread: 2)
    torch.testing.assert_close(cond[:3, 1], wanted[:3, 1])  # known conditions are kept
    assert torch.isfinite(cond).all() and (cond[:, 0] > 0).all()  # unknown ones are drawn, physical
    # The last row knew nothing: its hlr is drawn jointly with z, so z[0] still follows it exactly.
    torch.testing.assert_close(z[3, 0].double(), 2.0 * (cond[3, 1].double() - model.condition_center[1])
                               / model.condition_scale[1], atol=1e-2, rtol=0)
    marginal, _ = model.latents_from_noise(torch.randn(4000, 5, generator=gen), None)
    torch.testing.assert_close(marginal.std(dim=0), mu.std(dim=0), atol=0.08, rtol=0.05)  # the aggregate posterior


def test_aggregate_posterior_sampling_picks_kept_posteriors_by_their_conditions(tmp_path):
    """aggregate_latents: z = mu_m + sigma_m * noise of a kept posterior m chosen by condition distance."""
    import numpy as np

    from lensforge.models.checkpoint import load_checkpoint, save_checkpoint
    from lensforge.models.inpaint import sample_galaxies

    settings = ModelSettings(stamp_size=16, latent_dim=2, base_channels=4, aggregate_latents=6,
                             aggregate_bandwidth=0.05)
    model = VAEGAN(settings)
    n = 12  # more training posteriors than kept: six distinct ones are kept
    flux = 10 ** torch.linspace(2, 4, n, dtype=torch.float64)
    hlr = torch.linspace(0.3, 1.0, n, dtype=torch.float64)
    raw = torch.stack([flux, hlr], dim=1)
    model.fit_conditions(raw)
    mu = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) * torch.tensor([1.0, -1.0])
    logvar = torch.full((n, 2), math.log(0.01**2))
    with pytest.raises(InputError, match="log variances"):
        model.fit_latent_density(mu, raw)
    model.fit_latent_density(mu, raw, logvar, seed=3)
    assert model.samples_aggregate and model.noise_dim == 2
    kept = model.aggregate_mu[:, 0].long()  # which training posteriors were kept
    assert len(set(kept.tolist())) == 6 and torch.equal(model.aggregate_mu[:, 1], -model.aggregate_mu[:, 0])
    # Ask for the conditions of a kept posterior: the narrow kernel picks it whatever the selector.
    target = int(kept[2])
    noise = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    for selector in (0.01, 0.5, 0.99):
        z, cond = model.latents_from_noise(noise, raw[[target, target]], torch.tensor([selector, selector]))
        torch.testing.assert_close(z[0], torch.tensor([target + 0.01, -target - 0.02]), atol=1e-5, rtol=0)
        torch.testing.assert_close(cond.double(), raw[[target, target]], rtol=1e-5, atol=0)
    # Nothing known: every kept posterior alike, the selector walks through them; the conditions are its own.
    unknown = torch.full((6, 2), float("nan"), dtype=torch.float64)
    z, cond = model.latents_from_noise(torch.zeros(6, 2), unknown, (torch.arange(6) + 0.5) / 6)
    torch.testing.assert_close(z, model.aggregate_mu)
    torch.testing.assert_close(cond.double(), raw[kept], rtol=1e-5, atol=0)
    with pytest.raises(InputError, match="selector"):
        model.latents_from_noise(noise, None)
    # The kept posteriors travel with the checkpoint; a Gaussian-density model has none to carry.
    save_checkpoint(model, tmp_path / "m")
    loaded, _ = load_checkpoint(tmp_path / "m")
    assert torch.equal(loaded.aggregate_mu, model.aggregate_mu) and loaded.samples_aggregate
    assert "aggregate_mu" not in VAEGAN(ModelSettings(stamp_size=16, latent_dim=2, base_channels=4)).state_dict()
    # Object i depends on (seed, i) only (decoded one at a time: float32 rounding depends on the batch).
    def draw(count, first_index=0):
        return sample_galaxies(loaded, count, seed=7, first_index=first_index,
                               conditions=np.full((count, 2), np.nan), batch_size=1)
    many = draw(5)
    assert np.array_equal(draw(2), many[:2]) and np.array_equal(draw(2, first_index=3), many[3:])
    assert not np.array_equal(many[0], many[1])
