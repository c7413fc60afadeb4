"""Shear validation harness: measure a training set chunk by chunk, calibrate, fit m and c.

What ``lensforge validate-shear`` runs on a store (simulated or generated):

1. ``measure_chunk``: for each method (HSM's REGAUSS and KSB; Fourier_Quad, independent of HSM)
   and each *variant* of the images, the PSF-corrected ellipticity of every stamp with the
   stored PSF, in the shear convention (``lensforge.pipeline.shear.calibration.distortion_to_shear``
   for REGAUSS); and the per-object
   response ``R[i, j] = (e_i(g_j + dg) - e_i(g_j - dg)) / 2dg`` from the stored
   counterfactuals. Variants: ``raw`` (every pixel as observed), ``none`` (masked pixels
   left out through HSM's weight map: no in-painting), ``biharmonic`` and ``model``
   (masked pixels in-painted; ``model`` reads the store's ``inpainted`` array, written by
   ``lensforge inpaint``, or runs the model given) and, when asked for, ``image_model`` (the
   shipped image in-painter of R2 3/5, a correction on top of the biharmonic fill),
   ``symmetric`` (each masked pixel whose point mirror about the galaxy's centroid is known takes
   its value, biharmonic elsewhere: :mod:`lensforge.pipeline.inpaint.symmetry`) and
   ``image_model_symmetric`` (the same mirror, the image in-painter elsewhere).
2. ``validation_report``: calibrate with the mean response of the raw counterfactuals (the
   simulation's own calibration: masking must not change it), fit ``g_est = (1 + m) g + c``
   per component with a bootstrap over ring pairs, and the *shift* of m and c that masking
   and each in-painting cause, with a paired bootstrap.

Only per-object numbers leave a chunk (a few floats each), so a store of any size is
validated in the memory of one chunk per worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lensforge.atomic import atomic_path
from lensforge.catalogs.schema import COUNTERFACTUAL_SHIFTS
from lensforge.catalogs.store import open_store
from lensforge.errors import InputError
from lensforge.pipeline.inpaint.stamps import inpainting_complete
from lensforge.pipeline.shear.calibration import (
    LSST_C_REQUIREMENT,
    LSST_M_REQUIREMENT,
    bias_shift,
    calibrate_shear,
    distortion_to_shear,
    response_diagonal_range,
    response_problem,
    secant_response,
    shear_bias_table,
    shear_response,
    stack_counterfactuals,
    weighting_shift,
    zero_shear_weighting_shift,
)
from lensforge.pipeline.shear.figures import plot_shear_bias
from lensforge.pipeline.shear.measure import ELLIPTICITY_CONVENTIONS, measure_shear

VARIANTS = {
    "raw": "every pixel as observed (no defects)",
    "none": "masked pixels left out of the HSM fit (weight 0), no in-painting",
    "biharmonic": "masked pixels in-painted by the biharmonic baseline (scikit-image)",
    "model": "masked pixels in-painted by the VAE-GAN posterior mean",
    "image_model": "masked pixels in-painted by the image in-painter (shipped weights: the biharmonic fill plus "
                   "the network's correction, mean latent)",
    "symmetric": "masked pixels with a known point mirror about the galaxy's centroid take its value, the rest "
                 "biharmonic (classical, lensforge.pipeline.inpaint.symmetry)",
    "image_model_symmetric": "masked pixels with a known point mirror about the galaxy's centroid take its value, "
                             "the rest the image in-painter",
}
# The learned in-paintings, each judged against biharmonic (R2 4/5 (b)).
LEARNED_VARIANTS = ("model", "image_model", "image_model_symmetric")
METHODS = tuple(ELLIPTICITY_CONVENTIONS)


def check_request(methods: Sequence[str], variants: Sequence[str]) -> None:
    """Raise ``InputError`` for an unknown method or variant, naming the valid ones."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown shear methods {unknown or methods}; valid: {list(METHODS)}", unknown)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise InputError(f"unknown variants {unknown or variants}; valid: {list(VARIANTS)}", unknown)
    if "raw" not in variants:
        raise InputError(f"variants must include 'raw' (the reference of every shift), got {list(variants)}",
                         list(variants))


def _shear_convention(shapes: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    e1, e2 = np.asarray(shapes["e1"]), np.asarray(shapes["e2"])
    return distortion_to_shear(e1, e2) if shapes["convention"] == "distortion" else (e1, e2)


def _variant_images(variant: str, images: np.ndarray, masks: np.ndarray, noise_sigma: np.ndarray, model,
                    n_samples: int, seed: int, start: int,
                    stored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(images, HSM weight map or None) of one variant, or None where it cannot be made (no model).

    ``stored`` is the store's ``inpainted`` array for these objects: used for ``model`` when no
    model is given (it exists only for the images, not for their counterfactuals).
    """
    if variant == "raw":
        return images, None
    if variant == "none":
        return images, (masks == 0).astype(np.float64)
    if variant == "model" and model is None:
        return None if stored is None else (stored, None)
    if variant in ("image_model", "image_model_symmetric"):
        from lensforge.pipeline.inpaint.stamps import inpaint_with_image_inpainter  # imports torch

        return inpaint_with_image_inpainter(images, masks, noise_sigma,
                                            point_symmetric=variant == "image_model_symmetric"), None
    from lensforge.pipeline.inpaint.stamps import inpaint_arrays  # imports torch: only where in-painting is asked for

    # The same seed and object indices for a stamp and its counterfactuals: the model's posterior
    # draws are shared, so they cancel in the response like the pixel noise does.
    filled, _ = inpaint_arrays(variant, images, masks, noise_sigma, model=model, n_samples=n_samples, seed=seed,
                               start_index=start)
    return filled, None


def _measure(stack: tuple[np.ndarray, np.ndarray | None], psf: np.ndarray, scale: float, method: str,
             noise_sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, weights = stack
    return _shear_convention(measure_shear(images, psf, scale, method, weights=weights, noise_sigma=noise_sigma))


def measure_chunk(store_path: str | Path, start: int, stop: int, methods: Sequence[str] = METHODS,
                  variants: Sequence[str] = ("raw",), model=None, n_samples: int = 8,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Shear-convention ellipticities and responses of objects ``start..stop-1`` of a store.

    Each variant's response comes from its own counterfactuals (masked and in-painted the same
    way as the stamp), so the response control variate of ``validation_report`` also cancels
    the noise that masking and in-painting add.

    Returns ``{"<method>/<variant>/e1": (n,), ".../e2": (n,), "<method>/<variant>/response":
    (n, 2, 2)}`` (NaN where HSM failed, or for the ``model`` response when only the stored
    in-painting exists) and ``"<method>/raw/secant_response"`` (:func:`secant_response`, the
    O(g^2) term removed); the responses need the store's ``counterfactuals``; and
    ``"interpolated_centre"`` (n,) bool, the stamps with a masked pixel within one PSF FWHM of their
    centre (:func:`~lensforge.pipeline.inpaint.symmetry.interpolated_centre`).
    """
    check_request(methods, variants)
    group = open_store(store_path)
    if "counterfactuals" not in group:
        raise InputError(f"{store_path}: no counterfactuals to calibrate with; simulate with "
                         "--set simulation.counterfactual_delta_g=0.01", str(store_path))
    if "model" in variants and model is None and not inpainting_complete(group):
        raise InputError("variant 'model' needs the store's inpainted array (run `lensforge inpaint`) or a model",
                         "model")
    delta_g = float(group["counterfactuals"].attrs["delta_g"])
    scale = float(group.attrs["pixel_scale_arcsec"])
    images = np.asarray(group["images"][start:stop])
    masks = np.asarray(group["masks"][start:stop])
    noise_sigma = np.asarray(group["noise_sigma"][start:stop])
    psf = np.asarray(group["psf"][start:stop])
    psf = psf[0] if np.all(psf == psf[:1]) else psf  # one PSF image for the chunk when they are all equal
    counterfactuals = np.asarray(group["counterfactuals"][start:stop])
    g1, g2 = np.asarray(group["g1"][start:stop]), np.asarray(group["g2"][start:stop])
    stored = np.asarray(group["inpainted"][start:stop]) if inpainting_complete(group) and model is None else None
    from lensforge.pipeline.inpaint.symmetry import interpolated_centre, psf_fwhm_pixels

    out: dict[str, np.ndarray] = {"interpolated_centre": interpolated_centre(masks, psf_fwhm_pixels(psf))}
    for variant in variants:
        stack = _variant_images(variant, images, masks, noise_sigma, model, n_samples, seed, start, stored)
        shifted = [_variant_images(variant, counterfactuals[:, k], masks, noise_sigma, model, n_samples, seed, start)
                   for k in range(len(COUNTERFACTUAL_SHIFTS))]
        for method in methods:
            key = f"{method}/{variant}"
            out[f"{key}/e1"], out[f"{key}/e2"] = _measure(stack, psf, scale, method, noise_sigma)
            if any(s is None for s in shifted):
                out[f"{key}/response"] = np.full((len(images), 2, 2), np.nan)
                continue
            measured = [dict(zip(("e1", "e2"), _measure(s, psf, scale, method, noise_sigma), strict=True))
                        for s in shifted]
            e_plus, e_minus = stack_counterfactuals(*measured)
            out[f"{key}/response"] = shear_response(e_plus, e_minus, delta_g, per_object=True)
            if variant == "raw":
                out[f"{key}/secant_response"] = secant_response(out[f"{key}/response"], e_plus, e_minus,
                                                                out[f"{key}/e1"], out[f"{key}/e2"], g1, g2, delta_g)
    return out


ON_GALAXY_COVERAGE_RANGE = (0.60, 0.76)  # R2 4/5's target for the 1-sigma coverage on galaxy pixels


def inpainting_uncertainty(store_path: str | Path) -> dict[str, Any] | None:
    """How well the store's in-painting std (the ``model`` variant) covers what it hid: 1- and 2-sigma
    coverage of the observed pixels over all masked pixels and on the galaxy's (noiseless > noise sigma;
    ``uncertainty_coverage``), chunk by chunk. None when the store has no complete in-painting with std."""
    from lensforge.pipeline.evaluation.metrics import uncertainty_coverage
    from lensforge.pipeline.stamps.simulate import chunk_ranges

    group = open_store(store_path)
    if not inpainting_complete(group) or "inpainted_std" not in group or "noiseless" not in group:
        return None
    n_objects, chunk = int(group["images"].shape[0]), int(group["images"].chunks[0])
    within: dict[str, float] = {}
    for start, stop in chunk_ranges(n_objects, chunk):
        part = uncertainty_coverage(*(np.asarray(group[name][start:stop]) for name in (
            "inpainted", "inpainted_std", "images", "masks")), noise_sigma=np.asarray(group["noise_sigma"][start:stop]),
            galaxy=np.asarray(group["noiseless"][start:stop]))
        for prefix in ("", "on_galaxy_"):
            count = part[f"{prefix}n_pixels"]
            within[f"{prefix}n_pixels"] = within.get(f"{prefix}n_pixels", 0) + count
            for k in (1, 2):
                if count:
                    key = f"{prefix}coverage_{k}sigma"
                    within[key] = within.get(key, 0.0) + part[key] * count
    out: dict[str, Any] = {"reference": "the observed (noisy) pixels that were hidden",
                           "galaxy_pixels": "noiseless > noise_sigma", "target": list(ON_GALAXY_COVERAGE_RANGE)}
    for prefix in ("", "on_galaxy_"):
        count = int(within.get(f"{prefix}n_pixels", 0))
        out[f"{prefix}n_pixels"] = count
        for k in (1, 2):
            out[f"{prefix}coverage_{k}sigma"] = within[f"{prefix}coverage_{k}sigma"] / count if count else float("nan")
    low, high = ON_GALAXY_COVERAGE_RANGE
    out["on_galaxy_coverage_in_range"] = bool(low <= out["on_galaxy_coverage_1sigma"] <= high)
    return out


def complete_pairs(group_ids: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """``usable`` restricted to objects whose whole group (ring pair) is usable: a lone member adds shape noise."""
    _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
    usable_per_group = np.bincount(inverse, weights=usable.astype(float), minlength=counts.size)
    return usable & (usable_per_group[inverse] == counts[inverse])


def response_control_variate(e1: np.ndarray, e2: np.ndarray, response: np.ndarray, g1: np.ndarray,
                             g2: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``e - (R_i - <R>) g``: each shape minus its own response's departure from the mean, times the true shear.

    A variance reduction that knowing ``g`` (a simulation) allows: ``R_i - <R>`` has zero mean
    over the sample and is independent of the applied shear, so the expected fit is unchanged,
    while the largest term left in a noise-cancelled ring pair, ``2 g (R_pair(noise) - <R>)``
    (how this noise realisation changes the response), is removed. On the default set it cuts
    the error of m about 14-fold. The mean ``<R>`` is over ``usable`` objects.
    """
    departure = response - mean_response(response, usable)
    truth = np.stack([g1, g2], axis=1)
    adjusted = np.stack([e1, e2], axis=1) - np.einsum("nij,nj->ni", departure, truth)
    return adjusted[:, 0], adjusted[:, 1]


def mean_response(response: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """The 2x2 mean of the per-object responses over ``usable`` objects."""
    return response[usable].mean(axis=0)


def response_shift(labels: Mapping[str, np.ndarray], raw_shapes: tuple[np.ndarray, np.ndarray],
                   raw_response: np.ndarray, shapes: tuple[np.ndarray, np.ndarray], response: np.ndarray,
                   usable: np.ndarray, n_bootstrap: int = 200, seed: int = 0, draws_out: list | None = None
                   ) -> dict[str, dict[str, float | int]]:
    """Shift of m and c from the raw shapes to a variant's, both calibrated by the raw mean response: paired.

    Each set of shapes takes its own response control variate (:func:`response_control_variate`:
    ``e - (R_i - <R_i>) g``, ``response`` the variant's own counterfactual responses, or the raw ones
    where it has none), the difference is calibrated by the mean raw response and fitted against the
    true shear per component: ``{g1|g2: {dm, dc, dm_err, dc_err, n, n_groups}}`` as
    ``lensforge.pipeline.shear.calibration.bias_shift`` gives.

    The control variate leaves ``dm`` equal to the sample's mean change of response over the raw mean,
    ``<R_variant - R_raw> / <R_raw>``, with almost no scatter from pixel or shape noise. What scatters
    is the change of response itself, object to object (a mask over the galaxy changes it, one on the
    sky does not), so every bootstrap replicate (whole ring pairs drawn with replacement) recomputes
    the mean responses of its own draw. A bootstrap that holds them at the full sample's, as
    ``bias_shift`` on pre-adjusted shapes does, misses that scatter (the test builds such a case).
    The draws depend only on ``seed`` and the ring pairs used, so two variants measured on the same
    pairs share them: ``draws_out`` (a list) receives this call's (n_bootstrap, 2, 2) replicates of
    (slope, intercept) x (g1, g2), whose difference between two calls is that of the two shifts.
    """
    g = np.stack([np.asarray(labels["g1"], float), np.asarray(labels["g2"], float)], axis=1)
    groups = np.asarray(labels["ring_pair_id"])
    raw_e = np.stack([np.asarray(v, float) for v in raw_shapes], axis=1)
    e = np.stack([np.asarray(v, float) for v in shapes], axis=1)
    used = usable & np.all(np.isfinite(raw_e), axis=1) & np.all(np.isfinite(e), axis=1)
    used &= np.all(np.isfinite(raw_response), axis=(1, 2)) & np.all(np.isfinite(response), axis=(1, 2))
    ids, group_index = np.unique(groups[used], return_inverse=True)
    g, raw_e, e = g[used], raw_e[used], e[used]
    raw_response, response = raw_response[used], response[used]
    # What does not depend on the draw: the difference of the shapes minus that of the responses times g.
    base = e - raw_e - np.einsum("nij,nj->ni", response - raw_response, g)

    def estimate(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = weight.sum()
        mean_raw = np.einsum("n,nij->ij", weight, raw_response) / total
        mean_variant = np.einsum("n,nij->ij", weight, response) / total
        delta = (base + g @ (mean_variant - mean_raw).T) @ np.linalg.inv(mean_raw).T
        slopes, intercepts = np.empty(2), np.empty(2)
        for k in range(2):
            x_mean = weight @ g[:, k] / total
            y_mean = weight @ delta[:, k] / total
            dx = g[:, k] - x_mean
            slopes[k] = (weight * dx) @ (delta[:, k] - y_mean) / ((weight * dx) @ dx)
            intercepts[k] = y_mean - slopes[k] * x_mean
        return slopes, intercepts

    slope, intercept = estimate(np.ones(len(g)))
    generator = np.random.default_rng(seed)
    draws = np.array([estimate(np.bincount(generator.integers(0, ids.size, ids.size), minlength=ids.size)
                               [group_index].astype(float)) for _ in range(int(n_bootstrap))])
    errors = draws.std(axis=0, ddof=1)  # (2: slope / intercept, 2 components)
    if draws_out is not None:
        draws_out.append(draws)
    return {name: {"dm": float(slope[k]), "dc": float(intercept[k]), "dm_err": float(errors[0, k]),
                   "dc_err": float(errors[1, k]), "n": int(used.sum()), "n_groups": int(ids.size)}
            for k, name in enumerate(("g1", "g2"))}


# The noise test's shifts and their verdicts, in the order the headline verdict prefers them: m's g -> 0
# limit, the secant calibration's shift, the local calibration's (see _verdicts).
NOISE_TEST_VERDICTS = (("snr_weighting_zero_shear", "m_unchanged_when_snr_weighted_zero_shear"),
                       ("snr_weighting_secant", "m_unchanged_when_snr_weighted_secant"),
                       ("snr_weighting", "m_unchanged_when_snr_weighted_local"))


def _shears_spread(labels: Mapping[str, np.ndarray]) -> bool:
    """Whether the applied shears take three or more values of |g|, as the noise test's g -> 0 limit needs
    (a set at one |g|, e.g. ``g_min = g_max``, is judged at its own shear only)."""
    modulus = np.hypot(np.asarray(labels["g1"], float), np.asarray(labels["g2"], float))
    return np.unique(np.round(modulus[np.isfinite(modulus)], 12)).size >= 3


def _unchanged(shift: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether a paired shift ``{g1|g2: {dm, dm_err}}`` is within 2 sigma of zero in both components."""
    return all(math.isfinite(shift[c]["dm_err"]) and abs(shift[c]["dm"]) < 2.0 * shift[c]["dm_err"]
               for c in ("g1", "g2"))


def _verdicts(methods: dict, variants: Sequence[str]) -> dict[str, Any]:
    """Targets of the issue: (a) raw |m| < 1e-3 and |c| < 1e-4; (b) |dm| of each learned in-painting
    (:data:`LEARNED_VARIANTS`) < biharmonic's and < 1e-3."""
    verdicts: dict[str, Any] = {}
    for method, entry in methods.items():
        # shear_bias_table's own verdict: |m| < 1e-3 and |c| < 1e-4 in both components, errors not considered.
        verdict = {"raw_meets_lsst": bool(entry["raw"]["meets_requirement"])}
        if "raw_secant" in entry:
            verdict["raw_secant_meets_lsst"] = bool(entry["raw_secant"]["meets_requirement"])
        # The noise test. m carries an O(g^2) term that differs from galaxy to galaxy: the local calibration's
        # (-2 b g^2 / R0), and what the secant estimate does not measure (mixed terms). Weighting by S/N moves
        # m by how that term varies over the population even when the noise ignores the shear; that part
        # vanishes as g -> 0, while noise that knows the shear moves m at any g (the ~+2e-3 it gave before
        # the noise was fixed). So the verdict is taken on m's g -> 0 limit (snr_weighting_zero_shear, the
        # secant calibration's shapes where there are any); the shifts at the sample's own shears, local and
        # secant, are reported and judged beside it.
        for key, name in NOISE_TEST_VERDICTS:
            if key in entry:
                verdict[name] = _unchanged(entry[key])
        if "snr_weighting" in entry:
            verdict["m_unchanged_when_snr_weighted"] = next(verdict[name] for _, name in NOISE_TEST_VERDICTS
                                                            if name in verdict)
        learned = [v for v in LEARNED_VARIANTS if v in variants]
        if learned and "biharmonic" in variants:
            worst = {v: max(abs(entry[v]["shift"][c]["dm"]) for c in ("g1", "g2")) for v in (*learned, "biharmonic")}
            for variant in learned:
                verdict[f"{variant}_shift_below_biharmonic"] = worst[variant] < worst["biharmonic"]
                verdict[f"{variant}_shift_below_1e-3"] = worst[variant] < LSST_M_REQUIREMENT
            verdict["worst_abs_dm"] = worst
            # The same, each variant calibrated by its own response (metacalibration's use).
            own = {v: max(abs(entry[v]["self_calibrated"]["shift"][c]["dm"]) for c in ("g1", "g2"))
                   for v in (*learned, "biharmonic") if "self_calibrated" in entry[v]}
            if own:
                verdict["worst_abs_dm_self_calibrated"] = own
        verdicts[method] = verdict
    return verdicts


def _method_report(labels: Mapping[str, np.ndarray], measurements: Mapping[str, np.ndarray], method: str,
                   variants: Sequence[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    groups = np.asarray(labels["ring_pair_id"])
    response = np.asarray(measurements[f"{method}/raw/response"])
    usable = np.all(np.isfinite(response), axis=(1, 2))

    def measured_in(variant: str) -> np.ndarray:
        return np.isfinite(measurements[f"{method}/{variant}/e1"]) & np.isfinite(measurements[f"{method}/{variant}/e2"])

    # 'none' (masked pixels left out of the fit) fails where a mask hides the galaxy's core: exactly the stamps
    # whose in-painting moves the shape most. Requiring it would drop them from every in-painting's shift
    # (on 2,048 stamps of the default set: biharmonic's REGAUSS dm -14e-3 with them, -3.6e-3 without), so it takes
    # its own subset.
    for variant in variants:
        if variant != "none":
            usable &= measured_in(variant)
    usable = complete_pairs(groups, usable)
    if not usable.any():
        raise InputError(f"{method}: no ring pair was measured in every variant and counterfactual", method)
    subsets = {variant: usable if variant != "none" else complete_pairs(groups, usable & measured_in(variant))
               for variant in variants}
    measured = {variant: tuple(np.where(subsets[variant], measurements[f"{method}/{variant}/{c}"], np.nan)
                               for c in ("e1", "e2")) for variant in variants}
    entry: dict[str, Any] = {"n_used": int(usable.sum()), "n_pairs_used": int(np.unique(groups[usable]).size),
                             "estimator": "e - (R_i - <R_i>) g with each variant's own counterfactual response "
                                          "R_i, calibrated by the mean raw response (response control variate)"}
    expected = response_diagonal_range(method)
    entry["raw_without_control_variate"] = shear_bias_table(
        labels, *measured["raw"], response, n_bootstrap=n_bootstrap, rng=np.random.default_rng(seed),
        diagonal_range=expected)
    # With the control variate, m = <e - R_i g> / (<R> g) + (<R_i> - <R>) / <R>: the mean raw
    # response is held fixed in the bootstrap, since its fluctuation only multiplies small terms;
    # a per-resample mean would bring back the response scatter the control variate removed. (Not so for a
    # shift from raw, which *is* a mean change of response: response_shift resamples the means.)
    calibration = mean_response(response, usable)
    adjusted = {}
    shift_draws: dict[str, tuple[dict, np.ndarray]] = {}
    for variant in variants:
        subset = subsets[variant]
        own = np.asarray(measurements[f"{method}/{variant}/response"])
        with_own = bool(np.all(np.isfinite(own[subset])))
        adjusted[variant] = response_control_variate(*measured[variant], own if with_own else response,
                                                     labels["g1"], labels["g2"], subset)
        table = shear_bias_table(labels, *adjusted[variant], calibration, n_bootstrap=n_bootstrap,
                                 rng=np.random.default_rng(seed), diagonal_range=expected)
        table["control_variate_response"] = variant if with_own else "raw"
        table["n_pairs_used"] = int(np.unique(groups[subset]).size)
        if with_own:
            table["mean_response"] = mean_response(own, subset).tolist()
            own_problem = response_problem(table["mean_response"], expected)
            if own_problem is not None and not table["response_suspect"]:
                table["response_suspect"], table["response_problem"] = True, f"own response {own_problem}"
        if table["response_suspect"]:
            shown = table["mean_response"] if with_own and table["response_problem"].startswith("own") \
                else table["response"]
            entry.setdefault("warnings", []).append(
                f"{method} {variant}: response matrix {_matrix_text(shown)} {table['response_problem']}; "
                "its m and c are not a calibration")
        if variant != "raw":
            replicates: list[np.ndarray] = []
            table["shift"] = response_shift(labels, measured["raw"], response, measured[variant],
                                            own if with_own else response, subset, n_bootstrap, seed, replicates)
            shift_draws[variant] = (table["shift"], replicates[0])
        if variant != "raw" and with_own:
            table["self_calibrated"] = _self_calibrated(labels, adjusted["raw"], calibration, adjusted[variant],
                                                        mean_response(own, subset), n_bootstrap, seed, expected)
        table["description"] = VARIANTS[variant]
        entry[variant] = table
    if "biharmonic" in shift_draws:
        # Each learned in-painting's shift minus biharmonic's, paired: same pairs, same bootstrap draws.
        reference, reference_draws = shift_draws["biharmonic"]
        for variant in LEARNED_VARIANTS:
            if variant in shift_draws:
                shift, draws = shift_draws[variant]
                spread = (draws - reference_draws)[:, 0].std(axis=0, ddof=1)
                entry[variant]["shift_minus_biharmonic"] = {
                    c: {"ddm": shift[c]["dm"] - reference[c]["dm"], "ddm_err": float(spread[k])}
                    for k, c in enumerate(("g1", "g2"))}
    secant = measurements.get(f"{method}/raw/secant_response")
    if secant is not None:
        # (a) without the O(g^2) term of the local response: the same fit, calibrated by the secant estimate.
        secant = np.asarray(secant)
        corrected = response_control_variate(*measured["raw"], secant, labels["g1"], labels["g2"], usable)
        table = shear_bias_table(labels, *corrected, mean_response(secant, usable), n_bootstrap=n_bootstrap,
                                 rng=np.random.default_rng(seed), diagonal_range=expected)
        table["description"] = ("raw shapes calibrated by the local response minus (1/3) g d2e/dg2 (secant "
                                "estimate): the O(g^2) term of the local calibration removed")
        entry["raw_secant"] = table
        if "snr" in labels:
            # The noise test on the O(g^2)-free calibration (see _verdicts).
            entry["snr_weighting_secant"] = weighting_shift(labels, *corrected, mean_response(secant, usable),
                                                            np.asarray(labels["snr"]), n_bootstrap=n_bootstrap,
                                                            rng=np.random.default_rng(seed))
            if _shears_spread(labels):
                entry["snr_weighting_zero_shear"] = zero_shear_weighting_shift(
                    labels, *corrected, mean_response(secant, usable), np.asarray(labels["snr"]),
                    n_bootstrap=n_bootstrap, rng=np.random.default_rng(seed))
    if "snr" in labels:
        # The noise test: with noise that ignores the shear, weighting pairs by S/N must leave m alone.
        entry["snr_weighting"] = weighting_shift(labels, *adjusted["raw"], calibration, np.asarray(labels["snr"]),
                                                 n_bootstrap=n_bootstrap, rng=np.random.default_rng(seed))
        if "snr_weighting_zero_shear" not in entry and _shears_spread(labels):  # no secant: the local shapes
            entry["snr_weighting_zero_shear"] = zero_shear_weighting_shift(
                labels, *adjusted["raw"], calibration, np.asarray(labels["snr"]), n_bootstrap=n_bootstrap,
                rng=np.random.default_rng(seed))
    return entry


def _self_calibrated(labels, raw_shapes, raw_response, shapes, own_response, n_bootstrap: int, seed: int,
                     diagonal_range) -> dict[str, Any]:
    """A variant calibrated by its *own* mean counterfactual response, as metacalibration applies it.

    ``{g1, g2: {m, m_err, c, c_err, ...}, shift: {g1, g2: {dm, dc, ...}}, response_suspect}``: the
    shift is paired against the raw shapes calibrated by the raw response, so it is what masking
    and in-painting leave once each is calibrated by its own response.
    """
    table = shear_bias_table(labels, *shapes, own_response, n_bootstrap=n_bootstrap,
                             rng=np.random.default_rng(seed), diagonal_range=diagonal_range)
    shift = bias_shift(labels, *calibrate_shear(*raw_shapes, raw_response), *calibrate_shear(*shapes, own_response),
                       1.0, n_bootstrap=n_bootstrap, rng=np.random.default_rng(seed))
    return {"g1": table["g1"], "g2": table["g2"], "shift": shift, "response_suspect": table["response_suspect"]}


def _matrix_text(matrix) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{v:.3g}" for v in row) + "]" for row in np.asarray(matrix)) + "]"


def validation_report(labels: Mapping[str, np.ndarray], measurements: Mapping[str, np.ndarray],
                      methods: Sequence[str], variants: Sequence[str], n_bootstrap: int = 200,
                      seed: int = 0, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """m and c per method and variant, and each variant's shift from ``raw`` (JSON-ready dict).

    Objects enter a method's fits only if their whole ring pair was measured in every
    variant but ``none`` and every counterfactual, so those variants are fitted on the same objects
    and the shifts are paired; ``none`` (which fails where a mask hides the galaxy's core) is fitted
    on the pairs of those it also measured (its table's ``n_pairs_used``). Shapes are calibrated
    by the mean raw counterfactual response with the response control variate
    (:func:`response_control_variate`); the plain fit of the raw shapes is reported too
    (``raw_without_control_variate``). Every fit draws its bootstrap from ``seed``. ``exclude``
    (bool per object, e.g. :func:`~lensforge.pipeline.inpaint.symmetry.interpolated_centre`) leaves
    those objects, and so their ring pairs, out of every variant.
    """
    if exclude is not None:
        exclude = np.asarray(exclude, bool)
        measurements = {key: np.where(exclude, np.nan, value) if key.endswith(("/e1", "/e2")) else value
                        for key, value in measurements.items()}
    if "raw" not in variants:
        raise InputError(f"variants must include 'raw' (the reference of every shift), got {list(variants)}",
                         list(variants))
    report: dict[str, Any] = {"n_objects": int(np.asarray(labels["ring_pair_id"]).size),
                              "n_bootstrap": int(n_bootstrap), "methods": {}}
    for method in methods:
        report["methods"][method] = _method_report(labels, measurements, method, variants, n_bootstrap, seed)
    report["verdicts"] = _verdicts(report["methods"], variants)
    # One line per suspect response: printed as warnings by the CLI, kept in the JSON.
    report["warnings"] = [line for entry in report["methods"].values() for line in entry.get("warnings", [])]
    for method, verdict in report["verdicts"].items():
        verdict["response_ok"] = not report["methods"][method].get("warnings")
        if not verdict["response_ok"]:
            # Numbers from an unusable calibration meet nothing, corrected or not.
            for key in ("raw_meets_lsst", "raw_secant_meets_lsst", "m_unchanged_when_snr_weighted",
                        *(name for _, name in NOISE_TEST_VERDICTS)):
                if key in verdict:
                    verdict[key] = False
    return report


def plot_validation(labels: Mapping[str, np.ndarray], measurements: Mapping[str, np.ndarray],
                    report: Mapping[str, Any], method: str, variant: str, path: str | Path) -> Path:
    """Measured vs true shear for one method and variant (``lensforge.pipeline.shear.figures.plot_shear_bias``)."""
    entry = report["methods"][method]
    entry = entry["raw_without_control_variate"] if variant == "raw" else entry[variant]
    e1, e2 = measurements[f"{method}/{variant}/e1"], measurements[f"{method}/{variant}/e2"]
    g1, g2 = calibrate_shear(e1, e2, np.asarray(entry["response"]))  # the fit's mean response
    truth = np.stack([labels["g1"], labels["g2"]], axis=1)
    return plot_shear_bias(truth, np.stack([g1, g2], axis=1), entry, path, group=np.asarray(labels["ring_pair_id"]))


def plot_bias_summary(report: Mapping[str, Any], path: str | Path) -> Path:
    """m and c (with bootstrap errors) of every method and variant against the LSST limits."""
    methods = list(report["methods"])
    figure = Figure(figsize=(9.0, 3.2 * len(methods)))
    axes = figure.subplots(len(methods), 2, squeeze=False)
    for row, method in enumerate(methods):
        entry = report["methods"][method]
        variants = [v for v in VARIANTS if v in entry]
        for col, (key, limit) in enumerate((("m", LSST_M_REQUIREMENT), ("c", LSST_C_REQUIREMENT))):
            ax = axes[row, col]
            ax.axhspan(-limit, limit, color="tab:green", alpha=0.2, label=f"LSST |{key}| < {limit:g}")
            for offset, component, color in ((-0.1, "g1", "tab:blue"), (0.1, "g2", "tab:orange")):
                values = [entry[v][component][key] for v in variants]
                errors = [entry[v][component][f"{key}_err"] or 0.0 for v in variants]
                ax.errorbar(np.arange(len(variants)) + offset, [np.nan if v is None else v for v in values],
                            yerr=errors, fmt="o", color=color, label=component)
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xticks(range(len(variants)), variants)
            ax.set_title(f"{method}: {key} ({entry['n_pairs_used']} ring pairs)", fontsize=9)
            ax.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return path
