"""The VAE-GAN hybrid (Larsen et al. 2016): an in-painting VAE whose decoder is also a GAN generator.

Shapes use B = batch, H = W = ``stamp_size``, L = ``latent_dim``, C = ``base_channels``.
All images are in model space (see :mod:`models.normalize`).

* :class:`Encoder` reads the masked stamp *and* its mask (so a zero pixel that is a
  hole is distinguishable from a zero pixel that is sky) and returns q(z | x) as
  (mu, logvar).
* :class:`Decoder` maps z to the mean image; it doubles as the GAN generator.
* :class:`Discriminator` returns a real/fake logit plus its intermediate activations,
  which the VAE uses as a learned feature space for reconstruction.

The network is deliberately small (three factor-2 stages each way, no normalisation
layers, so every stamp's output is independent of the rest of its batch) and trains on
two CPU cores in minutes: at the default C = 8, one training step of 64 stamps of 64x64
took ~0.15 s on 2 cores (C = 12: ~0.22 s, C = 16: ~0.31 s). The full-resolution end of
each network is a pixel (un)shuffle instead of a 1-channel convolution, because oneDNN
runs 1-channel convolutions ~5x slower per FLOP on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from catalogs.errors import ModelError

_DOWNSAMPLE = 8  # three stride-2 stages
_LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite early in training


@dataclass(frozen=True)
class ModelSettings:
    """Architecture hyper-parameters; stored in every checkpoint's ``meta.json``.

    Attributes:
        stamp_size: H = W of the stamps in pixels; a multiple of 8.
        latent_dim: L, dimension of z.
        base_channels: C, channels of the first conv stage (doubled at each stage); the
            default 8 is what trains 1500 steps x 64 stamps in ~4 min on 2 CPU cores.
    """

    stamp_size: int = 64
    latent_dim: int = 64
    base_channels: int = 8

    def __post_init__(self) -> None:
        if self.stamp_size <= 0 or self.stamp_size % _DOWNSAMPLE:
            raise ModelError(f"stamp_size must be a positive multiple of {_DOWNSAMPLE}, got {self.stamp_size}")
        if self.latent_dim <= 0 or self.base_channels <= 0:
            raise ModelError("latent_dim and base_channels must be positive")

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"unknown ModelSettings keys {sorted(unknown)}", sorted(unknown))
        return cls(**{k: int(v) for k, v in data.items()})


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Encoder(nn.Module):
    """(B, 2, H, W) [masked image, mask] -> (mu, logvar), each (B, L)."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        c, side = settings.base_channels, settings.stamp_size // _DOWNSAMPLE
        self.convs = nn.Sequential(
            # 2x2 pixel blocks -> channels: (B, 8, H/2, W/2), no 2-channel conv at full size.
            nn.PixelUnshuffle(2), nn.Conv2d(8, c, 3, padding=1), _act(),  # H/2
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _act(),  # H/4
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _act(),  # H/8
        )  # fmt: skip
        self.head = nn.Linear(4 * c * side * side, 2 * settings.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.convs(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(*_LOGVAR_RANGE)


class Decoder(nn.Module):
    """z (B, L) -> mean image (B, 1, H, W) in model space; also the GAN generator."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        c, side = settings.base_channels, settings.stamp_size // _DOWNSAMPLE
        self.shape = (4 * c, side, side)
        self.head = nn.Sequential(nn.Linear(settings.latent_dim, 4 * c * side * side), _act())
        # Transposed convs upsample while computing at the coarse resolution, which is
        # ~4x cheaper on CPU than nearest-upsample + 3x3 conv at the fine one.
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1), _act(),  # H/4
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), _act(),  # H/2
            nn.Conv2d(c, c, 3, padding=1), _act(),  # H/2
            # 2x2 output pixels per H/2 position: linear, model space is signed.
            nn.Conv2d(c, 4, 3, padding=1), nn.PixelShuffle(2),  # H
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.head(z).view(-1, *self.shape))


class Discriminator(nn.Module):
    """(B, 1, H, W) -> (logit (B,), features: [(B, C, H/2, W/2), (B, 2C, H/4, W/4), (B, 4C, H/8, W/8)])."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        c, side = settings.base_channels, settings.stamp_size // _DOWNSAMPLE
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, c, 3, padding=1), _act()),
                nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _act()),
                nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _act()),
            ]
        )
        self.head = nn.Linear(4 * c * side * side, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.head(x.flatten(1)).squeeze(1), features


class VAEGAN(nn.Module):
    """Encoder + decoder/generator + discriminator, built from one :class:`ModelSettings`."""

    def __init__(self, settings: ModelSettings | None = None):
        super().__init__()
        self.settings = settings if settings is not None else ModelSettings()
        self.encoder = Encoder(self.settings)
        self.decoder = Decoder(self.settings)
        self.discriminator = Discriminator(self.settings)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, masked: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): masked (B, 1, H, W) model space, mask (B, 1, H, W) (nonzero = missing) -> (mu, logvar) (B, L).

        Masked pixels are zeroed here as well, so callers may pass the unmasked image
        and the encoder still never sees the values behind the holes.
        """
        mask = mask.to(masked.dtype)
        return self.encoder(torch.cat([masked * (1 - mask), mask], dim=1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> mean image (B, 1, H, W) in model space."""
        return self.decoder(z)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ N(0, temperature^2 I) and decode: (n, 1, H, W), model space, noiseless mean."""
        z = torch.randn(n, self.settings.latent_dim, generator=generator, device=_draw_device(generator, self))
        return self.decode(temperature * z.to(self.device))

    def reconstruct(
        self,
        masked: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        n_samples: int = 1,
    ) -> torch.Tensor:
        """Posterior samples z ~ q(z | masked, mask), decoded: (B, n_samples, H, W) in model space.

        With ``n_samples=1`` that is (B, 1, H, W), the same layout as :meth:`decode`.
        Known pixels are *not* pasted back; see :func:`models.inpaint.inpaint_with_model`.
        """
        mu, logvar = self.encode(masked, mask)
        b, latent = mu.shape
        eps = torch.randn(b, n_samples, latent, generator=generator, device=_draw_device(generator, self))
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps.to(mu.device)
        return self.decode(z.reshape(b * n_samples, latent)).reshape(b, n_samples, *masked.shape[-2:])


def _draw_device(generator: torch.Generator | None, model: nn.Module) -> torch.device:
    """Random numbers are drawn where the generator lives (a CPU generator keeps results device-independent)."""
    return generator.device if generator is not None else next(model.parameters()).device
