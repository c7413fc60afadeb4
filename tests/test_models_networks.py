"""Network output shapes and the loss classes against hand computations."""

import math

import pytest
import torch

from catalogs.errors import ModelError
from models.losses import FeatureMatching, KLDivergence, MaskedGaussianNLL, NonSaturatingGANLoss
from models.vaegan import VAEGAN, ModelSettings


@pytest.mark.parametrize("size", [32, 64])
def test_shapes(size):
    settings = ModelSettings(stamp_size=size, latent_dim=10, base_channels=4)
    model = VAEGAN(settings)
    x = torch.randn(3, 1, size, size)
    mask = torch.zeros(3, 1, size, size, dtype=torch.bool)
    mu, logvar = model.encoder(torch.cat([x, mask.float()], dim=1))
    assert mu.shape == logvar.shape == (3, 10)
    assert model.decoder(mu).shape == (3, 1, size, size)
    logits, features = model.discriminator(x)
    assert logits.shape == (3,)
    assert [f.shape for f in features] == [
        (3, 4, size // 2, size // 2),
        (3, 8, size // 4, size // 4),
        (3, 16, size // 8, size // 8),
    ]
    assert model.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 1, size, size)
    assert model.reconstruct(x, mask, n_samples=4).shape == (3, 4, size, size)


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
