"""Source detection on survey tiles with photutils, truth matching, and completeness/purity curves.

``detect`` runs the standard photutils image-segmentation recipe on one tile (images in ADU):

1. ``Background2D`` with a sigma-clipped SExtractor background and MAD-std RMS, masked
   pixels (``bitmask != 0``, and any non-finite pixel) excluded from the estimate;
2. background subtraction, then smoothing with a normalised Gaussian of the PSF FWHM
   (``make_2dgaussian_kernel`` + ``astropy.convolution.convolve``; masked pixels are
   interpolated over by ``convolve`` so a bad pixel can neither create nor split a source);
3. ``detect_sources`` on the smoothed image at ``threshold_nsigma`` times the background
   RMS, masked pixels excluded, then optional ``deblend_sources``;
4. ``SourceCatalog`` photometry and moments on the background-subtracted image.

Pixel convention: ``x`` is the column and ``y`` the row index of a numpy array, 0-based,
with the *centre* of pixel ``[0, 0]`` at ``(0.0, 0.0)`` (the photutils / astropy WCS
``pixel_to_world_values`` convention; GalSim and FITS put that centre at ``(1, 1)``).

``match_to_truth``, ``isolated`` and ``completeness_purity`` turn a detection table and a
truth catalogue into completeness (fraction of truth objects recovered) and purity (fraction
of detections that are real) per bin of magnitude or S/N; ``plot_detection_curves`` draws them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import astropy.units as u
import numpy as np
import scipy.ndimage
from astropy.convolution import convolve
from astropy.stats import SigmaClip, binom_conf_interval
from astropy.table import Column, Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from photutils.background import Background2D, MADStdBackgroundRMS, SExtractorBackground
from photutils.segmentation import (
    SegmentationImage,
    SourceCatalog,
    deblend_sources,
    detect_sources,
    make_2dgaussian_kernel,
)
from photutils.utils import calc_total_error
from scipy.spatial import cKDTree

from lensforge.atomic import atomic_path
from lensforge.errors import InputError

# Default PSF FWHM: the survey defaults (0.7 arcsec seeing on 0.2 arcsec pixels).
DEFAULT_PSF_FWHM_PIXELS = 3.5

# Detection threshold in units of the *unsmoothed* per-pixel background RMS, applied to the
# smoothed image, as SExtractor's DETECT_THRESH and the photutils segmentation examples do.
# Smoothing lowers the noise by sqrt(sum(kernel**2)) (~0.18 for a 3.5 px FWHM Gaussian), so
# 1.5 here is ~8 sigma of the smoothed image's own noise: pure noise gives essentially no
# detections, while a point source needs an optimal (matched-filter) S/N of roughly 7-10.
DEFAULT_THRESHOLD_NSIGMA = 1.5

# Background sigma clipping, the photutils / SExtractor default (3 sigma, 10 iterations).
BACKGROUND_SIGMA_CLIP = 3.0

# Kernel half-width in FWHM units: +-1.5 FWHM is +-3.5 sigma, >99.9% of the Gaussian's weight.
KERNEL_HALF_WIDTH_FWHM = 1.5

# Detection settings of an image of unknown origin (``lensforge reprocess``), scaled with its beam / PSF
# FWHM (:func:`scaled_detection_settings`): a source covers at least one beam (the area of a Gaussian
# of that FWHM, pi / (4 ln 2) FWHM^2, but no fewer than MIN_N_PIXELS pixels), and the background mesh
# is BOX_SIZE_FWHM beams wide (at least MIN_BOX_SIZE pixels): wider than a source, narrower than the
# sky's variations. At the survey default (3.5 px) that is 14 pixels and a 56-pixel box.
GAUSSIAN_AREA_PER_FWHM2 = math.pi / (4.0 * math.log(2.0))
MIN_N_PIXELS = 5
BOX_SIZE_FWHM = 16.0
MIN_BOX_SIZE = 16
NOISE_SAMPLE_PIXELS = 1 << 20  # pixels sampled to measure the smoothed image's noise (noise_correlation_factor)

# Two-sided 1-sigma confidence level for the binomial (Wilson) intervals.
ONE_SIGMA_CONFIDENCE = 0.682689492137

# Completeness/purity goal drawn on the curves.
GOAL_FRACTION = 0.9

# Magnitude error per unit fractional flux error: 2.5 / ln(10).
MAG_PER_LN_FLUX = 2.5 / math.log(10.0)


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------

def _positive(value: float, name: str) -> float:
    """``value`` as a finite positive float, or raise InputError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}", value) from None
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{name} must be a finite positive number, got {value!r}", value)
    return number


def _positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1, or raise InputError (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}", value)
    return int(value)


def _image(image: np.ndarray) -> np.ndarray:
    """``image`` as a float64 2-D array, or raise InputError."""
    array = np.asarray(getattr(image, "array", image), dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"image must be a non-empty 2-D array, got shape {array.shape}", array.shape)
    return array


def _same_shape(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, expected the image shape {shape}", array.shape)
    return array


def _points(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """Stack 1-D coordinate arrays into finite ``(N, 2)`` points, or raise InputError."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise InputError(f"{name} x and y must be 1-D arrays of equal length, got {x.shape} and {y.shape}",
                         (x.shape, y.shape))
    points = np.column_stack([x, y])
    if not np.all(np.isfinite(points)):
        raise InputError(f"{name} coordinates must be finite", name)
    return points


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------

def scaled_detection_settings(psf_fwhm_pixels: float, shape: tuple[int, ...] | None = None) -> dict[str, float | int]:
    """``psf_fwhm_pixels``, ``n_pixels`` and ``box_size`` for :func:`detect` scaled with a beam / PSF FWHM [pixels].

    The smoothing kernel is the beam itself; ``n_pixels`` is the beam's area (at least
    :data:`MIN_N_PIXELS`), so a noise peak narrower than the beam is no source; ``box_size`` is
    about :data:`BOX_SIZE_FWHM` beams (at least :data:`MIN_BOX_SIZE`), adjusted so that a whole
    number of boxes spans the shorter side of an image of ``shape`` (a box cut short by the edge
    holds too few pixels to count). Use with ``correlated_noise=True`` so the threshold follows the
    noise the smoothed image really has.
    """
    fwhm = _positive(psf_fwhm_pixels, "psf_fwhm_pixels")
    box = max(MIN_BOX_SIZE, round(BOX_SIZE_FWHM * fwhm))
    if shape:
        side = min(int(n) for n in shape[-2:])
        box = max(1, math.ceil(side / max(1, round(side / box))))
    return {"psf_fwhm_pixels": fwhm,
            "n_pixels": max(MIN_N_PIXELS, math.ceil(GAUSSIAN_AREA_PER_FWHM2 * fwhm**2)),
            "box_size": box}


def noise_correlation_factor(subtracted: np.ndarray, convolved: np.ndarray, masked: np.ndarray,
                             kernel: np.ndarray) -> float:
    """How much more noise the smoothed image has than white noise would leave (>= 1).

    Smoothing white noise with a normalised kernel scales its RMS by sqrt(sum(kernel**2)); noise that
    is already correlated over the beam (a radio map, a resampled or coadded image) keeps much more of
    it. The ratio of the smoothed to the unsmoothed robust RMS (sigma-clipped MAD, so the sources do
    not count) over the white-noise ratio is returned, never below 1; 1 when it cannot be measured.
    """
    from astropy.stats import sigma_clipped_stats

    known = np.flatnonzero(~masked)
    if known.size < 16:
        return 1.0
    # A regular subset of at most NOISE_SAMPLE_PIXELS pixels: a robust RMS needs no more, and a large tile
    # would otherwise pay two sigma-clipping passes over every pixel.
    known = known[:: max(1, known.size // NOISE_SAMPLE_PIXELS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        raw = sigma_clipped_stats(subtracted.ravel()[known], sigma=BACKGROUND_SIGMA_CLIP, stdfunc="mad_std")[2]
        smooth = sigma_clipped_stats(convolved.ravel()[known], sigma=BACKGROUND_SIGMA_CLIP, stdfunc="mad_std")[2]
    white = math.sqrt(float(np.sum(np.asarray(kernel, dtype=np.float64) ** 2)))
    if not (math.isfinite(raw) and math.isfinite(smooth) and raw > 0 and smooth > 0 and white > 0):
        return 1.0
    return max(1.0, float(smooth / raw / white))


def _column_specs(with_sky: bool, with_mag: bool) -> list[tuple[str, type, u.UnitBase | None, str]]:
    """(name, dtype, unit, description) of every output column, in order."""
    specs: list[tuple[str, type, u.UnitBase | None, str]] = [
        ("label", np.int64, None, "segment label in the (deblended) segmentation image"),
        ("x", np.float64, u.pix, "centroid column, 0-based, pixel centres at integers"),
        ("y", np.float64, u.pix, "centroid row, 0-based, pixel centres at integers"),
    ]
    if with_sky:
        specs += [("ra", np.float64, u.deg, "ICRS right ascension of the centroid"),
                  ("dec", np.float64, u.deg, "ICRS declination of the centroid")]
    specs += [
        ("segment_flux", np.float64, u.adu, "background-subtracted sum over the segment"),
        ("segment_flux_err", np.float64, u.adu, "1-sigma error of segment_flux"),
        ("kron_flux", np.float64, u.adu, "flux in the Kron aperture (2.5 Kron radii)"),
        ("kron_flux_err", np.float64, u.adu, "1-sigma error of kron_flux"),
        ("snr", np.float64, None, "segment_flux / segment_flux_err"),
    ]
    if with_mag:
        specs += [("mag", np.float64, u.mag, "zero_point - 2.5 log10(kron_flux / exposure_time)"),
                  ("mag_err", np.float64, u.mag, "1-sigma error of mag from kron_flux_err")]
    specs += [
        ("area", np.float64, u.pix**2, "unmasked segment area"),
        ("semimajor_sigma", np.float64, u.pix, "1-sigma semimajor axis from second moments (smoothed image)"),
        ("semiminor_sigma", np.float64, u.pix, "1-sigma semiminor axis from second moments (smoothed image)"),
        ("orientation", np.float64, u.deg, "major-axis angle from +x, counter-clockwise"),
        ("ellipticity", np.float64, None, "1 - semiminor / semimajor"),
        ("near_mask", bool, None, "segment touches (8-connected) a masked pixel"),
        ("deblended", bool, None, "segment was split off a larger parent by deblending"),
    ]
    return specs


def _build_table(values: Mapping[str, np.ndarray], with_sky: bool, with_mag: bool, meta: dict) -> Table:
    """A Table of ``values`` with the fixed column order, dtypes, units and descriptions."""
    columns = [Column(np.asarray(values[name], dtype=dtype), name=name, unit=unit, description=description)
               for name, dtype, unit, description in _column_specs(with_sky, with_mag)]
    return Table(columns, meta=meta)


def _empty_values(with_sky: bool, with_mag: bool) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=dtype) for name, dtype, _, _ in _column_specs(with_sky, with_mag)}


def detect(
    image: np.ndarray,
    bitmask: np.ndarray | None = None,
    psf_fwhm_pixels: float = DEFAULT_PSF_FWHM_PIXELS,
    threshold_nsigma: float = DEFAULT_THRESHOLD_NSIGMA,
    n_pixels: int = 5,
    box_size: int = 64,
    filter_size: int = 3,
    deblend: bool = True,
    n_levels: int = 32,
    contrast: float = 0.001,
    wcs: WCS | None = None,
    zero_point_mag: float | None = None,
    exposure_time_s: float | None = None,
    variance: np.ndarray | None = None,
    effective_gain: float | None = None,
    return_segmentation: bool = False,
    correlated_noise: bool = False,
) -> Table | tuple[Table, SegmentationImage | None]:
    """Detect and measure the sources on one tile; one table row per (deblended) source.

    Args:
        image: ``(H, W)`` array or ``galsim.Image``. Tile in ADU, sky not subtracted (a smooth
            background is estimated and removed).
        bitmask: Optional ``(H, W)`` integer or bool array; nonzero = bad pixel. Masked pixels are
            excluded from the background, never enter a segment and are ignored in the photometry.
            Non-finite image pixels are masked too.
        psf_fwhm_pixels: PSF FWHM [pixels]; the detection image is smoothed with a Gaussian of this FWHM.
        threshold_nsigma: Detection threshold on the smoothed image in units of the unsmoothed per-pixel
            background RMS (see ``DEFAULT_THRESHOLD_NSIGMA`` for what that means in S/N).
        n_pixels: Minimum number of 8-connected pixels above threshold for a source (and for a
            deblended child).
        box_size: ``Background2D`` mesh box side [pixels] (clamped to the image size); larger than the
            sources, smaller than sky variations. Boxes >10% masked or clipped are interpolated over;
            if all are, InputError is raised.
        filter_size: Odd side [boxes] of the median filter applied to the low-resolution background mesh.
        deblend: Run ``deblend_sources`` (with ``n_levels`` and ``contrast``).
        n_levels: The deblending's multi-threshold levels.
        contrast: The deblending's flux-contrast limit.
        wcs: Optional celestial ``astropy.wcs.WCS`` of the tile (same 0-based pixel convention); adds
            ICRS ``ra``, ``dec`` [deg].
        zero_point_mag: Optional magnitude of 1 ADU/s; adds ``mag`` = zp - 2.5 log10(kron_flux /
            exposure_time_s) and ``mag_err``.
        exposure_time_s: Optional exposure time [s] for ``mag``; None means the zero point applies to
            the image's ADU as they are.
        variance: Optional ``(H, W)`` per-pixel total variance [ADU^2]; its square root is the
            photometric error. Without it the background RMS map is used, plus source Poisson noise
            if ``effective_gain`` is given.
        effective_gain: Optional electrons per ADU (times exposure time for rate images), for source
            Poisson noise; ignored when ``variance`` is given (which should already include it).
        return_segmentation: Also return the photutils ``SegmentationImage`` (None when nothing was
            detected).
        correlated_noise: Measure how much noise the smoothed image really keeps
            (:func:`noise_correlation_factor`) and raise the threshold by that factor, so
            ``threshold_nsigma`` means the same significance for noise correlated over the beam
            (radio maps) as for white noise; the factor is recorded as ``noise_correlation`` in the
            table's meta. Off: the white-noise convention of ``DEFAULT_THRESHOLD_NSIGMA``.

    Returns:
        An ``astropy.table.Table`` with columns ``label, x, y, [ra, dec], segment_flux,
        segment_flux_err, kron_flux, kron_flux_err, snr, [mag, mag_err], area, semimajor_sigma,
        semiminor_sigma, orientation, ellipticity, near_mask, deblended`` with units (see
        ``_column_specs``). When nothing is detected, photutils emits ``NoDetectionsWarning`` and
        the table is empty with the same columns. Shapes are measured on the smoothed image, so
        they include the kernel's width.
    """
    data = _image(image)
    psf_fwhm_pixels = _positive(psf_fwhm_pixels, "psf_fwhm_pixels")
    threshold_nsigma = _positive(threshold_nsigma, "threshold_nsigma")
    n_pixels = _positive_int(n_pixels, "n_pixels")
    box_size = _positive_int(box_size, "box_size")
    filter_size = _positive_int(filter_size, "filter_size")
    if filter_size % 2 == 0:
        raise InputError(f"filter_size must be odd, got {filter_size}", filter_size)
    n_levels = _positive_int(n_levels, "n_levels")
    if not 0.0 <= float(contrast) <= 1.0:
        raise InputError(f"contrast must be in [0, 1], got {contrast!r}", contrast)
    if wcs is not None and not (isinstance(wcs, WCS) and wcs.has_celestial and wcs.pixel_n_dim == 2):
        raise InputError(f"wcs must be a 2-D celestial astropy.wcs.WCS, got {type(wcs).__name__}", wcs)
    if zero_point_mag is not None and not math.isfinite(float(zero_point_mag)):
        raise InputError(f"zero_point_mag must be finite, got {zero_point_mag!r}", zero_point_mag)
    exposure = 1.0 if exposure_time_s is None else _positive(exposure_time_s, "exposure_time_s")
    if effective_gain is not None:
        effective_gain = _positive(effective_gain, "effective_gain")

    masked = ~np.isfinite(data)
    if bitmask is not None:
        masked |= _same_shape(np.asarray(bitmask), data.shape, "bitmask") != 0
    error = None
    if variance is not None:
        variance = _same_shape(np.asarray(variance, dtype=np.float64), data.shape, "variance")
        if not np.all(np.isfinite(variance[~masked]) & (variance[~masked] >= 0)):
            raise InputError("variance must be finite and >= 0 on every unmasked pixel", "variance")
        error = np.sqrt(np.where(masked, 0.0, variance))

    with_sky, with_mag = wcs is not None, zero_point_mag is not None
    meta = {"psf_fwhm_pixels": psf_fwhm_pixels, "threshold_nsigma": threshold_nsigma, "n_pixels": n_pixels,
            "deblend": bool(deblend)}

    def empty() -> Table | tuple[Table, None]:
        table = _build_table(_empty_values(with_sky, with_mag), with_sky, with_mag, meta)
        return (table, None) if return_segmentation else table

    if masked.all():
        return empty()

    # The sky estimate must not see bad pixels; ``mask`` (not ``coverage_mask``) still gives
    # interpolated background/RMS values there, which keeps the threshold map finite everywhere.
    try:
        background = Background2D(
            np.where(masked, 0.0, data), box_size=min(box_size, *data.shape), mask=masked,
            filter_size=filter_size, sigma_clip=SigmaClip(sigma=BACKGROUND_SIGMA_CLIP, maxiters=10),
            bkg_estimator=SExtractorBackground(), bkg_rms_estimator=MADStdBackgroundRMS())
    except ValueError as err:
        # photutils refuses when every mesh box is mostly masked or clipped.
        raise InputError(f"cannot estimate the background: {err}", box_size) from err
    subtracted = np.where(masked, 0.0, data - background.background)

    size = 2 * math.ceil(KERNEL_HALF_WIDTH_FWHM * psf_fwhm_pixels) + 1
    kernel = make_2dgaussian_kernel(psf_fwhm_pixels, size=size)
    # ``mask=`` makes convolve interpolate across bad pixels instead of smearing their values
    # into neighbours; the masked pixels themselves are then zeroed (never thresholded anyway).
    # Masked regions wider than the kernel stay NaN inside, which astropy warns about; expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="nan_treatment='interpolate', however, NaN values",
                                category=AstropyUserWarning)
        convolved = convolve(subtracted, kernel, mask=masked, boundary="extend")
    convolved[masked | ~np.isfinite(convolved)] = 0.0

    factor = 1.0
    if correlated_noise:
        factor = noise_correlation_factor(subtracted, convolved, masked, kernel.array)
        meta["noise_correlation"] = factor
    threshold = threshold_nsigma * factor * background.background_rms
    segm = detect_sources(convolved, threshold, n_pixels, mask=masked)
    if segm is None:
        return empty()
    if deblend:
        segm = deblend_sources(convolved, segm, n_pixels, n_levels=n_levels, contrast=float(contrast),
                               progress_bar=False)

    if error is None:
        error = background.background_rms
        if effective_gain is not None:
            error = calc_total_error(subtracted, error, effective_gain)
    catalog = SourceCatalog(subtracted, segm, convolved_data=convolved, error=error, mask=masked, wcs=wcs)

    labels = np.asarray(catalog.label, dtype=np.int64)
    segment_flux = np.asarray(catalog.segment_flux, dtype=np.float64)
    segment_flux_err = np.asarray(catalog.segment_flux_err, dtype=np.float64)
    kron_flux = np.asarray(catalog.kron_flux, dtype=np.float64)
    kron_flux_err = np.asarray(catalog.kron_flux_err, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = segment_flux / segment_flux_err

    # A segment "touches" the mask if any of its pixels is 8-adjacent to a masked pixel:
    # its flux and shape may be truncated even though no masked pixel is in it.
    near = scipy.ndimage.binary_dilation(masked, structure=np.ones((3, 3), dtype=bool))
    touching = np.bincount(segm.data[near], minlength=segm.max_label + 1) > 0

    values: dict[str, np.ndarray] = {
        "label": labels,
        "x": np.asarray(catalog.x_centroid, dtype=np.float64),
        "y": np.asarray(catalog.y_centroid, dtype=np.float64),
        "segment_flux": segment_flux,
        "segment_flux_err": segment_flux_err,
        "kron_flux": kron_flux,
        "kron_flux_err": kron_flux_err,
        "snr": snr,
        "area": u.Quantity(catalog.area, u.pix**2).value,
        "semimajor_sigma": u.Quantity(catalog.semimajor_axis, u.pix).value,
        "semiminor_sigma": u.Quantity(catalog.semiminor_axis, u.pix).value,
        "orientation": u.Quantity(catalog.orientation, u.deg).value,
        "ellipticity": np.asarray(catalog.ellipticity, dtype=np.float64),
        "near_mask": touching[labels],
        "deblended": np.isin(labels, segm.deblended_labels) if deblend else np.zeros(labels.size, dtype=bool),
    }
    if with_sky:
        sky = catalog.sky_centroid_icrs
        values["ra"] = sky.ra.deg
        values["dec"] = sky.dec.deg
    if with_mag:
        with np.errstate(divide="ignore", invalid="ignore"):
            # Non-positive fluxes have no magnitude: NaN, not an error.
            positive = np.where(kron_flux > 0, kron_flux, np.nan)
            values["mag"] = float(zero_point_mag) - 2.5 * np.log10(positive / exposure)
            values["mag_err"] = MAG_PER_LN_FLUX * kron_flux_err / positive
    table = _build_table(values, with_sky, with_mag, meta)
    return (table, segm) if return_segmentation else table


# ---------------------------------------------------------------------------------------
# Matching and completeness
# ---------------------------------------------------------------------------------------

def match_to_truth(
    det_x: np.ndarray, det_y: np.ndarray, truth_x: np.ndarray, truth_y: np.ndarray, radius_pixels: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one positional match of detections to truth objects, closest pairs first.

    All (detection, truth) pairs within ``radius_pixels`` (inclusive) are sorted by
    separation and accepted greedily unless either member is already taken, so each truth
    object has at most one detection and vice versa (a blend of two detections near one
    truth object gives one match and one unmatched detection).

    Returns:
        ``(det_to_truth, truth_to_det)``: ``det_to_truth`` is an ``(N_det,)`` int array, the index
        into the truth arrays of each detection's match, -1 if unmatched; ``truth_to_det`` is an
        ``(N_truth,)`` int array, the index into the detection arrays of each truth object's match,
        -1 if unmatched.
    """
    radius = _positive(radius_pixels, "radius_pixels")
    det = _points(det_x, det_y, "detection")
    truth = _points(truth_x, truth_y, "truth")
    det_to_truth = np.full(len(det), -1, dtype=np.int64)
    truth_to_det = np.full(len(truth), -1, dtype=np.int64)
    if len(det) == 0 or len(truth) == 0:
        return det_to_truth, truth_to_det
    pairs = cKDTree(det).sparse_distance_matrix(cKDTree(truth), radius, output_type="ndarray")
    # Sort by separation, ties broken by index so the result does not depend on tree order.
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))
    for i_det, i_truth in zip(pairs["i"][order], pairs["j"][order], strict=True):
        if det_to_truth[i_det] < 0 and truth_to_det[i_truth] < 0:
            det_to_truth[i_det] = i_truth
            truth_to_det[i_truth] = i_det
    return det_to_truth, truth_to_det


def isolated(truth_x: np.ndarray, truth_y: np.ndarray, radius_pixels: float) -> np.ndarray:
    """Boolean array: True where no *other* truth object lies within ``radius_pixels`` (inclusive)."""
    radius = _positive(radius_pixels, "radius_pixels")
    points = _points(truth_x, truth_y, "truth")
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    counts = cKDTree(points).query_ball_point(points, radius, return_length=True)
    return np.asarray(counts) == 1  # each point finds itself


def _matched_flags(matched: np.ndarray, n: int, name: str) -> np.ndarray:
    """Bool flags from a bool array or a match-index array (>= 0 means matched)."""
    array = np.asarray(matched)
    if array.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {array.shape}", array.shape)
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be a bool array or an index array from match_to_truth", array.dtype)
    return array >= 0


def _fraction_with_interval(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k/n with a 68.3% Wilson interval; NaN where n == 0."""
    fraction = np.full(k.shape, np.nan)
    low = np.full(k.shape, np.nan)
    high = np.full(k.shape, np.nan)
    filled = n > 0
    if filled.any():
        fraction[filled] = k[filled] / n[filled]
        low[filled], high[filled] = binom_conf_interval(k[filled], n[filled], confidence_level=ONE_SIGMA_CONFIDENCE,
                                                        interval="wilson")
    return fraction, low, high


def completeness_purity(
    truth_value: np.ndarray,
    truth_matched: np.ndarray,
    det_value: np.ndarray,
    det_matched: np.ndarray,
    bins: np.ndarray,
) -> Table:
    """Completeness and purity per bin of a value (magnitude, S/N, ...).

    Completeness in a bin is recovered / all truth objects whose *true* value falls in it;
    purity is matched / all detections whose *measured* value falls in it. Non-finite values
    fall in no bin. A bin with no objects gives NaN, not 0 or 1. Intervals are two-sided
    68.3% Wilson score intervals (``astropy.stats.binom_conf_interval``), which stay inside
    [0, 1] and are non-degenerate at 0 and 1, unlike sqrt(p(1-p)/n).

    Args:
        truth_value: 1-D array of the binned quantity for truth objects, in the units of ``bins``.
        truth_matched: 1-D bool array, or the index array from ``match_to_truth``: whether each
            truth object was recovered.
        det_value: 1-D array of the binned quantity for detections, in the units of ``bins``.
        det_matched: 1-D bool array, or the index array from ``match_to_truth``: whether each
            detection matched a truth object.
        bins: 1-D array of strictly increasing bin edges; a value equal to the last edge counts in
            the last bin.

    Returns:
        An ``astropy.table.Table`` with ``bin_lo, bin_hi, bin_center, n_truth, n_recovered,
        completeness, completeness_lo, completeness_hi, n_detected, n_true, purity, purity_lo,
        purity_hi``, one row per bin.
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise InputError("bins must be at least two finite, strictly increasing edges", bins)
    truth_value = np.asarray(truth_value, dtype=np.float64)
    det_value = np.asarray(det_value, dtype=np.float64)
    if truth_value.ndim != 1 or det_value.ndim != 1:
        raise InputError(f"truth_value and det_value must be 1-D, got {truth_value.shape} and {det_value.shape}",
                         (truth_value.shape, det_value.shape))
    truth_ok = _matched_flags(truth_matched, truth_value.size, "truth_matched")
    det_ok = _matched_flags(det_matched, det_value.size, "det_matched")

    def count(values: np.ndarray) -> np.ndarray:
        return np.histogram(values[np.isfinite(values)], bins=edges)[0]

    n_truth, n_recovered = count(truth_value), count(truth_value[truth_ok])
    n_detected, n_true = count(det_value), count(det_value[det_ok])
    completeness, completeness_lo, completeness_hi = _fraction_with_interval(n_recovered, n_truth)
    purity, purity_lo, purity_hi = _fraction_with_interval(n_true, n_detected)
    return Table({
        "bin_lo": edges[:-1], "bin_hi": edges[1:], "bin_center": 0.5 * (edges[:-1] + edges[1:]),
        "n_truth": n_truth, "n_recovered": n_recovered,
        "completeness": completeness, "completeness_lo": completeness_lo, "completeness_hi": completeness_hi,
        "n_detected": n_detected, "n_true": n_true,
        "purity": purity, "purity_lo": purity_lo, "purity_hi": purity_hi,
    })


def plot_detection_curves(tables: Mapping[str, Table], path: str | Path, x_label: str,
                          log_x: bool = False) -> Path:
    """Completeness (top) and purity (bottom) against bin centre, one curve per table; PNG at ``path``.

    ``tables`` maps a legend label to a ``completeness_purity`` table. Error bars are the
    Wilson intervals; the dashed line marks 90%. The file is written atomically.
    """
    if not tables:
        raise InputError("tables must contain at least one completeness_purity table", tables)
    needed = {"bin_center", "completeness", "completeness_lo", "completeness_hi", "purity", "purity_lo", "purity_hi"}
    for label, table in tables.items():
        missing = needed - set(table.colnames)
        if missing:
            raise InputError(f"table {label!r} lacks columns {sorted(missing)}", label)

    from matplotlib.figure import Figure  # here: workers that only detect need not import matplotlib

    # A bare Figure renders with Agg without touching pyplot's global backend or figure list.
    fig = Figure(figsize=(6.0, 6.0), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for label, table in tables.items():
        x = np.asarray(table["bin_center"], dtype=np.float64)
        for ax, name in zip(axes, ("completeness", "purity"), strict=True):
            y = np.asarray(table[name], dtype=np.float64)
            # Clipped at 0: float rounding can put a Wilson bound a hair past the estimate at 0 or 1.
            yerr = np.clip(np.vstack([y - np.asarray(table[f"{name}_lo"]), np.asarray(table[f"{name}_hi"]) - y]),
                           0.0, None)
            ax.errorbar(x, y, yerr=yerr, marker="o", markersize=3, capsize=2, label=label)
    for ax, name in zip(axes, ("Completeness", "Purity"), strict=True):
        ax.axhline(GOAL_FRACTION, color="0.4", linestyle="--", linewidth=1)
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    axes[1].set_xlabel(x_label)
    if log_x:  # S/N spans decades
        axes[1].set_xscale("log")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def optimal_snr(noiseless_stamp: np.ndarray, sky_variance: float) -> float:
    """Matched-filter S/N of a noiseless stamp in white sky noise: sqrt(sum(I**2) / sigma**2).

    This is the S/N that GalSim's ``Image.addNoiseSNR`` sets (the S/N of an optimal,
    profile-weighted flux estimate when the noise is dominated by a uniform sky), with
    ``noiseless_stamp`` in ADU per pixel (ndarray or galsim.Image) and ``sky_variance``
    the per-pixel noise variance in ADU^2. The stamp must contain the whole profile.
    """
    stamp = np.asarray(getattr(noiseless_stamp, "array", noiseless_stamp), dtype=np.float64)
    if stamp.size == 0 or not np.all(np.isfinite(stamp)):
        raise InputError("noiseless_stamp must be a non-empty finite array", stamp.shape)
    variance = _positive(sky_variance, "sky_variance")
    return float(np.sqrt(np.sum(stamp**2) / variance))
