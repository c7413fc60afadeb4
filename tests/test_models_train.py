"""The training loop on tiny synthetic data: outputs, determinism, learning."""

import csv
import json

import numpy as np
import pytest
import torch

from lensforge.errors import ConfigError, InputError, ModelError
from lensforge.models.checkpoint import load_checkpoint
from lensforge.models.train import LOSS_COLUMNS, TrainSettings, train
from lensforge.models.vaegan import ModelSettings

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
    with pytest.raises(ConfigError, match="likelihood_stretch"):
        TrainSettings(likelihood_stretch=-1.0)


def test_a_stretched_likelihood_is_recorded_and_trains_other_weights(tmp_path):
    """``likelihood_stretch`` > 0 swaps the pixel likelihood; settings.json names it; the bright blobs' cores
    then weigh less, so the same seed trains to other weights and logs a smaller NLL."""
    images, masks, sigma = blobs(n=16, seed=3)
    common = dict(steps=6, batch_size=4, checkpoint_every=100, device="cpu", seed=1)
    linear = train(images, masks, sigma, SETTINGS, TrainSettings(**common), tmp_path / "linear", False)
    stretched = train(images, masks, sigma, SETTINGS, TrainSettings(likelihood_stretch=3.0, **common),
                      tmp_path / "stretched", False)
    recorded = json.loads((tmp_path / "stretched" / "settings.json").read_text())
    assert recorded["losses"]["nll"] == "StretchedGaussianNLL"
    assert recorded["train_settings"]["likelihood_stretch"] == 3.0
    assert json.loads((tmp_path / "linear" / "settings.json").read_text())["losses"]["nll"] == "MaskedGaussianNLL"
    wl, ws = weights(linear.model), weights(stretched.model)
    assert not all(torch.equal(wl[k], ws[k]) for k in wl)

    def first_nll(run):
        with open(tmp_path / run / "losses.csv") as handle:
            return float(next(csv.DictReader(handle))["nll"])

    assert first_nll("stretched") < 0.5 * first_nll("linear")


def test_exact_resume_after_interruption(tmp_path):
    """10 steps, stop, resume to 20 == 20 steps in one go: weights, optimiser, RNG and the loss log."""
    images, masks, sigma = blobs(n=32, seed=2)
    conditions = np.stack([np.linspace(1e3, 5e3, 32), np.linspace(0.3, 0.9, 32)], axis=1)
    common = dict(batch_size=8, checkpoint_every=5, device="cpu", seed=9)
    whole = train(images, masks, sigma, SETTINGS, TrainSettings(steps=20, **common), tmp_path / "whole", False,
                  conditions=conditions)
    first = train(images, masks, sigma, SETTINGS, TrainSettings(steps=10, **common), tmp_path / "split", False,
                  conditions=conditions)
    assert first.steps == 10
    # Rows written after the last checkpoint are redone on resume: fake a crash that left some behind.
    with open(tmp_path / "split" / "losses.csv", "a") as handle:
        handle.write("11,9,9,9,9,9,9\n")
    resumed = train(images, masks, sigma, SETTINGS, TrainSettings(steps=20, **common), tmp_path / "split", False,
                    conditions=conditions, resume=True)
    assert resumed.steps == 10
    wa, wb = weights(whole.model), weights(resumed.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "whole" / "losses.csv").read_text() == (tmp_path / "split" / "losses.csv").read_text()
    state = json.loads((tmp_path / "split" / "training_state.json").read_text())
    assert state["step"] == 20 and state["format"] == "lensforge-training-state"

    # A finished run resumes to a no-op; another run's data or settings are refused.
    again = train(images, masks, sigma, SETTINGS, TrainSettings(steps=20, **common), tmp_path / "split", False,
                  conditions=conditions, resume=True)
    assert again.steps == 0
    with pytest.raises(ModelError, match="training data changed"):
        train(images * 2, masks, sigma, SETTINGS, TrainSettings(steps=30, **common), tmp_path / "split", False,
              conditions=conditions, resume=True)
    state_path = tmp_path / "split" / "training_state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "device_type": "cuda"}))
    with pytest.raises(ModelError, match="trained on cuda, this run uses cpu"):
        train(images, masks, sigma, SETTINGS, TrainSettings(steps=30, **common), tmp_path / "split", False,
              conditions=conditions, resume=True)
    # A state written before a settings field existed held its default: it still resumes.
    older = {**state, "train_settings": {k: v for k, v in state["train_settings"].items() if k != "likelihood_stretch"}}
    state_path.write_text(json.dumps(older))
    assert train(images, masks, sigma, SETTINGS, TrainSettings(steps=20, **common), tmp_path / "split", False,
                 conditions=conditions, resume=True).steps == 0
    with pytest.raises(ModelError, match=r"differ in \['likelihood_stretch'\]"):
        train(images, masks, sigma, SETTINGS, TrainSettings(steps=30, likelihood_stretch=3.0, **common),
              tmp_path / "split", False, conditions=conditions, resume=True)
    state_path.write_text(json.dumps(state))
    with pytest.raises(ModelError, match=r"differ in \['learning_rate'\]"):
        train(images, masks, sigma, SETTINGS, TrainSettings(steps=30, learning_rate=1e-3, **common),
              tmp_path / "split", False, conditions=conditions, resume=True)


def test_tampered_training_state_is_refused(tmp_path):
    images, masks, sigma = blobs(n=16)
    ts = TrainSettings(steps=4, batch_size=4, checkpoint_every=2, device="cpu")
    train(images, masks, sigma, SETTINGS, ts, tmp_path, False)
    path = tmp_path / "training_state.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="tampered"):
        train(images, masks, sigma, SETTINGS, TrainSettings(steps=6, batch_size=4, checkpoint_every=2,
                                                            device="cpu"), tmp_path, False, resume=True)


@pytest.mark.parametrize("objective, frozen, trained", [("vae", "discriminator", "encoder"),
                                                        ("gan", "encoder", "discriminator")])
def test_ablation_objectives_train_only_their_networks(tmp_path, objective, frozen, trained):
    images, masks, sigma = blobs(n=16)
    ts = TrainSettings(steps=3, batch_size=4, objective=objective, device="cpu", seed=1)
    result = train(images, masks, sigma, SETTINGS, ts, tmp_path, False)
    torch.manual_seed(1)
    from lensforge.models.vaegan import VAEGAN

    init = VAEGAN(SETTINGS)  # the same initial weights (train seeds init with ts.seed)
    after = dict(getattr(result.model, frozen).named_parameters())
    before = dict(getattr(init, frozen).named_parameters())
    assert all(torch.equal(after[k], before[k]) for k in after)
    after_t = dict(getattr(result.model, trained).named_parameters())
    before_t = dict(getattr(init, trained).named_parameters())
    assert not all(torch.equal(after_t[k], before_t[k]) for k in after_t)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["losses"]["objective"] == {"vae": "VAEObjective", "gan": "GANObjective"}[objective]
    with open(tmp_path / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    zero_terms = {"vae": ("feature", "adversarial", "discriminator"), "gan": ("nll", "kl", "feature")}[objective]
    assert all(float(row[t]) == 0 for row in rows for t in zero_terms)
    with pytest.raises(ConfigError, match="unknown objective"):
        TrainSettings(objective="diffusion")
