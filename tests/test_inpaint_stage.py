from __future__ import annotations

import numpy as np
import pytest

from catalogs.errors import ConfigError
from models.vaegan import VAEGAN, ModelSettings
from pipeline.evaluate import masked_pixel_errors
from pipeline.inpaint import inpaint_arrays


def _stamps(n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.stack([100 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0)] * n).astype(np.float32)
    images = (truth + rng.normal(0, 1, truth.shape)).astype(np.float32)
    masks = np.zeros(truth.shape, np.uint8)
    masks[:, 6:10, 7] = 2
    masks[1:, 2:4, 2:5] = 128
    return truth, images, masks, np.ones(n)


@pytest.mark.parametrize("method", ["model", "biharmonic"])
def test_known_pixels_are_never_altered(method):
    truth, images, masks, sigma = _stamps()
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    mean, std = inpaint_arrays(method, images, masks, sigma, model=model, n_samples=3, seed=1)
    known = masks == 0
    np.testing.assert_array_equal(mean[known], images[known])
    assert mean.dtype == np.float32 and mean.shape == images.shape
    assert np.isfinite(mean).all()
    if method == "model":
        assert (std[known] == 0).all() and (std[~known] > 0).all()
    else:
        assert std is None


def test_model_draws_depend_on_object_index_not_on_chunking():
    truth, images, masks, sigma = _stamps(n=6)
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    whole, _ = inpaint_arrays("model", images, masks, sigma, model, n_samples=2, seed=3)
    head, _ = inpaint_arrays("model", images[:2], masks[:2], sigma[:2], model, n_samples=2, seed=3)
    tail, _ = inpaint_arrays("model", images[2:], masks[2:], sigma[2:], model, n_samples=2, seed=3, start_index=2)
    np.testing.assert_allclose(np.concatenate([head, tail]), whole, rtol=1e-5, atol=1e-5)


def test_biharmonic_fills_a_smooth_profile_well():
    truth, images, masks, sigma = _stamps()
    noiseless_input = np.where(masks == 0, truth, 0).astype(np.float32)
    filled, _ = inpaint_arrays("biharmonic", noiseless_input, masks, sigma)
    errors = masked_pixel_errors(filled, truth, masks, sigma)
    assert errors["rmse_adu"] < 5.0  # peak 100: a smooth Gaussian is easy for biharmonic
    zeros = masked_pixel_errors(noiseless_input, truth, masks, sigma)
    assert zeros["rmse_adu"] > 5 * errors["rmse_adu"]


def test_unknown_method_lists_the_valid_ones():
    truth, images, masks, sigma = _stamps()
    valid = r"\['biharmonic', 'interpolate', 'model'\]"
    with pytest.raises(ConfigError, match=rf"unknown in-painting method 'magic'; valid: {valid}"):
        inpaint_arrays("magic", images, masks, sigma)
    with pytest.raises(ConfigError, match="needs a trained model"):
        inpaint_arrays("model", images, masks, sigma, model=None)


def test_masked_pixel_errors_by_hand():
    truth = np.zeros((1, 2, 2))
    truth[0, 0, 0] = 10.0
    prediction = np.array([[[7.0, 0.0], [0.0, 4.0]]])
    masks = np.array([[[1, 0], [0, 1]]], np.uint8)
    errors = masked_pixel_errors(prediction, truth, masks, np.array([2.0]))
    assert errors["pixels"] == 2 and errors["on_galaxy_pixels"] == 1
    assert errors["rmse_adu"] == pytest.approx(np.sqrt((9 + 16) / 2))
    assert errors["rmse_noise_units"] == pytest.approx(np.sqrt((9 + 16) / 2) / 2)
    assert errors["on_galaxy_rmse_adu"] == pytest.approx(3.0)


def test_model_inpaints_a_tile_without_touching_known_pixels():
    """A 96x150 'tile' with a blank patch and a full-height bad column, filled by the model through windows."""
    import torch

    from models.vaegan import VAEGAN, ModelSettings
    from pipeline.inpaint import stamp_inpainter
    from pipeline.tile_inpaint import inpaint_tile

    torch.manual_seed(0)
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=6, base_channels=4)).eval()
    rng = np.random.default_rng(5)
    image = rng.normal(0.0, 2.0, (96, 150)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[40:52, 60:75] = True
    mask[:, 120] = True
    image[mask] = np.nan
    mean, std = inpaint_tile(image, mask, 2.0, stamp_inpainter("model", model, n_samples=3, seed=1), window=32,
                             overlap=8, batch_size=4)
    assert mean.shape == std.shape == image.shape
    assert np.array_equal(mean[~mask], image[~mask]) and (std[~mask] == 0).all()
    assert np.isfinite(mean).all() and (std[mask] >= 2.0 * (1 - 1e-5)).all()  # predictive std >= pixel noise
    again, _ = inpaint_tile(image, mask, 2.0, stamp_inpainter("model", model, n_samples=3, seed=1), window=32,
                            overlap=8, batch_size=64)
    np.testing.assert_allclose(again, mean, rtol=1e-5, atol=1e-5)  # same draws whatever the batching
    with pytest.raises(ConfigError, match="unknown in-painting method"):
        stamp_inpainter("magic")
