"""In-painting and sampling contracts (on an untrained model) and the biharmonic baseline."""

import numpy as np
import pytest
import torch

from lensforge.errors import ModelError
from lensforge.models.baselines import inpaint_biharmonic
from lensforge.models.inpaint import inpaint_with_model, sample_galaxies
from lensforge.models.vaegan import VAEGAN, ModelSettings


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VAEGAN(ModelSettings(stamp_size=32, latent_dim=8, base_channels=4)).eval()


@pytest.fixture(scope="module")
def stamps():
    rng = np.random.default_rng(5)
    n = 10
    sigma = rng.uniform(2.0, 6.0, n)
    images = (rng.normal(size=(n, 32, 32)) * sigma[:, None, None] + 40.0).astype(np.float32)
    masks = rng.random((n, 32, 32)) < 0.1
    masks[3] = False  # one stamp with nothing to fill
    masks[4, :, 10] = True  # a bad column
    images[masks] = np.nan  # garbage behind the holes must not matter
    return images, masks, sigma


def test_known_pixels_untouched_and_std(model, stamps):
    images, masks, sigma = stamps
    mean, std = inpaint_with_model(model, images, masks, sigma, n_samples=4, batch_size=64)
    assert mean.shape == std.shape == images.shape
    assert mean.dtype == std.dtype == np.float32
    assert np.array_equal(mean[~masks], images[~masks])  # bit-identical
    assert np.isfinite(mean).all()
    assert np.all(std[~masks] == 0)
    # Predictive std: at least the pixel noise, which it equals with a single draw.
    noise = np.broadcast_to(sigma[:, None, None], masks.shape)
    assert np.all(std[masks] >= noise[masks] * (1 - 1e-6))
    _, single = inpaint_with_model(model, images, masks, sigma, n_samples=1)
    np.testing.assert_allclose(single[masks], noise[masks], rtol=1e-6)


def test_independent_of_batch_size_and_seeded(model, stamps):
    images, masks, sigma = stamps
    a = inpaint_with_model(model, images, masks, sigma, n_samples=3, batch_size=64, seed=1)
    b = inpaint_with_model(model, images, masks, sigma, n_samples=3, batch_size=3, seed=1)
    c = inpaint_with_model(model, images, masks, sigma, n_samples=3, batch_size=64, seed=2)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[0][masks], c[0][masks])


def test_wrong_stamp_size(model):
    with pytest.raises(ModelError, match="32x32"):
        inpaint_with_model(model, np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), np.ones(2))


def test_sample_galaxies(model):
    out = sample_galaxies(model, 5, temperature=0.7, seed=3)
    assert out.shape == (5, 32, 32) and out.dtype == np.float32
    assert np.array_equal(out, sample_galaxies(model, 5, temperature=0.7, seed=3))
    assert not np.array_equal(out, sample_galaxies(model, 5, temperature=0.7, seed=4))


def test_biharmonic_ramp():
    yy, xx = np.mgrid[:32, :32]
    ramp = (2.0 * xx + 0.5 * yy + 3.0).astype(np.float32)
    images = np.stack([ramp, ramp + 1.0])
    masks = np.zeros(images.shape, dtype=bool)
    masks[0, 10:16, 12:20] = True
    holed = np.where(masks, np.float32(-999.0), images)
    out = inpaint_biharmonic(holed, masks)
    assert out.dtype == np.float32
    assert np.array_equal(out[~masks], holed[~masks])
    assert np.array_equal(out[1], images[1])  # nothing masked: passed through
    np.testing.assert_allclose(out[0][masks[0]], ramp[masks[0]], atol=1e-3)
