"""Training stage: fit the VAE-GAN on the store's training split.

The split is by object index: the last ``validation_fraction`` of the objects (cut
at a ring-pair boundary) are held out for the report and never seen in training.
The model is conditioned on each stamp's flux and half-light radius labels and its last
layer is the survey PSF drawn by GalSim on the model's fine grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensforge.catalogs.store import open_store
from lensforge.layout import RunLayout
from lensforge.models.train import TrainResult, TrainSettings, train
from lensforge.models.vaegan import CONDITIONS, ModelSettings
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import require_store
from lensforge.pipeline.stamps.splits import split_index
from lensforge.pipeline.stamps.surveys import draw_fine_psf_image


def model_dir(config: RunConfig, objective: str | None = None) -> Path:
    """Where this configuration's training writes: ``<run>/models/<train.model_version>/`` for the
    hybrid, ``<version>-vae`` / ``<version>-gan`` for the ablations."""
    objective = objective or config.train.objective
    suffix = "" if objective == "hybrid" else f"-{objective}"
    return RunLayout(config.run_dir).model_dir(f"{config.train.model_version}{suffix}")


def inpainting_model_dir(config: RunConfig) -> Path:
    """The model that in-painting and generation use, from the run's registry (``<run>/models/``).

    ``inpaint.model_version`` when set; else the promoted version (``lensforge models promote``);
    else, before anything is promoted, the hybrid this configuration trains. A named or promoted
    version is checked against its recorded sha256 (``lensforge.models.registry.resolve_version``); a
    missing directory is left for the caller to report.
    """
    from lensforge.models.registry import promoted_version, resolve_version

    root = RunLayout(config.run_dir).models_dir
    if config.inpaint.model_version is not None or (root.is_dir() and promoted_version(root) is not None):
        return resolve_version(root, config.inpaint.model_version)
    return model_dir(config, "hybrid")


def model_settings(config: RunConfig) -> ModelSettings:
    """Network shape for this run."""
    return ModelSettings(stamp_size=config.survey.stamp_size, latent_dim=config.train.latent_dim,
                         base_channels=config.train.base_channels, oversampling=config.train.oversampling,
                         pixel_scale_arcsec=config.survey.pixel_scale_arcsec)


def train_settings(config: RunConfig) -> TrainSettings:
    """Optimisation settings for this run (seeded from the run seed)."""
    t = config.train
    return TrainSettings(steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
                         objective=t.objective, kl_weight=t.kl_weight, adversarial_weight=t.adversarial_weight,
                         feature_weight=t.feature_weight, condition_dropout=t.condition_dropout,
                         checkpoint_every=t.checkpoint_every, device=t.device, compile=t.compile,
                         seed=(config.seed + t.seed_offset) % 2**31)


def condition_labels(group, start: int, stop: int) -> np.ndarray:
    """(n, K) physical conditions of objects ``start .. stop-1`` from the store's labels."""
    return np.stack([np.asarray(group[name][start:stop], dtype=np.float64) for name in CONDITIONS], axis=1)


def train_on_store(config: RunConfig, out_dir: Path, progress: bool = True, resume: bool = True) -> TrainResult:
    """Fit the run's generator on the training split of its store, checkpoints into ``out_dir`` (no
    uncertainty calibration). With ``resume`` an interrupted training, or one to fewer steps, continues
    from its last checkpoint. ``InputError`` when the run has no store yet.
    """
    group = open_store(require_store(config))
    stop = split_index(group["images"].shape[0], config.train.validation_fraction)
    images = np.asarray(group["images"][:stop])
    masks = np.asarray(group["masks"][:stop])
    noise_sigma = np.asarray(group["noise_sigma"][:stop])
    settings = model_settings(config)
    return train(images, masks, noise_sigma, settings, train_settings(config), out_dir,
                 progress=progress, conditions=condition_labels(group, 0, stop),
                 psf_image=draw_fine_psf_image(config.survey, settings.oversampling, config.radio), resume=resume)


def train_stage(config: RunConfig, progress: bool = True, resume: bool = True) -> TrainResult:
    """The train stage of a run: :func:`train_on_store` into ``model_dir(config)``, then the in-painting
    std's calibration (:func:`calibrate_uncertainty`). With ``resume`` (the default) an interrupted
    training continues from its last checkpoint. ``InputError`` when the run has no store yet.
    """
    result = train_on_store(config, model_dir(config), progress=progress, resume=resume)
    calibrate_uncertainty(config, model_dir(config))
    return result


def calibration_objects(config: RunConfig) -> range:
    """The objects the in-painting std is calibrated on: the run's own simulation continued past its
    ``n_objects`` (same population, masks and noise; no stage ever sees them), a quarter of the run's
    size, between 256 and 1024 stamps."""
    first = config.simulation.n_objects
    return range(first, first + min(1024, max(256, first // 4)))


def calibrate_uncertainty(config: RunConfig, directory: Path) -> dict:
    """Fit the in-painting std's brightness calibration (:mod:`lensforge.models.uncertainty`) of the model in
    ``directory`` on :func:`calibration_objects`, store it in its ``meta.json`` and return it."""
    from lensforge.models.checkpoint import load_checkpoint, update_meta
    from lensforge.models.inpaint import inpaint_with_model
    from lensforge.models.uncertainty import fit_calibration
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    objects = calibration_objects(config)
    batch = simulate_stamps(config, objects.start, objects.stop)
    sigma = batch.labels["noise_sigma"]
    model, _ = load_checkpoint(directory)
    mean, std = inpaint_with_model(model, batch.images, batch.masks, sigma, n_samples=config.inpaint.n_samples,
                                   batch_size=config.inpaint.batch_size, seed=config.seed, first_index=objects.start,
                                   calibrated=False)
    calibration = fit_calibration(mean, std, batch.images, batch.masks, sigma)
    calibration["objects"] = [objects.start, objects.stop]
    calibration["n_samples"] = config.inpaint.n_samples
    update_meta(directory, {"uncertainty_calibration": calibration})
    return calibration


def load_models(config: RunConfig, device: str = "cpu") -> dict:
    """The run's trained models by report name: "vaegan" (hybrid), "vae" and "gan" (ablations) where present."""
    from lensforge.models.checkpoint import META_FILE, load_checkpoint

    names = {"hybrid": "vaegan", "vae": "vae", "gan": "gan"}
    models = {}
    for objective, name in names.items():
        directory = model_dir(config, objective)
        if (directory / META_FILE).is_file():
            models[name] = load_checkpoint(directory, device=device)[0]
    return models
