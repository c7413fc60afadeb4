"""PSF-corrected shapes of postage stamps: GalSim HSM (REGAUSS, KSB) and Fourier_Quad, one raw ellipticity per stamp.

A stamp whose measurement fails is NaN with ``flag`` False (as in
``lensforge.pipeline.evaluation.metrics``); only malformed inputs raise ``InputError``. The
ellipticity's convention depends on the method (``ELLIPTICITY_CONVENTIONS``); the response of
:mod:`lensforge.pipeline.shear.calibration` turns it into a shear estimate.
"""

from __future__ import annotations

import math

import galsim
import numpy as np

from lensforge.errors import InputError

# The stack/scalar checks and HSM's first-guess size are shared with the other HSM user,
# so that both accept exactly the same inputs.
from lensforge.pipeline.evaluation.metrics import HSM_GUESS_SIGMA_PIXELS, per_stamp_values, positive_scalar, stamp_stack

# What each HSM method's corrected ellipticity is: REGAUSS returns a distortion
# e = (a^2 - b^2) / (a^2 + b^2), KSB a shear g = (a - b) / (a + b). GalSim reports the
# same in ``ShapeData.meas_type`` ("e" / "g"), which measure_shear checks per stamp.
# FOURIER_QUAD (lensforge.pipeline.shear.fourier_quad) is the independent, non-HSM estimator: G / N,
# shear-like.
ELLIPTICITY_CONVENTIONS = {"REGAUSS": "distortion", "KSB": "shear", "FOURIER_QUAD": "shear"}
_MEAS_TYPES = {"distortion": "e", "shear": "g"}
# An HSM ellipticity at or beyond this size is a failed measurement: a true shape never exceeds 1,
# and the PSF correction of a barely resolved, noisy stamp can diverge (KSB gave |g| ~ 4,000 on real
# COSMOS galaxies). HSC's REGAUSS catalogues cut at the same |e| < 2 (Mandelbaum et al. 2018).
MAX_ABS_ELLIPTICITY = 2.0


# ---------------------------------------------------------------------------------------
# Shape measurement
# ---------------------------------------------------------------------------------------

def measure_shear(images: np.ndarray, psf_images: np.ndarray, pixel_scale_arcsec: float, method: str = "REGAUSS",
                  weights: np.ndarray | None = None,
                  noise_sigma: float | np.ndarray | None = None) -> dict[str, np.ndarray | str]:
    """PSF-corrected ellipticity of each stamp: HSM (``galsim.hsm.EstimateShear``, ``strict=False``) or Fourier_Quad.

    The returned ``e1, e2`` are the method's raw ellipticity, *not* a shear estimate:

    * ``"REGAUSS"`` (re-Gaussianization, Hirata & Seljak 2003): GalSim's ``corrected_e1/e2``,
      a *distortion* ``e = (a^2 - b^2) / (a^2 + b^2)``. Its mean responds to shear as
      ``d<e>/dg ~ 2 (1 - sigma_e^2)`` (sigma_e: per-component distortion dispersion),
      about 1.7 for moderately elliptical galaxies.
    * ``"KSB"`` (Kaiser, Squires & Broadhurst 1995): GalSim's ``corrected_g1/g2``, already a
      *shear* estimate with response ~1 (not exactly: KSB's weight-function and PSF
      approximations leave a percent-level multiplicative bias).
    * ``"FOURIER_QUAD"`` (Zhang, Luo & Foucaud 2015; :mod:`lensforge.pipeline.shear.fourier_quad`):
      ``G / N`` from the power spectrum, a shear-like ellipticity with response ~1 that shares
      nothing with HSM. ``e_err`` and ``resolution`` are NaN; masked pixels (weight 0) are set to 0.

    In both cases the response measured by ``shear_response`` calibrates ``e`` into shear;
    ``convention`` says which one ``e`` is, and each stamp's GalSim ``meas_type`` is checked
    against it (a mismatch is a failure) rather than assumed.

    Args:
        images: ``(N, H, W)`` galaxy stamps in ADU, background-subtracted, galaxy near the
            centre (HSM starts its centroid search at the stamp centre).
        psf_images: The PSF (incl. pixel response) sampled on the same pixel grid, ``(h, w)``
            for all stamps or ``(N, h, w)`` per stamp; any normalisation.
        pixel_scale_arcsec: Pixel scale of both in arcsec/pixel.
        method: ``"REGAUSS"``, ``"KSB"`` or ``"FOURIER_QUAD"``.
        weights: Optional ``(N, H, W)`` weight maps (>= 0). HSM uses them as a mask only:
            zero-weight pixels are excluded, all non-zero weights count equally.
        noise_sigma: Optional per-stamp Gaussian noise sigma in ADU (scalar or ``(N,)``),
            passed to HSM as ``sky_var = sigma^2``; it only sets ``e_err``.

    Returns:
        Per-stamp ``(N,)`` arrays ``e1``, ``e2`` (raw ellipticity, dimensionless), ``e_err``
        (HSM's per-component ellipticity error; 0 when ``noise_sigma`` is not given),
        ``resolution`` (HSM resolution factor, 0 = unresolved, 1 = PSF negligible) and
        ``flag`` (bool, True = measured), plus ``convention`` (``"distortion"`` or
        ``"shear"``). Failed or non-finite stamps, and HSM ellipticities with
        ``|e| >= MAX_ABS_ELLIPTICITY``, are NaN with flag False.
    """
    if method not in ELLIPTICITY_CONVENTIONS:
        raise InputError(f"method must be one of {sorted(ELLIPTICITY_CONVENTIONS)}, got {method!r}", method)
    stack = stamp_stack(images, "images")
    scale = positive_scalar(pixel_scale_arcsec, "pixel_scale_arcsec")
    n = len(stack)
    psf = np.asarray(psf_images, dtype=np.float64)
    psf_stack = stamp_stack(psf[None] if psf.ndim == 2 else psf, "psf_images")
    if len(psf_stack) not in (1, n):
        raise InputError(f"psf_images must be (h, w) or ({n}, h, w), got shape {psf.shape}", psf.shape)
    if not np.all(np.isfinite(psf_stack)):
        raise InputError("psf_images must be finite", psf.shape)
    weight_stack = None
    if weights is not None:
        weight_stack = stamp_stack(weights, "weights")
        if weight_stack.shape != stack.shape:
            raise InputError(f"weights has shape {weight_stack.shape}, expected {stack.shape}", weight_stack.shape)
        if not np.all(np.isfinite(weight_stack) & (weight_stack >= 0)):
            raise InputError("weights must be finite and non-negative", weights)
    sky_var = np.zeros(n) if noise_sigma is None else per_stamp_values(noise_sigma, n, "noise_sigma") ** 2
    convention = ELLIPTICITY_CONVENTIONS[method]
    if method == "FOURIER_QUAD":
        return _fourier_quad(stack, psf_stack, weight_stack, np.sqrt(sky_var), convention)
    meas_type = _MEAS_TYPES[convention]

    out: dict[str, np.ndarray | str] = {key: np.full(n, np.nan) for key in ("e1", "e2", "e_err", "resolution")}
    flag = np.zeros(n, dtype=bool)
    psf_image = galsim.Image(np.ascontiguousarray(psf_stack[0]), scale=scale)
    for i, stamp in enumerate(stack):
        if not np.all(np.isfinite(stamp)):
            continue  # HSM would propagate NaN silently
        if len(psf_stack) > 1:
            psf_image = galsim.Image(np.ascontiguousarray(psf_stack[i]), scale=scale)
        weight = None if weight_stack is None else galsim.Image(np.ascontiguousarray(weight_stack[i]), scale=scale)
        try:
            result = galsim.hsm.EstimateShear(
                galsim.Image(np.ascontiguousarray(stamp), scale=scale), psf_image, weight=weight,
                sky_var=float(sky_var[i]), shear_est=method, guess_sig_gal=HSM_GUESS_SIGMA_PIXELS, strict=False)
        except (galsim.GalSimError, ValueError, RuntimeError):
            continue
        if result.error_message or result.correction_status != 0 or result.meas_type != meas_type:
            continue
        if meas_type == "e":
            e1, e2 = result.corrected_e1, result.corrected_e2
        else:
            e1, e2 = result.corrected_g1, result.corrected_g2
        if not (math.isfinite(e1) and math.isfinite(e2)) or math.hypot(e1, e2) >= MAX_ABS_ELLIPTICITY:
            continue
        out["e1"][i], out["e2"][i] = e1, e2
        out["e_err"][i] = result.corrected_shape_err
        out["resolution"][i] = result.resolution_factor
        flag[i] = True
    out["flag"] = flag
    out["convention"] = convention
    return out


def _fourier_quad(stack: np.ndarray, psf_stack: np.ndarray, weight_stack: np.ndarray | None, noise_sigma: np.ndarray,
                  convention: str) -> dict[str, np.ndarray | str]:
    """``measure_shear``'s output for FOURIER_QUAD: ``G / N`` per stamp, stamps grouped by PSF image."""
    from lensforge.pipeline.shear.fourier_quad import fourier_quad_shear

    n = len(stack)
    out: dict[str, np.ndarray | str] = {key: np.full(n, np.nan) for key in ("e1", "e2", "e_err", "resolution")}
    flag = np.zeros(n, dtype=bool)
    finite = np.all(np.isfinite(stack), axis=(1, 2))
    groups = [np.arange(n)] if len(psf_stack) == 1 else [np.array([i]) for i in range(n)]
    for rows in groups:
        rows = rows[finite[rows]]
        if rows.size == 0:
            continue
        psf = psf_stack[0] if len(psf_stack) == 1 else psf_stack[rows[0]]
        e1, e2, ok = fourier_quad_shear(stack[rows], psf, noise_sigma[rows],
                                        None if weight_stack is None else weight_stack[rows])
        out["e1"][rows], out["e2"][rows], flag[rows] = e1, e2, ok
    out["flag"] = flag
    out["convention"] = convention
    return out
