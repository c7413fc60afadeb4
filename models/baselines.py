"""Classical in-painting baselines to compare the VAE-GAN against (biharmonic, Gaussian-kernel interpolation)."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.convolution import Gaussian2DKernel, interpolate_replace_nans
from astropy.utils.exceptions import AstropyUserWarning
from skimage.restoration import inpaint_biharmonic as _skimage_inpaint_biharmonic

from lensforge.errors import InputError


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
    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # Zero the holes first so NaN/garbage behind them cannot leak into the solve.
        return _skimage_inpaint_biharmonic(np.where(mask, 0.0, image.astype(np.float64)), mask)

    return _fill_each_stamp(images, masks, fill)


def _fill_each_stamp(images, masks, fill) -> np.ndarray:
    """The shared contract of the baselines: validate, then ``fill(image, mask)`` each partly masked stamp.

    Known pixels are copied from the input; unmasked stamps pass through; fully masked ones become 0.
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
        out[i] = np.where(mask, fill(image, mask), image)
    return out


def inpaint_interpolate_nans(images, masks, kernel_stddev_pixels: float = 1.0, max_iterations: int = 8) -> np.ndarray:
    """Fill masked pixels of each stamp by Gaussian-kernel interpolation (astropy).

    Masked pixels are set to NaN and replaced by ``astropy.convolution.interpolate_replace_nans``
    with a ``Gaussian2DKernel``: each NaN becomes the kernel-weighted mean of the finite pixels
    around it. One pass only reaches NaNs within the kernel's radius (4 standard deviations) of a
    known pixel, so the middle of a large hole stays NaN; the call is therefore repeated on what
    is left, with the kernel standard deviation doubled on each pass (pixels filled by earlier
    passes count as known, so holes are filled from their rim inwards). The deviation is capped
    at a quarter of the larger stamp side, where the kernel reaches across the whole stamp and
    the next pass fills every remaining NaN. Should NaNs still remain after ``max_iterations``
    passes, they are filled with the median of the stamp's known pixels.

    Args:
        images: (N, H, W) pixel values (any units; ADU in the pipeline).
        masks: (N, H, W) bool/uint8, nonzero = pixel to fill.
        kernel_stddev_pixels: standard deviation of the first pass's Gaussian kernel, pixels (> 0).
        max_iterations: largest number of interpolation passes per stamp (>= 1).

    Returns:
        (N, H, W) array, floating dtype of ``images`` (float64 for integer input). Known
        pixels are the input values unchanged; stamps without masked pixels pass
        through; a stamp that is masked everywhere carries no information and is
        filled with 0 (the sky level of background-subtracted stamps).
    """
    if not np.isfinite(kernel_stddev_pixels) or kernel_stddev_pixels <= 0:
        raise InputError(f"kernel_stddev_pixels must be > 0 pixels; got {kernel_stddev_pixels}", kernel_stddev_pixels)
    if int(max_iterations) < 1:
        raise InputError(f"max_iterations must be >= 1; got {max_iterations}", max_iterations)
    # Beyond this deviation the kernel (radius 4 sigma) already spans the whole stamp.
    shape = np.shape(images)
    stddev_cap = max(shape[1:]) / 4.0 if len(shape) == 3 and np.prod(shape) else 1.0

    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # NaN marks what to fill; garbage behind the holes is discarded here.
        work = np.where(mask, np.nan, image.astype(np.float64))
        stddev = float(kernel_stddev_pixels)
        for _ in range(int(max_iterations)):
            with warnings.catch_warnings():
                # astropy warns whenever NaNs survive a pass; the next, wider pass handles them.
                warnings.simplefilter("ignore", AstropyUserWarning)
                # 'extend' rather than the default zero fill so stamp edges are not pulled towards 0.
                work = interpolate_replace_nans(work, Gaussian2DKernel(min(stddev, stddev_cap)), boundary="extend")
            if not np.isnan(work[mask]).any():
                break
            stddev *= 2.0
        leftover = mask & np.isnan(work)
        if leftover.any():
            work[leftover] = np.median(image[~mask])
        return work

    return _fill_each_stamp(images, masks, fill)
