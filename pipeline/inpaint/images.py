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


# Cells of the model path: each cell (at most ``CELL_PIXELS`` on a side; a small image is one cell)
# holding masked pixels is predicted from a window reaching ``HALO_PIXELS`` beyond it on every side (its
# context); every masked pixel takes its own cell's prediction, so no blending is needed and the result
# does not depend on the batching.
CELL_PIXELS = 128
HALO_PIXELS = 16
# A cell whose holes show no signal within ``SIGNAL_REACH_PIXELS`` is sky: there the start fill (a local
# mean) is what the network returns within noise, so the network is not run (most cells of a sparsely
# masked tile).
SIGNAL_REACH_PIXELS = 6
SIGNAL_SIGMA = 5.0


def inpaint_image(image, mask, noise_sigma, model, card: dict, n_samples: int = 0, seed: int = 0,
                  batch_size: int = 32, sky_shortcut: bool = True, progress: bool = False,
                  diagnostics: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill the masked pixels of an image of any size with the image in-painter.

    The image is normalised once (background = median, noise = ``noise_sigma`` or 1.4826 x MAD
    of the known pixels), cut into cells of :data:`CELL_PIXELS` with a :data:`HALO_PIXELS` halo
    of context (the image is mirror-padded at its borders), and the cells holding masked pixels
    are predicted in batches on the model's device. With ``sky_shortcut`` a cell where no 3x3
    mean of known pixels is detected at :data:`SIGNAL_SIGMA` within :data:`SIGNAL_REACH_PIXELS`
    of its holes takes the start fill and the card's sky uncertainty instead of a network pass.
    Standard deviations are calibrated with the card's factors
    (:func:`~lensforge.models.image_inpainter.calibrated_std`).

    Args:
        image: (H, W) pixels in any units (masked pixels may hold anything, NaN included).
        mask: (H, W) bool/int, nonzero = to fill.
        noise_sigma: background noise std in the image's units (scalar or (H, W) map); None or
            <= 0: estimated from the known pixels.
        model, card: from :func:`~lensforge.models.image_inpainter.load_image_inpainter`.
        n_samples: latent draws per cell (0: the prior's mean latent, deterministic).
        seed: seed of the draws; a batch draws from (seed, index of its first cell), so draws
            depend on ``batch_size`` (the mean with ``n_samples=0`` does not).
        batch_size: windows per network call.
        sky_shortcut: skip the network on cells without signal (see above).
        progress: tqdm bar over the batches.
        diagnostics: if a dict, filled with ``from_network`` ((H, W) bool: pixels the network
            predicted), ``n_cells``, ``n_network_cells``, ``background``, ``noise``.

    Returns:
        ``(mean, std)`` (H, W) float32 in the image's units; known pixels of ``mean`` are the
        input's (bit for bit for float32 input), ``std`` is 0 there.
    """
    import torch

    from lensforge.models.image_inpainter import (
        calibrated_std,
        predict_windows,
        robust_background_noise,
    )

    image = np.asarray(image)
    mask = np.asarray(mask) != 0
    if image.ndim != 2 or mask.shape != image.shape:
        raise InputError(f"image and mask must be the same 2-D shape; got {image.shape} and {mask.shape}")
    known = ~mask
    if not np.isfinite(image[known]).all():
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
    x = np.where(known, (image.astype(np.float64) - background) / noise, 0.0).astype(np.float32)

    height, width = image.shape
    cell, halo = min(CELL_PIXELS, -(-max(height, width) // 16) * 16), HALO_PIXELS
    rows, cols = -(-height // cell), -(-width // cell)
    pad = ((halo, rows * cell - height + halo), (halo, cols * cell - width + halo))
    # Mirror padding: the context past a border looks like the data, not like a wall of zeros.
    x_pad = np.pad(x, pad, mode="symmetric")
    hole_pad = np.pad(mask, pad, mode="symmetric")
    ratio_pad = None if log_ratio_image is None else np.pad(log_ratio_image, pad, mode="symmetric")
    side = cell + 2 * halo
    cells = [(r, c) for r in range(rows) for c in range(cols)
             if mask[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].any()]
    signal = None
    if sky_shortcut:
        # Single noise pixels above 3 sigma are in every 33x33 neighbourhood: detect 3x3 means instead.
        known_pad = (~hole_pad).astype(np.float32)
        box_mean = ndimage.uniform_filter(x_pad * known_pad, 3) / np.maximum(ndimage.uniform_filter(known_pad, 3), 1e-3)
        signal = ndimage.maximum_filter(np.abs(box_mean) * known_pad, size=2 * SIGNAL_REACH_PIXELS + 1) \
            > SIGNAL_SIGMA / 3.0
    calibration = card.get("calibration")
    sky_std = float(calibration.get("sky_std_sigma", 1.0)) if calibration else 1.0
    device = model.device
    mean_x = np.zeros((rows * cell, cols * cell), np.float32)
    std_x = np.zeros((rows * cell, cols * cell), np.float32)

    def core(r: int, c: int) -> tuple[slice, slice]:
        return slice(r * cell, (r + 1) * cell), slice(c * cell, (c + 1) * cell)

    network_cells = []
    for r, c in cells:
        rs, cs = core(r, c)
        window_holes = hole_pad[rs.start + halo:rs.stop + halo, cs.start + halo:cs.stop + halo]
        if signal is not None and not signal[rs.start + halo:rs.stop + halo, cs.start + halo:cs.stop + halo][
                window_holes].any():
            continue
        network_cells.append((r, c))
    sky_cells = sorted(set(cells) - set(network_cells))
    if sky_cells:  # the start fill of sky cells, in one batched pass of the pull-push layer
        from lensforge.models.image_inpainter import pull_push_fill

        for first in range(0, len(sky_cells), 256):
            batch = sky_cells[first:first + 256]
            xs = np.stack([x_pad[r * cell:r * cell + side, c * cell:c * cell + side] for r, c in batch])
            hs = np.stack([hole_pad[r * cell:r * cell + side, c * cell:c * cell + side] for r, c in batch])
            with torch.inference_mode():
                tx = torch.as_tensor(xs)[:, None]
                known_t = 1.0 - torch.as_tensor(hs, dtype=torch.float32)[:, None]
                filled = pull_push_fill(tx * known_t, known_t)[:, 0].numpy()
            for k, (r, c) in enumerate(batch):
                rs, cs = core(r, c)
                mean_x[rs, cs] = filled[k, halo:halo + cell, halo:halo + cell]
                std_x[rs, cs] = sky_std

    starts = range(0, len(network_cells), batch_size)
    for first in tqdm(starts, total=len(starts), disable=not progress, desc="in-painting", unit="batch"):
        batch = network_cells[first:first + batch_size]
        windows = [(slice(r * cell, r * cell + side), slice(c * cell, c * cell + side)) for r, c in batch]
        xs = np.stack([x_pad[w] for w in windows])
        hs = np.stack([hole_pad[w] for w in windows])
        ratios = None if ratio_pad is None else np.stack([ratio_pad[w] for w in windows])
        generator = None
        if n_samples > 0:  # draws from (seed, first cell index): independent of batch_size only per batch
            generator = torch.Generator(device=device).manual_seed(int(np.random.default_rng(
                [seed, cells.index(batch[0])]).integers(2**62)))
        mean_w, std_w = predict_windows(model, xs, hs, ratios, n_samples=n_samples, generator=generator)
        std_w = calibrated_std(std_w, mean_w, calibration)
        for k, (r, c) in enumerate(batch):
            rs, cs = core(r, c)
            mean_x[rs, cs] = mean_w[k, halo:halo + cell, halo:halo + cell]
            std_x[rs, cs] = std_w[k, halo:halo + cell, halo:halo + cell]

    mean[mask] = (background + noise * mean_x[:height, :width][mask]).astype(np.float32)
    std[mask] = (noise * std_x[:height, :width][mask]).astype(np.float32)
    if diagnostics is not None:
        from_network = np.zeros((rows * cell, cols * cell), bool)
        for r, c in network_cells:
            from_network[core(r, c)] = True
        diagnostics.update(from_network=from_network[:height, :width] & mask, n_cells=len(cells),
                           n_network_cells=len(network_cells), background=background, noise=noise)
    return mean, std
