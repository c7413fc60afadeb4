"""In-painting of a large image (a survey tile) with an in-painter that works on fixed-size stamps.

The tile is never cut into a full grid: windows of side ``window`` are placed only around the
masked regions (:func:`plan_windows`), run through the stamp in-painter in batches, and their
predictions are blended on the masked pixels with a weight that tapers towards each window's
edge, where a window had the least context (:func:`window_weight`). Known pixels are pasted
back unchanged.

Blending. A masked pixel covered by windows k = 1..K, with window weights w_k at that pixel,
predicted means m_k and standard deviations s_k, gets the mean and standard deviation of the
weighted mixture of the K predictive distributions::

    mu    = sum_k w_k m_k / sum_k w_k
    sigma = sqrt( sum_k w_k (s_k**2 + m_k**2) / sum_k w_k - mu**2 )
          = sqrt( sum_k w_k (s_k**2 + (m_k - mu)**2) / sum_k w_k )

so disagreement between overlapping windows adds to the uncertainty. When the in-painter
returns no standard deviation the output standard deviation is 0 everywhere.

Determinism. Windows are numbered in row-major order of their corner (y0, x0), batches hold
consecutive windows, and the in-painter is told the index of each batch's first window, so a
model that seeds its draws from (seed, window index) gives results independent of
``batch_size``; accumulation runs window by window in that order for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.signal.windows import hann
from tqdm.auto import tqdm

from lensforge.errors import InputError

# (images (B, w, w) float32 ADU, masks (B, w, w) bool, noise_sigma (B,) ADU, first_index) -> (mean, std or None)
StampInpainter = Callable[[np.ndarray, np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray | None]]

# Smallest blending weight relative to a window's centre along each axis, so every pixel a window
# covers contributes (the 2-D corner weight is this squared).
_WEIGHT_FLOOR = 0.01


def window_weight(window: int) -> np.ndarray:
    """Blending weight of a window's pixels: a 2-D Hann taper with a floor.

    Along each axis the weight is ``floor + (1 - floor) * hann(window + 2)[1:-1]`` (the Hann
    window without its zero end points, so it is positive and symmetric, ``w[i] == w[window-1-i]``),
    with ``floor`` = 0.01; the 2-D weight is the outer product of the two axes.

    Args:
        window: window side, pixels (>= 1).

    Returns:
        (window, window) float64 weights in (0, 1], largest at the centre.
    """
    taper = _WEIGHT_FLOOR + (1.0 - _WEIGHT_FLOOR) * hann(window + 2, sym=True)[1:-1]
    # scipy's Hann is symmetric only to rounding; averaging with its mirror makes it exact.
    taper = 0.5 * (taper + taper[::-1])
    return np.outer(taper, taper)


def _check_window(shape: tuple[int, ...], window: int, overlap: int) -> None:
    if int(window) != window or window < 1:
        raise InputError(f"window must be a positive integer number of pixels; got {window}", window)
    if int(overlap) != overlap or not 0 <= overlap < window:
        raise InputError(f"overlap must be an integer in [0, window={window}) pixels; got {overlap}", overlap)
    if shape[0] < window or shape[1] < window:
        raise InputError(f"image {shape[0]}x{shape[1]} is smaller than the {window}x{window} window", shape)


def _axis_starts(lo: int, hi: int, window: int, stride: int, size: int) -> list[int]:
    """Window starts along one axis covering the pixel range [lo, hi) of an axis of length ``size``."""
    if hi - lo <= window:
        # One window centred on the range, shifted to lie inside the image (it still covers the range).
        return [min(max((lo + hi - window) // 2, 0), size - window)]
    # Steps of ``stride`` from lo; the last window ends exactly at hi, so none overhangs the range.
    return [*range(lo, hi - window, stride), hi - window]


def plan_windows(mask, window: int, overlap: int) -> list[tuple[int, int]]:
    """Place square windows around the masked regions of an image.

    Each 8-connected masked region (``scipy.ndimage.label``) has its bounding box covered by
    windows at stride ``window - overlap`` along each axis (the last window of a row or column
    ends at the box's edge); a box no larger than a window along an axis gets one window
    centred on it. Windows are shifted to lie fully inside the image, and a window of a
    region's grid that holds none of that region's pixels is dropped. A region whose pixels
    all lie already inside windows planned for earlier regions, at least ``overlap // 2``
    pixels from any window edge that is not on the image border, gets no windows of its own:
    this keeps a tile sprinkled with hot pixels from needing one window per pixel.

    Guarantees: every masked pixel lies in at least one window, every window holds at least
    one masked pixel, no window repeats, and the order is row-major by corner (y0, x0), so
    window indices depend only on the mask.

    Args:
        mask: (H, W) bool/uint8, nonzero = pixel to fill.
        window: window side, pixels.
        overlap: pixels shared by neighbouring windows of a region, 0 <= overlap < window.

    Returns:
        Top-left corners (y0, x0) of the windows, pixels; empty when nothing is masked.

    Raises:
        InputError: the mask is not 2-D, is smaller than a window, or window/overlap are invalid.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim != 2:
        raise InputError(f"mask must be (H, W); got shape {mask.shape}", mask.shape)
    _check_window(mask.shape, window, overlap)
    window, overlap = int(window), int(overlap)
    height, width = mask.shape
    stride = window - overlap
    margin = overlap // 2
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    covered = np.zeros(mask.shape, dtype=bool)  # pixels well inside an already planned window
    corners: set[tuple[int, int]] = set()
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[rows, cols] == index
        if covered[rows, cols][region].all():
            continue
        for y0 in _axis_starts(rows.start, rows.stop, window, stride, height):
            for x0 in _axis_starts(cols.start, cols.stop, window, stride, width):
                if (y0, x0) in corners or not (labels[y0:y0 + window, x0:x0 + window] == index).any():
                    continue
                corners.add((y0, x0))
                # Edges on the image border lose no context, so they need no margin.
                covered[y0 + (margin if y0 > 0 else 0):y0 + window - (margin if y0 + window < height else 0),
                        x0 + (margin if x0 > 0 else 0):x0 + window - (margin if x0 + window < width else 0)] = True
    return sorted(corners)


def _noise_sigma_map(noise_sigma, image_shape: tuple[int, int], known: np.ndarray) -> np.ndarray | None:
    """Validate ``noise_sigma``; return it as an (H, W) float64 map, or None for a scalar."""
    sigma = np.asarray(noise_sigma, dtype=np.float64)
    if sigma.ndim == 0:
        if not np.isfinite(sigma) or sigma < 0:
            raise InputError(f"noise_sigma must be a finite value >= 0 ADU; got {float(sigma)}", float(sigma))
        return None
    if sigma.shape != image_shape:
        raise InputError(f"noise_sigma map must match the image shape {image_shape}; got {sigma.shape}", sigma.shape)
    bad = int(np.count_nonzero(~(np.isfinite(sigma[known]) & (sigma[known] >= 0))))
    if bad:
        raise InputError(f"noise_sigma map has {bad} known pixels that are not finite and >= 0", bad)
    return sigma


def inpaint_tile(image, mask, noise_sigma, stamp_inpainter: StampInpainter, window: int = 64, overlap: int = 16,
                 batch_size: int = 64, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fill the masked pixels of a large image with an in-painter of fixed-size stamps.

    Windows from :func:`plan_windows` are cut out (masked pixels zeroed, so NaN or garbage
    behind them never reaches the in-painter), passed to ``stamp_inpainter`` ``batch_size`` at
    a time (memory grows with the batch, not with the number of windows), and the predictions
    are blended on the masked pixels with :func:`window_weight` as the mixture described in the
    module docstring. Known pixels are pasted back unchanged.

    Args:
        image: (H, W) pixel values, ADU; masked pixels may hold anything (NaN included).
        mask: (H, W) bool/uint8, nonzero = pixel to fill.
        noise_sigma: per-pixel noise standard deviation, ADU: one value for the whole tile, or an
            (H, W) map, of which each window gets the median over its known pixels (over the
            whole tile's known pixels for a window with none); the map's masked pixels are
            ignored, like the image's.
        stamp_inpainter: ``f(images (B, w, w) float32 ADU, masks (B, w, w) bool, noise_sigma (B,)
            ADU, first_index) -> (mean (B, w, w), std (B, w, w) or None)``, ADU; ``first_index``
            is the tile-wide index of the batch's first window, for reproducible random draws.
        window: stamp side the in-painter works on, pixels.
        overlap: pixels shared by neighbouring windows of a masked region, 0 <= overlap < window.
        batch_size: windows per in-painter call (>= 1); the result does not depend on it.
        progress: show a tqdm progress bar over the batches.

    Returns:
        ``(mean, std)``, both (H, W) float32 ADU. Where the mask is 0, ``mean`` is ``image``
        (bit for bit for float32 input; otherwise cast to float32) and ``std`` is 0; ``std`` is 0
        everywhere when the in-painter returns no standard deviation.

    Raises:
        InputError: shapes differ or are not 2-D; the image is smaller than a window; window,
            overlap, batch size or noise sigma are invalid; known pixels are not finite; the
            in-painter returns arrays of the wrong shape or non-finite values on masked pixels,
            or a std for some batches only.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise InputError(f"image must be (H, W); got shape {image.shape}", image.shape)
    if mask.shape != image.shape:
        raise InputError(f"mask shape {mask.shape} does not match image shape {image.shape}", mask.shape)
    mask = mask != 0
    _check_window(image.shape, window, overlap)
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size}", batch_size)
    window, batch_size = int(window), int(batch_size)
    known = ~mask
    bad = int(np.count_nonzero(~np.isfinite(image[known])))
    if bad:
        raise InputError(f"image has {bad} known (unmasked) pixels that are NaN or infinite", bad)
    sigma_map = _noise_sigma_map(noise_sigma, image.shape, known)

    mean = image.astype(np.float32, copy=True)
    std = np.zeros(image.shape, dtype=np.float32)
    corners = plan_windows(mask, window, overlap)
    if not corners:
        return mean, std
    weight = window_weight(window)
    # float64 sums over windows of w, w*m and w*(s^2 + m^2), only ever read on masked pixels.
    sum_w = np.zeros(image.shape, dtype=np.float64)
    sum_wm = np.zeros(image.shape, dtype=np.float64)
    sum_wq: np.ndarray | None = None
    has_std: bool | None = None
    sigma_fallback = float(np.median(sigma_map[known])) if sigma_map is not None and known.any() else 0.0

    starts = range(0, len(corners), batch_size)
    for first in tqdm(starts, total=len(starts), disable=not progress, desc="in-painting tile", unit="batch"):
        batch = corners[first:first + batch_size]
        windows = [(slice(y0, y0 + window), slice(x0, x0 + window)) for y0, x0 in batch]
        masks = np.stack([mask[w] for w in windows])
        images = np.stack([np.where(mask[w], 0.0, image[w]) for w in windows]).astype(np.float32)
        if sigma_map is None:
            sigmas = np.full(len(batch), float(noise_sigma), dtype=np.float64)
        else:
            sigmas = np.array([np.median(sigma_map[w][known[w]]) if known[w].any() else sigma_fallback
                               for w in windows], dtype=np.float64)
        batch_mean, batch_std = stamp_inpainter(images, masks, sigmas, first)
        batch_mean = _check_output(batch_mean, masks, "mean")
        if has_std is None:
            has_std = batch_std is not None
            if has_std:
                sum_wq = np.zeros(image.shape, dtype=np.float64)
        elif has_std != (batch_std is not None):
            raise InputError("stamp_inpainter returned a std for some batches and None for others", first)
        if has_std:
            batch_std = _check_output(batch_std, masks, "std")
        # Window by window in index order, so the sums do not depend on how windows are batched.
        for k, w in enumerate(windows):
            weight_k = np.where(masks[k], weight, 0.0)
            sum_w[w] += weight_k
            sum_wm[w] += weight_k * batch_mean[k]
            if has_std:
                sum_wq[w] += weight_k * (batch_std[k] ** 2 + batch_mean[k] ** 2)

    # plan_windows covers every masked pixel and window_weight is positive, so sum_w > 0 there.
    blended = sum_wm[mask] / sum_w[mask]
    mean[mask] = blended
    if has_std:
        # Clip the rounding error of the difference, which can dip just below 0 where windows agree.
        std[mask] = np.sqrt(np.maximum(sum_wq[mask] / sum_w[mask] - blended**2, 0.0))
    return mean, std


def _check_output(values, masks: np.ndarray, name: str) -> np.ndarray:
    """The in-painter's ``name`` output as float64, zeroed on known pixels (which are not used)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != masks.shape:
        raise InputError(f"stamp_inpainter returned {name} of shape {values.shape}; expected {masks.shape}",
                         values.shape)
    bad = int(np.count_nonzero(~np.isfinite(values[masks])))
    if bad:
        raise InputError(f"stamp_inpainter returned {bad} non-finite {name} values on masked pixels", bad)
    return np.where(masks, values, 0.0)
