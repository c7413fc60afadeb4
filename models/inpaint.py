"""Use a trained :class:`~models.vaegan.VAEGAN`: in-paint masked pixels and sample galaxies.

Randomness is drawn on the CPU from generators seeded per stamp, so the draws depend only
on ``seed`` and the stamp's index, not on ``batch_size`` or the device the network runs on
(outputs then agree to float32 rounding).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from catalogs.errors import InputError, ModelError
from models.device import resolve_device
from models.normalize import from_model_space, to_model_space
from models.vaegan import VAEGAN


def _stamp_generator(seed: int, index: int) -> torch.Generator:
    """CPU generator for stamp ``index``; seeded from (seed, index) only."""
    # SeedSequence mixes (seed, index) into 63 bits: no overflow for any run seed, no stream reuse.
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


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

    Returns:
        (mean, std), float32 (N, H, W), ADU. ``mean`` equals the input (as float32,
        bit for bit) where the mask is 0 and the posterior mean where it is 1. ``std``
        is the spread (population std, ddof 0) of the draws on masked pixels and
        exactly 0 on known pixels; with ``n_samples=1`` it is 0 everywhere.
    """
    if n_samples < 1 or batch_size < 1:
        raise InputError(f"n_samples and batch_size must be >= 1, got {n_samples} and {batch_size}")
    noise_sigma = _check_stamps(model, images, masks, noise_sigma)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
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
            [torch.randn(n_samples, latent, generator=_stamp_generator(seed, first_index + i))
             for i in range(start, stop)]
        )

        # Holes may hold NaN/garbage; zero them before scaling (the encoder zeroes them too).
        x = torch.from_numpy(to_model_space(np.where(mask, np.float32(0), known), sigma))[:, None]
        with torch.inference_mode():
            mu, logvar = model.encode(x.to(torch_device), torch.from_numpy(mask)[:, None].to(torch_device))
            z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps.to(torch_device)
            draws = model.decode(z.reshape(-1, latent)).float().reshape(stop - start, n_samples, height, width)
            draw_mean = draws.mean(dim=1).cpu().numpy()
            draw_std = draws.std(dim=1, correction=0).cpu().numpy()

        # Linear map back to ADU; known pixels are copied from the input, never recomputed.
        mean_out[start:stop] = np.where(mask, from_model_space(draw_mean, sigma), known)
        std_out[start:stop] = np.where(mask, from_model_space(draw_std, sigma), np.float32(0))
    return mean_out, std_out


def sample_galaxies(
    model: VAEGAN, n: int, temperature: float = 1.0, seed: int = 0, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Generate ``n`` galaxies from the prior, z ~ N(0, temperature^2 I).

    Returns:
        (n, H, W) float32 in *model space*: the decoder's noiseless mean, in units of
        noise sigma / NOISE_UNITS_SCALE. To get ADU for a chosen noise level, call
        ``from_model_space(out, np.full(n, sigma_adu))``; add Gaussian noise of that
        sigma for a realistic noisy stamp.
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}", n)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    size = model.settings.stamp_size
    z = torch.randn(n, model.settings.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = np.empty((n, size, size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, 256):
            batch = temperature * z[start : start + 256].to(torch_device)
            out[start : start + 256] = model.decode(batch).float()[:, 0].cpu().numpy()
    return out
