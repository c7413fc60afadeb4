"""Training stage: fit the VAE-GAN on the store's training split.

The split is by object index: the last ``validation_fraction`` of the objects (cut
at a ring-pair boundary) are held out for the report and never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalogs.store import open_store
from models.train import TrainResult, TrainSettings, train
from models.vaegan import ModelSettings
from pipeline.config import RunConfig

MODEL_VERSION = "v001"


def split_index(n_objects: int, validation_fraction: float) -> int:
    """First validation object: ``n_objects * (1 - fraction)`` rounded down to an even index (ring pairs)."""
    first = int(n_objects * (1.0 - validation_fraction))
    first -= first % 2
    return max(2, min(first, n_objects)) if n_objects >= 2 else n_objects


def model_dir(config: RunConfig) -> Path:
    """Where the run's model lives: ``<run>/models/<version>/``."""
    return config.run_dir / "models" / MODEL_VERSION


def model_settings(config: RunConfig) -> ModelSettings:
    """Network shape for this run."""
    return ModelSettings(stamp_size=config.survey.stamp_size, latent_dim=config.train.latent_dim,
                         base_channels=config.train.base_channels)


def train_settings(config: RunConfig) -> TrainSettings:
    """Optimisation settings for this run (seeded from the run seed)."""
    t = config.train
    return TrainSettings(steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
                         kl_weight=t.kl_weight, adversarial_weight=t.adversarial_weight,
                         feature_weight=t.feature_weight, checkpoint_every=t.checkpoint_every,
                         device=t.device, seed=(config.seed + t.seed_offset) % 2**31)


def train_stage(config: RunConfig, store_path: str | Path, progress: bool = True) -> TrainResult:
    """Train on the training split of the store at ``store_path``; checkpoints go to ``model_dir(config)``."""
    group = open_store(store_path)
    stop = split_index(group["images"].shape[0], config.train.validation_fraction)
    images = np.asarray(group["images"][:stop])
    masks = np.asarray(group["masks"][:stop])
    noise_sigma = np.asarray(group["noise_sigma"][:stop])
    return train(images, masks, noise_sigma, model_settings(config), train_settings(config), model_dir(config),
                 progress=progress)
