"""ADU <-> model space mapping and device resolution."""

import numpy as np
import pytest
import torch

from lensforge.errors import InputError, ModelError
from lensforge.models.device import resolve_device
from lensforge.models.normalize import MODEL_PIXEL_SIGMA, NOISE_UNITS_SCALE, from_model_space, to_model_space


def test_round_trip_numpy_and_torch():
    rng = np.random.default_rng(1)
    images = rng.normal(100.0, 30.0, size=(5, 8, 8)).astype(np.float32)
    sigma = rng.uniform(2.0, 20.0, size=5)
    x = to_model_space(images, sigma)
    assert x.dtype == np.float32 and x.shape == images.shape
    np.testing.assert_allclose(x[2], images[2] / sigma[2] / NOISE_UNITS_SCALE, rtol=1e-6)
    assert np.allclose(from_model_space(x, sigma), images, rtol=1e-6)
    t = torch.from_numpy(images)
    back = from_model_space(to_model_space(t, torch.from_numpy(sigma)), sigma)
    assert isinstance(back, torch.Tensor)
    assert torch.allclose(back, t, rtol=1e-6)


def test_noise_has_model_pixel_sigma():
    rng = np.random.default_rng(2)
    sigma = np.array([3.0, 30.0])
    noise = rng.normal(size=(2, 200, 200)) * sigma[:, None, None]
    std = to_model_space(noise, sigma).std(axis=(1, 2))
    assert np.allclose(std, MODEL_PIXEL_SIGMA, rtol=0.02)


def test_bad_sigma_raises():
    with pytest.raises(InputError, match="noise_sigma"):
        to_model_space(np.ones((2, 4, 4)), np.array([1.0, 0.0]))
    with pytest.raises(InputError, match="shape"):
        to_model_space(np.ones((2, 4, 4)), np.array([1.0]))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ModelError, match="unknown device|unsupported device"):
        resolve_device("tpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_unavailable():
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda:1")
