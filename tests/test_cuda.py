"""The CUDA path, run where a GPU is (skipped elsewhere: CI has none).

lensforge's torch code takes a ``device``; these tests check that the same calls on CUDA give what the
CPU gives, within the precision each path claims: the batched renderer (float64 and float32) against
the CPU renderer and GalSim, and the generator's sampling. On a GPU machine, run them with the
benchmark's CUDA column: ``pytest tests/test_cuda.py && python benchmarks/run.py --only generation,tile``.
"""

import numpy as np
import pytest
import torch

from lensforge.pipeline.config import load_config
from lensforge.pipeline.stamps.surveys import build_psf
from lensforge.pipeline.stamps.torch_render import TorchStampRenderer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_renderer_on_cuda_draws_what_it_draws_on_the_cpu_and_galsim_draws(dtype, bound):
    from test_torch_render import PIXEL_BOUND, _galsim_stamp, _population_profiles

    config = load_config()
    survey = config.survey
    psf = build_psf(survey)
    profiles, params, fine_scale = _population_profiles(config, 8)
    flux = np.array([p.flux for p in params])
    g1, g2 = np.linspace(-0.06, 0.06, 8), np.linspace(0.04, -0.04, 8)
    g1[0] = g2[0] = 0.0  # one unlensed object: the regular grid's path
    rotation = np.array([0.0, 90.0, 33.0, 180.0, -120.0, 0.0, 45.0, 270.0])
    rendered = {device: TorchStampRenderer(psf, survey.stamp_size, survey.pixel_scale_arcsec, profiles.shape[-1],
                                           fine_scale, dtype=dtype, device=device).render(
        profiles, flux, g1, g2, 1.0, rotation).double().cpu().numpy() for device in ("cpu", "cuda")}
    peak = rendered["cpu"].max(axis=(1, 2))
    assert (np.abs(rendered["cuda"] - rendered["cpu"]).max(axis=(1, 2)) < bound * peak).all()
    for i in (0, 2, 6):
        reference = _galsim_stamp(profiles[i], fine_scale, flux[i], g1[i], g2[i], 1.0, rotation[i], psf, survey)
        assert np.abs(rendered["cuda"][i] - reference).max() < PIXEL_BOUND * reference.max()


def test_sampling_on_cuda_matches_the_cpu():
    from lensforge.models.inpaint import sample_galaxies
    from lensforge.models.vaegan import VAEGAN, ModelSettings

    torch.manual_seed(0)
    model = VAEGAN(ModelSettings()).eval()
    on_cpu = sample_galaxies(model, 16, seed=3, intrinsic=True)
    on_gpu = sample_galaxies(model, 16, seed=3, intrinsic=True, device="cuda")
    assert on_gpu.shape == on_cpu.shape
    # cuDNN's convolutions sum in another order: the profiles agree to float32 rounding, not bitwise.
    assert np.abs(on_gpu - on_cpu).max() < 1e-4 * np.abs(on_cpu).max()
