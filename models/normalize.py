"""Map stamps between ADU and the model's pixel space.

Each stamp is divided by its own Gaussian noise sigma, so every pixel is in units of
that stamp's noise, and then by :data:`NOISE_UNITS_SCALE` so typical galaxy pixels
(peak S/N of a few tens) land at values of order one. The map is linear, so the
Gaussian pixel likelihood stays Gaussian: in model space every stamp's noise has the
same standard deviation :data:`MODEL_PIXEL_SIGMA` = 1 / NOISE_UNITS_SCALE.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from lensforge.errors import InputError

NOISE_UNITS_SCALE: float = 8.0
"""Noise sigmas per model-space unit: a pixel at 8 sigma above the sky maps to 1.0."""

MODEL_PIXEL_SIGMA: float = 1.0 / NOISE_UNITS_SCALE
"""Standard deviation of the pixel noise in model space (dimensionless)."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _per_stamp_scale(x: ArrayT, noise_sigma) -> ArrayT:
    """``noise_sigma * NOISE_UNITS_SCALE`` shaped (N, 1, ..., 1) to broadcast against ``x``."""
    if isinstance(x, torch.Tensor):
        sigma = torch.as_tensor(noise_sigma, dtype=x.dtype, device=x.device)
        bad = bool((~torch.isfinite(sigma) | (sigma <= 0)).any())
    else:
        sigma = np.asarray(noise_sigma, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
        bad = bool((~np.isfinite(sigma) | (sigma <= 0)).any())
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise InputError(
            f"noise_sigma must have shape ({x.shape[0]},) to match the stamps, got {tuple(sigma.shape)}",
            tuple(sigma.shape),
        )
    if bad:
        raise InputError("noise_sigma must be finite and > 0 for every stamp")
    return (sigma * NOISE_UNITS_SCALE).reshape((-1,) + (1,) * (x.ndim - 1))


def to_model_space(images: ArrayT, noise_sigma) -> ArrayT:
    """ADU -> model space: ``images / noise_sigma[:, None, None] / NOISE_UNITS_SCALE``.

    Args:
        images: (N, H, W) (or (N, ...)) pixel values in ADU, numpy array or tensor.
        noise_sigma: (N,) Gaussian noise standard deviation of each stamp, ADU.

    Returns:
        Same type, shape and (floating) dtype as ``images``; dimensionless.
    """
    return images / _per_stamp_scale(images, noise_sigma)


def from_model_space(x: ArrayT, noise_sigma) -> ArrayT:
    """Exact inverse of :func:`to_model_space`: model space (N, ...) -> ADU."""
    return x * _per_stamp_scale(x, noise_sigma)
