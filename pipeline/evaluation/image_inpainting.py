"""Evaluation of whole-image in-painters on complete images with holes cut into them.

Behind ``lensforge evaluate-inpainting``. Each test image (a :class:`Case`) is complete: its
``truth`` holds what every pixel really was (noise included). Test holes (``mask``) and the
pixels already bad in the data (``bad``) are hidden from the in-painter, which gets the image
as float32 with those pixels set to NaN and is called ``f(image, mask | bad, noise_sigma)``
(:func:`lensforge.pipeline.inpaint.images.image_inpainter`); fills are scored against the truth
rounded to float32 likewise, as FITS images usually are anyway. Only the test holes that were not
already bad are scored (``scored = mask & ~bad``):

* masked-pixel RMSE in units of the image's noise sigma, over all scored pixels, over source
  pixels (``truth - background > 3 noise sigma``, background = median of the unhidden pixels),
  over sky pixels (the rest) and over the pixels of source segments (below);
* aperture-flux error of each source a hole touches: photutils ``detect_sources`` on the
  background-subtracted truth (smoothed by a 2-pixel-FWHM Gaussian, threshold 3 noise sigma,
  at least 5 connected pixels); for each segment holding a scored pixel, the error is the sum
  over the segment of ``filled - truth`` in units of ``noise_sigma * sqrt(segment pixels)``
  (the flux noise of that aperture), and the relative error that sum over the segment's
  flux above the background; also over the visible sources alone;
* calibration of a returned standard deviation map: the fraction of scored pixels with
  ``|truth - mean| <= k std`` for k = 1, 2 (all, source, visible-source and source-segment
  pixels; None for methods with no std). Coverage on pixels picked by their own noisy value
  (``truth > 3 sigma``) is biased low for *any* method: the pick favours pixels whose noise went
  up, away from every prediction. :func:`coverage_floor` measures that bias with a predictor that
  knows the noiseless sky; the segments (detected on the smoothed truth, where a pixel's own noise
  weighs little) do not carry it;
* wall time, in seconds and seconds per megapixel of image;
* known-pixel violations: known pixels that did not come back equal to the input (must be 0).

Metrics are pooled over the cases of each ``group`` (squared errors and counts are summed over
the group's pixels and sources, never means of per-image RMSEs), and over all cases
(``overall``); each method other than ``biharmonic`` also gets its ratios to ``biharmonic``, each
with the central 68.3 % of its values over bootstrap resamples of the images
(:func:`ratio_intervals`): a bright source under a hole can hold most of a group's squared error.
"""

from __future__ import annotations

import heapq
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensforge.atomic import atomic_path, atomic_write_text
from lensforge.errors import InputError

REPORT_JSON = "inpainting_evaluation.json"
EXAMPLES_PNG = "inpainting_examples.png"
RMSE_PNG = "inpainting_rmse.png"

SOURCE_THRESHOLD_SIGMA = 3.0  # a source pixel: truth - background above this many noise sigma
SEGMENT_THRESHOLD_SIGMA = 3.0  # detect_sources threshold on the smoothed, background-subtracted truth
SEGMENT_MIN_PIXELS = 5
SEGMENT_SMOOTH_FWHM_PIXELS = 2.0
SEGMENT_SMOOTH_SIZE_PIXELS = 5
COVERAGE_K = (1, 2)
RATIO_BASELINE = "biharmonic"
DEFAULT_GROUP = "default"  # the group of cases whose group is ""
PIXEL_SETS = ("all", "source", "sky", "visible_source", "source_segment")  # the scored pixels each RMSE is over
STD_PIXEL_SETS = ("all", "source", "visible_source", "source_segment")  # those each coverage is over

# (image (H, W) float32 with hidden pixels NaN, hidden (H, W) bool, noise_sigma) -> (mean, std or None)
ImageInpainter = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, "np.ndarray | None"]]


@dataclass(frozen=True)
class Case:
    """One test image.

    Attributes:
        name: unique name of the case (a file name); names the per-image rows and examples.
        truth: (H, W) the complete image (real or simulated, noisy): what hidden pixels really were.
        mask: (H, W) bool, pixels hidden from the in-painter and scored (the test holes).
        noise_sigma: background noise standard deviation, units of ``truth`` (> 0).
        bad: (H, W) bool or None, pixels already bad in the data: hidden too, never scored; their
            ``truth`` may be anything (NaN included).
        group: metrics are pooled per group (``"first_test"``, ``"lsst"``, ...); ``""`` is ``default``.
    """

    name: str
    truth: np.ndarray
    mask: np.ndarray
    noise_sigma: float
    bad: np.ndarray | None = None
    group: str = ""

    def __post_init__(self) -> None:
        truth = np.asarray(self.truth)
        if truth.ndim != 2 or 0 in truth.shape or not np.issubdtype(truth.dtype, np.number):
            raise InputError(f"{self.name}: truth must be a numeric (H, W) image; got shape {truth.shape}",
                             truth.shape)
        mask = np.asarray(self.mask)
        if mask.shape != truth.shape:
            raise InputError(f"{self.name}: mask shape {mask.shape} does not match image shape {truth.shape}",
                             mask.shape)
        bad = np.zeros(truth.shape, dtype=bool) if self.bad is None else np.asarray(self.bad)
        if bad.shape != truth.shape:
            raise InputError(f"{self.name}: bad-pixel mask shape {bad.shape} does not match image shape "
                             f"{truth.shape}", bad.shape)
        bad = bad != 0
        try:
            sigma = float(self.noise_sigma)
        except (TypeError, ValueError):
            raise InputError(f"{self.name}: noise_sigma must be a number; got {self.noise_sigma!r}",
                             self.noise_sigma) from None
        if not math.isfinite(sigma) or sigma <= 0:
            raise InputError(f"{self.name}: noise_sigma must be finite and > 0; got {sigma}", sigma)
        nonfinite = int(np.count_nonzero(~np.isfinite(truth[~bad])))
        if nonfinite:
            raise InputError(f"{self.name}: truth has {nonfinite} NaN or infinite pixels not marked bad", nonfinite)
        object.__setattr__(self, "truth", truth)
        object.__setattr__(self, "mask", mask != 0)
        object.__setattr__(self, "bad", bad)
        object.__setattr__(self, "noise_sigma", sigma)
        object.__setattr__(self, "group", str(self.group))

    @property
    def hidden(self) -> np.ndarray:
        """Pixels the in-painter does not see: the test holes and the bad pixels."""
        return self.mask | self.bad

    @property
    def scored(self) -> np.ndarray:
        """Pixels scored: test holes that were not already bad."""
        return self.mask & ~self.bad

    @property
    def group_name(self) -> str:
        return self.group or DEFAULT_GROUP


class EvaluationResult(dict):
    """The JSON-ready result of :func:`evaluate_cases` (a plain ``dict`` to ``json``), plus the
    kept examples, for :func:`plot_examples`, as attributes that are not part of the JSON:

    ``example_cases``: the kept :class:`Case` objects (those with the most masked source light);
    ``example_fills``: ``{case name: {method: (mean, std or None)}}`` of those cases.
    """

    example_cases: list[Case]
    example_fills: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]]


# --- per case --------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """What scoring a case needs, computed once for all methods."""

    image: np.ndarray  # float32 input of the in-painter, hidden pixels NaN
    truth: np.ndarray  # float64 of the float32 truth, bad pixels 0
    scored: np.ndarray
    source: np.ndarray  # scored source pixels
    visible_source: np.ndarray  # scored source pixels of a segment that shows outside the hidden pixels
    sky: np.ndarray  # scored sky pixels
    source_segment: np.ndarray  # scored pixels of a segment of the truth (photutils, smoothed)
    background: float
    labels: np.ndarray  # segmentation of the truth (0 = no segment)
    hit: np.ndarray  # labels of the segments holding a scored pixel
    segment_pixels: np.ndarray  # per hit segment: its good pixels
    segment_flux: np.ndarray  # per hit segment: sum of truth - background over its good pixels
    segment_visible: np.ndarray  # per hit segment: bool, it keeps SEGMENT_MIN_PIXELS unhidden source pixels
    light: float  # masked source light, noise-sigma units: how telling an example the case is


def _segmentation(residual: np.ndarray, bad: np.ndarray, noise_sigma: float) -> np.ndarray:
    """photutils segmentation of a background-subtracted image (bad pixels excluded); 0 = no segment."""
    from astropy.convolution import convolve
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel

    kernel = make_2dgaussian_kernel(SEGMENT_SMOOTH_FWHM_PIXELS, size=SEGMENT_SMOOTH_SIZE_PIXELS)
    data = np.where(bad, np.nan, residual)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy on interpolated NaNs; photutils' NoDetectionsWarning
        smoothed = convolve(data, kernel, boundary="extend", nan_treatment="interpolate")
        smoothed = np.where(np.isfinite(smoothed), smoothed, 0.0)
        segmap = detect_sources(smoothed, SEGMENT_THRESHOLD_SIGMA * noise_sigma, SEGMENT_MIN_PIXELS,
                                mask=bad if bad.any() else None)
    if segmap is None:
        return np.zeros(residual.shape, dtype=np.int64)
    return np.where(bad, 0, np.asarray(segmap.data, dtype=np.int64))


def _prepare(case: Case, hidden_value: float) -> _Prepared:
    hidden, scored, bad = case.hidden, case.scored, case.bad
    image = np.array(case.truth, dtype=np.float32)
    image[hidden] = hidden_value
    # The truth as the in-painter sees it (float32), so that known pixels given back unchanged add
    # exactly nothing to an aperture's error; the rounding (1e-7 relative) is far below any noise.
    truth = np.where(bad, 0.0, case.truth.astype(np.float32).astype(np.float64))
    visible = truth[~hidden]
    good = truth[~bad]
    background = float(np.median(visible if visible.size else good if good.size else np.zeros(1)))
    residual = np.where(bad, 0.0, truth - background)
    is_source = ~bad & (residual > SOURCE_THRESHOLD_SIGMA * case.noise_sigma)
    labels = _segmentation(residual, bad, case.noise_sigma)
    hit = np.unique(labels[scored])
    hit = hit[hit > 0]
    n_labels = int(labels.max()) + 1
    pixels = np.bincount(labels.ravel(), minlength=n_labels)
    flux = np.bincount(labels.ravel(), weights=residual.ravel(), minlength=n_labels)
    source = scored & is_source
    # A source the holes hide whole leaves nothing to in-paint from: score those pixels apart.
    shown = np.bincount(labels[is_source & ~hidden], minlength=n_labels) >= SEGMENT_MIN_PIXELS
    shown[0] = False
    return _Prepared(image=image, truth=truth, scored=scored, source=source, visible_source=source & shown[labels],
                     sky=scored & ~is_source, source_segment=scored & (labels > 0), background=background,
                     labels=labels, hit=hit,
                     segment_pixels=pixels[hit], segment_flux=flux[hit], segment_visible=shown[hit],
                     light=float(residual[source].sum() / case.noise_sigma))


@dataclass
class _Sums:
    """Additive statistics of one method over some cases."""

    n_images: int = 0
    sq: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PIXEL_SETS, 0.0))
    n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PIXEL_SETS, 0))
    flux_sq: float = 0.0
    flux_sum: float = 0.0
    n_sources: int = 0
    flux_sq_visible: float = 0.0
    n_visible_sources: int = 0
    rel_errors: list[float] = field(default_factory=list)
    covered: dict[str, int] = field(default_factory=dict)  # "1_all", "2_source", ...
    n_std: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STD_PIXEL_SETS, 0))
    std_images: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    violations: int = 0
    nonfinite: int = 0

    def add(self, other: _Sums) -> None:
        self.n_images += other.n_images
        for key in self.sq:
            self.sq[key] += other.sq[key]
            self.n[key] += other.n[key]
        self.flux_sq += other.flux_sq
        self.flux_sum += other.flux_sum
        self.n_sources += other.n_sources
        self.flux_sq_visible += other.flux_sq_visible
        self.n_visible_sources += other.n_visible_sources
        self.rel_errors += other.rel_errors
        for key, value in other.covered.items():
            self.covered[key] = self.covered.get(key, 0) + value
        for key in self.n_std:
            self.n_std[key] += other.n_std[key]
        self.std_images += other.std_images
        self.seconds += other.seconds
        self.megapixels += other.megapixels
        self.violations += other.violations
        self.nonfinite += other.nonfinite

    def metrics(self) -> dict[str, Any]:
        def rmse(key: str) -> float | None:
            return math.sqrt(self.sq[key] / self.n[key]) if self.n[key] else None

        def coverage(k: int, key: str) -> float | None:
            return self.covered.get(f"{k}_{key}", 0) / self.n_std[key] if self.n_std[key] else None

        out: dict[str, Any] = {
            "n_images": self.n_images,
            "n_scored_pixels": self.n["all"], "n_source_pixels": self.n["source"], "n_sky_pixels": self.n["sky"],
            "n_visible_source_pixels": self.n["visible_source"], "n_source_segment_pixels": self.n["source_segment"],
            "rmse": rmse("all"), "rmse_source": rmse("source"), "rmse_sky": rmse("sky"),
            "rmse_visible_source": rmse("visible_source"), "rmse_source_segment": rmse("source_segment"),
            "n_sources": self.n_sources, "n_visible_sources": self.n_visible_sources,
            "aperture_flux_error_rms": math.sqrt(self.flux_sq / self.n_sources) if self.n_sources else None,
            "aperture_flux_error_rms_visible": (math.sqrt(self.flux_sq_visible / self.n_visible_sources)
                                                if self.n_visible_sources else None),
            "aperture_flux_error_mean": self.flux_sum / self.n_sources if self.n_sources else None,
            "aperture_flux_rel_error_median_abs": (float(np.median(np.abs(self.rel_errors)))
                                                   if self.rel_errors else None),
            "has_std": self.std_images > 0,
        }
        for k in COVERAGE_K:
            out[f"coverage_{k}sigma"] = coverage(k, "all")
            out[f"coverage_{k}sigma_source"] = coverage(k, "source")
            out[f"coverage_{k}sigma_visible_source"] = coverage(k, "visible_source")
            out[f"coverage_{k}sigma_source_segment"] = coverage(k, "source_segment")
        out.update({"seconds": self.seconds,
                    "seconds_per_megapixel": self.seconds / self.megapixels if self.megapixels else None,
                    "known_pixel_violations": self.violations, "nonfinite_fill_pixels": self.nonfinite})
        return out


def _fill(method: str, inpainter: ImageInpainter, case: Case, prep: _Prepared
          ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Run one in-painter on one case: (mean, std or None, seconds)."""
    start = time.perf_counter()
    mean, std = inpainter(prep.image.copy(), case.hidden.copy(), case.noise_sigma)
    seconds = time.perf_counter() - start
    mean = np.asarray(mean)
    if mean.shape != case.truth.shape:
        raise InputError(f"in-painter {method} returned a mean of shape {mean.shape} for {case.name} of shape "
                         f"{case.truth.shape}", mean.shape)
    if std is not None:
        std = np.asarray(std)
        if std.shape != case.truth.shape:
            raise InputError(f"in-painter {method} returned a std of shape {std.shape} for {case.name} of shape "
                             f"{case.truth.shape}", std.shape)
    return mean, std, seconds


def _score(case: Case, prep: _Prepared, mean: np.ndarray, std: np.ndarray | None, seconds: float) -> _Sums:
    sums = _Sums(n_images=1, seconds=seconds, megapixels=case.truth.size / 1e6)
    known = ~case.hidden
    # Equal values (an exact comparison): float32 input promoted to a wider float compares equal.
    sums.violations = int(np.count_nonzero(~(mean[known] == prep.image[known])))
    filled = mean.astype(np.float64)
    sums.nonfinite = int(np.count_nonzero(~np.isfinite(filled[prep.scored])))
    error = (filled - prep.truth) / case.noise_sigma
    selections = {"all": prep.scored, "source": prep.source, "sky": prep.sky, "visible_source": prep.visible_source,
                  "source_segment": prep.source_segment}
    for key, select in selections.items():
        sums.sq[key] = float(np.sum(error[select] ** 2))
        sums.n[key] = int(np.count_nonzero(select))
    if len(prep.hit):
        good = ~case.bad
        n_labels = int(prep.labels.max()) + 1
        diff = np.where(good, filled - prep.truth, 0.0)
        error_sum = np.bincount(prep.labels.ravel(), weights=diff.ravel(), minlength=n_labels)[prep.hit]
        normalised = error_sum / (case.noise_sigma * np.sqrt(prep.segment_pixels))
        sums.flux_sq = float(np.sum(normalised**2))
        sums.flux_sum = float(np.sum(normalised))
        sums.n_sources = len(prep.hit)
        sums.flux_sq_visible = float(np.sum(normalised[prep.segment_visible] ** 2))
        sums.n_visible_sources = int(np.count_nonzero(prep.segment_visible))
        positive = prep.segment_flux > 0
        sums.rel_errors = [float(v) for v in error_sum[positive] / prep.segment_flux[positive]]
    if std is not None:
        sums.std_images = 1
        distance = np.abs(prep.truth - filled)
        spread = std.astype(np.float64)
        for key in STD_PIXEL_SETS:
            select = selections[key]
            sums.n_std[key] = int(np.count_nonzero(select))
            for k in COVERAGE_K:
                with np.errstate(invalid="ignore"):
                    sums.covered[f"{k}_{key}"] = int(np.count_nonzero(distance[select] <= k * spread[select]))
    return sums


FLOOR_SMOOTH_PIXELS = 1.0  # Gaussian sigma of the stand-in noiseless sky of coverage_floor (keeps ~8% of the noise)


def coverage_floor(cases: Iterable[Case], seed: int = 0) -> dict[str, dict[str, float | int | None]]:
    """1-sigma coverage that a predictor knowing the noiseless sky reaches on each source-pixel set, per group.

    Real images have no noiseless truth, so each case stands one in: ``sky`` = its background-
    subtracted truth smoothed by a Gaussian of :data:`FLOOR_SMOOTH_PIXELS` (bad pixels 0), and a new
    truth = ``sky`` + white noise of the case's ``noise_sigma`` (case i's noise from (``seed``, i)).
    The perfect predictor's mean is ``sky`` and its std the noise sigma, so its coverage is 68.3 %
    on any set of pixels that does not look at the new noise. The pixel sets are the scored ones of
    the new truth, picked as the evaluation picks them: ``source`` (above 3 sigma) and
    ``source_segment`` (in a photutils segment of the smoothed truth); ``all`` for reference.

    Returns:
        ``{group: {"all", "source", "source_segment": coverage, "n_source", "n_source_segment": pixels}}``
        (coverage None where a set is empty).
    """
    from scipy.ndimage import gaussian_filter

    counts: dict[str, dict[str, int]] = {}
    for index, case in enumerate(cases):
        bad = case.bad
        truth = case.truth.astype(np.float64)  # bad pixels may hold NaN: zeroed below
        residual = np.where(bad, 0.0, truth - float(np.median(truth[~case.hidden])))
        sky = gaussian_filter(residual, FLOOR_SMOOTH_PIXELS)
        noise = np.random.default_rng([seed, index]).standard_normal(sky.shape) * case.noise_sigma
        truth = np.where(bad, 0.0, sky + noise)
        background = float(np.median(truth[~case.hidden]))
        above = case.scored & (truth - background > SOURCE_THRESHOLD_SIGMA * case.noise_sigma)
        segment = case.scored & (_segmentation(np.where(bad, 0.0, truth - background), bad, case.noise_sigma) > 0)
        covered = np.abs(noise) <= case.noise_sigma
        tally = counts.setdefault(case.group_name, {})
        for key, select in (("all", case.scored), ("source", above), ("source_segment", segment)):
            tally[f"n_{key}"] = tally.get(f"n_{key}", 0) + int(np.count_nonzero(select))
            tally[f"covered_{key}"] = tally.get(f"covered_{key}", 0) + int(np.count_nonzero(covered & select))
    out: dict[str, dict[str, float | int | None]] = {}
    for group, tally in counts.items():
        entry: dict[str, float | int | None] = {}
        for key in ("all", "source", "source_segment"):
            entry[key] = tally[f"covered_{key}"] / tally[f"n_{key}"] if tally[f"n_{key}"] else None
        entry.update(n_source=tally["n_source"], n_source_segment=tally["n_source_segment"])
        out[group] = entry
    return out


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


RATIO_KEYS = ("rmse", "rmse_source", "rmse_sky", "aperture_flux_error_rms", "rmse_visible_source",
              "aperture_flux_error_rms_visible")
# Each ratio key's squared-error sum in _Sums (the pixel or source counts are the same for every method).
_RATIO_SQUARES = {"rmse": lambda s: s.sq["all"], "rmse_source": lambda s: s.sq["source"],
                  "rmse_sky": lambda s: s.sq["sky"], "aperture_flux_error_rms": lambda s: s.flux_sq,
                  "rmse_visible_source": lambda s: s.sq["visible_source"],
                  "aperture_flux_error_rms_visible": lambda s: s.flux_sq_visible}
RATIO_BOOTSTRAP = 1000  # resamples of a group's images behind each ratio's interval
RATIO_INTERVAL = (15.865, 84.135)  # percentiles: the central 68.3 % ("1 sigma")


def _ratios(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each method's RMSEs and aperture-flux error over biharmonic's (where both are present)."""
    base = methods.get(RATIO_BASELINE)
    if base is None:
        return {}
    return {name: {key: _ratio(metrics[key], base[key]) for key in RATIO_KEYS}
            for name, metrics in methods.items() if name != RATIO_BASELINE}


def ratio_intervals(squares: Mapping[str, np.ndarray], n_bootstrap: int = RATIO_BOOTSTRAP, seed: int = 0
                    ) -> dict[str, dict[str, list[float] | None]]:
    """68.3 % intervals of each method's ratios to biharmonic, by a bootstrap over the images.

    A few images with a bright source under a hole hold most of a group's squared error, so a ratio
    pooled over the group moves a lot with which images were drawn. Each resample draws the group's
    images with replacement (the same draw for every method: the ratios are paired) and recomputes
    each pooled ratio, ``sqrt(sum of the method's squared errors / sum of biharmonic's)``.

    Args:
        squares: method -> (n_images, len(RATIO_KEYS)) per-image squared-error sums, in RATIO_KEYS order.
        n_bootstrap: resamples; seed: their generator's seed.

    Returns:
        ``{method: {ratio key: [low, high] or None}}`` for every method but biharmonic; None where the
        group has fewer than 2 images or biharmonic's sum is 0 in more than a sixth of the resamples.
    """
    base = squares.get(RATIO_BASELINE)
    if base is None:
        return {}
    n_images = base.shape[0]
    out: dict[str, dict[str, list[float] | None]] = {}
    draws = np.random.default_rng(seed).integers(0, n_images, (n_bootstrap, n_images)) if n_images > 1 else None
    for method, values in squares.items():
        if method == RATIO_BASELINE:
            continue
        if draws is None:
            out[method] = dict.fromkeys(RATIO_KEYS)
            continue
        denominator = base[draws].sum(axis=1)  # (n_bootstrap, keys)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.sqrt(values[draws].sum(axis=1) / denominator)
        ratio[denominator <= 0] = np.nan
        out[method] = {}
        for k, key in enumerate(RATIO_KEYS):
            finite = ratio[np.isfinite(ratio[:, k]), k]
            out[method][key] = ([float(v) for v in np.percentile(finite, RATIO_INTERVAL)]
                                if finite.size >= n_bootstrap * 5 // 6 else None)
    return out


def _squares(case: _Sums) -> list[float]:
    """One case's squared-error sums, in RATIO_KEYS order (what :func:`ratio_intervals` resamples)."""
    return [float(_RATIO_SQUARES[key](case)) for key in RATIO_KEYS]


def _block(sums_by_method: dict[str, _Sums], n_images: int, n_masked: int, n_bad: int,
           per_case: dict[str, list[list[float]]]) -> dict[str, Any]:
    """One group's pooled metrics, ratios and ratio intervals (``per_case``: method -> each case's :func:`_squares`)."""
    methods = {name: sums.metrics() for name, sums in sums_by_method.items()}
    return {"n_images": n_images, "n_masked_pixels": n_masked, "n_bad_pixels": n_bad, "methods": methods,
            "ratios_vs_biharmonic": _ratios(methods),
            "ratio_intervals_vs_biharmonic": ratio_intervals(
                {method: np.asarray(rows, dtype=np.float64) for method, rows in per_case.items()})}


def _json_ready(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def evaluate_cases(cases: Iterable[Case], inpainters: Mapping[str, ImageInpainter], progress: bool = True,
                   keep_examples: int = 3, hidden_value: float = np.nan) -> EvaluationResult:
    """Fill the holes of every case with every in-painter and score the fills.

    Args:
        cases: the test images (any iterable; each is scored and dropped, except the kept examples).
        inpainters: method name -> ``f(image, hidden, noise_sigma) -> (mean, std or None)``; the image is
            float32 with the hidden pixels (``mask | bad``) set to ``hidden_value``.
        progress: show a tqdm progress bar over the cases.
        keep_examples: how many cases to keep, with their fills, for :func:`plot_examples`: those with
            the most masked source light (ties: the first ones).
        hidden_value: what the in-painters see in hidden pixels (NaN: a leak shows).

    Returns:
        An :class:`EvaluationResult`: ``{"groups": {group: {"n_images", "n_masked_pixels",
        "n_bad_pixels", "methods": {method: metrics}, "ratios_vs_biharmonic": {method: ratios}}},
        "overall": (the same, over all cases), "per_image": [rows], "settings": {...}}``; every number
        is a plain int, float or None (never NaN).

    Raises:
        InputError: no cases or no in-painters, two cases of the same name, or an in-painter returned
            arrays of the wrong shape.
    """
    from tqdm.auto import tqdm

    if not inpainters:
        raise InputError("no in-painting methods to evaluate", None)
    sums: dict[str, dict[str, _Sums]] = {}
    case_squares: dict[str, dict[str, list[list[float]]]] = {}  # group -> method -> each case's _squares
    counts: dict[str, list[int]] = {}  # group -> [images, masked pixels, bad pixels]
    per_image: list[dict[str, Any]] = []
    kept: list[tuple[float, int, Case, dict[str, tuple[np.ndarray, np.ndarray | None]]]] = []
    names: set[str] = set()
    total = len(cases) if hasattr(cases, "__len__") else None
    for index, case in enumerate(tqdm(cases, total=total, disable=not progress, desc="evaluating in-painting",
                                      unit="image")):
        if not isinstance(case, Case):
            raise InputError(f"case {index} is a {type(case).__name__}, not a Case", index)
        if case.name in names:
            raise InputError(f"two cases are named {case.name!r}; case names must be unique", case.name)
        names.add(case.name)
        prep = _prepare(case, hidden_value)
        group = case.group_name
        tally = counts.setdefault(group, [0, 0, 0])
        tally[0] += 1
        tally[1] += int(np.count_nonzero(prep.scored))
        tally[2] += int(np.count_nonzero(case.bad))
        row: dict[str, Any] = {"name": case.name, "group": group, "shape": list(case.truth.shape),
                               "noise_sigma": case.noise_sigma, "background": prep.background,
                               "n_masked_pixels": int(np.count_nonzero(prep.scored)),
                               "n_source_pixels": int(np.count_nonzero(prep.source)),
                               "n_bad_pixels": int(np.count_nonzero(case.bad)), "n_sources_hit": len(prep.hit),
                               "methods": {}}
        fills: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for method, inpainter in inpainters.items():
            mean, std, seconds = _fill(method, inpainter, case, prep)
            case_sums = _score(case, prep, mean, std, seconds)
            sums.setdefault(group, {}).setdefault(method, _Sums()).add(case_sums)
            case_squares.setdefault(group, {}).setdefault(method, []).append(_squares(case_sums))
            metrics = case_sums.metrics()
            row["methods"][method] = {key: metrics[key] for key in (
                "rmse", "rmse_source", "rmse_sky", "aperture_flux_error_rms", "coverage_1sigma", "seconds",
                "known_pixel_violations")}
            if keep_examples > 0:
                fills[method] = (mean, std)
        per_image.append(row)
        if keep_examples > 0:
            # Keep the cases with the most masked source light (a min-heap of the kept ones).
            entry = (prep.light, -index, case, fills)
            if len(kept) < keep_examples:
                heapq.heappush(kept, entry)
            elif entry[:2] > kept[0][:2]:
                heapq.heapreplace(kept, entry)
    if not per_image:
        raise InputError("no test images to evaluate", None)

    overall: dict[str, _Sums] = {}
    for by_method in sums.values():
        for method, method_sums in by_method.items():
            overall.setdefault(method, _Sums()).add(method_sums)
    groups = {group: _block(sums[group], *counts[group], case_squares[group]) for group in counts}
    totals = [sum(tally[i] for tally in counts.values()) for i in range(3)]
    everything = {method: [row for by_method in case_squares.values() for row in by_method.get(method, [])]
                  for method in inpainters}
    settings = {
        "methods": list(inpainters), "hidden_value": None if math.isnan(hidden_value) else hidden_value,
        "in_painter_input": "float32, hidden pixels (mask | bad) set to hidden_value (null = NaN)",
        "units": "errors in units of each image's noise sigma; aperture errors in noise sigma * sqrt(segment pixels)",
        "source_threshold_sigma": SOURCE_THRESHOLD_SIGMA, "background": "median of the unhidden pixels",
        "segmentation": {"method": "photutils.segmentation.detect_sources", "threshold_sigma": SEGMENT_THRESHOLD_SIGMA,
                         "npixels": SEGMENT_MIN_PIXELS, "smooth_fwhm_pixels": SEGMENT_SMOOTH_FWHM_PIXELS,
                         "source_segment": "scored pixels inside a segment (coverage and RMSE *_source_segment)"},
        "coverage_k": list(COVERAGE_K), "ratio_baseline": RATIO_BASELINE,
        "ratio_intervals": f"central 68.3% of each ratio over {RATIO_BOOTSTRAP} bootstrap resamples of the group's "
                           "images (the same resample for every method), seed 0",
    }
    result = EvaluationResult(_json_ready({"groups": groups, "overall": _block(overall, *totals, everything),
                                           "per_image": per_image, "settings": settings}))
    kept.sort(key=lambda entry: entry[:2], reverse=True)
    result.example_cases = [entry[2] for entry in kept]
    result.example_fills = {entry[2].name: entry[3] for entry in kept}
    return result


# --- figures ---------------------------------------------------------------------------------------

EXAMPLE_CROP_PIXELS = 256  # larger images are shown cropped to the window with the most masked pixels


def _crop(case: Case, size: int) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window (or the whole image where smaller) holding the most scored pixels,
    source pixels counting ten times."""
    height, width = case.truth.shape
    if height <= size and width <= size:
        return slice(0, height), slice(0, width)
    hy, hx = min(size, height), min(size, width)
    truth = np.where(case.bad, 0.0, case.truth.astype(np.float64))
    visible = truth[~case.hidden]
    background = float(np.median(visible)) if visible.size else 0.0
    weight = case.scored * (1.0 + 9.0 * (truth - background > SOURCE_THRESHOLD_SIGMA * case.noise_sigma))
    total = np.pad(weight.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    boxes = total[hy:, hx:] - total[:-hy, hx:] - total[hy:, :-hx] + total[:-hy, :-hx]
    y0, x0 = np.unravel_index(int(np.argmax(boxes)), boxes.shape)
    return slice(int(y0), int(y0) + hy), slice(int(x0), int(x0) + hx)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_examples(cases: Iterable[Case], fills: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray | None]]],
                  out_png: Path, title: str, crop: int = EXAMPLE_CROP_PIXELS) -> None:
    """One row per case: truth, truth with the holes, each method's fill, each std map, each |residual|/sigma.

    Images are in noise-sigma units above the background with an arcsinh stretch, on one scale per
    row (from the truth); |residual| / sigma is on one scale (0-5) everywhere. Images larger than
    ``crop`` pixels are cropped to the window with the most masked (source) pixels.

    Args:
        cases: the cases to show (:attr:`EvaluationResult.example_cases`).
        fills: ``{case name: {method: (mean, std or None)}}`` (:attr:`EvaluationResult.example_fills`).
        out_png: the PNG to write (atomically).
        title: the figure's title.
    """
    plt = _pyplot()
    cases = [case for case in cases if case.name in fills]
    if not cases:
        return
    methods = list(dict.fromkeys(method for case in cases for method in fills[case.name]))
    with_std = [m for m in methods if any(fills[c.name].get(m, (None, None))[1] is not None for c in cases)]
    columns = (["truth", "truth with holes"] + [f"{m}" for m in methods] + [f"{m} std / sigma" for m in with_std]
               + [f"|{m} - truth| / sigma" for m in methods])
    fig, axes = plt.subplots(len(cases), len(columns), figsize=(2.1 * len(columns), 2.3 * len(cases)),
                             squeeze=False)
    grey = plt.get_cmap("gray_r").with_extremes(bad="tab:cyan")
    for row, case in enumerate(cases):
        window = _crop(case, crop)
        truth = np.where(case.bad, np.nan, case.truth.astype(np.float64))[window]
        visible = truth[~case.hidden[window]]
        background = float(np.nanmedian(visible)) if visible.size else 0.0

        def stretch(values: np.ndarray, background: float = background, sigma: float = case.noise_sigma):
            return np.arcsinh((values - background) / sigma)

        finite = stretch(truth)[np.isfinite(truth)]
        vmin, vmax = (np.percentile(finite, [1, 99.7]) if finite.size else (0.0, 1.0))
        panels: list[tuple[np.ndarray, dict]] = [
            (stretch(truth), {"cmap": grey, "vmin": vmin, "vmax": vmax}),
            (stretch(np.where(case.hidden[window], np.nan, truth)), {"cmap": grey, "vmin": vmin, "vmax": vmax})]
        for method in methods:
            mean = fills[case.name].get(method, (None, None))[0]
            panels.append((stretch(np.asarray(mean, np.float64)[window]) if mean is not None else None,
                           {"cmap": grey, "vmin": vmin, "vmax": vmax}))
        for method in with_std:
            std = fills[case.name].get(method, (None, None))[1]
            panels.append((np.where(case.hidden[window], np.asarray(std, np.float64)[window] / case.noise_sigma,
                                    np.nan) if std is not None else None, {"cmap": "magma", "vmin": 0.0}))
        for method in methods:
            mean = fills[case.name].get(method, (None, None))[0]
            residual = (np.abs(np.asarray(mean, np.float64)[window] - truth) / case.noise_sigma
                        if mean is not None else None)
            panels.append((residual, {"cmap": "viridis", "vmin": 0.0, "vmax": 5.0}))
        for col, (values, style) in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if values is not None:
                image = ax.imshow(values, origin="lower", interpolation="nearest", **style)
                if col >= 2 + len(methods):
                    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(columns[col], fontsize=7)
            if col == 0:
                ax.set_ylabel(case.name if len(case.name) <= 28 else "..." + case.name[-25:], fontsize=7)
    fig.suptitle(f"{title}\n(arcsinh of (image - background) / noise sigma; holes in cyan)", fontsize=9)
    fig.tight_layout()
    _save(fig, Path(out_png))


def plot_rmse_bars(result: Mapping[str, Any], out_png: Path, title: str = "Masked-pixel RMSE per group") -> None:
    """Bar chart of the source- and sky-pixel RMSE (noise sigma units) of each method in each group."""
    plt = _pyplot()
    groups = result.get("groups") or {}
    names = list(groups)
    methods = list(dict.fromkeys(m for g in groups.values() for m in g["methods"]))
    if not names or not methods:
        return
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.2 * len(names) * len(methods) + 2), 3.4), squeeze=False)
    width = 0.8 / len(methods)
    positions = np.arange(len(names))
    for ax, key, label in zip(axes[0], ("rmse_source", "rmse_sky"), ("source pixels", "sky pixels"), strict=True):
        for k, method in enumerate(methods):
            values = [groups[g]["methods"].get(method, {}).get(key) for g in names]
            ax.bar(positions + (k - (len(methods) - 1) / 2) * width, [np.nan if v is None else v for v in values],
                   width, label=method)
        ax.set_xticks(positions, names, fontsize=8)
        ax.set_ylabel("RMSE [noise sigma]")
        ax.set_title(label, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(out_png))


# --- report ----------------------------------------------------------------------------------------

def report_path(out_dir: Path) -> Path:
    return Path(out_dir) / REPORT_JSON


def check_report_absent(out_dir: Path, overwrite: bool = False) -> Path:
    """The report's path; InputError (one line) when it exists and ``overwrite`` is False."""
    path = report_path(out_dir)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it", str(path))
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory", str(out_dir))
    return path


def write_report(result: Mapping[str, Any], out_dir: Path, provenance: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``out_dir/inpainting_evaluation.json`` (atomically) and return its path.

    The JSON is ``result`` with ``provenance`` (inputs, methods, model, versions: whatever the
    caller records) under ``"provenance"``. NaN never reaches the file (it becomes null).

    Raises:
        InputError: the file exists and ``overwrite`` is False, or ``out_dir`` is not a directory.
    """
    path = check_report_absent(out_dir, overwrite)
    payload = dict(_json_ready(dict(result)))
    if provenance is not None:
        payload["provenance"] = _json_ready(provenance)
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
    return path
