"""Train, calibrate and describe the image in-painter from real FIRST images and lensforge's simulations.

``lensforge train-inpainter`` runs :func:`train_inpainter`:

1. training images: the FIRST ``train`` split (real VLA radio galaxies, Jy/beam) and one
   simulated tile per survey preset and training seed (optical and radio, rendered by lensforge);
   each in noise-sigma units (background = median, noise = the image's measured noise). FIRST and
   the simulations get half the sampling weight each. The FIRST ``test`` split and the COSMOS HST
   stamps are never read here;
2. training (:func:`lensforge.models.train_image_inpainter.train_image_inpainter`);
3. calibration on held-out images (FIRST ``calibration`` split, simulated tiles of other seeds)
   with evaluation masks: per bin of the predicted |mean| the factor that brings the 1-sigma
   coverage to 68.3 %, over all images and per kind of sky, and the sky uncertainty of cells the
   network skips (for images whose skipped holes take the biharmonic fill, a factor on the image's
   own cross-checked biharmonic RMS);
4. the model card: training data and their terms, settings, calibration, domain, checksum.

Metrics on the test split are added to the card by ``benchmarks/real_inpainting.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensforge.errors import InputError
from lensforge.pipeline.datasets import corpus

FIRST_TERMS = ("VLA FIRST images (Becker, White & Helfand 1995), MiraBest selection (Porter & Scaife 2023): "
               "permission for publication and reproduction for scholarly, educational and private "
               "non-commercial use (University of California, 1994); cite both papers")
SIMULATION_TERMS = "lensforge simulations (GalSim), same licence as lensforge"
TRAIN_SEEDS = (101, 102)  # simulated tiles trained on
CALIBRATION_SEED = 201  # masks of the calibration split
# Simulated tiles of the calibration split (neither trained on nor test, which uses 301-308): eight per preset, so
# each kind of sky has a few thousand network pixels per |mean| bin to set its own factors.
CALIBRATION_SIM_SEEDS = tuple(range(201, 209))
SIM_SIZE_PIXELS = 512
ONE_SIGMA = 0.682689492137
MEAN_SIGMA_EDGES = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, float("inf"))
MIN_PIXELS_PER_BIN = 200
RESOLUTION_MARGIN = 1.5  # the domain's resolution range: what training saw, widened by this factor
FLUX_UNITS = ("adu", "jy/beam", "mjy/beam", "counts", "count", "cts", "dn", "electrons", "electrons/s", "e-",
              "e-/s", "e/s")


@dataclass(frozen=True)
class NormalisedImage:
    """A whole image in noise-sigma units (background subtracted), its bad pixels and where it came from."""

    name: str
    pixels: np.ndarray  # (H, W) float32
    bad: np.ndarray  # (H, W) bool
    group: str  # "first" or the preset name
    unit: str
    resolution_fwhm_pixels: float


def _normalise(image: np.ndarray, noise_sigma: float, bad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    bad = np.zeros(image.shape, bool) if bad is None else np.asarray(bad, bool)
    good = ~bad & np.isfinite(image)
    background = float(np.median(image[good]))
    pixels = np.where(good, (image - background) / noise_sigma, 0.0).astype(np.float32)
    return pixels, ~good


def first_images(split: str, path: Path | None = None) -> list[NormalisedImage]:
    """The FIRST images of ``split`` in noise-sigma units."""
    real = corpus.load_first(split, path)
    resolution = real.resolution_fwhm_arcsec / real.pixel_scale_arcsec
    out = []
    for name, image, noise in zip(real.names, real.images, real.noise_sigma, strict=True):
        pixels, bad = _normalise(image, float(noise))
        out.append(NormalisedImage(name, pixels, bad, "first", real.unit, resolution))
    return out


def simulated_images(seeds: tuple[int, ...], presets: tuple[str, ...] = corpus.PRESETS,
                     size_pixels: int = SIM_SIZE_PIXELS, cache_dir: Path | None = None) -> list[NormalisedImage]:
    """One simulated tile per preset and seed, in noise-sigma units (rendered once, then cached)."""
    out = []
    for preset in presets:
        for seed in seeds:
            sim = corpus.simulated_image(preset, size_pixels, seed, cache_dir)
            pixels, bad = _normalise(sim.image, sim.noise_sigma, sim.bad)
            out.append(NormalisedImage(f"{preset}-{seed}", pixels, bad, preset, sim.unit,
                                       sim.resolution_fwhm_arcsec / sim.pixel_scale_arcsec))
    return out


def training_images(first: list[NormalisedImage], simulated: list[NormalisedImage]):
    """:class:`~lensforge.models.train_image_inpainter.TrainingImage` list: half the weight real, half simulated."""
    from lensforge.models.train_image_inpainter import TrainingImage

    out = []
    for share, images in ((0.5, first), (0.5, simulated)):
        for image in images:
            out.append(TrainingImage(image.pixels, image.bad, share / len(images), image.name))
    return out


def draw_mask(rng: np.random.Generator, shape: tuple[int, int], signal: np.ndarray) -> np.ndarray:
    """The training masks: every defect kind of :func:`corpus.draw_training_mask`, partly on sources."""
    return corpus.draw_training_mask(rng, shape, signal)


def held_out_cases(images: list[NormalisedImage], seed: int) -> list[tuple[NormalisedImage, np.ndarray]]:
    """Each image with its evaluation holes (:func:`corpus.evaluation_mask`, (seed, index))."""
    return [(image, corpus.evaluation_mask(image.pixels.shape, seed, index, signal=image.pixels))
            for index, image in enumerate(images)]


def calibration_cases(first_path: Path | None = None, cache_dir: Path | None = None
                      ) -> list[tuple[NormalisedImage, np.ndarray]]:
    """The calibration split with its holes: FIRST ``calibration`` and the tiles of :data:`CALIBRATION_SIM_SEEDS`."""
    return held_out_cases(first_images("calibration", first_path)
                          + simulated_images(CALIBRATION_SIM_SEEDS, cache_dir=cache_dir), CALIBRATION_SEED)


def calibrate(model, card: dict, cases: list[tuple[NormalisedImage, np.ndarray]], progress: bool = False) -> dict:
    """Std scale factors per bin of the predicted |mean| (noise sigmas), the thin holes' and the sky cells' std.

    Each factor is the 68.27 % quantile of |truth - mean| / std over the bin's scored pixels (holes
    that were good in the data), so the 1-sigma coverage of the calibration split is 68.3 % per
    bin; a bin with fewer than :data:`MIN_PIXELS_PER_BIN` pixels takes the factor of all pixels.
    ``std_scale_by_regime`` holds the same per kind of sky (``sky_regime`` of ``inpaint_image``: the
    network's errors relative to its std differ between white noise, a beam and a smooth sky), a
    sparse bin taking the pooled factor.
    Sky holes kriged under a beam get ``kriging_sky_std_scale``: per bin of their raw kriging std
    (``KRIGING_STD_EDGES``), the 68.27 % quantile of |truth - mean| over that std.
    Thin holes near sources that take a classical fill (``thin_holes`` of ``inpaint_image``) get a
    factor per bin of |mean| (``thin_fill_std_scale``): the 68.27 % quantile of |truth - fill|
    over the image's one-pixel sky error (``one_pixel_sky_error``).
    Last, with all of those applied, a factor per bin for the holes the filled image shows inside a
    source and for the others (:func:`source_context_factors`).
    """
    from lensforge.models.image_inpainter import KRIGING_STD_EDGES, SKY_REGIMES
    from lensforge.pipeline.inpaint.images import inpaint_image

    errors, stds, means, sky_errors, biharmonic_sky_errors, thin_errors, thin_means = [], [], [], [], [], [], []
    kriged_sky_ratios, kriged_sky_raw_std = [], []
    regimes: list[np.ndarray] = []
    uncalibrated = {**card, "calibration": None}
    for image, holes in cases:
        diagnostics: dict = {}
        mean, std = inpaint_image(image.pixels, holes | image.bad, 1.0, model, uncalibrated,
                                  diagnostics=diagnostics)
        scored = holes & ~image.bad
        network = scored & diagnostics["from_network"]
        thin = scored & diagnostics["from_thin_fill"]
        sky = scored & ~diagnostics["from_network"] & ~diagnostics["from_thin_fill"]
        errors.append((image.pixels - mean)[network])
        thin_errors.append((image.pixels - mean)[thin] / diagnostics["one_pixel_sky_error"])
        thin_means.append(mean[thin])
        stds.append(std[network])
        means.append(mean[network])
        regimes.append(np.full(int(network.sum()), diagnostics["sky_regime"]))
        # Sky holes that took the biharmonic fill (a smooth sky): errors relative to the image's own
        # cross-checked biharmonic RMS, which sets their std.
        rms = diagnostics["biharmonic_sky_rms"]
        on_biharmonic = sky & (rms > 0)
        biharmonic_sky_errors.append((image.pixels - mean)[on_biharmonic] / rms[on_biharmonic])
        # Kriged sky holes (noise correlated by a beam): errors relative to their own kriging std.
        kriged = sky & diagnostics["kriged_sky"]
        kriged_sky_ratios.append((image.pixels - mean)[kriged] / np.maximum(std[kriged], 1e-12))
        kriged_sky_raw_std.append(std[kriged])
        sky_errors.append((image.pixels - mean)[sky & ~on_biharmonic & ~kriged])
    errors, stds, means = np.concatenate(errors), np.concatenate(stds), np.concatenate(means)
    sky_errors, biharmonic_sky_errors = np.concatenate(sky_errors), np.concatenate(biharmonic_sky_errors)
    kriged_sky_ratios = np.abs(np.concatenate(kriged_sky_ratios))
    kriged_sky_raw_std = np.concatenate(kriged_sky_raw_std)
    pooled = float(np.quantile(kriged_sky_ratios, ONE_SIGMA)) if kriged_sky_ratios.size >= MIN_PIXELS_PER_BIN else 1.0
    kriging_scale, kriging_counts = [], []
    for lo, hi in zip(KRIGING_STD_EDGES[:-1], KRIGING_STD_EDGES[1:], strict=True):
        in_bin = (kriged_sky_raw_std >= lo) & (kriged_sky_raw_std < hi)
        kriging_counts.append(int(in_bin.sum()))
        kriging_scale.append(float(np.quantile(kriged_sky_ratios[in_bin], ONE_SIGMA))
                             if in_bin.sum() >= MIN_PIXELS_PER_BIN else pooled)
    if errors.size == 0:
        raise InputError("calibration: no held-out hole reached the network")
    ratio = np.abs(errors) / np.maximum(stds, 1e-12)
    regimes = np.concatenate(regimes)
    overall = float(np.quantile(ratio, ONE_SIGMA))
    scales, counts = [], []
    by_regime: dict[str, list[float]] = {regime: [] for regime in SKY_REGIMES}
    counts_by_regime: dict[str, list[int]] = {regime: [] for regime in SKY_REGIMES}
    for lo, hi in zip(MEAN_SIGMA_EDGES[:-1], MEAN_SIGMA_EDGES[1:], strict=True):
        in_bin = (np.abs(means) >= lo) & (np.abs(means) < hi)
        counts.append(int(in_bin.sum()))
        scales.append(float(np.quantile(ratio[in_bin], ONE_SIGMA)) if in_bin.sum() >= MIN_PIXELS_PER_BIN
                      else overall)
        for regime in SKY_REGIMES:
            selected = in_bin & (regimes == regime)
            counts_by_regime[regime].append(int(selected.sum()))
            by_regime[regime].append(float(np.quantile(ratio[selected], ONE_SIGMA))
                                     if selected.sum() >= MIN_PIXELS_PER_BIN else scales[-1])
    thin_errors, thin_means = np.abs(np.concatenate(thin_errors)), np.abs(np.concatenate(thin_means))
    thin_std: list[float] = []
    for lo, hi in zip(MEAN_SIGMA_EDGES[:-1], MEAN_SIGMA_EDGES[1:], strict=True):
        # A sparse bin pools everything brighter; with too few of those it takes the factor below it (the
        # errors grow with brightness: the bins above 30 sigma hold few thin-hole pixels).
        for selected in ((thin_means >= lo) & (thin_means < hi), thin_means >= lo):
            if selected.sum() >= MIN_PIXELS_PER_BIN:
                thin_std.append(float(np.quantile(thin_errors[selected], ONE_SIGMA)))
                break
        else:
            thin_std.append(thin_std[-1] if thin_std else 1.0)
    sky_std = float(np.quantile(np.abs(sky_errors), ONE_SIGMA)) if sky_errors.size >= MIN_PIXELS_PER_BIN else 1.0
    biharmonic_sky_scale = (float(np.quantile(np.abs(biharmonic_sky_errors), ONE_SIGMA))
                            if biharmonic_sky_errors.size >= MIN_PIXELS_PER_BIN else 1.0)
    calibration = {
        "mean_sigma_edges": [e if np.isfinite(e) else 1e30 for e in MEAN_SIGMA_EDGES], "std_scale": scales,
        "pixels_per_bin": counts, "std_scale_by_regime": by_regime, "pixels_per_bin_by_regime": counts_by_regime,
        "overall_scale": overall, "sky_std_sigma": sky_std,
        "n_sky_pixels": int(sky_errors.size), "biharmonic_sky_std_scale": biharmonic_sky_scale,
        "n_biharmonic_sky_pixels": int(biharmonic_sky_errors.size),
        "kriging_sky_std_scale": kriging_scale, "kriging_std_edges": [e if np.isfinite(e) else 1e30
                                                                      for e in KRIGING_STD_EDGES],
        "kriged_sky_pixels_per_bin": kriging_counts, "n_kriged_sky_pixels": int(kriged_sky_ratios.size),
        "thin_fill_std_scale": thin_std, "n_thin_fill_pixels": int(thin_errors.size),
        "split": "FIRST calibration split + simulated tiles of seeds "
        f"{CALIBRATION_SIM_SEEDS[0]}-{CALIBRATION_SIM_SEEDS[-1]}, evaluation masks of seed {CALIBRATION_SEED}"}
    calibration.update(source_context_factors(model, card, cases, calibration))
    return calibration


def source_context_factors(model, card: dict, cases: list[tuple[NormalisedImage, np.ndarray]],
                           calibration: dict) -> dict:
    """The last calibration step: std factors for holes the filled image shows inside a source, and the others.

    Every case is in-painted with ``calibration`` (all the other factors); per context
    (:data:`~lensforge.models.image_inpainter.SOURCE_CONTEXTS`, from the ``in_source`` diagnostic
    of ``inpaint_image``) and bin of the predicted |mean|, the factor is the 68.27 % quantile of
    |truth - mean| / std over the scored holes, so both contexts are covered 68.3 % of the time on
    the calibration split. A bin with fewer than :data:`MIN_PIXELS_PER_BIN` pixels keeps factor 1.
    Returns ``source_context_std_scale`` and ``pixels_per_bin_by_context``.
    """
    from lensforge.models.image_inpainter import SOURCE_CONTEXTS
    from lensforge.pipeline.inpaint.images import inpaint_image

    ratios, means, in_source = [], [], []
    for image, holes in cases:
        diagnostics: dict = {}
        mean, std = inpaint_image(image.pixels, holes | image.bad, 1.0, model, {**card, "calibration": calibration},
                                  diagnostics=diagnostics)
        scored = holes & ~image.bad & (std > 0)
        ratios.append(np.abs(image.pixels - mean)[scored] / std[scored])
        means.append(mean[scored])
        in_source.append(diagnostics["in_source"][scored])
    ratio, mean, in_source = np.concatenate(ratios), np.abs(np.concatenate(means)), np.concatenate(in_source)
    factors: dict[str, list[float]] = {context: [] for context in SOURCE_CONTEXTS}
    counts: dict[str, list[int]] = {context: [] for context in SOURCE_CONTEXTS}
    for context, selected in zip(SOURCE_CONTEXTS, (in_source, ~in_source), strict=True):
        for lo, hi in zip(MEAN_SIGMA_EDGES[:-1], MEAN_SIGMA_EDGES[1:], strict=True):
            in_bin = selected & (mean >= lo) & (mean < hi)
            counts[context].append(int(in_bin.sum()))
            factors[context].append(float(np.quantile(ratio[in_bin], ONE_SIGMA)) if in_bin.sum() >= MIN_PIXELS_PER_BIN
                                    else 1.0)
    return {"source_context_std_scale": factors, "pixels_per_bin_by_context": counts}


def training_domain(images: list[NormalisedImage]) -> dict:
    """The card's domain: resolution range (widened), brightest pixel, sky offset, units seen."""
    resolutions = [image.resolution_fwhm_pixels for image in images]
    peak = max(float(np.max(image.pixels[~image.bad])) for image in images)
    return {"resolution_fwhm_pixels": [min(resolutions) / RESOLUTION_MARGIN, max(resolutions) * RESOLUTION_MARGIN],
            "peak_snr_max": peak, "background_offset_sigma_max": 3.0,
            "units": sorted(set(FLUX_UNITS) | {image.unit.lower() for image in images}),
            "note": f"resolution: the PSF / beam FWHM in pixels seen in training widened by {RESOLUTION_MARGIN}x; "
                    "images are background-subtracted and in noise-sigma units before the model sees them"}


def train_inpainter(out_dir: str | Path, steps: int | None = None, device: str = "auto", seed: int = 0,
                    first_path: Path | None = None, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Train, calibrate and write an image in-painter into ``out_dir`` (which must not hold one yet).

    Returns:
        The model directory (``weights.safetensors``, ``model_card.json``, ``losses.csv``).
    """
    from lensforge.atomic import atomic_write_text
    from lensforge.models.image_inpainter import CARD_FILE, save_image_inpainter
    from lensforge.models.train_image_inpainter import InpainterTrainSettings, train_image_inpainter

    out_dir = Path(out_dir)
    if (out_dir / CARD_FILE).exists():
        raise InputError(f"{out_dir} already holds an image in-painter; train into a new directory", out_dir)
    began = time.perf_counter()
    first = first_images("train", first_path)
    simulated = simulated_images(TRAIN_SEEDS, cache_dir=cache_dir)
    settings = InpainterTrainSettings(seed=seed, **({"steps": steps} if steps else {}))
    model, record = train_image_inpainter(training_images(first, simulated), draw_mask, settings, device=device,
                                          progress=progress)
    model = model.to("cpu")
    card = {
        "name": "lensforge image in-painter",
        "training_data": {
            "first": {"split": "train (sha256 of the source name < 0.7)", "n_images": len(first),
                      "unit": "Jy/beam", "terms": FIRST_TERMS},
            "simulated": {"presets": list(corpus.PRESETS), "seeds": list(TRAIN_SEEDS),
                          "size_pixels": SIM_SIZE_PIXELS, "terms": SIMULATION_TERMS},
            "never_trained_on": ["FIRST test split (sha256 of the source name >= 0.8)",
                                 "FIRST calibration split (0.7 <= sha256 < 0.8, calibration only)",
                                 "the 100 COSMOS HST stamps"],
        },
        "training": {k: v for k, v in record.items() if k != "losses_csv"},
        "domain": training_domain(first + simulated),
        "calibration": None,
        "metrics": None,
    }
    held_out = calibration_cases(first_path, cache_dir)
    card["calibration"] = calibrate(model, card, held_out, progress)
    card["training"]["total_seconds"] = time.perf_counter() - began
    save_image_inpainter(model, out_dir, card)
    atomic_write_text(out_dir / "losses.csv", record["losses_csv"])
    return out_dir


def recalibrate_inpainter(model_dir: str | Path, first_path: Path | None = None, cache_dir: Path | None = None,
                          progress: bool = True) -> Path:
    """Refit the uncertainty calibration of a trained in-painter, e.g. after the in-painting procedure changed.

    The weights are read (checksum checked) and left as they are; the card's ``calibration`` is
    recomputed on the same held-out split as :func:`train_inpainter` uses, and its ``metrics`` are
    cleared (they were measured with the old calibration; ``benchmarks/real_inpainting.py
    --record-card`` measures them again).
    """
    from lensforge.atomic import atomic_write_text
    from lensforge.models.image_inpainter import CARD_FILE, load_image_inpainter

    model_dir = Path(model_dir)
    model, card = load_image_inpainter(model_dir)
    held_out = calibration_cases(first_path, cache_dir)
    card["calibration"] = calibrate(model, card, held_out, progress)
    card["metrics"] = None
    atomic_write_text(model_dir / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return model_dir


def card_summary(model_dir: Path) -> str:
    """One line for the terminal: where, steps, seconds, calibration factor."""
    card = json.loads((Path(model_dir) / "model_card.json").read_text())
    training = card["training"]
    return (f"{model_dir}: {training['settings']['steps']} steps in {training['seconds'] / 60:.1f} min on "
            f"{training['device']}; std scale {card['calibration']['overall_scale']:.2f} "
            f"(sky std {card['calibration']['sky_std_sigma']:.2f} sigma)")
