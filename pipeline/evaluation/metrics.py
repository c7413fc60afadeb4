"""Evaluation statistics for in-painting and galaxy generation: numpy stacks in, dicts out.

Every function takes stacks of postage stamps ``(N, H, W)`` in ADU, with per-stamp
Gaussian noise sigma ``(N,)`` in ADU and masks ``(N, H, W)`` (nonzero = masked pixel),
and returns plain dicts of numpy arrays (per stamp) and floats (summaries), so the
evaluation report can serialise them directly. The physics and photometry are done by
the libraries that own them: GalSim HSM for shapes, photutils for apertures and
segmentation, statmorph for non-parametric morphology, scipy for distances and trees.

A stamp whose measurement fails gives NaN for that stamp; only malformed inputs raise
(``InputError``), so one odd galaxy cannot abort a whole report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import galsim
import numpy as np
import scipy.ndimage
import scipy.stats
import statmorph
from astropy.convolution import convolve
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.segmentation import detect_sources, make_2dgaussian_kernel
from scipy.spatial import cKDTree

from lensforge.errors import InputError

# HSM's first-guess Gaussian width in pixels: the simulated galaxies are a few pixels
# across, and the default (5 px) starts too wide for the smallest of them.
HSM_GUESS_SIGMA_PIXELS = 3.0

# Segmentation for statmorph, as in the statmorph and photutils examples: smooth with a
# small Gaussian (about the PSF) to suppress noise peaks, then keep connected pixels above
# 1.5 noise sigma.
SEGMENT_THRESHOLD_SIGMA = 1.5
SEGMENT_MIN_PIXELS = 5
SEGMENT_SMOOTH_FWHM_PIXELS = 2.0
SEGMENT_SMOOTH_SIZE_PIXELS = 5

# statmorph flags: 0 good, 1 suspect (Gini and MID segmaps differ), 2 bad, 4 catastrophic.
STATMORPH_MAX_GOOD_FLAG = 1
MORPHOLOGY_KEYS = ("gini", "m20", "concentration", "asymmetry")


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------

def stamp_stack(images: np.ndarray, name: str) -> np.ndarray:
    """Return ``images`` as a float64 ``(N, H, W)`` array, or raise InputError."""
    array = np.asarray(images, dtype=np.float64)
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(f"{name} must be a non-empty (N, H, W) stack, got shape {array.shape}", array.shape)
    return array


def _same_shape(array: np.ndarray, reference: np.ndarray, name: str) -> None:
    if array.shape != reference.shape:
        raise InputError(f"{name} has shape {array.shape}, expected {reference.shape}", array.shape)


def _masks(masks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Boolean ``(N, H, W)`` masks matching ``reference``, or raise InputError."""
    masked = np.asarray(masks) != 0
    _same_shape(masked, reference, "masks")
    return masked


def per_stamp_values(values: float | np.ndarray, n: int, name: str, positive: bool = True) -> np.ndarray:
    """Broadcast a scalar or ``(N,)`` array to float64 ``(N,)``, or raise InputError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise InputError(f"{name} must be a scalar or have shape ({n},), got {array.shape}", array.shape)
    if positive and not np.all(np.isfinite(array) & (array > 0)):
        raise InputError(f"{name} must be finite and positive", array)
    return array


def positive_scalar(value: float, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0, or raise InputError naming ``name``."""
    if not (np.ndim(value) == 0 and np.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite positive scalar, got {value!r}", value)
    return float(value)


# ---------------------------------------------------------------------------------------
# Shapes and morphology
# ---------------------------------------------------------------------------------------

def hsm_shapes(images: np.ndarray, pixel_scale_arcsec: float,
               noise_sigma: float | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """HSM adaptive moments of each (observed, PSF-convolved) stamp.

    The shape is GalSim's ``observed_shape`` read as reduced shear ``g1, g2``
    (``|g| = (a - b) / (a + b)`` for axis ratio b/a), not the distortion
    ``e = (a^2 - b^2) / (a^2 + b^2)``; the keys are called ``e1``/``e2`` because the
    report calls any ellipticity "e". No PSF correction is applied.

    Args:
        images: ``(N, H, W)`` stamps in ADU, background-subtracted.
        pixel_scale_arcsec: Pixel scale in arcsec/pixel.
        noise_sigma: Optional per-stamp Gaussian noise sigma in ADU (scalar or ``(N,)``);
            when given, the matched-filter S/N is returned as ``snr``.

    Returns:
        Per-stamp ``(N,)`` arrays: ``sigma_arcsec`` (``moments_sigma = |det M|^(1/4)``
        times the pixel scale), ``e1``, ``e2`` (reduced-shear ellipticity), ``flux_adu``
        (``moments_amp``, total flux of the best-fit elliptical Gaussian), ``x_centroid``
        and ``y_centroid`` (pixels, 0-based numpy column/row indices), ``flag`` (bool,
        True = measured), and ``snr`` if ``noise_sigma`` was given. Failed stamps are NaN.
    """
    stack = stamp_stack(images, "images")
    scale = positive_scalar(pixel_scale_arcsec, "pixel_scale_arcsec")
    n = len(stack)
    sigma_noise = None if noise_sigma is None else per_stamp_values(noise_sigma, n, "noise_sigma")
    out = {key: np.full(n, np.nan) for key in ("sigma_arcsec", "e1", "e2", "flux_adu", "x_centroid", "y_centroid")}
    out["flag"] = np.zeros(n, dtype=bool)
    sigma_pixels = np.full(n, np.nan)
    for i, stamp in enumerate(stack):
        if not np.all(np.isfinite(stamp)):
            continue  # HSM would propagate NaN silently; a masked stamp has no defined moments
        # xmin = ymin = 0 so that GalSim's centroid is directly a numpy (column, row) index.
        image = galsim.Image(np.ascontiguousarray(stamp), scale=scale, xmin=0, ymin=0)
        try:
            moments = galsim.hsm.FindAdaptiveMom(image, guess_sig=HSM_GUESS_SIGMA_PIXELS, strict=False)
        except (galsim.GalSimError, ValueError, RuntimeError):
            continue
        if moments.moments_status != 0 or not moments.moments_sigma > 0:
            continue
        sigma_pixels[i] = moments.moments_sigma
        out["sigma_arcsec"][i] = moments.moments_sigma * scale
        out["e1"][i] = moments.observed_shape.g1
        out["e2"][i] = moments.observed_shape.g2
        out["flux_adu"][i] = moments.moments_amp
        out["x_centroid"][i] = moments.moments_centroid.x
        out["y_centroid"][i] = moments.moments_centroid.y
        out["flag"][i] = True
    if sigma_noise is not None:
        # A Gaussian of flux A and size s (pixels) seen through its own matched filter in
        # white noise sigma has S/N = A / (sigma * sqrt(4 pi) * s): the optimal S/N.
        out["snr"] = out["flux_adu"] / (sigma_noise * math.sqrt(4.0 * math.pi) * sigma_pixels)
    return out


def _central_segment(stamp: np.ndarray, noise: float):
    """photutils segmentation of one stamp and the label of the segment at/nearest its centre."""
    kernel = make_2dgaussian_kernel(SEGMENT_SMOOTH_FWHM_PIXELS, size=SEGMENT_SMOOTH_SIZE_PIXELS)
    smoothed = convolve(stamp, kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoDetectionsWarning: an empty stamp is reported as NaN
        segmap = detect_sources(smoothed, SEGMENT_THRESHOLD_SIGMA * noise, n_pixels=SEGMENT_MIN_PIXELS)
    if segmap is None:
        return None, 0
    height, width = stamp.shape
    rows, cols = np.indices(stamp.shape)
    distance = np.hypot(rows - (height - 1) / 2, cols - (width - 1) / 2)
    # Distance from the centre to each segment's nearest pixel: 0 when it covers the centre.
    nearest = scipy.ndimage.minimum(distance, labels=segmap.data, index=segmap.labels)
    return segmap, int(segmap.labels[int(np.argmin(nearest))])


def morphology(images: np.ndarray, noise_sigma: float | np.ndarray, pixel_scale_arcsec: float | None = None,
               max_stamps: int | None = None) -> dict[str, np.ndarray]:
    """statmorph Gini, M20, concentration and asymmetry of each stamp's central source.

    The segmentation is photutils ``detect_sources`` on the image smoothed by a 2-pixel
    FWHM Gaussian, at 1.5 noise sigma and at least 5 connected pixels; the segment
    covering (or nearest to) the stamp centre is measured, other segments are masked by
    statmorph. The weight map is the constant noise sigma. statmorph runs its full set
    of measurements (Sersic fit and MID included; mostly the asymmetry-centre search),
    about 0.2-0.3 s per 64x64 stamp on one core; use ``max_stamps`` to bound the time on
    large sets.

    Args:
        images: ``(N, H, W)`` stamps in ADU, background-subtracted.
        noise_sigma: Per-stamp Gaussian noise sigma in ADU (scalar or ``(N,)``). For
            noiseless images pass a small floor (e.g. the survey noise), since both the
            segmentation threshold and statmorph's weight map need it.
        pixel_scale_arcsec: Optional pixel scale in arcsec/pixel; when given, the
            Petrosian radius is also returned in arcsec as ``rpetro_circ_arcsec``.
        max_stamps: Measure only the first ``max_stamps`` stamps; the rest are NaN.

    Returns:
        Per-stamp ``(N,)`` arrays ``gini``, ``m20``, ``concentration``, ``asymmetry``
        (dimensionless), ``flag`` (statmorph flag; -1 = not measured) and ``ok`` (bool,
        True = flag <= 1 and all four finite), plus ``rpetro_circ_arcsec`` if a pixel
        scale was given. Stamps with no segment, flag > 1 or a statmorph exception are NaN.
    """
    stack = stamp_stack(images, "images")
    n = len(stack)
    noise = per_stamp_values(noise_sigma, n, "noise_sigma")
    scale = None if pixel_scale_arcsec is None else positive_scalar(pixel_scale_arcsec, "pixel_scale_arcsec")
    if max_stamps is not None and (int(max_stamps) != max_stamps or max_stamps < 0):
        raise InputError(f"max_stamps must be a non-negative integer, got {max_stamps!r}", max_stamps)
    keys = MORPHOLOGY_KEYS + (("rpetro_circ",) if scale is not None else ())
    values = {key: np.full(n, np.nan) for key in keys}
    flag = np.full(n, -1, dtype=int)
    for i in range(n if max_stamps is None else min(n, int(max_stamps))):
        stamp = stack[i]
        if not np.all(np.isfinite(stamp)):
            continue
        segmap, label = _central_segment(stamp, noise[i])
        if segmap is None:
            continue
        try:
            with warnings.catch_warnings():
                # statmorph warns for every suspect measurement; its flag carries the same news.
                warnings.simplefilter("ignore")
                source = statmorph.SourceMorphology(stamp, segmap, label,
                                                    weightmap=np.full(stamp.shape, noise[i]))
        except Exception:  # statmorph raises assorted AssertionError/ValueError/... on odd stamps
            continue
        flag[i] = int(source.flag)
        if source.flag > STATMORPH_MAX_GOOD_FLAG:
            continue
        for key in keys:
            value = float(source[key])
            # statmorph writes -99 for quantities it could not compute.
            values[key][i] = value if np.isfinite(value) and value != -99.0 else np.nan
    out: dict[str, np.ndarray] = {key: values[key] for key in MORPHOLOGY_KEYS}
    out["flag"] = flag
    out["ok"] = (flag >= 0) & (flag <= STATMORPH_MAX_GOOD_FLAG) & np.all(
        [np.isfinite(values[key]) for key in MORPHOLOGY_KEYS], axis=0)
    if scale is not None:
        out["rpetro_circ_arcsec"] = values["rpetro_circ"] * scale
    return out


# ---------------------------------------------------------------------------------------
# Distribution comparisons
# ---------------------------------------------------------------------------------------

def wasserstein_table(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray],
                      keys: Iterable[str] | None = None) -> dict[str, float]:
    """1-D Wasserstein (earth mover's) distance between two samples of each statistic.

    Args:
        reference: Statistic name -> per-stamp values (e.g. the output of ``hsm_shapes``
            on real galaxies).
        other: The same for the compared set (e.g. generated galaxies).
        keys: Statistics to compare; default: the keys common to both with float values.

    Returns:
        ``{key: distance}`` in the statistic's own units, from
        ``scipy.stats.wasserstein_distance`` after dropping NaN/inf; NaN where either side
        has fewer than 2 finite values.
    """
    if keys is None:
        keys = [key for key in reference if key in other
                and np.issubdtype(np.asarray(reference[key]).dtype, np.floating)]
    table: dict[str, float] = {}
    for key in keys:
        if key not in reference or key not in other:
            raise InputError(f"statistic {key!r} is missing from one of the two samples", key)
        a = np.asarray(reference[key], dtype=np.float64).ravel()
        b = np.asarray(other[key], dtype=np.float64).ravel()
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        table[key] = float(scipy.stats.wasserstein_distance(a, b)) if min(a.size, b.size) >= 2 else float("nan")
    return table


def _knn_inputs(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Standardised finite rows of both sets and each real sample's k-NN radius (None if too few)."""
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", k)
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InputError(f"real and fake must be (N, D) and (M, D), got {real.shape} and {fake.shape}",
                         (real.shape, fake.shape))
    real = real[np.all(np.isfinite(real), axis=1)]
    fake = fake[np.all(np.isfinite(fake), axis=1)]
    if len(real) <= k or len(fake) == 0:
        return None
    mean, std = real.mean(axis=0), real.std(axis=0)
    # A constant feature carries no distance information; leave it unscaled, not inf.
    std = np.where(std > 0, std, 1.0)
    real, fake = (real - mean) / std, (fake - mean) / std
    # k + 1 neighbours because each real sample is its own nearest neighbour (distance 0).
    radius = cKDTree(real).query(real, k=int(k) + 1)[0][:, -1]
    return real, fake, radius


def coverage_knn(real: np.ndarray, fake: np.ndarray, k: int = 5) -> float:
    """Coverage of Naeem et al. 2020 (arXiv:2002.09797): how much of the real manifold is reproduced.

    The fraction of real samples whose k-NN ball (centred on the sample, radius = distance
    to its k-th nearest real neighbour) contains at least one fake sample. Features are
    standardised by the real set's mean and std; rows with any NaN are dropped. As in the
    authors' reference code, a fake on the ball's boundary is outside (strict ``<``).
    For fake and real drawn from one distribution with equal, large sizes the expected
    coverage is ``1 - 2^-k`` (0.97 for k=5); for disjoint distributions it is 0.

    Args:
        real: ``(N, D)`` features of real samples.
        fake: ``(M, D)`` features of generated samples.
        k: Number of nearest neighbours defining each real sample's ball.

    Returns:
        Coverage in [0, 1]; NaN if at most ``k`` real or no fake rows remain.
    """
    prepared = _knn_inputs(real, fake, k)
    if prepared is None:
        return float("nan")
    real, fake, radius = prepared
    nearest_fake = cKDTree(fake).query(real, k=1)[0]
    return float(np.mean(nearest_fake < radius))


def density_knn(real: np.ndarray, fake: np.ndarray, k: int = 5) -> float:
    """Density of Naeem et al. 2020: how many real k-NN balls each fake sample falls in, over k.

    ``density = (1 / (k M)) * sum_j #{i : |fake_j - real_i| < r_i}``, with ``r_i`` the
    distance from ``real_i`` to its k-th nearest real neighbour. About 1 when fake and real
    share a distribution, above 1 when fakes crowd in dense real regions, 0 when disjoint.
    Standardisation and NaN handling as in ``coverage_knn``.

    Args:
        real: ``(N, D)`` features of real samples.
        fake: ``(M, D)`` features of generated samples.
        k: Number of nearest neighbours defining each real sample's ball.

    Returns:
        Density (>= 0, unbounded); NaN if at most ``k`` real or no fake rows remain.
    """
    prepared = _knn_inputs(real, fake, k)
    if prepared is None:
        return float("nan")
    real, fake, radius = prepared
    # All (fake, real) pairs closer than the largest radius, then the per-real radius test.
    pairs = cKDTree(fake).sparse_distance_matrix(cKDTree(real), max_distance=float(radius.max()),
                                                 output_type="ndarray")
    inside = pairs["v"] < radius[pairs["j"]]
    return float(np.count_nonzero(inside) / (k * len(fake)))


# ---------------------------------------------------------------------------------------
# Image-level statistics
# ---------------------------------------------------------------------------------------

def high_frequency_power_fraction(images: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """Fraction of each stamp's Fourier power above ``cutoff`` times the Nyquist frequency.

    Power is ``|FFT2(image)|^2`` of the raw stamp (no mean subtraction, no window), so the
    zero-frequency term, the squared total flux, is in the denominator: for a galaxy the
    fraction is high-frequency power relative to total flux^2, a sharpness measure meant for
    comparing generators on noiseless images. The radial frequency is
    ``hypot(fx, fy)`` in cycles/pixel, Nyquist = 0.5 cycles/pixel; the corners of the
    Fourier square (beyond Nyquist radially) count as high. White noise gives about
    ``1 - pi * (cutoff / 2)^2`` (0.80 for cutoff 0.5), a well-sampled smooth profile ~0.

    Args:
        images: ``(N, H, W)`` stamps (any units; the fraction is dimensionless).
        cutoff: Radial frequency threshold as a fraction of Nyquist, in (0, sqrt(2)).

    Returns:
        ``(N,)`` fractions in [0, 1]; NaN for an all-zero stamp or one with NaN pixels.
    """
    stack = stamp_stack(images, "images")
    if not (np.ndim(cutoff) == 0 and 0 < cutoff < math.sqrt(2)):
        raise InputError(f"cutoff must be in (0, sqrt(2)) times Nyquist, got {cutoff!r}", cutoff)
    height, width = stack.shape[1:]
    radial = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    high = radial > cutoff * 0.5
    power = np.abs(np.fft.fft2(stack)) ** 2
    total = power.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = power[:, high].sum(axis=1) / total
    return np.where(total > 0, fraction, np.nan)


def power_spectrum_slope(images: np.ndarray, k_min: float = 1 / 16, k_max: float = 1 / 4) -> np.ndarray:
    """Log-log slope of each stamp's azimuthally averaged power spectrum between ``k_min`` and ``k_max``.

    The power is ``|FFT2(image - mean)|^2``, averaged in annuli of width 1/H cycles/pixel and fitted
    by least squares as ``log P = a + slope * log k`` over the annuli with ``k_min <= k <= k_max``
    [cycles/pixel]. The defaults span structure 4-16 pixels across: steeper (more negative) is
    smoother. White noise gives ~0; a Gaussian profile falls steeply.

    Args:
        images: ``(N, H, W)`` stamps (any units).
        k_min, k_max: fitted band [cycles/pixel], 0 < k_min < k_max <= 0.5.

    Returns:
        ``(N,)`` slopes; NaN for a constant stamp or one with NaN pixels.
    """
    stack = stamp_stack(images, "images")
    if not 0 < k_min < k_max <= 0.5:
        raise InputError(f"need 0 < k_min < k_max <= 0.5 cycles/pixel, got {k_min}, {k_max}", (k_min, k_max))
    height, width = stack.shape[1:]
    radial = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    ring = np.rint(radial * height).astype(int)  # annulus index: k = ring / H
    k = np.arange(ring.max() + 1) / height
    band = (k >= k_min) & (k <= k_max)
    counts = np.bincount(ring.ravel())
    power = np.abs(np.fft.fft2(stack - stack.mean(axis=(1, 2), keepdims=True))) ** 2
    slopes = np.full(len(stack), np.nan)
    log_k = np.log(k[band])
    for i, p in enumerate(power):
        mean_power = np.bincount(ring.ravel(), weights=p.ravel()) / np.maximum(counts, 1)
        if np.isfinite(mean_power[band]).all() and (mean_power[band] > 0).all():
            slopes[i] = np.polyfit(log_k, np.log(mean_power[band]), 1)[0]
    return slopes


def _centre_aperture(shape: tuple[int, int], radius: float) -> CircularAperture:
    height, width = shape
    return CircularAperture(((width - 1) / 2, (height - 1) / 2), r=radius)


def aperture_flux_errors(predicted: np.ndarray, truth: np.ndarray, masks: np.ndarray,
                         radius_pixels: float | np.ndarray) -> dict[str, np.ndarray | float | int]:
    """Flux error in a central circular aperture, for stamps whose aperture meets the masks.

    photutils ``aperture_photometry`` (exact pixel overlap) in a circle of ``radius_pixels``
    centred on ((W-1)/2, (H-1)/2). A stamp is "touched" when the aperture overlaps at least
    one masked pixel (overlap area > 0); only touched stamps enter the summaries, since
    elsewhere the in-painting cannot change the flux.

    Args:
        predicted: ``(N, H, W)`` in-painted stamps in ADU.
        truth: ``(N, H, W)`` reference stamps in ADU (normally the noiseless truth).
        masks: ``(N, H, W)``, nonzero = masked pixel.
        radius_pixels: Aperture radius in pixels, scalar or ``(N,)``.

    Returns:
        Per-stamp ``(N,)`` arrays ``touched`` (bool), ``masked_area_pixels`` (masked area
        inside the aperture, pixels), ``flux_truth`` and ``flux_predicted`` (ADU),
        ``relative_error`` ((predicted - truth) / truth; NaN where not touched or truth
        flux is 0); summaries over touched stamps with finite error:
        ``median_abs_relative_error``, ``rms_relative_error`` (NaN if none) and ``n_stamps``.
    """
    pred = stamp_stack(predicted, "predicted")
    true = stamp_stack(truth, "truth")
    _same_shape(true, pred, "truth")
    masked = _masks(masks, pred).astype(np.float64)
    n = len(pred)
    radius = per_stamp_values(radius_pixels, n, "radius_pixels")
    flux_pred, flux_true, area = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        aperture = _centre_aperture(pred.shape[1:], radius[i])
        flux_pred[i] = aperture_photometry(pred[i], aperture, method="exact")["aperture_sum"][0]
        flux_true[i] = aperture_photometry(true[i], aperture, method="exact")["aperture_sum"][0]
        # Photometry of the 0/1 mask image is the masked area the aperture covers.
        area[i] = aperture_photometry(masked[i], aperture, method="exact")["aperture_sum"][0]
    touched = area > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(touched & (flux_true != 0), (flux_pred - flux_true) / flux_true, np.nan)
    used = relative[np.isfinite(relative)]
    return {
        "touched": touched,
        "masked_area_pixels": area,
        "flux_truth": flux_true,
        "flux_predicted": flux_pred,
        "relative_error": relative,
        "median_abs_relative_error": float(np.median(np.abs(used))) if used.size else float("nan"),
        "rms_relative_error": float(np.sqrt(np.mean(used**2))) if used.size else float("nan"),
        "n_stamps": int(used.size),
    }


def ellipticity_errors(predicted: np.ndarray, reference: np.ndarray, masks: np.ndarray,
                       pixel_scale_arcsec: float, footprint: np.ndarray | None = None
                       ) -> dict[str, np.ndarray | float | int]:
    """HSM ellipticity change caused by in-painting, on stamps where masks fall on the galaxy.

    Both stacks are measured with ``hsm_shapes``; ``|delta e| = hypot(e1p - e1r, e2p - e2r)``
    in reduced-shear ellipticity. A stamp is "touched" when a masked pixel lies within
    ``2 * sigma`` (the reference's HSM size) of the reference's HSM centroid, or, if
    ``footprint`` is given, when a masked pixel lies inside that footprint.

    Args:
        predicted: ``(N, H, W)`` in-painted stamps in ADU.
        reference: ``(N, H, W)`` reference stamps in ADU (noiseless truth, or the unmasked
            observation).
        masks: ``(N, H, W)``, nonzero = masked pixel.
        pixel_scale_arcsec: Pixel scale in arcsec/pixel.
        footprint: Optional boolean ``(N, H, W)`` galaxy footprint replacing the 2-sigma disc.

    Returns:
        Per-stamp ``(N,)`` arrays ``abs_delta_e`` (NaN where untouched or either HSM fit
        failed) and ``touched`` (bool; False where the reference fit failed and no
        footprint was given); summaries over finite touched values ``mean_abs_delta_e``,
        ``median_abs_delta_e`` (NaN if none), ``n_stamps``, and ``n_hsm_failed`` (touched
        stamps dropped because a fit failed).
    """
    pred = stamp_stack(predicted, "predicted")
    ref = stamp_stack(reference, "reference")
    _same_shape(ref, pred, "reference")
    masked = _masks(masks, pred)
    if footprint is not None:
        region = np.asarray(footprint, dtype=bool)
        _same_shape(region, pred, "footprint")
    shapes_pred = hsm_shapes(pred, pixel_scale_arcsec)
    shapes_ref = hsm_shapes(ref, pixel_scale_arcsec)
    if footprint is None:
        rows, cols = np.indices(pred.shape[1:])
        sigma_pixels = shapes_ref["sigma_arcsec"] / pixel_scale_arcsec
        distance = np.hypot(rows[None] - shapes_ref["y_centroid"][:, None, None],
                            cols[None] - shapes_ref["x_centroid"][:, None, None])
        # NaN distance (failed reference fit) compares False: such stamps are not touched.
        region = distance <= 2.0 * sigma_pixels[:, None, None]
    touched = np.any(masked & region, axis=(1, 2))
    delta = np.hypot(shapes_pred["e1"] - shapes_ref["e1"], shapes_pred["e2"] - shapes_ref["e2"])
    delta = np.where(touched, delta, np.nan)
    used = delta[np.isfinite(delta)]
    return {
        "abs_delta_e": delta,
        "touched": touched,
        "mean_abs_delta_e": float(np.mean(used)) if used.size else float("nan"),
        "median_abs_delta_e": float(np.median(used)) if used.size else float("nan"),
        "n_stamps": int(used.size),
        "n_hsm_failed": int(np.count_nonzero(touched) - used.size),
    }


def uncertainty_coverage(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, masks: np.ndarray,
                         extra_sigma: float | np.ndarray | None = None,
                         noise_sigma: float | np.ndarray | None = None,
                         galaxy: np.ndarray | None = None) -> dict[str, float | int]:
    """Calibration of the in-painting's per-pixel uncertainty over masked pixels.

    The fraction of masked pixels with ``|truth - mean| <= s`` and ``<= 2 s``, where
    ``s = std`` or, with ``extra_sigma``, ``sqrt(std^2 + extra_sigma^2)`` (use the noise
    sigma there when ``truth`` is a noisy observation rather than the noiseless image).
    A calibrated Gaussian predictive distribution gives 0.683 and 0.954.

    Args:
        mean: ``(N, H, W)`` predicted mean in ADU.
        std: ``(N, H, W)`` predicted standard deviation in ADU.
        truth: ``(N, H, W)`` true values in ADU.
        masks: ``(N, H, W)``, nonzero = masked pixel.
        extra_sigma: Optional per-stamp sigma in ADU (scalar or ``(N,)``) added in quadrature.
        noise_sigma: Optional per-stamp noise sigma in ADU (scalar or ``(N,)``); when
            given, the same fractions are also computed on masked pixels of the galaxy,
            ``galaxy > noise_sigma``, under an ``on_galaxy_`` prefix.
        galaxy: ``(N, H, W)`` noiseless image that says which pixels belong to the galaxy
            [ADU]; default ``truth``. Pass it when ``truth`` is noisy: selected on a noisy
            value, a sky pixel whose noise exceeds ``noise_sigma`` (16% of them) would count
            as galaxy, and its residual exceeds 1 sigma by selection.

    Returns:
        ``coverage_1sigma``, ``coverage_2sigma`` (NaN if no masked pixels) and ``n_pixels``;
        plus ``on_galaxy_coverage_1sigma``, ``on_galaxy_coverage_2sigma`` and
        ``on_galaxy_n_pixels`` if ``noise_sigma`` was given.
    """
    centre = stamp_stack(mean, "mean")
    spread = stamp_stack(std, "std")
    true = stamp_stack(truth, "truth")
    _same_shape(spread, centre, "std")
    _same_shape(true, centre, "truth")
    masked = _masks(masks, centre)
    n = len(centre)
    if extra_sigma is not None:
        extra = per_stamp_values(extra_sigma, n, "extra_sigma", positive=False)
        spread = np.sqrt(spread**2 + extra[:, None, None] ** 2)
    residual = np.abs(true - centre)
    selections = {"": masked}
    if noise_sigma is not None:
        noise = per_stamp_values(noise_sigma, n, "noise_sigma")
        reference = true if galaxy is None else stamp_stack(galaxy, "galaxy")
        _same_shape(reference, centre, "galaxy")
        selections["on_galaxy_"] = masked & (reference > noise[:, None, None])
    out: dict[str, float | int] = {}
    for prefix, select in selections.items():
        count = int(np.count_nonzero(select))
        for n_sigma in (1, 2):
            within = residual[select] <= n_sigma * spread[select]
            out[f"{prefix}coverage_{n_sigma}sigma"] = float(np.mean(within)) if count else float("nan")
        out[f"{prefix}n_pixels"] = count
    return out
