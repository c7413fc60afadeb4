"""Evaluation of in-painting on held-out simulated stamps (``lensforge evaluate``).

Run on the validation objects only (never seen in training). For each method — the
VAE-GAN, the VAE-only ablation when trained, scikit-image's biharmonic and astropy's
``interpolate_replace_nans`` — on stamps with masked pixels:

* RMSE over masked pixels against the noiseless truth, in ADU and in units of each
  stamp's noise sigma (stamps differ in noise level, so the latter is the fair aggregate);
  ``on_galaxy`` restricts to masked pixels where the noiseless galaxy is brighter than
  the noise sigma;
* the relative flux error in a circular aperture (radius 2 x half-light radius + PSF
  FWHM) of stamps whose aperture a mask touches, against the noiseless truth;
* |Δe|: HSM ellipticity of the in-painted stamp minus that of the same stamp without
  defects (same noise), for galaxies a mask touches — the change that masking plus
  in-painting makes to a shape measurement;
* for the models, calibration of the uncertainty map (the posterior predictive std): the
  fraction of masked pixels whose defect-free noisy value lies within mean ± 1 std (and
  ± 2 std), and, for the decoder's spread alone, the same against the noiseless truth.

The generation half lives in :mod:`lensforge.pipeline.evaluation.generation`; figures in
:mod:`lensforge.pipeline.evaluation.figures`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lensforge.catalogs.store import open_store
from lensforge.errors import InputError
from lensforge.models.vaegan import VAEGAN
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.evaluation.metrics import (
    aperture_flux_errors,
    ellipticity_errors,
    hsm_shapes,
    uncertainty_coverage,
)
from lensforge.pipeline.inpaint.stamps import inpaint_arrays, inpainting_complete

CLASSICAL_METHODS = ("biharmonic", "interpolate")
GAUSSIAN_SIGMA_TO_HLR = 1.1774100225154747  # half-light radius / sigma of a 2-D Gaussian: sqrt(2 ln 2)


def masked_pixel_errors(prediction: np.ndarray, truth: np.ndarray, masks: np.ndarray,
                        noise_sigma: np.ndarray) -> dict[str, float]:
    """RMSE over masked pixels: ``rmse_adu``, ``rmse_noise_units``, and the same ``on_galaxy``."""
    masked = masks != 0
    on_galaxy = masked & (truth > noise_sigma[:, None, None])
    residual = prediction.astype(np.float64) - truth
    scaled = residual / noise_sigma[:, None, None]
    out: dict[str, float] = {}
    for label, select in (("", masked), ("on_galaxy_", on_galaxy)):
        count = int(np.count_nonzero(select))
        out[f"{label}pixels"] = count
        out[f"{label}rmse_adu"] = float(np.sqrt(np.mean(residual[select] ** 2))) if count else float("nan")
        out[f"{label}rmse_noise_units"] = float(np.sqrt(np.mean(scaled[select] ** 2))) if count else float("nan")
    return out


def _summary_only(metrics: dict[str, Any]) -> dict[str, Any]:
    """Drop per-stamp arrays, keep JSON-able scalars."""
    return {k: (float(v) if isinstance(v, float | np.floating) else int(v) if isinstance(v, int | np.integer) else v)
            for k, v in metrics.items() if not isinstance(v, np.ndarray)}


def validation_stamps(store_path, first_object: int, max_objects: int,
                      masked_only: bool = True) -> dict[str, np.ndarray]:
    """Held-out stamps (at most ``max_objects``; only masked ones unless ``masked_only`` is False).

    Returns images, noiseless, masks, noise_sigma, half_light_radius, index (and the stored
    in-painting products when present).
    """
    group = open_store(store_path)
    if "noiseless" not in group:
        raise InputError(f"{store_path}: evaluation needs the noiseless images (simulation.store_noiseless)", None)
    masked_fraction = np.asarray(group["masked_fraction"][first_object:])
    candidates = np.flatnonzero(masked_fraction > 0) if masked_only else np.arange(len(masked_fraction))
    chosen = first_object + candidates[:max_objects]
    out = {"index": chosen}
    names = ["images", "noiseless", "masks", "noise_sigma", "half_light_radius"]
    # Only a finished in-painting is the product; a half-written one is recomputed like the other models.
    names += [n for n in ("inpainted", "inpainted_std") if inpainting_complete(group)]
    for name in names:
        out[name] = np.asarray(group[name].get_orthogonal_selection((chosen,))) if len(chosen) else np.empty(0)
    return out


def inpainting_methods(data: dict[str, np.ndarray], models: dict[str, VAEGAN], n_samples: int,
                       seed: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(mean, std or None) per method name. The hybrid's come from the store when it holds them.

    Reading the stored ``inpainted`` arrays evaluates the product users get; recomputing
    them would draw the same samples (they are seeded by object index) but cost time.
    """
    results: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    images, masks, sigma = data["images"], data["masks"], data["noise_sigma"]
    for name, model in models.items():
        if name == "vaegan" and "inpainted" in data:
            results[name] = (data["inpainted"], data["inpainted_std"])
            continue
        # Per-stamp draws seeded by the object's index, as the in-paint stage does.
        means, stds = zip(*(inpaint_arrays("model", images[i:i + 1], masks[i:i + 1], sigma[i:i + 1], model,
                                           n_samples, seed, int(index))
                            for i, index in enumerate(data["index"])), strict=True)
        results[name] = (np.concatenate(means), np.concatenate(stds))
    for name in CLASSICAL_METHODS:
        results[name] = inpaint_arrays(name, images, masks, sigma)
    return results


def evaluate_inpainting(config: RunConfig, data: dict[str, np.ndarray],
                        results: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
    """Every in-painting metric of every method, plus the model / best-classical ratios."""
    truth, images, masks, sigma = data["noiseless"], data["images"], data["masks"], data["noise_sigma"]
    survey = config.survey
    half_light = np.asarray(data["half_light_radius"], dtype=np.float64)
    unknown = ~np.isfinite(half_light)
    if unknown.any():
        # Real galaxies have no half-light radius label: that of the HSM Gaussian of the noiseless
        # stamp (PSF included, so a little larger), or none where HSM fails.
        measured = hsm_shapes(truth[unknown], survey.pixel_scale_arcsec)["sigma_arcsec"] * GAUSSIAN_SIGMA_TO_HLR
        half_light = half_light.copy()
        half_light[unknown] = np.nan_to_num(measured, nan=0.0)
    radius = (2.0 * half_light + survey.psf_fwhm_arcsec) / survey.pixel_scale_arcsec
    methods: dict[str, Any] = {}
    for name, (mean, std) in results.items():
        entry: dict[str, Any] = masked_pixel_errors(mean, truth, masks, sigma)
        entry["aperture_flux"] = _summary_only(aperture_flux_errors(mean, truth, masks, radius))
        entry["ellipticity"] = _summary_only(ellipticity_errors(mean, images, masks, survey.pixel_scale_arcsec))
        if std is not None:
            # The stored std is predictive (decoder spread and pixel noise in quadrature): it is
            # calibrated against the pixel that was lost, i.e. the noisy defect-free image; the
            # spread alone says how well the noiseless mean is known.
            entry["uncertainty_predictive_vs_noisy"] = _summary_only(
                uncertainty_coverage(mean, std, images, masks, noise_sigma=sigma, galaxy=truth))
            noise = np.broadcast_to(sigma[:, None, None], std.shape)
            spread = np.sqrt(np.clip(std.astype(np.float64) ** 2 - noise**2, 0, None))
            entry["uncertainty_spread_vs_noiseless"] = _summary_only(
                uncertainty_coverage(mean, spread, truth, masks, noise_sigma=sigma))
        methods[name] = entry
    out: dict[str, Any] = {"n_stamps": int(len(truth)), "methods": methods,
                           "aperture_radius": "2 x half_light_radius + psf_fwhm (real galaxies: the half-light "
                                              "radius of the noiseless stamp's HSM Gaussian)",
                           "ellipticity_reference": "HSM adaptive moments of the same stamp without defects"}
    classical = [m for m in CLASSICAL_METHODS if m in methods]
    ratios: dict[str, Any] = {}
    for name in results:
        if name in CLASSICAL_METHODS:
            continue
        for metric, key in (("on_galaxy_rmse", lambda e: e["on_galaxy_rmse_noise_units"]),
                            ("rmse", lambda e: e["rmse_noise_units"]),
                            ("mean_abs_delta_e", lambda e: e["ellipticity"]["mean_abs_delta_e"]),
                            ("aperture_flux_rms", lambda e: e["aperture_flux"]["rms_relative_error"])):
            best = min(classical, key=lambda m, k=key: k(methods[m]))
            ratios[f"{name}_{metric}_over_best_classical"] = {
                "ratio": key(methods[name]) / key(methods[best]), "best_classical": best}
    out["ratios"] = ratios
    return out
