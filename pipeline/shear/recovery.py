"""Shear recovery on noiseless rings: is a galaxy lensed by its label's shear measured as that shear?

The check behind "shear labels are exact", for any intrinsic profile GalSim can draw (parametric,
``RealGalaxy``, a generator's ``InterpolatedImage``). Each galaxy is drawn at ``n_rotations``
orientations spread evenly over 180 degrees (a ring: its intrinsic ellipticity cancels), lensed by
(g1, g2) with :func:`~lensforge.pipeline.stamps.lensing.apply_lensing`, convolved with the PSF and pixel
(:func:`~lensforge.pipeline.stamps.simulate.draw_observed`), without noise, and measured by
:func:`~lensforge.pipeline.shear.measure.measure_shear` (KSB by default: a shear estimate with
response ~1).

- **raw**: the mean over galaxies of each ring's mean estimate. KSB's weight-function and PSF
  approximations leave a multiplicative bias of a few percent on small, irregular galaxies, so raw
  recovery tests the estimator as much as the labels.
- **calibrated**: the same, through the 2x2 response measured on counterfactuals of every ring
  stamp at g +- dg on each component (:func:`~lensforge.pipeline.shear.calibration.shear_response`).
  The estimator's own bias cancels; what is left is the labels' (and second order in dg).
"""

from __future__ import annotations

from collections.abc import Sequence

import galsim
import numpy as np

from lensforge.errors import InputError
from lensforge.pipeline.config import SurveyConfig
from lensforge.pipeline.shear.calibration import shear_response
from lensforge.pipeline.shear.measure import measure_shear
from lensforge.pipeline.stamps.lensing import apply_lensing
from lensforge.pipeline.stamps.simulate import draw_observed


def _ring_shears(g1: float, g2: float, delta_g: float) -> list[tuple[float, float]]:
    """The shear of a ring stamp, then its counterfactuals: (+dg, -dg) on component 1, then on 2."""
    return [(g1, g2), (g1 + delta_g, g2), (g1 - delta_g, g2), (g1, g2 + delta_g), (g1, g2 - delta_g)]


def ring_shear_recovery(galaxies: Sequence[galsim.GSObject], g1: float, g2: float, psf: galsim.GSObject,
                        survey: SurveyConfig, n_rotations: int = 8, delta_g: float = 0.01,
                        method: str = "KSB") -> dict:
    """Shear measured on noiseless rings of ``galaxies`` lensed by (``g1``, ``g2``), raw and response-calibrated.

    Args:
        galaxies: intrinsic (unlensed, pre-PSF) profiles [any flux].
        g1, g2: the applied reduced shear.
        psf: the survey PSF (GalSim object); the stamps are ``survey.stamp_size`` pixels of
            ``survey.pixel_scale_arcsec``.
        n_rotations: orientations per ring, evenly spread over 180 degrees (>= 2).
        delta_g: counterfactual step of the response.
        method: a :func:`~lensforge.pipeline.shear.measure.measure_shear` method with a shear-like
            estimate (``KSB`` or ``FOURIER_QUAD``).

    Returns:
        ``raw`` and ``calibrated`` (g1, g2) estimates with their standard errors over galaxies
        (``raw_error``, ``calibrated_error``), ``response`` (2x2), ``n_galaxies`` and ``n_measured``
        (galaxies whose every stamp was measured, with |g| < 1: only those count).
    """
    if n_rotations < 2:
        raise InputError(f"n_rotations must be >= 2 (a ring), got {n_rotations}", n_rotations)
    if method not in ("KSB", "FOURIER_QUAD"):
        raise InputError(f"method must be KSB or FOURIER_QUAD (shear-like estimates), got {method!r}", method)
    if not len(galaxies):
        raise InputError("no galaxies to measure", 0)
    shears = _ring_shears(g1, g2, delta_g)
    stamps = np.stack([draw_observed(apply_lensing(galaxy.rotate(180.0 * k / n_rotations * galsim.degrees),
                                                   shear1, shear2, 1.0), psf, survey)
                       for galaxy in galaxies for k in range(n_rotations) for shear1, shear2 in shears])
    psf_image = psf.drawImage(nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec,
                              method="auto").array  # with the pixel response, as the stamps
    measured = measure_shear(stamps, psf_image, survey.pixel_scale_arcsec, method=method)
    shape = (len(galaxies), n_rotations, len(shears))
    e = np.stack([measured["e1"], measured["e2"]], axis=-1).reshape(*shape, 2)
    # A galaxy counts only if every stamp of its ring was measured with a physical shear (|g| < 1): KSB's
    # PSF correction diverges on some large, faint profiles and returns |g| > 1 without a flag.
    usable = np.all(np.isfinite(e), axis=(1, 2, 3)) & np.all(np.hypot(e[..., 0], e[..., 1]) < 1.0, axis=(1, 2))
    if not usable.any():
        nan = (float("nan"), float("nan"))
        return {"g": (g1, g2), "raw": nan, "raw_error": nan, "calibrated": nan, "calibrated_error": nan,
                "response": np.full((2, 2), np.nan), "n_galaxies": len(galaxies), "n_measured": 0}
    ring = e[usable].mean(axis=1)  # (n, shears, component): each ring's mean
    # e_plus[i, j, n]: component i of ring n sheared by +dg on component j (shear_response's layout).
    e_plus = np.stack([ring[:, 1, :], ring[:, 3, :]], axis=0).transpose(2, 0, 1)
    e_minus = np.stack([ring[:, 2, :], ring[:, 4, :]], axis=0).transpose(2, 0, 1)
    response = shear_response(e_plus, e_minus, delta_g)
    calibrated = np.linalg.solve(response, ring[:, 0, :].T).T  # (n, 2)
    n = int(usable.sum())

    def error(values: np.ndarray) -> tuple[float, float]:
        """Standard error of the mean over galaxies, per component."""
        spread = values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(2, np.nan)
        return float(spread[0]), float(spread[1])

    return {"g": (float(g1), float(g2)), "raw": tuple(float(v) for v in ring[:, 0, :].mean(axis=0)),
            "raw_error": error(ring[:, 0, :]), "calibrated": tuple(float(v) for v in calibrated.mean(axis=0)),
            "calibrated_error": error(calibrated), "response": response, "n_galaxies": len(galaxies),
            "n_measured": n}
