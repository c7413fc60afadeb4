"""Calibration of the stamp in-painting's per-pixel uncertainty, by brightness.

The posterior spread of the VAE-GAN plus the pixel noise is close to calibrated on sky pixels but
far too small on the galaxy: on the demo's validation stamps 1-sigma coverage is 0.67 over all
masked pixels and 0.23 on galaxy pixels, while 2-sigma coverage there is 0.87, the signature of a
mean that is off by about the noise where the galaxy is bright (the network's light is too faint
there) rather than of a spread that is too narrow everywhere. Split conformal calibration fixes
the reported uncertainty without touching the mean: on stamps the model never saw, the masked
pixels are binned by the predicted mean [noise sigma], and in each bin the std is scaled by the
factor that makes 68.27% of the observed pixels fall within it (Vovk et al. 2005; Angelopoulos &
Bates 2021). The factors travel in the checkpoint's ``meta.json`` and
:func:`lensforge.models.inpaint.inpaint_with_model` applies them; known pixels keep std 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lensforge.errors import ModelError

TARGET_COVERAGE = 0.6827  # a Gaussian's 1-sigma
# Bin edges of the predicted mean [noise sigma]: sky, faint wings, the galaxy's body, its core.
BRIGHTNESS_EDGES_NOISE_SIGMA = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
MIN_PIXELS_PER_BIN = 200  # fewer: the bin is pooled with the next fainter one (bright masked pixels are rare)


def fit_calibration(mean: np.ndarray, std: np.ndarray, observed: np.ndarray, masks: np.ndarray,
                    noise_sigma: np.ndarray, edges: Sequence[float] = BRIGHTNESS_EDGES_NOISE_SIGMA) -> dict[str, Any]:
    """Per brightness bin, the factor on ``std`` that gives masked pixels 68.27% coverage of ``observed``.

    Args:
        mean, std: (N, H, W) in-painting mean and predictive std [ADU] (uncalibrated).
        observed: (N, H, W) the pixels that were hidden, as observed (noise included) [ADU].
        masks: (N, H, W), nonzero = in-painted pixel.
        noise_sigma: (N,) per-stamp noise sigma [ADU].
        edges: bin edges of ``mean / noise_sigma``.

    Returns:
        A JSON-ready dict: ``edges_noise_sigma``, ``scales`` and ``n_pixels`` (one per bin, len(edges) + 1),
        ``target_coverage``. A bin with fewer than ``MIN_PIXELS_PER_BIN`` pixels shares the factor of the
        next fainter bin(s), pooled until they hold enough; bins that never do keep factor 1.
    """
    masked = np.asarray(masks) != 0
    sigma = np.asarray(noise_sigma, dtype=np.float64)[:, None, None]
    level = (np.asarray(mean, dtype=np.float64) / sigma)[masked]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (np.abs(np.asarray(observed, dtype=np.float64) - mean) / np.asarray(std, dtype=np.float64))[masked]
    which = np.digitize(level, edges)
    n_bins = len(edges) + 1
    per_bin = [ratio[(which == index) & np.isfinite(ratio)] for index in range(n_bins)]
    scales = [1.0] * n_bins
    pending: list[int] = []  # brighter bins still short of pixels, pooled downwards
    for index in reversed(range(n_bins)):
        pending.append(index)
        pooled = np.concatenate([per_bin[i] for i in pending])
        if pooled.size >= MIN_PIXELS_PER_BIN:
            for i in pending:
                scales[i] = float(np.quantile(pooled, TARGET_COVERAGE))
            pending = []
    return {"edges_noise_sigma": [float(e) for e in edges], "scales": scales,
            "n_pixels": [int(values.size) for values in per_bin], "target_coverage": TARGET_COVERAGE}


def apply_calibration(std: np.ndarray, mean: np.ndarray, masks: np.ndarray, noise_sigma: np.ndarray,
                      calibration: Mapping[str, Any]) -> np.ndarray:
    """``std`` (N, H, W) [ADU] scaled on masked pixels by its brightness bin's factor (known pixels unchanged)."""
    try:
        edges = np.asarray(calibration["edges_noise_sigma"], dtype=np.float64)
        scales = np.asarray(calibration["scales"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"uncertainty_calibration in the model's meta.json is malformed: {err}", None) from None
    if scales.shape != (edges.size + 1,) or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ModelError("uncertainty_calibration in the model's meta.json is malformed: needs len(edges) + 1 "
                         "positive scales", None)
    sigma = np.asarray(noise_sigma, dtype=np.float64)[:, None, None]
    factor = scales[np.digitize(np.asarray(mean, dtype=np.float64) / sigma, edges)]
    return np.where(np.asarray(masks) != 0, std * factor, std).astype(np.float32)
