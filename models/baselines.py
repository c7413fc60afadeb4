"""Classical in-painting baselines to compare the VAE-GAN against."""

from __future__ import annotations

import numpy as np
from skimage.restoration import inpaint_biharmonic as _skimage_inpaint_biharmonic

from catalogs.errors import InputError


def inpaint_biharmonic(images, masks) -> np.ndarray:
    """Fill masked pixels of each stamp with scikit-image's biharmonic in-painting.

    Args:
        images: (N, H, W) pixel values (any units; ADU in the pipeline).
        masks: (N, H, W) bool/uint8, nonzero = pixel to fill.

    Returns:
        (N, H, W) array, floating dtype of ``images`` (float64 for integer input). Known
        pixels are the input values unchanged; stamps without masked pixels pass
        through; a stamp that is masked everywhere carries no information and is
        filled with 0 (the sky level of background-subtracted stamps).
    """
    images = np.asarray(images)
    masks = np.asarray(masks) != 0
    if images.ndim != 3 or masks.shape != images.shape:
        raise InputError(f"images and masks must both be (N, H, W); got {images.shape} and {masks.shape}")
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    out = images.astype(dtype, copy=True)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if not mask.any():
            continue
        if mask.all():
            out[i] = 0
            continue
        # Zero the holes first so NaN/garbage behind them cannot leak into the solve.
        filled = _skimage_inpaint_biharmonic(np.where(mask, 0.0, image.astype(np.float64)), mask)
        out[i] = np.where(mask, filled, image)
    return out
