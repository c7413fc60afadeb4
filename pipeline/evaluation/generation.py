"""Evaluation of generated galaxies against held-out truth.

Three samples of the same size are compared:

* **truth A**: the held-out validation stamps of the run (noisy, as observed);
* **truth B**: an *independent* parametric sample, simulated with another run seed: the
  distance between A and B is the floor set by finite samples (truth vs truth);
* **generated**: galaxies from a model through GalSim (:mod:`lensforge.pipeline.generative.generate`) with the
  same population draws (flux, size, S/N, shear) as truth B, so generated and B differ
  only in the galaxies' light profiles.

Statistics per stamp: HSM size and ellipticity (``sigma_arcsec``, ``e1``, ``e2``,
``abs_e``) and statmorph's Gini, M20, concentration and asymmetry (on a subset: ~0.2 s per
stamp). Reported: the 1-D Wasserstein distance of each statistic to truth A and its ratio
to the truth-vs-truth distance; coverage and density (Naeem et al. 2020) in the
standardised statistics space; sharpness as the median fraction of Fourier power above
half Nyquist in the noiseless stamps (relative to truth). A temperature sweep of the
hybrid shows the fidelity-diversity trade-off.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from lensforge.models.vaegan import VAEGAN
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.evaluation.metrics import (
    MORPHOLOGY_KEYS,
    coverage_knn,
    density_knn,
    high_frequency_power_fraction,
    hsm_shapes,
    morphology,
    wasserstein_table,
)
from lensforge.pipeline.generative.generate import generate_stamps
from lensforge.pipeline.stamps.simulate import simulate_stamps

SHAPE_KEYS = ("sigma_arcsec", "e1", "e2", "abs_e")
_INDEPENDENT_SEED_OFFSET = 7919  # truth B: another run seed, so an independent population sample


def independent_config(config: RunConfig, offset: int = 1) -> RunConfig:
    """``config`` with another run seed (``offset`` picks which): an independent sample of the same population."""
    return config.model_copy(update={"seed": (config.seed + offset * _INDEPENDENT_SEED_OFFSET) % 2**63})


def morphology_parallel(images: np.ndarray, noise_sigma: np.ndarray, workers: int) -> dict[str, np.ndarray]:
    """statmorph is pure Python and slow: split the stamps over ``workers`` processes."""
    if workers <= 1 or len(images) < 2 * workers:
        return morphology(images, noise_sigma)
    parts = np.array_split(np.arange(len(images)), workers)
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(morphology, [images[p] for p in parts], [noise_sigma[p] for p in parts]))
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def galaxy_statistics(images: np.ndarray, noiseless: np.ndarray, noise_sigma: np.ndarray, pixel_scale_arcsec: float,
                      n_morphology: int, workers: int = 2) -> dict[str, np.ndarray]:
    """Per-stamp statistics of a sample (morphology on the first ``n_morphology`` stamps, NaN after)."""
    shapes = hsm_shapes(images, pixel_scale_arcsec)
    stats = {k: shapes[k] for k in ("sigma_arcsec", "e1", "e2")}
    stats["abs_e"] = np.hypot(shapes["e1"], shapes["e2"])
    n_m = min(n_morphology, len(images))
    morph = morphology_parallel(images[:n_m], noise_sigma[:n_m], workers) if n_m else {}
    for key in MORPHOLOGY_KEYS:
        column = np.full(len(images), np.nan)
        if n_m:
            column[:n_m] = morph[key]
        stats[key] = column
    stats["high_frequency_power"] = high_frequency_power_fraction(noiseless)
    return stats


def _features(stats: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    return np.stack([stats[k] for k in keys], axis=1)


def compare_samples(truth_a: dict, truth_b: dict, generated: dict, with_morphology: bool) -> dict[str, Any]:
    """Distances of ``generated`` to truth A next to those of truth B (the truth-vs-truth floor)."""
    keys = SHAPE_KEYS + (MORPHOLOGY_KEYS if with_morphology else ())
    w_gen = wasserstein_table(truth_a, generated, keys)
    w_truth = wasserstein_table(truth_a, truth_b, keys)
    feature_keys = ("sigma_arcsec", "e1", "e2") + (MORPHOLOGY_KEYS if with_morphology else ())
    real, fake = _features(truth_a, feature_keys), _features(generated, feature_keys)
    real_b = _features(truth_b, feature_keys)
    hf_truth = float(np.nanmedian(truth_b["high_frequency_power"]))
    return {
        "wasserstein": w_gen,
        "wasserstein_truth_vs_truth": w_truth,
        "wasserstein_ratio": {k: w_gen[k] / w_truth[k] if w_truth[k] > 0 else float("nan") for k in keys},
        "coverage": coverage_knn(real, fake), "coverage_truth_vs_truth": coverage_knn(real, real_b),
        "density": density_knn(real, fake), "density_truth_vs_truth": density_knn(real, real_b),
        "high_frequency_power_median": float(np.nanmedian(generated["high_frequency_power"])),
        "high_frequency_power_ratio_to_truth": float(np.nanmedian(generated["high_frequency_power"])) / hf_truth,
        "features": list(feature_keys),
    }


def evaluate_generation(config: RunConfig, truth_a: dict[str, np.ndarray], models: dict[str, VAEGAN],
                        n_objects: int, n_morphology: int, temperatures: tuple[float, ...],
                        workers: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generation metrics for every model (T = 1) and a temperature sweep of the hybrid.

    Args:
        config: the run's configuration (population, survey, seed).
        truth_a: held-out stamps with ``images``, ``noiseless``, ``noise_sigma`` (first ``n_objects`` used).
        models: name -> model ("vaegan" is the hybrid; "vae", "gan" ablations when present).
        n_objects: stamps per sample.
        n_morphology: stamps per sample measured with statmorph.
        temperatures: the sweep (hybrid only; HSM statistics).
        workers: processes for statmorph.

    Returns:
        (metrics JSON, samples for the figures: name -> (images, noiseless)).
    """
    scale = config.survey.pixel_scale_arcsec
    n = min(n_objects, len(truth_a["images"]))
    if n < 2:
        return {"n_objects": n, "note": "fewer than 2 held-out stamps: no generation statistics"}, {}
    stats_a = galaxy_statistics(truth_a["images"][:n], truth_a["noiseless"][:n], truth_a["noise_sigma"][:n], scale,
                                n_morphology, workers)
    config_b = independent_config(config)
    batch_b = simulate_stamps(config_b, 0, n)
    sigma_b = batch_b.labels["noise_sigma"]
    stats_b = galaxy_statistics(batch_b.images, batch_b.noiseless, sigma_b, scale, n_morphology, workers)
    out: dict[str, Any] = {"n_objects": n, "n_morphology": min(n_morphology, n), "models": {}, "temperature_sweep": {}}
    samples: dict[str, Any] = {"truth": (batch_b.images, batch_b.noiseless)}
    stats_by_sample = {"truth A": stats_a, "truth B": stats_b}
    for name, model in models.items():
        generated = generate_stamps(model, config_b, 0, n, temperature=1.0)
        stats = galaxy_statistics(generated.images, generated.noiseless, generated.labels["noise_sigma"], scale,
                                  n_morphology, workers)
        entry = compare_samples(stats_a, stats_b, stats, with_morphology=n_morphology > 1)
        # Conditioning: the generated size should follow the requested half-light radius as truth's does.
        requested = generated.labels["half_light_radius"]
        entry["size_condition_correlation"] = _correlation(requested, stats["sigma_arcsec"])
        entry["size_condition_correlation_truth"] = _correlation(batch_b.labels["half_light_radius"],
                                                                 stats_b["sigma_arcsec"])
        out["models"][name] = entry
        samples[name] = (generated.images, generated.noiseless)
        stats_by_sample[name] = stats
    hybrid = models.get("vaegan")
    if hybrid is not None:
        for temperature in temperatures:
            generated = generate_stamps(hybrid, config_b, 0, n, temperature=temperature)
            stats = galaxy_statistics(generated.images, generated.noiseless, generated.labels["noise_sigma"], scale,
                                      0, workers)
            out["temperature_sweep"][f"{temperature:g}"] = compare_samples(stats_a, stats_b, stats, False)
    out["_stats"] = stats_by_sample  # removed before writing JSON; used by the figures
    return out, samples


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
