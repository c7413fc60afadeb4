"""The training loop on tiny synthetic data: outputs, determinism, learning."""

import csv
import json

import numpy as np
import pytest
import torch

from catalogs.errors import ConfigError, InputError
from models.checkpoint import load_checkpoint
from models.train import LOSS_COLUMNS, TrainSettings, train
from models.vaegan import ModelSettings

SETTINGS = ModelSettings(stamp_size=32, latent_dim=8, base_channels=4)


def blobs(n=64, size=32, seed=0):
    """Noisy elliptical Gaussian blobs, ADU, with sparse random defect masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    sigma = rng.uniform(2.0, 5.0, n)
    images = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        width, e = rng.uniform(2.0, 5.0), rng.uniform(-0.3, 0.3)
        profile = np.exp(-((xx * (1 + e)) ** 2 + (yy * (1 - e)) ** 2) / (2 * width**2))
        images[i] = rng.uniform(20, 60) * sigma[i] * profile + rng.normal(size=(size, size)) * sigma[i]
    masks = rng.random((n, size, size)) < 0.03
    return images, masks, sigma


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_writes_outputs_and_is_deterministic(tmp_path):
    images, masks, sigma = blobs()
    ts = TrainSettings(steps=20, batch_size=8, checkpoint_every=10, device="cpu", seed=4)
    a = train(images, masks, sigma, SETTINGS, ts, tmp_path / "a", progress=False)
    b = train(images, masks, sigma, SETTINGS, ts, tmp_path / "b", progress=False)

    for name in ("settings.json", "losses.csv", "losses.png", "weights.safetensors", "meta.json"):
        assert (tmp_path / "a" / name).is_file(), name
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())
    assert settings["model_class"] == "VAEGAN"
    assert settings["train_settings_class"] == "TrainSettings"
    assert settings["train_settings"] == ts.to_dict()
    assert ModelSettings.from_dict(settings["model_settings"]) == SETTINGS
    with open(tmp_path / "a" / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and list(rows[0]) == ["step", *LOSS_COLUMNS]
    assert all(np.isfinite(float(v)) for row in rows for v in row.values())

    assert a.steps == 20 and a.seconds > 0 and set(a.final_losses) == set(LOSS_COLUMNS)
    assert not a.model.training
    wa, wb = weights(a.model), weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    loaded, meta = load_checkpoint(tmp_path / "a")
    assert meta["step"] == 20
    assert all(torch.equal(v, wa[k]) for k, v in loaded.state_dict().items())

    c = train(images, masks, sigma, SETTINGS, TrainSettings(**{**ts.to_dict(), "seed": 5}), tmp_path / "c", False)
    wc = weights(c.model)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_loss_decreases(tmp_path):
    images, masks, sigma = blobs(seed=1)
    ts = TrainSettings(steps=80, batch_size=16, learning_rate=1e-3, checkpoint_every=1000, device="cpu")
    train(images, masks, sigma, SETTINGS, ts, tmp_path, progress=False)
    with open(tmp_path / "losses.csv") as handle:
        nll = np.array([float(row["nll"]) for row in csv.DictReader(handle)])
    assert nll[-10:].mean() < 0.5 * nll[:10].mean()


def test_bad_inputs(tmp_path):
    images, masks, sigma = blobs(n=4)
    ts = TrainSettings(steps=1, batch_size=2, device="cpu")
    with pytest.raises(InputError, match="shape"):
        train(images, masks[:, :16], sigma, SETTINGS, ts, tmp_path, progress=False)
    with pytest.raises(InputError, match=r"\(N, 64, 64\)"):
        train(images, masks, sigma, ModelSettings(), ts, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="steps"):
        TrainSettings(steps=0)
