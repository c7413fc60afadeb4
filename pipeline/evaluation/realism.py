"""Realism of generated galaxies against held-out real ones: per-stamp statistics and Wasserstein ratios.

A *candidate* sample (galaxies from a generator, or parametric fits) is compared with a held-out
real sample A. The yardstick is a second, independent real sample B: the 1-D Wasserstein distance
W(A, candidate) divided by W(A, B), the distance that finite samples of the *same* population
already show. A ratio near 1 means the candidate is as close to A as more real data would be; the
issue's bar is <= 2.

Statistics per stamp (:data:`REALISM_KEYS`): HSM size (``sigma_arcsec``) and ellipticity
(``abs_e``); statmorph's Gini, M20, concentration and asymmetry of the central source; and the
slope of the azimuthally averaged power spectrum over structure 4-16 pixels across
(:func:`~lensforge.pipeline.evaluation.metrics.power_spectrum_slope`). All are measured on the
*observed* stamps, noise included, the same way on every sample. A measurement that fails gives NaN
and is left out of that statistic's distance; the fraction measured is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lensforge.pipeline.evaluation.generation import morphology_parallel
from lensforge.pipeline.evaluation.metrics import (
    MORPHOLOGY_KEYS,
    hsm_shapes,
    power_spectrum_slope,
    wasserstein_table,
)

REALISM_KEYS: tuple[str, ...] = ("sigma_arcsec", "abs_e", *MORPHOLOGY_KEYS, "power_spectrum_slope")
"""Statistics of the realism report, in report order."""


def realism_statistics(images: np.ndarray, noise_sigma: np.ndarray, pixel_scale_arcsec: float,
                       workers: int = 2) -> dict[str, np.ndarray]:
    """Per-stamp :data:`REALISM_KEYS` of ``images`` (N, H, W) with noise ``noise_sigma`` (N,) [image unit]."""
    images = np.asarray(images, dtype=np.float64)
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    shapes = hsm_shapes(images, pixel_scale_arcsec)
    stats = {"sigma_arcsec": shapes["sigma_arcsec"], "abs_e": np.hypot(shapes["e1"], shapes["e2"])}
    morph = morphology_parallel(images, noise_sigma, workers)
    stats.update({key: morph[key] for key in MORPHOLOGY_KEYS})
    stats["power_spectrum_slope"] = power_spectrum_slope(images)
    return stats


def measured_fraction(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of stamps with a finite value of each statistic."""
    return {key: float(np.isfinite(stats[key]).mean()) if len(stats[key]) else float("nan") for key in REALISM_KEYS}


def realism_table(real_a: Mapping[str, np.ndarray], real_b: Mapping[str, np.ndarray],
                  candidates: Mapping[str, Mapping[str, np.ndarray]], bar: float = 2.0) -> dict[str, Any]:
    """Wasserstein distances of each candidate to real A, next to real B's (the truth-vs-truth floor).

    Args:
        real_a: statistics of the held-out real sample.
        real_b: statistics of an independent real sample of the same population.
        candidates: name -> statistics (generated galaxies, parametric fits, ...).
        bar: the ratio a candidate must not exceed on a statistic to pass it.

    Returns:
        ``truth_vs_truth`` (key -> W(A, B)), ``measured`` (sample -> key -> fraction) and, per
        candidate, ``wasserstein``, ``ratio`` (W / W(A, B)), ``passes`` (ratio <= bar, per key)
        and ``n_passed``.
    """
    floor = wasserstein_table(real_a, real_b, REALISM_KEYS)
    out: dict[str, Any] = {"statistics": list(REALISM_KEYS), "bar": bar, "truth_vs_truth": floor,
                           "measured": {"real A": measured_fraction(real_a), "real B": measured_fraction(real_b)},
                           "candidates": {}}
    for name, stats in candidates.items():
        distance = wasserstein_table(real_a, stats, REALISM_KEYS)
        ratio = {k: distance[k] / floor[k] if floor[k] > 0 else float("nan") for k in REALISM_KEYS}
        passes = {k: bool(np.isfinite(ratio[k]) and ratio[k] <= bar) for k in REALISM_KEYS}
        out["candidates"][name] = {"wasserstein": distance, "ratio": ratio, "passes": passes,
                                   "n_passed": int(sum(passes.values()))}
        out["measured"][name] = measured_fraction(stats)
    return out


def generation_realism(config_b, truth_a: Mapping[str, np.ndarray], model, n_objects: int,
                       workers: int = 2) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Realism of a stamp generator against held-out stamps ``truth_a`` (``images``, ``noise_sigma``).

    Real B is simulated from ``config_b`` (the yardstick population), and the generated galaxies take
    B's population draws (flux, S/N, shear) through GalSim
    (:func:`~lensforge.pipeline.generative.generate.generate_stamps`), so generated and B differ only in
    the light profiles. Every statistic of
    :data:`REALISM_KEYS` is measured on all ``n_objects`` stamps of each sample. For a parametric run,
    A is the run's held-out stamps and B another seed of its population
    (:func:`~lensforge.pipeline.evaluation.generation.independent_config`), as in
    :func:`~lensforge.pipeline.evaluation.generation.evaluate_generation`.

    Returns:
        (:func:`realism_table` of the generator, the statistics of each sample).
    """
    from lensforge.pipeline.generative.generate import generate_stamps
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    n = min(n_objects, len(truth_a["images"]))
    scale = config_b.survey.pixel_scale_arcsec
    batch_b = simulate_stamps(config_b, 0, n)
    generated = generate_stamps(model, config_b, 0, n, temperature=1.0)
    stats = {"real A": realism_statistics(truth_a["images"][:n], truth_a["noise_sigma"][:n], scale, workers),
             "real B": realism_statistics(batch_b.images, batch_b.labels["noise_sigma"], scale, workers),
             "generated": realism_statistics(generated.images, generated.labels["noise_sigma"], scale, workers)}
    return realism_table(stats["real A"], stats["real B"], {"generator": stats["generated"]}), stats
