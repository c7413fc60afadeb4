"""Train the VAE-GAN on simulated stamps: one loop, top to bottom (NVlabs EDM style).

Every step:

1. draw a batch of stamps and, for each, the union of its own defect mask with the
   mask of another random stamp (augmentation: the model sees many more holes);
2. encode [image with holes zeroed, mask], draw z ~ q(z|x) and decode the
   reconstruction; draw z ~ N(0, I) and decode a generated stamp;
3. run the discriminator once on [real, reconstruction, generated];
4. VAE/generator loss = NLL(recon, full noisy image) + kl_weight * KL
   + feature_weight * feature matching + adversarial_weight * non-saturating GAN loss;
   discriminator loss = non-saturating GAN loss on real vs (recon, generated).
   Both players step *simultaneously* from that one forward pass: each loss is
   differentiated only with respect to its own player's parameters
   (``backward(inputs=...)``), which equals a discriminator step on detached fakes
   and halves the discriminator work on a CPU.

Outputs in ``out_dir``: ``settings.json`` (before the first step), ``losses.csv``
(one row per step), ``weights.safetensors`` + ``meta.json`` (every
``checkpoint_every`` steps and at the end), ``losses.png`` (at the end).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from catalogs.errors import ConfigError, InputError
from models.checkpoint import save_checkpoint, write_json_atomic
from models.device import resolve_device
from models.losses import FeatureMatching, KLDivergence, MaskedGaussianNLL, NonSaturatingGANLoss
from models.normalize import MODEL_PIXEL_SIGMA, NOISE_UNITS_SCALE, to_model_space
from models.vaegan import VAEGAN, ModelSettings

LOSS_COLUMNS = ("total", "nll", "kl", "feature", "adversarial", "discriminator")
_CSV_FLUSH_EVERY = 25  # steps; lets a user tail losses.csv without a write per step


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; written to ``settings.json`` before training starts.

    Attributes:
        steps: optimiser steps (one batch each).
        batch_size: stamps per batch.
        learning_rate: Adam learning rate of both players.
        kl_weight: weight of the per-pixel KL (1 = the ELBO, see :class:`KLDivergence`).
        adversarial_weight: weight of the generator's GAN loss in the VAE objective.
        feature_weight: weight of discriminator feature matching in the VAE objective.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        seed: seeds weights init, batch draws and all noise.
    """

    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-4
    kl_weight: float = 1.0
    adversarial_weight: float = 0.01
    feature_weight: float = 0.1
    checkpoint_every: int = 500
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}", name)
        if not self.learning_rate > 0:
            raise ConfigError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")
        for name in ("kl_weight", "adversarial_weight", "feature_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainSettings.{name} must be >= 0, got {getattr(self, name)}", name)

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TrainSettings keys {sorted(unknown)}", sorted(unknown))
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model, eval mode, on the training device.
        out_dir: the model directory holding the checkpoint and logs.
        final_losses: loss terms of the last step (keys: :data:`LOSS_COLUMNS`).
        seconds: wall-clock training time, including checkpoints.
        steps: optimiser steps taken.
    """

    model: VAEGAN
    out_dir: Path
    final_losses: dict[str, float]
    seconds: float
    steps: int


def _prepare_data(images, masks, noise_sigma, stamp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to model-space (N, 1, H, W) float32 images and (N, 1, H, W) bool masks."""
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks) != 0
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    if images.ndim != 3 or images.shape[1:] != (stamp_size, stamp_size):
        raise InputError(f"images must have shape (N, {stamp_size}, {stamp_size}), got {images.shape}", images.shape)
    if masks.shape != images.shape:
        raise InputError(f"masks shape {masks.shape} does not match images {images.shape}", masks.shape)
    if len(images) < 1:
        raise InputError("no training stamps")
    if not np.isfinite(images).all():
        raise InputError("images contain non-finite pixels; the training target must be the full image")
    x = to_model_space(images, noise_sigma).astype(np.float32)
    return torch.from_numpy(x)[:, None], torch.from_numpy(masks)[:, None]


def _plot_losses(csv_path: Path, png_path: Path) -> None:
    """One panel per loss term: raw values and a running mean, log y where positive."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = np.genfromtxt(csv_path, delimiter=",", names=True)
    table = np.atleast_1d(table)
    fig = Figure(figsize=(12, 6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    axes = fig.subplots(2, 3).ravel()
    window = max(1, len(table) // 50)
    for ax, name in zip(axes, LOSS_COLUMNS, strict=True):
        values = table[name]
        ax.plot(table["step"], values, lw=0.5, alpha=0.4, color="C0")
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(table["step"][window - 1 :], smooth, lw=1.5, color="C1")
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.savefig(png_path, dpi=100)


def train(
    images,
    masks,
    noise_sigma,
    model_settings: ModelSettings,
    train_settings: TrainSettings,
    out_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train a :class:`VAEGAN` and write its checkpoint and logs to ``out_dir``.

    Args:
        images: (N, H, W) float ADU, the full noisy stamps (numpy or zarr array; loaded into memory).
        masks: (N, H, W) bool/uint8, nonzero = defect.
        noise_sigma: (N,) per-stamp Gaussian noise sigma, ADU.
        model_settings: architecture; ``stamp_size`` must equal H = W.
        train_settings: optimisation settings.
        out_dir: model directory (created).
        progress: show a tqdm progress bar.

    Deterministic on CPU: the same inputs and settings give bit-identical weights.
    """
    ts = train_settings
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(ts.device)
    x_all, m_all = _prepare_data(images, masks, noise_sigma, model_settings.stamp_size)
    x_all, m_all = x_all.to(device), m_all.to(device)
    n_stamps, _, height, width = x_all.shape
    batch = ts.batch_size

    nll_loss = MaskedGaussianNLL(pixel_sigma=MODEL_PIXEL_SIGMA)
    kl_loss = KLDivergence(n_pixels=height * width)
    gan_loss = NonSaturatingGANLoss()
    feature_loss = FeatureMatching()

    # Weight init uses the global RNG; fork it so seeding does not leak into the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ts.seed)
        model = VAEGAN(model_settings)
    model.to(device).train()
    vae_params = [*model.encoder.parameters(), *model.decoder.parameters()]
    disc_params = list(model.discriminator.parameters())
    opt_vae = torch.optim.Adam(vae_params, lr=ts.learning_rate, betas=(0.5, 0.999))
    opt_disc = torch.optim.Adam(disc_params, lr=ts.learning_rate, betas=(0.5, 0.999))
    batch_rng = torch.Generator().manual_seed(ts.seed)  # CPU: which stamps and partner masks
    noise_rng = torch.Generator(device).manual_seed(ts.seed + 1)  # posterior eps, prior z, pixel noise
    use_bf16 = device.type == "cuda"

    write_json_atomic(
        out_dir / "settings.json",
        {
            "model_class": type(model).__name__,
            "model_settings_class": type(model_settings).__name__,
            "model_settings": model_settings.to_dict(),
            "train_settings_class": type(ts).__name__,
            "train_settings": ts.to_dict(),
            "losses": {
                "nll": type(nll_loss).__name__,
                "kl": type(kl_loss).__name__,
                "feature": type(feature_loss).__name__,
                "adversarial": type(gan_loss).__name__,
            },
            "noise_units_scale": NOISE_UNITS_SCALE,
            "n_stamps": n_stamps,
            "resolved_device": str(device),
            "torch_version": torch.__version__,
        },
    )

    start = time.perf_counter()
    with open(out_dir / "losses.csv", "w", newline="") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(["step", *LOSS_COLUMNS])
        bar = tqdm(range(1, ts.steps + 1), disable=not progress, desc="train vaegan", unit="step")
        for step in bar:
            # 1. Batch; training mask = own defects OR another stamp's defects.
            index = torch.randint(n_stamps, (batch,), generator=batch_rng).to(device)
            partner = torch.randint(n_stamps, (batch,), generator=batch_rng).to(device)
            target = x_all[index]
            mask = m_all[index] | m_all[partner]
            valid = torch.ones_like(mask)  # simulated: the full noisy image is known everywhere

            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                # 2. Posterior sample -> reconstruction; prior sample -> generated stamp.
                mu, logvar = model.encode(target, mask)
                eps = torch.randn(mu.shape, generator=noise_rng, device=device)
                recon = model.decode(mu + torch.exp(0.5 * logvar) * eps)
                prior = model.decode(torch.randn(mu.shape, generator=noise_rng, device=device))

                # 3. One discriminator pass. The decoder gives the noiseless mean but real
                # stamps carry pixel noise, so fakes get the likelihood's noise added:
                # D then judges galaxy shapes instead of just spotting smooth images.
                fakes = torch.cat([recon, prior])
                fakes = fakes + MODEL_PIXEL_SIGMA * torch.randn(fakes.shape, generator=noise_rng, device=device)
                logits, features = model.discriminator(torch.cat([target, fakes]))
            real_logits, fake_logits = logits[:batch], logits[batch:]

            # 4. Losses, then a simultaneous step of both players.
            terms = {
                "nll": nll_loss(recon, target, valid),
                "kl": kl_loss(mu, logvar),
                "feature": feature_loss([f[:batch] for f in features], [f[batch : 2 * batch] for f in features]),
                "adversarial": gan_loss.generator(fake_logits),
                "discriminator": gan_loss.discriminator(real_logits, fake_logits),
            }
            terms["total"] = (
                terms["nll"]
                + ts.kl_weight * terms["kl"]
                + ts.feature_weight * terms["feature"]
                + ts.adversarial_weight * terms["adversarial"]
            )
            opt_vae.zero_grad(set_to_none=True)
            opt_disc.zero_grad(set_to_none=True)
            terms["total"].backward(inputs=vae_params, retain_graph=True)
            terms["discriminator"].backward(inputs=disc_params)
            opt_vae.step()
            opt_disc.step()

            # 5. Log and checkpoint.
            # One stacked transfer, not one .item() per term: a single GPU sync per step.
            values = dict(
                zip(LOSS_COLUMNS, torch.stack([terms[n].detach() for n in LOSS_COLUMNS]).tolist(), strict=True)
            )
            writer.writerow([step, *(f"{values[name]:.6g}" for name in LOSS_COLUMNS)])
            if step % _CSV_FLUSH_EVERY == 0:
                csv_file.flush()
                bar.set_postfix(
                    nll=f"{values['nll']:.3f}", kl=f"{values['kl']:.3f}", d=f"{values['discriminator']:.3f}"
                )
            if step % ts.checkpoint_every == 0 or step == ts.steps:
                csv_file.flush()
                save_checkpoint(model, out_dir, extra_meta={"step": step, "train_settings": ts.to_dict()})
        bar.close()

    seconds = time.perf_counter() - start
    _plot_losses(out_dir / "losses.csv", out_dir / "losses.png")
    return TrainResult(model=model.eval(), out_dir=out_dir, final_losses=values, seconds=seconds, steps=ts.steps)
