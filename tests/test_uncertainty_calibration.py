"""Brightness-binned calibration of the stamp in-painting's std (lensforge.models.uncertainty)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensforge.errors import ModelError
from lensforge.models.inpaint import inpaint_with_model
from lensforge.models.uncertainty import TARGET_COVERAGE, apply_calibration, fit_calibration
from lensforge.models.vaegan import VAEGAN, ModelSettings


def _synthetic(rng, n=64, size=32):
    """Masked pixels whose error grows with brightness: 1 sigma on the sky, 3 sigma above 4 sigma."""
    sigma = np.full(n, 2.0)
    mean = rng.uniform(-1.0, 40.0, size=(n, size, size))
    scale = np.where(mean / 2.0 > 4.0, 3.0, 1.0)
    observed = mean + 2.0 * scale * rng.normal(size=mean.shape)
    std = np.full(mean.shape, 2.0)
    masks = rng.uniform(size=mean.shape) < 0.5
    return mean, std, observed, masks, sigma


def test_fitted_factors_restore_the_target_coverage_in_every_bin():
    rng = np.random.default_rng(5)
    mean, std, observed, masks, sigma = _synthetic(rng, n=256)
    calibration = fit_calibration(mean, std, observed, masks, sigma)
    edges = np.asarray(calibration["edges_noise_sigma"])
    scales = np.asarray(calibration["scales"])
    bright = edges.searchsorted(4.0, side="right")  # bins entirely above 4 sigma
    assert np.allclose(scales[:bright - 1], 1.0, atol=0.05) and np.allclose(scales[bright:], 3.0, rtol=0.05)
    # On fresh pixels of the same kind, calibrated std covers 68.27% in every bin.
    mean, std, observed, masks, sigma = _synthetic(rng, n=256)
    calibrated = apply_calibration(std, mean, masks, sigma, calibration)
    assert np.all(calibrated[~masks] == std[~masks].astype(np.float32))  # known pixels keep theirs
    level = np.digitize(mean / 2.0, edges)
    for index in range(len(scales)):
        chosen = masks & (level == index)
        within = np.abs(observed - mean)[chosen] <= calibrated[chosen]
        assert within.mean() == pytest.approx(TARGET_COVERAGE, abs=0.03), index
    raw = np.abs(observed - mean)[masks & (mean > 10)] <= std[masks & (mean > 10)]
    assert raw.mean() < 0.35  # what the uncalibrated std covers on the bright pixels


def test_a_bin_with_too_few_pixels_keeps_its_std_and_bad_calibrations_are_refused():
    rng = np.random.default_rng(1)
    mean, std, observed, masks, sigma = _synthetic(rng, n=2, size=8)
    assert fit_calibration(mean, std, observed, masks, sigma)["scales"] == [1.0] * 7
    for bad in ({"edges_noise_sigma": [1.0, 2.0], "scales": [1.0]}, {"scales": [1.0]},
                {"edges_noise_sigma": [1.0], "scales": [1.0, -2.0]}):
        with pytest.raises(ModelError, match="uncertainty_calibration"):
            apply_calibration(std, mean, masks, sigma, bad)


def test_inpaint_with_model_applies_the_models_calibration_to_masked_pixels_only():
    torch.manual_seed(0)
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=8, base_channels=8)).eval()
    rng = np.random.default_rng(2)
    images = rng.normal(size=(4, 32, 32)).astype(np.float32)
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[:, 10:16, 10:16] = 1
    sigma = np.ones(4)
    mean, std = inpaint_with_model(model, images, masks, sigma, n_samples=2)
    model.uncertainty_calibration = {"edges_noise_sigma": [0.0], "scales": [2.5, 2.5]}
    mean_c, std_c = inpaint_with_model(model, images, masks, sigma, n_samples=2)
    assert np.array_equal(mean, mean_c)  # the mean is never touched
    assert np.allclose(std_c[masks == 1], 2.5 * std[masks == 1], rtol=1e-6) and np.all(std_c[masks == 0] == 0)
    _, std_off = inpaint_with_model(model, images, masks, sigma, n_samples=2, calibrated=False)
    assert np.array_equal(std_off, std)
