"""Loss terms of the VAE-GAN, each a small callable class returning a scalar tensor.

All are computed in float32 (inputs are upcast), so they are safe under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lensforge.errors import ModelError


class MaskedGaussianNLL:
    """Gaussian negative log-likelihood per valid pixel, without the constant.

    ``mean over valid pixels of 0.5 * ((pred - target) / pixel_sigma) ** 2``.
    With model-space targets the noise is 1 / NOISE_UNITS_SCALE, so a perfect
    mean prediction of a noisy target scores ~0.5.

    Args:
        pixel_sigma: noise standard deviation of the target pixels, in the units of
            ``pred`` / ``target`` (model space: :data:`lensforge.models.normalize.MODEL_PIXEL_SIGMA`).
    """

    def __init__(self, pixel_sigma: float):
        if not pixel_sigma > 0:
            raise ModelError(f"pixel_sigma must be > 0, got {pixel_sigma}", pixel_sigma)
        self.pixel_sigma = float(pixel_sigma)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                 noise_std: torch.Tensor | None = None) -> torch.Tensor:
        """pred, target, valid: same shape; ``valid`` is bool or 0/1, pixels where it is false are ignored.

        ``noise_std`` (B,) is accepted for the stretched subclass and not used here.
        """
        residual = self.residual(pred.float(), target.float(), noise_std) / self.pixel_sigma
        weight = valid.to(torch.float32)
        # Zeroing via where (not multiply) keeps a NaN/inf behind an invalid pixel out of the loss.
        per_pixel = torch.where(weight > 0, 0.5 * residual.square(), torch.zeros_like(residual))
        return per_pixel.sum() / weight.sum().clamp_min(1.0)

    def residual(self, pred: torch.Tensor, target: torch.Tensor, noise_std: torch.Tensor | None) -> torch.Tensor:
        """``pred - target`` in the likelihood's space (here linear)."""
        return pred - target


class StretchedGaussianNLL(MaskedGaussianNLL):
    """Gaussian NLL of asinh-stretched pixels: linear below ``knee`` noise sigmas, logarithmic above.

    The residual is ``S(pred) - S(target)`` with ``S(x) = s * asinh(x / s)`` and ``s = knee *`` the
    stamp's pixel noise in model space (``noise_std``, or ``pixel_sigma`` when None). Faint pixels keep
    the linear Gaussian likelihood; above the knee a pixel's error counts as a *relative* error, so a
    bright core no longer outweighs the diffuse emission around it (Lupton et al. 1999's stretch, used
    as a likelihood). Why: with the linear likelihood the radio generator reconstructed bright FIRST
    cores but dropped their faint lobes and tails, and came out too symmetric
    (:mod:`lensforge.pipeline.datasets.radio_generator`).

    Args:
        pixel_sigma: the likelihood's sigma in the stretched space, model units (as the base class).
        knee: where the stretch turns logarithmic, in units of each stamp's pixel noise (> 0).
    """

    def __init__(self, pixel_sigma: float, knee: float):
        super().__init__(pixel_sigma)
        if not knee > 0:
            raise ModelError(f"knee must be > 0, got {knee}", knee)
        self.knee = float(knee)

    def residual(self, pred: torch.Tensor, target: torch.Tensor, noise_std: torch.Tensor | None) -> torch.Tensor:
        if noise_std is None:
            s = self.knee * self.pixel_sigma
        else:
            s = self.knee * noise_std.to(pred.device, torch.float32).reshape((-1,) + (1,) * (pred.ndim - 1))
        return s * (torch.asinh(pred / s) - torch.asinh(target / s))


class KLDivergence:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, mean over the batch, / ``n_pixels``.

    :class:`MaskedGaussianNLL` is a per-pixel *mean*, whereas the ELBO sums the
    log-likelihood over pixels. Dividing the KL by the number of pixels per stamp puts
    both terms on the same per-pixel scale, so ``kl_weight = 1`` in training is exactly
    the ELBO (beta = 1) and other weights are a beta-VAE.

    Args:
        n_pixels: pixels per stamp (H * W) to normalise by; 1 gives the plain per-sample KL.
    """

    def __init__(self, n_pixels: int = 1):
        if n_pixels < 1:
            raise ModelError(f"n_pixels must be >= 1, got {n_pixels}", n_pixels)
        self.n_pixels = int(n_pixels)

    def __call__(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """mu, logvar: (B, L)."""
        mu, logvar = mu.float(), logvar.float()
        per_sample = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return per_sample.mean() / self.n_pixels


class NonSaturatingGANLoss:
    """Non-saturating GAN loss (Goodfellow et al. 2014) in the numerically stable softplus form."""

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """-log D(fake) = mean softplus(-fake_logits)."""
        return F.softplus(-fake_logits.float()).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """-log D(real) - log(1 - D(fake)) = mean softplus(-real) + mean softplus(fake)."""
        return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()

    def __call__(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`generator` (the term the VAE/generator optimiser minimises)."""
        return self.generator(fake_logits)


class FeatureMatching:
    """Mean squared difference of discriminator features, averaged over layers.

    This is the "learned similarity" reconstruction term of Larsen et al. (2016):
    the reconstruction should look like the original to the discriminator, not only
    pixel by pixel. ``real`` features are the fixed target (detached).
    """

    def __call__(self, real_features: list[torch.Tensor], fake_features: list[torch.Tensor]) -> torch.Tensor:
        """Each list holds one (B, ...) tensor per discriminator stage, same shapes pairwise."""
        if len(real_features) != len(fake_features) or not real_features:
            raise ModelError("feature lists must be non-empty and of equal length")
        terms = [F.mse_loss(f.float(), r.detach().float()) for r, f in zip(real_features, fake_features, strict=True)]
        return torch.stack(terms).mean()
