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
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.signal.windows import hann
from tqdm.auto import tqdm

from lensforge.errors import InputError
from lensforge.pipeline.inpaint.kriging import kriging_fill, sky_autocovariance

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


# --- whole-image in-painters ------------------------------------------------------------------------

# (image (H, W) float ADU or Jy/beam, mask (H, W) bool, noise_sigma float or (H, W) map) -> (mean, std or None)
ImageInpainter = Callable[[np.ndarray, np.ndarray, "float | np.ndarray"], tuple[np.ndarray, np.ndarray | None]]


def _biharmonic_image(image, mask, noise_sigma) -> tuple[np.ndarray, None]:
    """One scikit-image biharmonic call on the whole image (it solves each masked region on its own box)."""
    from lensforge.models.baselines import inpaint_biharmonic

    return inpaint_biharmonic(np.asarray(image, np.float64)[None], np.asarray(mask)[None])[0], None


def _interpolate_image(image, mask, noise_sigma) -> tuple[np.ndarray, None]:
    """astropy ``interpolate_replace_nans`` (Gaussian kernel, widening passes) on the whole image."""
    from lensforge.models.baselines import inpaint_interpolate_nans

    return inpaint_interpolate_nans(np.asarray(image, np.float64)[None], np.asarray(mask)[None])[0], None


def image_inpainter(method: str, model=None, card: dict | None = None, **options) -> ImageInpainter:
    """The in-painter ``method`` of a whole image: ``f(image, mask, noise_sigma) -> (mean, std or None)``.

    Methods: ``biharmonic`` (scikit-image, one call on the image), ``interpolate`` (astropy
    ``interpolate_replace_nans``), ``model`` (the image in-painter of
    :mod:`lensforge.models.image_inpainter`; ``model``/``card`` as
    :func:`~lensforge.models.image_inpainter.load_image_inpainter` returns them, the shipped
    weights when None; ``options`` go to :func:`inpaint_image`). Known pixels come back unchanged.
    """
    if method == "biharmonic":
        return _biharmonic_image
    if method == "interpolate":
        return _interpolate_image
    if method == "model":
        from lensforge.models.image_inpainter import load_image_inpainter

        if model is None or card is None:
            model, card = load_image_inpainter(None)

        def with_model(image, mask, noise_sigma):
            return inpaint_image(image, mask, noise_sigma, model, card, **options)

        return with_model
    raise InputError(f"unknown in-painting method {method!r}: expected model, biharmonic or interpolate", method)


# Cells of the model path. The image is cut into square cells; a cell whose holes need the network is
# predicted from a window reaching a halo beyond it on every side (its context), and its holes take that
# window's prediction, so no blending is needed and the result does not depend on the batching. The
# network's cost grows with the window pixels (a classical fill's with the hole pixels), so the cells
# stay small: thin holes (cosmic rays, hot pixels, bad columns: every hole pixel touches a known one)
# need little context and get THIN cells; a cell of WIDE_CELL_PIXELS holding any deeper hole pixel is
# predicted whole with the training crop's context (a window of 64 pixels). Thin holes near signal go
# through the network only where it fills them best (``thin_holes`` of :func:`inpaint_image`): on a sparsely
# masked tile the thin windows are most of the network's time.
WIDE_CELL_PIXELS, WIDE_HALO_PIXELS = 32, 16
THIN_CELL_PIXELS, THIN_HALO_PIXELS = 16, 8
# A hole pixel with no signal within ``SIGNAL_REACH_PIXELS`` is sky: there the start fill (a local mean)
# is what the network returns within noise, so a cell holding only such holes gets no network pass (most
# cells of a sparsely masked tile).
SIGNAL_REACH_PIXELS = 2
SIGNAL_SIGMA = 5.0


def _flat_offsets(width: int, radius: int) -> list[int]:
    """Offsets in a flattened (H, width) array of the (2 radius + 1)^2 pixels around a pixel, row-major."""
    span = range(-radius, radius + 1)
    return [dy * width + dx for dy in span for dx in span]


def _network_holes(x_pad: np.ndarray, hole_pad: np.ndarray, hole_y: np.ndarray, hole_x: np.ndarray,
                   sky_shortcut: bool, box_noise_sigma: float = 1.0 / 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Which hole pixels need the network, and which are deep (no known pixel among their 8 neighbours).

    A hole pixel needs the network when a 3x3 mean of known pixels is above SIGNAL_SIGMA times
    ``box_noise_sigma`` (the noise of such a mean, in pixel-noise units: 1/3 for white noise, 1
    for a smooth sky) within SIGNAL_REACH_PIXELS of it, or always without ``sky_shortcut``. Both
    are computed at the hole pixels ``(hole_y, hole_x)`` of the padded arrays (each at least
    SIGNAL_REACH_PIXELS + 1 pixels from their edge) and at the known pixels within reach of them,
    by gathers on the flattened arrays: a sparsely masked tile's holes touch a few per cent of it,
    and filtering the whole tile cost three times as much.

    Returns:
        ``(need, deep)``, bool vectors over the hole pixels.
    """
    width = hole_pad.shape[1]
    holes_flat = hole_pad.ravel()
    at = hole_y * width + hole_x
    box = _flat_offsets(width, 1)
    deep = np.ones(at.size, bool)
    for offset in box:
        if offset:
            deep &= holes_flat[at + offset]
    if not sky_shortcut:
        return np.ones(at.size, bool), deep
    reach = _flat_offsets(width, SIGNAL_REACH_PIXELS)
    candidate = np.zeros(holes_flat.size, bool)  # the known pixels within reach of a hole
    for offset in reach:
        candidate[at + offset] = True
    candidate &= ~holes_flat
    known_at = np.flatnonzero(candidate)
    x_flat = x_pad.ravel()
    # Single noise pixels above 3 sigma are in every neighbourhood: detect 3x3 means of known pixels
    # instead (x_pad is 0 in the holes, so the box sum counts known pixels only).
    box_sum, box_known = np.zeros(known_at.size, np.float32), np.zeros(known_at.size, np.float32)
    for offset in box:
        box_sum += x_flat[known_at + offset]
        box_known += ~holes_flat[known_at + offset]
    detected = np.abs(box_sum) > np.float32(SIGNAL_SIGMA * box_noise_sigma) * np.maximum(box_known, np.float32(9e-3))
    strong = np.zeros(holes_flat.size, bool)
    strong[known_at[detected]] = True
    need = np.zeros(at.size, bool)
    for offset in reach:
        need |= strong[at + offset]
    return need, deep


# A hole is "in a source" when the filled image, smoothed as the evaluation smooths the truth to find
# its source segments (a Gaussian of FWHM 2 pixels on a 5x5 grid), is above 3 noise sigma there.
SOURCE_CONTEXT_FWHM_PIXELS = 2.0
SOURCE_CONTEXT_RADIUS_PIXELS = 2
SOURCE_CONTEXT_SIGMA = 3.0


def source_context(filled_pad: np.ndarray, hole_y: np.ndarray, hole_x: np.ndarray) -> np.ndarray:
    """Whether each hole pixel lies in a source of the filled image (:data:`SOURCE_CONTEXT_SIGMA`).

    ``filled_pad``: the padded image in noise-sigma units (background subtracted) with its holes
    filled; ``(hole_y, hole_x)``: hole pixels of it, each at least
    :data:`SOURCE_CONTEXT_RADIUS_PIXELS` from its edge. The smoothed value is gathered at the hole
    pixels only (a sparsely masked tile's holes are a few per cent of it). Returns a bool vector.
    """
    from photutils.segmentation import make_2dgaussian_kernel

    radius = SOURCE_CONTEXT_RADIUS_PIXELS
    kernel = make_2dgaussian_kernel(SOURCE_CONTEXT_FWHM_PIXELS, size=2 * radius + 1).array  # the evaluation's kernel
    kernel = kernel.astype(np.float32).ravel()
    width = filled_pad.shape[1]
    flat, at = filled_pad.ravel(), hole_y * width + hole_x
    smoothed = np.zeros(at.size, np.float32)
    for weight, offset in zip(kernel, _flat_offsets(width, radius), strict=True):
        smoothed += weight * flat[at + offset]
    return smoothed > SOURCE_CONTEXT_SIGMA


def _windows(padded: np.ndarray, offset: int, side: int, cell: int) -> np.ndarray:
    """(rows, cols, side, side) views of the windows starting at ``offset + (r, c) * cell`` of ``padded``."""
    return np.lib.stride_tricks.sliding_window_view(padded[offset:, offset:], (side, side))[::cell, ::cell]


def _mirror_padded(values: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]], dtype) -> np.ndarray:
    """``np.pad(values, pad, mode="symmetric")`` as ``dtype``, written into one fresh array.

    A large image is copied once (np.pad plus a cast would allocate and fault in two tile-sized arrays);
    pads wider than the image (several reflections) go through ``np.pad``.
    """
    (top, bottom), (left, right) = pad
    height, width = values.shape
    if max(top, bottom) > height or max(left, right) > width:
        return np.pad(np.asarray(values, dtype), pad, mode="symmetric")
    out = np.empty((height + top + bottom, width + left + right), dtype)
    out[top:top + height, left:left + width] = values
    if top:
        out[:top] = out[top:2 * top][::-1]
    if bottom:
        out[top + height:] = out[top + height - bottom:top + height][::-1]
    if left:
        out[:, :left] = out[:, left:2 * left][:, ::-1]
    if right:
        out[:, left + width:] = out[:, left + width - right:left + width][:, ::-1]
    return out


# A sky whose neighbouring pixels correlate at least this much (lag 1, |x| < 3 sigma) is smooth: a
# beam many pixels wide (SKA-MID tiles: 0.994 at 8.8 pixels per beam FWHM). There the biharmonic
# fill predicts hidden sky from its neighbours (sky RMSE 0.12 sigma against 0.18 for a local mean),
# while on a sky of near-white noise (optical: < 0.06) the local mean is the better guess of a pixel
# that holds only noise. In between (FIRST, 3 pixels per beam: 0.59-0.86) neither is right: kriging
# with the image's own sky covariance beats both there (pipeline.inpaint.kriging).
SMOOTH_SKY_CORRELATION = 0.95
# On a smooth sky (SKA-MID's dirty images) whose cross-check favours biharmonic, the network's windows keep the
# biharmonic fill and the network sets only their std. In the network's windows of held-out SKA-MID tiles (seeds
# 201-208: neither trained on nor test; calibration masks), network / biharmonic RMSE was 1.116 on source pixels
# and 1.039 on sky (its own start 1.118 and 1.043): its mean did not pay there. With the weights retrained at
# linear_weight 1.0 (sha256 4b1d6dacc6c9): 1.114 and 1.035.
SMOOTH_SKY_NETWORK_STD_ONLY = True
CROSS_CHECK_CORRELATION = 0.5
# The holes the network skips are kriged (pipeline.inpaint.kriging) on a sky this correlated, smooth skies aside.
# On white noise kriging is the local mean; the optical presets' skies sit below 0.06, FIRST's calibration images
# at 0.40-0.89: the two below CROSS_CHECK_CORRELATION (0.40, 0.43) gained most (skipped-sky RMSE 0.92 -> 0.45).
KRIGING_MIN_CORRELATION = 0.2
SKY_PAIRS_SAMPLED = 1_000_000
MIN_CROSS_CHECK_PIXELS = 50
THIN_HOLE_CHOICES = ("auto", "network")


QUADRATIC_MAX_SIGNAL_SIGMA = 10.0  # a thin hole with a known pixel this bright within 2 pixels keeps the start


def _near_bright(x_pad: np.ndarray, hole_pad: np.ndarray, hole_y: np.ndarray, hole_x: np.ndarray) -> np.ndarray:
    """Whether a known pixel within SIGNAL_REACH_PIXELS of each hole pixel (padded coordinates) is above
    QUADRATIC_MAX_SIGNAL_SIGMA: there a sharp peak's shape dominates the error and the start fill, which
    passes through the nearest known pixels, follows it better than a smoothing fit."""
    width = hole_pad.shape[1]
    at = hole_y * width + hole_x
    x_flat, holes_flat = x_pad.ravel(), hole_pad.ravel()
    bright = np.zeros(at.size, bool)
    for offset in _flat_offsets(width, SIGNAL_REACH_PIXELS):
        bright |= ~holes_flat[at + offset] & (np.abs(x_flat[at + offset]) >= QUADRATIC_MAX_SIGNAL_SIGMA)
    return bright


def thin_hole_fill(correlation: float) -> str:
    """What the thin holes near signal of an image whose sky has this lag-1 ``correlation`` take (``auto``).

    ``quadratic`` on near-white noise (next to a known pixel above :data:`QUADRATIC_MAX_SIGNAL_SIGMA`,
    the start), ``start`` on a smooth sky, ``network`` in between: on the
    calibration split each was the best of the three for those holes there (the network on FIRST,
    the quadratic fit on the optical presets' sky, the start on SKA-MID's); ``thin_holes`` of
    ``docs/results/inpainting_error_budget.json`` compares them with the network on the test split.
    """
    return {"white": "quadratic", "beam": "network", "smooth": "start"}[sky_regime(correlation)]


def sky_correlation(x: np.ndarray, known: np.ndarray) -> float:
    """Correlation of horizontally adjacent known sky pixels (both |x| < 3, noise-sigma units); 0 if too few."""
    step = max(1, x.shape[0] * x.shape[1] // SKY_PAIRS_SAMPLED)
    rows = slice(None, None, step)  # every step-th row of a large image
    left, right = x[rows, :-1], x[rows, 1:]
    pair = known[rows, :-1] & known[rows, 1:] & (np.abs(left) < 3) & (np.abs(right) < 3)
    if pair.sum() < 100:
        return 0.0
    a, b = left[pair].astype(np.float64), right[pair].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0


def sky_regime(correlation: float) -> str:
    """The kind of sky (:data:`~lensforge.models.image_inpainter.SKY_REGIMES`) of a sky correlation.

    ``white`` below :data:`CROSS_CHECK_CORRELATION`, ``smooth`` from :data:`SMOOTH_SKY_CORRELATION`,
    ``beam`` in between.
    """
    if correlation >= SMOOTH_SKY_CORRELATION:
        return "smooth"
    return "beam" if correlation >= CROSS_CHECK_CORRELATION else "white"


def known_sky(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Known pixels with no known pixel above :data:`SIGNAL_SIGMA` within 2 pixels (``x`` in noise sigmas)."""
    return known & ~(ndimage.maximum_filter(np.where(known, np.abs(x), 0.0), size=5) > SIGNAL_SIGMA)


@dataclass(frozen=True)
class SkyCrossCheck:
    """How well each fill predicts this image's known sky (noise-sigma RMS over ``n_pixels`` hidden pixels)."""

    local_mean_rms: float
    biharmonic_rms: float
    n_pixels: int

    @property
    def biharmonic_better(self) -> bool:
        return self.biharmonic_rms < self.local_mean_rms


def local_mean_at(values: np.ndarray, known: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The local mean (pull-push over the whole image, deep enough for its widest hole) at pixels (rows, cols).

    ``values``: (H, W) float32, anything where not ``known``; returns float32 values in their unit.
    """
    import torch

    from lensforge.models.image_inpainter import pull_push_at

    levels = max(1, int(np.ceil(np.log2(max(values.shape)))))
    with torch.inference_mode():
        known_t = torch.as_tensor(known, dtype=torch.float32)[None, None]
        return pull_push_at(torch.as_tensor(values)[None, None], known_t, rows, cols, levels).numpy().astype(np.float32)


def sky_cross_check(x: np.ndarray, holes: np.ndarray) -> SkyCrossCheck | None:
    """The local mean (pull-push) against the biharmonic fill on this image's own sky.

    The image's holes, moved by half the image in each direction, hide known sky pixels (no pixel
    above 5 sigma within 2 pixels): holes of the sizes and shapes the image has, over sky whose
    truth is known. Both fills predict them from the rest of the known pixels. None when fewer
    than :data:`MIN_CROSS_CHECK_PIXELS` pixels could be hidden.

    Args:
        x: (H, W) background-subtracted pixels in noise-sigma units (holes: anything finite).
        holes: (H, W) bool, the image's holes.
    """
    from lensforge.models.image_inpainter import biharmonic_fill

    known = ~holes
    test = np.roll(holes, (holes.shape[0] // 2, holes.shape[1] // 2), axis=(0, 1)) & known_sky(x, known)
    if test.sum() < MIN_CROSS_CHECK_PIXELS:
        return None
    context = known & ~test
    values = np.where(context, x, 0.0).astype(np.float32)
    rows, cols = np.nonzero(test)
    local_mean = local_mean_at(values, context, rows, cols)
    smooth = biharmonic_fill(values[None], ~context[None])[0][rows, cols]
    truth = x[rows, cols].astype(np.float64)
    return SkyCrossCheck(float(np.sqrt(np.mean((local_mean - truth) ** 2))),
                         float(np.sqrt(np.mean((smooth - truth) ** 2))), int(rows.size))


def _biharmonic_sky_fill(x_pad, hole_pad, halo, shape, hole_y, hole_x) -> np.ndarray:
    """The biharmonic fill of every hole of the image (noise-sigma units), at the holes (hole_y, hole_x)."""
    from lensforge.models.image_inpainter import biharmonic_fill

    height, width = shape
    x = x_pad[halo:halo + height, halo:halo + width]
    holes = hole_pad[halo:halo + height, halo:halo + width]
    return biharmonic_fill(x[None], holes[None])[0][hole_y, hole_x]


def inpaint_image(image, mask, noise_sigma, model, card: dict, n_samples: int = 0, seed: int = 0,
                  batch_size: int = 128, sky_shortcut: bool = True, progress: bool = False,
                  diagnostics: dict | None = None, thin_holes: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Fill the masked pixels of an image of any size with the image in-painter.

    The image is normalised once (background = median, noise = ``noise_sigma`` or 1.4826 x MAD
    of the known pixels) and every hole first takes the start fill (pull-push over the whole
    image, :func:`~lensforge.models.image_inpainter.pull_push_fill`) with the card's sky
    uncertainty. The cells holding holes that need the network are then predicted in batches on
    the model's device, every hole of such a cell taking the network's value (on a smooth sky only
    its std, see below): cells of
    :data:`WIDE_CELL_PIXELS` with a :data:`WIDE_HALO_PIXELS` halo where some hole pixel has no
    known neighbour, else cells of :data:`THIN_CELL_PIXELS` with a :data:`THIN_HALO_PIXELS` halo
    (the image is mirror-padded at its borders). With ``sky_shortcut`` a hole needs the network
    only when a 3x3 mean of known pixels is detected at :data:`SIGNAL_SIGMA` within
    :data:`SIGNAL_REACH_PIXELS` of it; without, every hole does. A model whose ``start_fill`` is
    ``biharmonic`` corrects the biharmonic fill of each window's holes (one sparse solve per
    batch, as training fills each crop). On a smooth sky (:data:`SMOOTH_SKY_CORRELATION`, a beam
    many pixels wide), unless :func:`sky_cross_check` favours the local mean, the holes the
    network skips take the biharmonic fill of the whole image, and the network's windows keep
    that fill too, the network giving only their std (:data:`SMOOTH_SKY_NETWORK_STD_ONLY`). On a
    sky of noise correlated over a few pixels (:data:`KRIGING_MIN_CORRELATION`, FIRST's beam) the
    holes the network skips are kriged with the image's own sky covariance, mean and std
    (:mod:`lensforge.pipeline.inpaint.kriging`; the std calibrated by
    :func:`~lensforge.models.image_inpainter.kriged_sky_std`). Standard deviations are
    calibrated with the card's factors for the image's kind of sky
    (:func:`~lensforge.models.image_inpainter.calibrated_std`, :func:`sky_regime`), then, as the
    last step, by whether the filled image shows a source at each hole (:func:`source_context`,
    :func:`~lensforge.models.image_inpainter.source_context_std`).

    Thin holes near signal (the thin cells' holes) take, with ``thin_holes="auto"`` and a model
    whose start is biharmonic, the fill that was best for them on the calibration split, by the
    image's sky correlation: on near-white noise (below :data:`CROSS_CHECK_CORRELATION`) a local
    quadratic fit to the stretched known pixels
    (:func:`~lensforge.models.image_inpainter.stretched_quadratic_fill`); on a smooth sky
    (:data:`SMOOTH_SKY_CORRELATION` or more) the model's start fill of their window; in between
    (FIRST's 3-pixel beam) the network. Their std is the card's
    (:func:`~lensforge.models.image_inpainter.thin_fill_std`). ``thin_holes="network"``: the network
    for all of them (the behaviour before this choice existed).

    Args:
        image: (H, W) pixels in any units (masked pixels may hold anything, NaN included).
        mask: (H, W) bool/int, nonzero = to fill.
        noise_sigma: background noise std in the image's units (scalar or (H, W) map); None or
            <= 0: estimated from the known pixels.
        model, card: from :func:`~lensforge.models.image_inpainter.load_image_inpainter`.
        n_samples: latent draws per cell (0: the prior's mean latent, deterministic).
        seed: seed of the draws; a batch draws from (seed, pass, its first cell), so draws
            depend on ``batch_size`` (the mean with ``n_samples=0`` does not).
        batch_size: windows per network call.
        sky_shortcut: skip the network on cells without signal (see above).
        progress: tqdm bar over the batches.
        diagnostics: if a dict, filled with ``from_network`` ((H, W) bool: pixels the network
            predicted; their std only when ``network_mean`` is False), ``thin_fill`` (``network``,
            ``quadratic`` or ``start``: what the thin holes
            near signal took), ``from_thin_fill`` ((H, W) bool: those that took a quadratic or
            start fill), ``one_pixel_sky_error`` (their std's unit, noise sigmas; 1.0 when there
            were none), ``n_cells`` (cells of WIDE_CELL_PIXELS holding holes),
            ``n_network_cells`` (network windows, both sizes), ``background``, ``noise``, ``smooth_sky`` and
            ``biharmonic_sky`` (bools: the sky is smooth; skipped holes took the biharmonic fill),
            ``network_mean`` (bool: the network's windows took its mean, not only its std),
            ``sky_regime`` (:func:`sky_regime`: the calibration factors the network's std took),
            ``sky_cross_check`` (:class:`SkyCrossCheck` or None; only a smooth sky runs it),
            ``kriged_sky`` ((H, W) bool: skipped holes that took the kriging fill),
            ``biharmonic_sky_rms`` ((H, W): the
            cross-check's biharmonic RMS that sets the std of such a hole with a calibrated card,
            0 elsewhere), ``in_source`` ((H, W) bool: holes the filled image shows inside a
            source, :func:`source_context`).
        thin_holes: ``auto`` or ``network`` (see above); a model with a pull-push start (the
            network's own input) always uses the network.

    Returns:
        ``(mean, std)`` (H, W) float32 in the image's units; known pixels of ``mean`` are the
        input's (bit for bit for float32 input), ``std`` is 0 there.
    """
    import torch

    from lensforge.models.image_inpainter import (
        BIHARMONIC_STARTS,
        calibrated_std,
        kriged_sky_std,
        one_pixel_sky_error,
        predict_windows,
        robust_background_noise,
        source_context_std,
        start_fill_of,
        stretched_quadratic_fill,
        thin_fill_std,
    )

    image = np.asarray(image)
    mask = np.asarray(mask) != 0
    if image.ndim != 2 or mask.shape != image.shape:
        raise InputError(f"image and mask must be the same 2-D shape; got {image.shape} and {mask.shape}")
    known = ~mask
    if not (np.isfinite(image) | mask).all():
        raise InputError(f"image has {int((~np.isfinite(image[known])).sum())} known pixels that are NaN or infinite")
    mean = image.astype(np.float32, copy=True)
    std = np.zeros(image.shape, np.float32)
    if not mask.any():
        return mean, std
    sigma_map = np.asarray(noise_sigma, np.float64) if noise_sigma is not None else np.asarray(0.0)
    background, mad_noise = robust_background_noise(image, known)
    if sigma_map.ndim == 0:
        noise = float(sigma_map) if float(sigma_map) > 0 else mad_noise
        log_ratio_image = None
    else:
        if sigma_map.shape != image.shape:
            raise InputError(f"noise_sigma map {sigma_map.shape} does not match the image {image.shape}")
        good = known & np.isfinite(sigma_map) & (sigma_map > 0)
        noise = float(np.median(sigma_map[good])) if good.any() else mad_noise
        log_ratio_image = np.where(good, np.log(np.where(good, sigma_map, noise) / noise), 0.0).astype(np.float32)
    height, width = image.shape
    halo = WIDE_HALO_PIXELS
    rows, cols = -(-height // WIDE_CELL_PIXELS), -(-width // WIDE_CELL_PIXELS)
    pad = ((halo, rows * WIDE_CELL_PIXELS - height + halo), (halo, cols * WIDE_CELL_PIXELS - width + halo))
    hole_y, hole_x = np.nonzero(mask)  # every hole pixel, row-major: the values below are vectors over these
    # Mirror padding: the context past a border looks like the data, not like a wall of zeros.
    x_pad = _mirror_padded(image, pad, np.float32)
    with np.errstate(invalid="ignore"):  # holes may hold NaN or inf until they are zeroed below
        x_pad -= np.float32(background)  # in place: a tile's temporaries cost more than the arithmetic
        x_pad /= np.float32(noise)
    hole_pad = _mirror_padded(mask, pad, bool)
    x_pad[hole_pad] = 0.0
    ratio_pad = None if log_ratio_image is None else _mirror_padded(log_ratio_image, pad, np.float32)

    calibration = card.get("calibration")
    biharmonic_start = model.settings.start_fill in BIHARMONIC_STARTS
    if thin_holes not in THIN_HOLE_CHOICES:
        raise InputError(f"thin_holes {thin_holes!r}: valid choices are {', '.join(THIN_HOLE_CHOICES)}", thin_holes)
    # The start of every hole: one pull-push pass over the whole image, deep enough for its widest hole.
    hole_mean = local_mean_at(x_pad, ~hole_pad, hole_y + halo, hole_x + halo)
    hole_std = np.full(hole_y.size, calibration.get("sky_std_sigma", 1.0) if calibration else 1.0, np.float32)

    # A smooth sky's 3x3 means are as noisy as its pixels: detect signal at SIGNAL_SIGMA of those.
    correlation = sky_correlation(x_pad[halo:halo + height, halo:halo + width], ~mask)
    regime = sky_regime(correlation)
    smooth_sky = regime == "smooth"
    # The holes the network skips: on a smooth sky the biharmonic fill unless the image's own cross-check
    # favours the local mean; under a beam a few pixels wide, kriging with the image's own sky covariance.
    check = None
    if biharmonic_start and smooth_sky:
        check = sky_cross_check(x_pad[halo:halo + height, halo:halo + width], mask)
    biharmonic_sky = biharmonic_start and smooth_sky and (check is None or check.biharmonic_better)
    kriged_sky = biharmonic_start and not smooth_sky and correlation >= KRIGING_MIN_CORRELATION
    need_holes, deep = _network_holes(x_pad, hole_pad, hole_y + halo, hole_x + halo, sky_shortcut,
                                      box_noise_sigma=1.0 if smooth_sky else 1.0 / 3.0)
    wide_cell = (hole_y // WIDE_CELL_PIXELS) * cols + hole_x // WIDE_CELL_PIXELS
    deep_cells = np.zeros(rows * cols, bool)
    deep_cells[wide_cell[deep]] = True
    in_wide = deep_cells[wide_cell]
    thin_cols = -(-width // THIN_CELL_PIXELS)
    thin_cell = (hole_y // THIN_CELL_PIXELS) * thin_cols + hole_x // THIN_CELL_PIXELS
    device = model.device
    passes = [(WIDE_CELL_PIXELS, WIDE_HALO_PIXELS, cols, wide_cell, in_wide),
              (THIN_CELL_PIXELS, THIN_HALO_PIXELS, thin_cols, thin_cell, ~in_wide)]
    for _, _, _, hole_cell, in_pass in passes:
        # Every hole of the pass in a cell where some hole needs the network takes the network's value.
        in_pass &= np.isin(hole_cell, hole_cell[in_pass & need_holes])
    thin_fill = thin_hole_fill(correlation) if thin_holes == "auto" and biharmonic_start else "network"
    from_thin_fill = passes[1][4] if thin_fill != "network" else np.zeros(hole_y.size, bool)
    # How well this image's sky is predicted pixel by pixel: white noise and a beam's differ (thin holes' std).
    one_pixel_error = (one_pixel_sky_error(x_pad[halo:halo + height, halo:halo + width], ~mask)
                       if from_thin_fill.any() else 1.0)
    from_network = passes[0][4] | (passes[1][4] & ~from_thin_fill)

    biharmonic_sky_rms = np.zeros(hole_y.size, np.float32)  # the cross-check's RMS behind a biharmonic sky std
    if biharmonic_sky:  # a smooth sky: the biharmonic fill beats a local mean on sky too
        hole_mean = _biharmonic_sky_fill(x_pad, hole_pad, halo, (height, width), hole_y, hole_x).astype(np.float32)
        if check is not None:
            biharmonic_sky_rms[:] = check.biharmonic_rms
            if calibration and "biharmonic_sky_std_scale" in calibration:
                # The image's own biharmonic error on its sky, scaled to 68 % coverage on the calibration split.
                hole_std[:] = calibration["biharmonic_sky_std_scale"] * check.biharmonic_rms
    kriged = np.zeros(hole_y.size, bool)
    if kriged_sky:  # noise correlated over a few pixels: its covariance predicts a hidden sky pixel
        x = x_pad[halo:halo + height, halo:halo + width]
        skipped = np.flatnonzero(~from_network & ~from_thin_fill)
        krig_mean, krig_std = kriging_fill(x, ~mask, hole_y[skipped], hole_x[skipped],
                                           sky_autocovariance(x, known_sky(x, ~mask)))
        found = np.isfinite(krig_mean)  # a block with no known pixel near it keeps the local mean
        kriged[skipped[found]] = True
        hole_mean[kriged] = krig_mean[found]
        hole_std[kriged] = kriged_sky_std(krig_std[found], calibration)
    # On a smooth sky whose own cross-check favours the biharmonic fill, the network's windows keep it too and
    # the network gives only their std: its mean did worse than biharmonic there (SMOOTH_SKY_NETWORK_STD_ONLY).
    network_mean = not (biharmonic_sky and SMOOTH_SKY_NETWORK_STD_ONLY)
    keeps_start = from_thin_fill if thin_fill == "start" else np.zeros(hole_y.size, bool)
    if thin_fill == "quadratic":  # no windows: each hole pixel's fit reaches QUADRATIC_RADIUS < halo pixels
        # Next to a bright peak the peak's shape, not the noise, sets the error: those keep the start.
        keeps_start = from_thin_fill.copy()  # only the thin holes are asked: a tile's other holes are most of them
        thin = np.flatnonzero(from_thin_fill)
        keeps_start[thin] = _near_bright(x_pad, hole_pad, hole_y[thin] + halo, hole_x[thin] + halo)
        fitted = np.flatnonzero(from_thin_fill & ~keeps_start)
        hole_mean[fitted] = stretched_quadratic_fill(x_pad, hole_pad, hole_y[fitted] + halo, hole_x[fitted] + halo)
        hole_std[fitted] = thin_fill_std(hole_mean[fitted], calibration, one_pixel_error)
    n_network_cells = 0
    for pass_index, (cell, cell_halo, n_cols, hole_cell, in_pass) in enumerate(passes):
        if pass_index == 1 and thin_fill != "network":
            in_pass = keeps_start  # the thin holes that keep their window's start fill
        holes_of_pass = np.flatnonzero(in_pass)
        # The pass's cells, row-major, and its holes sorted by cell (np.nonzero gave them row-major).
        order = np.argsort(hole_cell[holes_of_pass], kind="stable")
        holes_of_pass = holes_of_pass[order]
        cell_ids, first_hole = np.unique(hole_cell[holes_of_pass], return_index=True)
        first_hole = np.append(first_hole, holes_of_pass.size)
        keep_start = pass_index == 1 and thin_fill != "network"
        n_network_cells += 0 if keep_start else cell_ids.size
        side, offset = cell + 2 * cell_halo, halo - cell_halo  # window (r, c) starts at offset + (r, c) * cell
        x_windows, hole_windows = _windows(x_pad, offset, side, cell), _windows(hole_pad, offset, side, cell)
        ratio_windows = None if ratio_pad is None else _windows(ratio_pad, offset, side, cell)
        starts = range(0, cell_ids.size, batch_size)
        for first in tqdm(starts, total=len(starts), disable=not progress, desc="in-painting", unit="batch"):
            r, c = np.divmod(cell_ids[first:first + batch_size], n_cols)
            holes = holes_of_pass[first_hole[first]:first_hole[min(first + batch_size, cell_ids.size)]]
            k = np.searchsorted(cell_ids[first:first + batch_size], hole_cell[holes])
            wy, wx = hole_y[holes] - r[k] * cell + cell_halo, hole_x[holes] - c[k] * cell + cell_halo
            if keep_start:  # the start fill of each window, as the network would have started from it
                start_w = start_fill_of(x_windows[r, c], hole_windows[r, c], model.settings.start_fill)
                hole_mean[holes] = start_w[k, wy, wx]
                hole_std[holes] = thin_fill_std(hole_mean[holes], calibration, one_pixel_error)
                continue
            generator = None
            if n_samples > 0:  # draws from (seed, pass, first cell): independent of batch_size only per batch
                generator = torch.Generator(device=device).manual_seed(int(np.random.default_rng(
                    [seed, pass_index, int(cell_ids[first])]).integers(2**62)))
            mean_w, std_w = predict_windows(model, x_windows[r, c], hole_windows[r, c],
                                            None if ratio_windows is None else ratio_windows[r, c],
                                            n_samples=n_samples, generator=generator)
            if network_mean:
                hole_mean[holes] = mean_w[k, wy, wx]
            hole_std[holes] = calibrated_std(std_w[k, wy, wx], hole_mean[holes], calibration, regime)

    # Last calibration step: holes the filled image shows inside a source and the others have their own factor.
    x_pad[hole_y + halo, hole_x + halo] = hole_mean  # in place: x_pad is not read after this
    in_source = source_context(x_pad, hole_y + halo, hole_x + halo)
    hole_std = source_context_std(hole_std, hole_mean, in_source, calibration)
    mean[hole_y, hole_x] = background + noise * hole_mean
    std[hole_y, hole_x] = noise * hole_std
    if diagnostics is not None:
        network_pixels, classical_pixels = np.zeros(image.shape, bool), np.zeros(image.shape, bool)
        network_pixels[hole_y[from_network], hole_x[from_network]] = True
        classical_pixels[hole_y[from_thin_fill], hole_x[from_thin_fill]] = True
        source_pixels = np.zeros(image.shape, bool)
        source_pixels[hole_y[in_source], hole_x[in_source]] = True
        kriged_pixels = np.zeros(image.shape, bool)
        kriged_pixels[hole_y[kriged], hole_x[kriged]] = True
        sky_rms_image = np.zeros(image.shape, np.float32)
        sky_rms_image[hole_y, hole_x] = biharmonic_sky_rms
        diagnostics.update(from_network=network_pixels, from_thin_fill=classical_pixels, in_source=source_pixels,
                           thin_fill=thin_fill,
                           one_pixel_sky_error=one_pixel_error, n_cells=int(np.unique(wide_cell).size),
                           n_network_cells=n_network_cells, background=background, noise=noise,
                           smooth_sky=smooth_sky, sky_regime=regime, biharmonic_sky=biharmonic_sky,
                           sky_cross_check=check, kriged_sky=kriged_pixels,
                           biharmonic_sky_rms=sky_rms_image,
                           network_mean=network_mean)
    return mean, std
