"""Training objectives: the VAE-GAN hybrid and its two ablations, one class each.

An objective turns one batch into the loss terms of :data:`LOSS_COLUMNS` and says which
parameters each player owns. The training loop (:mod:`lensforge.models.train`) is the same for all
three; a term an objective does not use is logged as 0.

* :class:`HybridObjective` (Larsen et al. 2016): ELBO (masked-pixel Gaussian likelihood +
  KL) + discriminator feature matching + adversarial loss on reconstructions and prior
  samples.
* :class:`VAEObjective`: the ELBO only; no discriminator is trained.
* :class:`GANObjective`: the decoder as a plain conditional GAN generator fed by the
  prior; the encoder is not trained (in-painting with it is not defined).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lensforge.models.losses import (
    FeatureMatching,
    KLDivergence,
    MaskedGaussianNLL,
    NonSaturatingGANLoss,
    StretchedGaussianNLL,
)
from lensforge.models.normalize import MODEL_PIXEL_SIGMA
from lensforge.models.vaegan import VAEGAN

LOSS_COLUMNS = ("total", "nll", "kl", "feature", "adversarial", "discriminator")


@dataclass
class Batch:
    """One training batch in model space.

    Attributes:
        target: (B, 1, H, W) full noisy stamps.
        mask: (B, 1, H, W) bool, pixels hidden from the encoder.
        conditions: (B, 2K) network input of :meth:`VAEGAN.prepare_conditions` (some dropped).
        noise_std: (B,) model-space standard deviation of each stamp's pixel noise, when it is not
            :data:`MODEL_PIXEL_SIGMA` (a tempered likelihood); None: it is.
        noise_kernel: (1, 1, k, k) kernel that correlates the pixel noise (white noise convolved
            by it has unit variance), None for white noise.
    """

    target: torch.Tensor
    mask: torch.Tensor
    conditions: torch.Tensor
    noise_std: torch.Tensor | None = None
    noise_kernel: torch.Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator-side terms (``nll`` always has weight 1)."""

    kl: float = 1.0
    feature: float = 0.1
    adversarial: float = 0.05


def _noisy(images: torch.Tensor, generator: torch.Generator, batch: Batch | None = None) -> torch.Tensor:
    """Add the data's pixel noise to decoded means (``images`` holds whole batches, stamp-major).

    The decoder gives the noiseless mean but real stamps carry noise: without it the
    discriminator would only learn to spot smooth images, not wrong galaxy shapes. For the same
    reason the noise has the real stamps' level and correlation when the batch gives them (radio
    stamps: a tempered likelihood, and noise correlated by the beam); otherwise white noise of
    :data:`MODEL_PIXEL_SIGMA`.
    """
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
    if batch is not None and batch.noise_kernel is not None:
        kernel = batch.noise_kernel.to(noise.device, noise.dtype)
        noise = torch.nn.functional.conv2d(noise, kernel, padding=kernel.shape[-1] // 2)
    if batch is None or batch.noise_std is None:
        return images + MODEL_PIXEL_SIGMA * noise.to(images.dtype)
    repeats = images.shape[0] // batch.noise_std.shape[0]
    std = batch.noise_std.repeat(repeats).reshape(-1, 1, 1, 1).to(noise.device, noise.dtype)
    return images + (std * noise).to(images.dtype)


class Objective:
    """Base class: ``__call__`` returns every term of :data:`LOSS_COLUMNS` as a scalar tensor."""

    name = "objective"
    trains_discriminator = True
    uses_encoder = True  # the ex-post latent density is fitted on encoder outputs

    def __init__(self, n_pixels: int, weights: LossWeights, likelihood_stretch: float = 0.0):
        self.weights = weights
        self.nll = (StretchedGaussianNLL(MODEL_PIXEL_SIGMA, likelihood_stretch) if likelihood_stretch > 0
                    else MaskedGaussianNLL(pixel_sigma=MODEL_PIXEL_SIGMA))
        self.kl = KLDivergence(n_pixels=n_pixels)
        self.gan = NonSaturatingGANLoss()
        self.feature = FeatureMatching()

    def generator_parameters(self, model: VAEGAN) -> list[nn.Parameter]:
        """Parameters stepped on ``total``."""
        return [*model.encoder.parameters(), *model.decoder.parameters()]

    def discriminator_parameters(self, model: VAEGAN) -> list[nn.Parameter]:
        """Parameters stepped on ``discriminator`` (empty when no discriminator is trained)."""
        return list(model.discriminator.parameters()) if self.trains_discriminator else []

    def describe(self) -> dict:
        """JSON-able description for ``settings.json``: the class of every loss piece."""
        return {"objective": type(self).__name__, "nll": type(self.nll).__name__, "kl": type(self.kl).__name__,
                "feature": type(self.feature).__name__, "adversarial": type(self.gan).__name__}

    def __call__(self, model: VAEGAN, batch: Batch, noise: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _zero(like: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=like.device, dtype=torch.float32)


class HybridObjective(Objective):
    """VAE-GAN: ELBO + feature matching + adversarial; both players step from one discriminator pass."""

    name = "hybrid"

    def __call__(self, model, batch, noise):
        w = self.weights
        b = batch.target.shape[0]
        mu, logvar = model.encode(batch.target, batch.mask, batch.conditions)
        eps = torch.randn(mu.shape, generator=noise, device=mu.device)
        recon = model.decode(mu + torch.exp(0.5 * logvar) * eps, batch.conditions)
        prior = model.decode(torch.randn(mu.shape, generator=noise, device=mu.device), batch.conditions)
        fakes = _noisy(torch.cat([recon, prior]), noise, batch)
        logits, features = model.discriminator(torch.cat([batch.target, fakes]), batch.conditions.repeat(3, 1))
        real_logits, fake_logits = logits[:b], logits[b:]
        terms = {
            "nll": self.nll(recon, batch.target, torch.ones_like(batch.mask), batch.noise_std),
            "kl": self.kl(mu, logvar),
            "feature": self.feature([f[:b] for f in features], [f[b:2 * b] for f in features]),
            "adversarial": self.gan.generator(fake_logits),
            "discriminator": self.gan.discriminator(real_logits, fake_logits),
        }
        terms["total"] = (terms["nll"] + w.kl * terms["kl"] + w.feature * terms["feature"]
                          + w.adversarial * terms["adversarial"])
        return terms


class VAEObjective(Objective):
    """VAE-only ablation: the same encoder/decoder trained on the ELBO alone."""

    name = "vae"
    trains_discriminator = False

    def __call__(self, model, batch, noise):
        mu, logvar = model.encode(batch.target, batch.mask, batch.conditions)
        eps = torch.randn(mu.shape, generator=noise, device=mu.device)
        recon = model.decode(mu + torch.exp(0.5 * logvar) * eps, batch.conditions)
        zero = self._zero(recon)
        terms = {"nll": self.nll(recon, batch.target, torch.ones_like(batch.mask), batch.noise_std),
                 "kl": self.kl(mu, logvar), "feature": zero, "adversarial": zero, "discriminator": zero}
        terms["total"] = terms["nll"] + self.weights.kl * terms["kl"]
        return terms


class GANObjective(Objective):
    """GAN-only ablation: the decoder as a conditional generator from the prior; the encoder is unused."""

    name = "gan"
    uses_encoder = False

    def generator_parameters(self, model):
        return list(model.decoder.parameters())

    def __call__(self, model, batch, noise):
        b = batch.target.shape[0]
        z = torch.randn(b, model.settings.latent_dim, generator=noise, device=batch.target.device)
        fakes = _noisy(model.decode(z, batch.conditions), noise, batch)
        logits, _ = model.discriminator(torch.cat([batch.target, fakes]), batch.conditions.repeat(2, 1))
        zero = self._zero(logits)
        terms = {"nll": zero, "kl": zero, "feature": zero, "adversarial": self.gan.generator(logits[b:]),
                 "discriminator": self.gan.discriminator(logits[:b], logits[b:])}
        terms["total"] = terms["adversarial"]
        return terms


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (HybridObjective, VAEObjective, GANObjective)}
"""Objective classes by name (``TrainSettings.objective``)."""
