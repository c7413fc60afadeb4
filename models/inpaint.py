"""Use a trained :class:`~lensforge.models.vaegan.VAEGAN`: in-paint masked pixels and sample galaxies.

Randomness is drawn on the CPU from generators seeded per stamp, so the draws depend only
on ``seed`` and the stamp's index, not on ``batch_size`` or the device the network runs on
(outputs then agree to float32 rounding).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from lensforge.errors import InputError, ModelError
from lensforge.models.device import resolve_device
from lensforge.models.latent import draw_latents, object_generator
from lensforge.models.normalize import MODEL_PIXEL_SIGMA, from_model_space, to_model_space
from lensforge.models.uncertainty import apply_calibration
from lensforge.models.vaegan import VAEGAN

AGGREGATE_STREAM = 1  # numpy stream (seed, index, 1): which kept posterior object i's latent comes from


def _check_stamps(model: VAEGAN, images, masks, noise_sigma) -> np.ndarray:
    size = model.settings.stamp_size
    if len(images.shape) != 3:
        raise InputError(f"images must have shape (N, H, W), got {tuple(images.shape)}", tuple(images.shape))
    if tuple(images.shape[1:]) != (size, size):
        raise ModelError(
            f"model was trained on {size}x{size} stamps but images are {images.shape[1]}x{images.shape[2]}",
            tuple(images.shape),
        )
    if tuple(masks.shape) != tuple(images.shape):
        raise InputError(f"masks shape {tuple(masks.shape)} does not match images {tuple(images.shape)}")
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    if noise_sigma.shape != (images.shape[0],):
        raise InputError(f"noise_sigma must have shape ({images.shape[0]},), got {noise_sigma.shape}")
    return noise_sigma


def inpaint_with_model(
    model: VAEGAN,
    images,
    masks,
    noise_sigma,
    n_samples: int = 8,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    first_index: int = 0,
    calibrated: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill masked pixels with the mean of ``n_samples`` posterior draws.

    For each stamp: z_k ~ q(z | masked image, mask), k = 1..n_samples; decode; map to ADU.

    Args:
        model: trained model; it is moved to ``device`` and put in eval mode.
        images: (N, H, W) ADU (numpy or zarr; read ``batch_size`` stamps at a time).
        masks: (N, H, W) bool/uint8, nonzero = pixel to in-paint.
        noise_sigma: (N,) per-stamp noise sigma, ADU.
        n_samples: posterior draws per stamp (>= 1).
        batch_size: stamps per forward pass; changes the result only by float32
            rounding (~1e-7 relative: CPU conv/GEMM kernels block by batch size).
        seed: the draws for stamp i come from a generator seeded with (seed, first_index + i).
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        progress: show a tqdm bar over batches.
        first_index: index of ``images[0]`` in the whole set, so that a stamp's draws do
            not depend on how the set was cut into calls.
        calibrated: scale the std by the model's brightness-binned calibration
            (``model.uncertainty_calibration``, from its ``meta.json``; see
            :mod:`lensforge.models.uncertainty`) where it has one.

    Returns:
        (mean, std), float32 (N, H, W), ADU. ``mean`` equals the input (as float32,
        bit for bit) where the mask is 0 and the posterior mean where it is 1. ``std``
        is the posterior predictive standard deviation on masked pixels,
        ``sqrt(spread**2 + noise_sigma**2)`` with ``spread`` the population std (ddof 0) of
        the decoded draws, and exactly 0 on known pixels; with ``n_samples=1`` it is the
        noise sigma on masked pixels. A calibrated model scales it by its brightness bin's factor.
    """
    if n_samples < 1 or batch_size < 1:
        raise InputError(f"n_samples and batch_size must be >= 1, got {n_samples} and {batch_size}")
    noise_sigma = _check_stamps(model, images, masks, noise_sigma)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    calibration = getattr(model, "uncertainty_calibration", None) if calibrated else None
    n_stamps, height, width = images.shape
    latent = model.settings.latent_dim
    mean_out = np.empty((n_stamps, height, width), dtype=np.float32)
    std_out = np.empty((n_stamps, height, width), dtype=np.float32)

    starts = range(0, n_stamps, batch_size)
    for start in tqdm(starts, disable=not progress, desc="inpaint", unit="batch"):
        stop = min(start + batch_size, n_stamps)
        known = np.asarray(images[start:stop], dtype=np.float32)
        mask = np.asarray(masks[start:stop]) != 0
        sigma = noise_sigma[start:stop]
        eps = torch.stack(
            [torch.randn(n_samples, latent, generator=object_generator(seed, first_index + i))
             for i in range(start, stop)]
        )

        # Holes may hold NaN/garbage; zero them before scaling (the encoder zeroes them too).
        x = torch.from_numpy(to_model_space(np.where(mask, np.float32(0), known), sigma))[:, None]
        with torch.inference_mode():
            mu, logvar = model.encode(x.to(torch_device), torch.from_numpy(mask)[:, None].to(torch_device))
            z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps.to(torch_device)
            draws = model.decode(z.reshape(-1, latent)).float().reshape(stop - start, n_samples, height, width)
            draw_mean = draws.mean(dim=1).cpu().numpy()
            # Predictive std of the missing pixel: spread of the decoded means plus the likelihood's
            # pixel noise, in quadrature (the pixel that was lost was a noisy one).
            draw_std = torch.sqrt(draws.var(dim=1, correction=0) + MODEL_PIXEL_SIGMA**2).cpu().numpy()

        # Linear map back to ADU; known pixels are copied from the input, never recomputed.
        mean_out[start:stop] = np.where(mask, from_model_space(draw_mean, sigma), known)
        std_out[start:stop] = np.where(mask, from_model_space(draw_std, sigma), np.float32(0))
        if calibration is not None:
            std_out[start:stop] = apply_calibration(std_out[start:stop], mean_out[start:stop], mask, sigma, calibration)
    return mean_out, std_out


def sample_galaxies(
    model: VAEGAN,
    n: int,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    conditions=None,
    truncation: float | None = None,
    first_index: int = 0,
    batch_size: int = 256,
    intrinsic: bool = False,
) -> np.ndarray:
    """Generate ``n`` galaxies: z from the fitted latent density (or the N(0, I) prior), decoded.

    The noise behind object i's latent comes from (seed, first_index + i)
    (:func:`lensforge.models.latent.draw_latents`); temperature and truncation act on that noise.

    Args:
        model: trained model.
        n: number of galaxies.
        temperature, truncation: sampling controls of :func:`lensforge.models.latent.draw_latents`.
        seed, first_index: object i's latent comes from (seed, first_index + i).
        device: where the network runs.
        conditions: (n, K) physical conditions (flux [ADU], half-light radius [arcsec]),
            NaN = unknown; None = all unknown.
        batch_size: latents per forward pass.
        intrinsic: return the intrinsic profiles instead of observed stamps.

    Returns:
        ``intrinsic=False``: (n, H, W) float32 observed noiseless stamps in *model space*
        (noise sigma / NOISE_UNITS_SCALE units; ``from_model_space`` gives ADU for a
        chosen noise level). ``intrinsic=True``: (n, F, F) float64 unit-flux profiles on the
        fine grid (pre-PSF, unsheared), ready for GalSim (see :mod:`lensforge.pipeline.generative.generate`).
    """
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    noise = draw_latents(n, model.noise_dim, temperature, truncation, seed, first_index)
    # With a fitted latent density, z (and any unknown condition) is drawn given the known ones.
    selector = None
    if model.samples_aggregate:  # which kept posterior: its own uniform per object, from (seed, index)
        selector = torch.tensor([np.random.default_rng([int(seed), first_index + i, AGGREGATE_STREAM]).random()
                                 for i in range(n)], dtype=torch.float64)
    z, conditions = model.latents_from_noise(
        noise, None if conditions is None else torch.as_tensor(np.asarray(conditions, dtype=np.float64)), selector)
    side = model.settings.fine_size if intrinsic else model.settings.stamp_size
    out = np.empty((n, side, side), dtype=np.float64 if intrinsic else np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            raw = None if conditions is None else torch.as_tensor(np.asarray(conditions)[start:stop])
            cond = model.prepare_conditions(raw, stop - start)
            batch = z[start:stop].to(torch_device)
            if intrinsic:
                # Held in float64 so the profile's sum is 1 to GalSim's precision; numpy widens the float32
                # output exactly as it copies it (one pass instead of torch's cast and then the copy).
                out[start:stop] = model.decode_intrinsic(batch, cond)[0][:, 0].cpu().numpy()
            else:
                out[start:stop] = model.decode(batch, cond).float()[:, 0].cpu().numpy()
    return out
