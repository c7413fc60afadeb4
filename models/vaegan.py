"""The VAE-GAN hybrid (Larsen et al. 2016) with the PSF as its last layer (Lanusse et al. 2021).

Shapes use B = batch, H = W = ``stamp_size``, F = H * ``oversampling`` (the fine grid of
the intrinsic profile), L = ``latent_dim``, C = ``base_channels``, K = number of
physical conditions (:data:`CONDITIONS`). Observed images are in model space (see
:mod:`lensforge.models.normalize`).

* :class:`Encoder`: q(z | masked image, mask, conditions) as (mu, logvar). It sees the
  mask, so a zero pixel that is a hole differs from a zero pixel that is sky.
* :class:`Decoder`: p(image | z, conditions). It returns the *intrinsic* galaxy (pre-PSF,
  unsheared as far as the training data allow) on the fine grid, factored into a
  unit-flux profile (a softmax over fine pixels, so light is never negative) and a
  total flux. :class:`PSFObservation` convolves that profile with the survey PSF and
  integrates it over the stamp's pixels; that fixed, differentiable physics layer is
  what the likelihood compares with data. Generation hands the fine profile to GalSim
  (``InterpolatedImage``), which then applies shear, PSF, pixel and noise, so the shear
  label of a generated galaxy is exact. The decoder doubles as the GAN generator.
* :class:`Discriminator`: a projection discriminator (Miyato & Koyama 2018) on observed
  stamps given the conditions; its activations are the learned feature space of the
  reconstruction loss.

Conditions are physical (flux in ADU, half-light radius in arcsec). Each may be unknown
(NaN): the networks get a (value, known-flag) pair per condition and training drops
conditions at random, so one model samples conditionally and in-paints real data
whose parameters nobody knows.

The networks are small (three factor-2 stages each way, no normalisation layers, so each
stamp's output is independent of the rest of its batch) and train on two CPU cores in
minutes. The full-resolution ends are pixel (un)shuffles instead of 1-channel
convolutions, which oneDNN runs several times slower per FLOP on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lensforge.errors import InputError, ModelError

_DOWNSAMPLE = 8  # three stride-2 stages
_LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite early in training
_LOG_FLUX_RANGE = (-10.0, 15.0)  # model-space total flux exp(.) stays finite

CONDITIONS: tuple[str, ...] = ("flux", "half_light_radius")
"""Default physical conditions of the decoder, in this order: flux [ADU], half-light radius [arcsec].

A model may name others in :attr:`ModelSettings.conditions` (the radio generator uses flux [Jy],
largest angular size [arcsec] and Fanaroff-Riley class)."""
LOG_CONDITIONS = frozenset({"flux", "size_arcsec"})  # conditioned on log10(value): these span decades


@dataclass(frozen=True)
class ModelSettings:
    """Architecture hyper-parameters; stored in every checkpoint's ``meta.json``.

    Attributes:
        stamp_size: H = W of the observed stamps in pixels; a multiple of 8.
        latent_dim: L, dimension of z.
        base_channels: C, channels of the first conv stage (doubled at each stage).
        oversampling: fine pixels per stamp pixel along each axis of the intrinsic profile.
        pixel_scale_arcsec: stamp pixel scale [arcsec/pixel]; the fine grid's is this / oversampling.
        conditions: names of the K physical conditions, in input order (those in
            :data:`LOG_CONDITIONS` enter as log10 and must be > 0).
        aggregate_latents: M > 0 keeps M training posteriors q(z | x) (mean, log variance and
            conditions) and samples new galaxies from that aggregate posterior, the density the
            decoder was trained on; 0 samples from a joint Gaussian fitted to it.
        aggregate_bandwidth: width of the Gaussian kernel, in standardised condition units, that
            weighs the kept posteriors by how close their conditions are to the requested ones.
    """

    stamp_size: int = 64
    latent_dim: int = 64
    base_channels: int = 8
    oversampling: int = 2
    pixel_scale_arcsec: float = 0.2
    conditions: tuple[str, ...] = CONDITIONS
    aggregate_latents: int = 0
    aggregate_bandwidth: float = 0.5

    def __post_init__(self) -> None:
        names = self.conditions
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ModelError(f"conditions must be distinct non-empty names, got {names!r}", names)
        if self.stamp_size <= 0 or self.stamp_size % _DOWNSAMPLE:
            raise ModelError(f"stamp_size must be a positive multiple of {_DOWNSAMPLE}, got {self.stamp_size}")
        if self.latent_dim <= 0 or self.base_channels <= 0:
            raise ModelError("latent_dim and base_channels must be positive")
        if self.oversampling not in (1, 2, 3, 4):
            raise ModelError(f"oversampling must be 1, 2, 3 or 4, got {self.oversampling}", self.oversampling)
        if not self.pixel_scale_arcsec > 0:
            raise ModelError(f"pixel_scale_arcsec must be > 0, got {self.pixel_scale_arcsec}")
        if self.aggregate_latents < 0 or not self.aggregate_bandwidth > 0:
            raise ModelError(f"aggregate_latents must be >= 0 and aggregate_bandwidth > 0, got "
                             f"{self.aggregate_latents} and {self.aggregate_bandwidth}")

    @property
    def fine_size(self) -> int:
        """F, side of the intrinsic profile's grid [fine pixels]."""
        return self.stamp_size * self.oversampling

    @property
    def fine_pixel_scale_arcsec(self) -> float:
        """Pixel scale of the intrinsic profile's grid [arcsec/pixel]."""
        return self.pixel_scale_arcsec / self.oversampling

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields (``conditions`` as a list)."""
        return {**asdict(self), "conditions": list(self.conditions)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(types)
        if unknown:
            raise ModelError(f"unknown ModelSettings keys {sorted(unknown)}", sorted(unknown))
        def cast(key: str, value):
            if key == "conditions":
                return tuple(str(name) for name in value)
            return float(value) if types[key] in (float, "float") else int(value)

        return cls(**{k: cast(k, v) for k, v in data.items()})


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Encoder(nn.Module):
    """(B, 2, H, W) [masked image, mask] + (B, 2K) conditions -> (mu, logvar), each (B, L)."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        c, side = settings.base_channels, settings.stamp_size // _DOWNSAMPLE
        self.convs = nn.Sequential(
            # 2x2 pixel blocks -> channels: (B, 8, H/2, W/2), no 2-channel conv at full size.
            nn.PixelUnshuffle(2), nn.Conv2d(8, c, 3, padding=1), _act(),  # H/2
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _act(),  # H/4
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _act(),  # H/8
        )  # fmt: skip
        self.head = nn.Linear(4 * c * side * side + 2 * len(settings.conditions), 2 * settings.latent_dim)

    def forward(self, x: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([self.convs(x).flatten(1), conditions.to(x.dtype)], dim=1)
        mu, logvar = self.head(features).chunk(2, dim=1)
        return mu, logvar.clamp(*_LOGVAR_RANGE)


class Decoder(nn.Module):
    """(z (B, L), conditions (B, 2K)) -> (profile logits (B, 1, F, F), log total flux (B,)), model space."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        c, side = settings.base_channels, settings.stamp_size // _DOWNSAMPLE
        n_in = settings.latent_dim + 2 * len(settings.conditions)
        self.oversampling = settings.oversampling
        self.shape = (4 * c, side, side)
        self.head = nn.Sequential(nn.Linear(n_in, 4 * c * side * side), _act())
        # Transposed convs upsample while computing at the coarse resolution, which on a CPU is
        # several times cheaper than nearest-upsample + 3x3 conv at the fine one.
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1), _act(),  # H/4
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), _act(),  # H/2
            nn.Conv2d(c, c, 3, padding=1), _act(),  # H/2
            # 2x2 stamp pixels per H/2 position: log-intensity logits of the profile at H.
            nn.Conv2d(c, 4, 3, padding=1), nn.PixelShuffle(2),  # H
        )  # fmt: skip
        self.log_flux = nn.Sequential(nn.Linear(n_in, 64), _act(), nn.Linear(64, 1))
        # The network learns the log-profile *relative* to a centred Gaussian of sigma F/16
        # (0.8 arcsec at the defaults): at initialisation the softmax is a compact blob
        # instead of a flat sheet, and training starts from galaxy-like images.
        fine = settings.fine_size
        r2 = (torch.arange(fine) - (fine - 1) / 2).square()
        self.register_buffer("log_profile_prior", -0.5 * (r2[:, None] + r2[None, :]) / (fine / 16) ** 2)

    def forward(self, z: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([z, conditions.to(z.dtype)], dim=1)
        logits = self.convs(self.head(inputs).view(-1, *self.shape))
        if self.oversampling > 1:
            # Smooth (bilinear) upsampling of the log-profile to the fine grid: data blurred by the
            # PSF cannot constrain sub-pixel structure, and learned sub-pixel outputs there turn
            # into a checkerboard in the intrinsic profile that GalSim would then shear and draw.
            logits = F.interpolate(logits, scale_factor=self.oversampling, mode="bilinear", align_corners=False)
        logits = logits + self.log_profile_prior
        return logits, self.log_flux(inputs).squeeze(1).clamp(*_LOG_FLUX_RANGE)


class PSFObservation(nn.Module):
    """Fine intrinsic image (B, 1, F, F) -> observed stamp (B, 1, H, W): PSF convolution, then pixel integration.

    The PSF (buffer ``psf``, F x F, sum 1, centre at index F // 2) is drawn by GalSim at
    the fine pixel scale *without* the pixel response; the fine image already holds flux
    per fine pixel, and summing ``oversampling``² fine pixels integrates over a stamp
    pixel. The FFT convolution is circular; galaxies sit in the middle of their stamps,
    so the wrap-around only moves sky. Runs in float32 even under autocast (no bf16 FFT).
    """

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self.oversampling = settings.oversampling
        fine = settings.fine_size
        delta = torch.zeros(fine, fine)
        delta[fine // 2, fine // 2] = 1.0  # until set_psf: no blur
        self.register_buffer("psf", delta)

    def set_psf(self, psf_image) -> None:
        """Install a fine-grid PSF image (F x F, finite, positive sum); it is normalised to sum 1."""
        psf = torch.as_tensor(np.asarray(psf_image, dtype=np.float32))
        if tuple(psf.shape) != tuple(self.psf.shape):
            raise InputError(f"PSF image must be {tuple(self.psf.shape)} fine pixels, got {tuple(psf.shape)}")
        if not bool(torch.isfinite(psf).all()) or not float(psf.sum()) > 0:
            raise InputError("PSF image must be finite with a positive sum")
        self.psf.copy_(psf / psf.sum())

    def forward(self, fine: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=fine.device.type, enabled=False):
            fine = fine.float()
            size = fine.shape[-2:]
            kernel = torch.fft.rfft2(torch.fft.ifftshift(self.psf.float(), dim=(-2, -1)))
            blurred = torch.fft.irfft2(torch.fft.rfft2(fine) * kernel, s=size)
            o = self.oversampling
            return F.avg_pool2d(blurred, o) * (o * o) if o > 1 else blurred


class Discriminator(nn.Module):
    """(B, 1, H, W) + (B, 2K) -> (logit (B,), features [(B, C, H/2, W/2), (B, 2C, H/4, W/4), (B, 4C, H/8, W/8)])."""

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
        n_features = 4 * c * side * side
        self.head = nn.Linear(n_features, 1)
        # Projection term <embed(conditions), h>: judges "real *for these conditions*".
        self.projection = nn.Linear(2 * len(settings.conditions), n_features, bias=False)

    def forward(self, x: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        h = x.flatten(1)
        logit = self.head(h).squeeze(1) + (self.projection(conditions.to(h.dtype)) * h).sum(dim=1)
        return logit, features


class VAEGAN(nn.Module):
    """Encoder + decoder/generator + PSF layer + discriminator, built from one :class:`ModelSettings`.

    Buffers saved with the weights: the fine PSF (``observe.psf``) and the centre and scale
    that standardise the conditions (set from the training set by :meth:`fit_conditions`).
    """

    def __init__(self, settings: ModelSettings | None = None):
        super().__init__()
        self.settings = settings if settings is not None else ModelSettings()
        self.encoder = Encoder(self.settings)
        self.decoder = Decoder(self.settings)
        self.observe = PSFObservation(self.settings)
        self.discriminator = Discriminator(self.settings)
        k = len(self.settings.conditions)
        self.register_buffer("condition_center", torch.zeros(k))
        self.register_buffer("condition_scale", torch.ones(k))
        # Ex-post latent density (Ghosh et al. 2020; a Gaussian stand-in for the latent flow of
        # Lanusse et al. 2021): a joint Gaussian of (posterior mean z given the conditions,
        # standardised conditions) over the training set. Sampling from it instead of N(0, I)
        # follows the aggregate posterior the decoder was trained on; conditioning is exact.
        n_joint = self.settings.latent_dim + k
        self.register_buffer("latent_mean", torch.zeros(n_joint))
        self.register_buffer("latent_cov", torch.eye(n_joint))
        self.register_buffer("latent_fitted", torch.zeros((), dtype=torch.bool))
        m = self.settings.aggregate_latents
        if m > 0:  # only then: checkpoints of Gaussian-density models keep their keys
            self.register_buffer("aggregate_mu", torch.zeros(m, self.settings.latent_dim))
            self.register_buffer("aggregate_logvar", torch.zeros(m, self.settings.latent_dim))
            self.register_buffer("aggregate_conditions", torch.zeros(m, k))  # standardised

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- conditions -------------------------------------------------------------------
    @property
    def conditions(self) -> tuple[str, ...]:
        """Names of the physical conditions, in input order."""
        return self.settings.conditions

    def _transform(self, raw: torch.Tensor) -> torch.Tensor:
        columns = [torch.log10(raw[:, k]) if name in LOG_CONDITIONS else raw[:, k]
                   for k, name in enumerate(self.conditions)]
        return torch.stack(columns, dim=1)

    def fit_conditions(self, raw) -> None:
        """Set the standardisation from training conditions ``raw`` (N, K), in :attr:`conditions` order."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float64))
        if raw.ndim != 2 or raw.shape[1] != len(self.conditions) or not bool(torch.isfinite(raw).all()):
            raise InputError(f"training conditions must be finite with shape (N, {len(self.conditions)})")
        t = self._transform(raw)
        self.condition_center.copy_(t.mean(dim=0).float())
        self.condition_scale.copy_(t.std(dim=0).clamp_min(1e-6).nan_to_num(1.0).float())

    def init_flux_scale(self, model_space_images: torch.Tensor) -> None:
        """Start the decoder's log-flux output at the median log total flux of the training stamps.

        The total flux spans decades and the head's output starts near 0; without this the
        first hundreds of steps would only be spent learning the scale.
        """
        totals = model_space_images.flatten(1).sum(dim=1).clamp_min(1e-3)
        self.decoder.log_flux[-1].bias.data.fill_(float(torch.log(totals).median()))

    def prepare_conditions(self, raw: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Physical conditions (B, K), NaN = unknown, or None (all unknown) -> network input (B, 2K).

        The input is [standardised value x known, known] per condition.
        """
        k = len(self.conditions)
        device = self.condition_center.device
        if raw is None:
            return torch.zeros(batch, 2 * k, device=device)
        raw = torch.as_tensor(raw, dtype=torch.float32, device=device)
        if tuple(raw.shape) != (batch, k):
            raise InputError(f"conditions must have shape ({batch}, {k}) [{', '.join(self.conditions)}], "
                             f"got {tuple(raw.shape)}")
        known = torch.isfinite(raw)
        logs = [n in LOG_CONDITIONS for n in self.conditions]
        bad = known & (raw <= 0) & torch.tensor(logs, device=device)
        if bool(bad.any()):
            names = sorted({n for n, log in zip(self.conditions, logs, strict=True) if log})
            raise InputError(f"{' and '.join(names)} conditions must be > 0 (or NaN for unknown)")
        safe = torch.where(known, raw, torch.ones_like(raw))
        standard = (self._transform(safe) - self.condition_center) / self.condition_scale
        flags = known.to(standard.dtype)
        return torch.cat([standard * flags, flags], dim=1)

    def fit_latent_density(self, mu: torch.Tensor, raw_conditions: torch.Tensor, logvar: torch.Tensor | None = None,
                           seed: int = 0) -> None:
        """Fit the joint Gaussian of posterior means ``mu`` (N, L) and physical conditions (N, K).

        With ``aggregate_latents`` M > 0 it also keeps M of the posteriors (``mu``, ``logvar``) with
        their conditions, a random subset drawn with ``seed`` (each posterior about equally often when
        there are fewer than M).
        """
        known = torch.isfinite(raw_conditions).all(dim=1)
        if int(known.sum()) < mu.shape[1] + len(self.conditions) + 2:
            raise InputError("too few stamps with known conditions to fit the latent density")
        # The fit runs on the CPU whatever the training device (buffers are copied back below).
        mu, raw_conditions, known = mu.cpu(), raw_conditions.cpu(), known.cpu()
        c = (self._transform(raw_conditions[known].double()) - self.condition_center.double().cpu()) \
            / self.condition_scale.double().cpu()
        joint = torch.cat([mu[known].double(), c], dim=1)
        mean = joint.mean(dim=0)
        cov = torch.cov(joint.T) + 1e-6 * torch.eye(joint.shape[1], dtype=torch.float64)
        self.latent_mean.copy_(mean.float())
        self.latent_cov.copy_(cov.float())
        m = self.settings.aggregate_latents
        if m > 0:
            if logvar is None:
                raise InputError("aggregate_latents > 0: the posteriors' log variances are needed")
            generator = torch.Generator().manual_seed(int(seed))
            rows = torch.nonzero(known).flatten()
            order = torch.cat([rows[torch.randperm(len(rows), generator=generator)]
                               for _ in range(-(-m // len(rows)))])[:m]
            self.aggregate_mu.copy_(mu[order].float())
            self.aggregate_logvar.copy_(logvar.cpu()[order].float())
            self.aggregate_conditions.copy_(c[torch.searchsorted(rows, order)].float())  # c: the known rows
        self.latent_fitted.fill_(True)

    def _untransform(self, standard: torch.Tensor) -> torch.Tensor:
        """Standardised conditions (B, K) -> physical values (e.g. flux [ADU], half-light radius [arcsec])."""
        t = standard * self.condition_scale.double().cpu() + self.condition_center.double().cpu()
        columns = [10.0 ** t[:, k] if name in LOG_CONDITIONS else t[:, k].clamp_min(1e-3)
                   for k, name in enumerate(self.conditions)]
        return torch.stack(columns, dim=1)

    @property
    def samples_aggregate(self) -> bool:
        """True when new galaxies come from the kept training posteriors (``aggregate_latents`` > 0, fitted)."""
        return self.settings.aggregate_latents > 0 and bool(self.latent_fitted)

    @property
    def noise_dim(self) -> int:
        """Standard-normal draws per sampled galaxy: L, plus K for the conditions once a Gaussian density is fitted."""
        if self.samples_aggregate:
            return self.settings.latent_dim
        return self.settings.latent_dim + (len(self.conditions) if bool(self.latent_fitted) else 0)

    def latents_from_noise(self, noise: torch.Tensor, raw_conditions: torch.Tensor | None,
                           selector: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map standard-normal draws (B, :attr:`noise_dim`), already scaled by temperature, to (z, conditions).

        Without a fitted density: z = the draws (prior N(0, I)) and the conditions as given. With
        one: (z, unknown conditions) are drawn from the joint Gaussian given the known conditions
        (exact Gaussian conditioning), so every returned condition is known. A model that samples
        the aggregate posterior (:attr:`samples_aggregate`) picks a kept posterior per galaxy with
        ``selector`` (B,) uniforms in [0, 1) (see :meth:`_aggregate_latents`).
        """
        if self.samples_aggregate:
            if selector is None:
                raise InputError("sampling the aggregate posterior needs one uniform selector per galaxy")
            return self._aggregate_latents(noise, raw_conditions, torch.as_tensor(selector, dtype=torch.float64))
        if not bool(self.latent_fitted):
            return noise, raw_conditions
        latent, k = self.settings.latent_dim, len(self.conditions)
        b = noise.shape[0]
        known, c = self._standardised_known(raw_conditions, b)
        mean, cov = self.latent_mean.double().cpu(), self.latent_cov.double().cpu()
        joint = torch.empty(b, latent + k, dtype=torch.float64)
        for pattern in torch.unique(known, dim=0):
            rows = (known == pattern).all(dim=1)
            given = latent + torch.nonzero(pattern).flatten()
            free = torch.cat([torch.arange(latent), latent + torch.nonzero(~pattern).flatten()])
            cov_ff = cov[free][:, free]
            if len(given):
                gain = torch.linalg.solve(cov[given][:, given], cov[given][:, free]).T  # (free, given)
                cond_mean = mean[free] + (c[rows][:, pattern] - mean[given]) @ gain.T
                cond_cov = cov_ff - gain @ cov[given][:, free]
            else:
                cond_mean, cond_cov = mean[free].expand(int(rows.sum()), len(free)), cov_ff
            chol = torch.linalg.cholesky(cond_cov + 1e-9 * torch.eye(len(free), dtype=torch.float64))
            sample = cond_mean + noise[rows][:, :len(free)].double().cpu() @ chol.T
            block = torch.empty(int(rows.sum()), latent + k, dtype=torch.float64)
            block[:, free] = sample
            block[:, given] = c[rows][:, pattern]
            joint[rows] = block
        return joint[:, :latent].float(), self._untransform(joint[:, latent:]).float()

    def _standardised_known(self, raw_conditions: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(known (B, K) bool, standardised conditions (B, K) float64, arbitrary where unknown), on the CPU."""
        if raw_conditions is None:
            raw_conditions = torch.full((batch, len(self.conditions)), float("nan"))
        raw_conditions = torch.as_tensor(raw_conditions, dtype=torch.float64).cpu()
        known = torch.isfinite(raw_conditions)
        safe = torch.where(known, raw_conditions, torch.ones_like(raw_conditions))
        center, scale = self.condition_center.double().cpu(), self.condition_scale.double().cpu()
        return known, (self._transform(safe) - center) / scale

    def _aggregate_latents(self, noise: torch.Tensor, raw_conditions: torch.Tensor | None,
                           selector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z from the aggregate posterior given the known conditions; unknown ones from the picked posterior.

        Kept posterior m is weighted by exp(-|c - c_m|^2 / 2 h^2) over the known standardised
        conditions (h = ``aggregate_bandwidth``; all equal when none is known); ``selector`` picks
        one by the inverse of the weights' cumulative sum, and z = mu_m + exp(logvar_m / 2) * noise.
        """
        known, c = self._standardised_known(raw_conditions, noise.shape[0])
        kept = self.aggregate_conditions.double().cpu()
        squared = ((c[:, None, :] - kept[None]) ** 2 * known[:, None, :]).sum(dim=2)  # (B, M)
        weights = torch.softmax(-squared / (2.0 * self.settings.aggregate_bandwidth ** 2), dim=1)
        cumulative = weights.cumsum(dim=1)
        picked = torch.searchsorted(cumulative, (selector.cpu() * cumulative[:, -1])[:, None]).flatten()
        picked = picked.clamp(max=len(kept) - 1)
        mu, logvar = self.aggregate_mu.double().cpu()[picked], self.aggregate_logvar.double().cpu()[picked]
        z = mu + (0.5 * logvar).exp() * noise.double().cpu()
        standard = torch.where(known, c, kept[picked])
        return z.float(), self._untransform(standard).float()

    # -- networks ---------------------------------------------------------------------
    def encode(self, masked: torch.Tensor, mask: torch.Tensor,
               conditions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): masked (B, 1, H, W) model space, mask (B, 1, H, W) (nonzero = missing) -> (mu, logvar) (B, L).

        ``conditions`` is the (B, 2K) network input of :meth:`prepare_conditions` (None: unknown).
        Masked pixels are zeroed here as well, so callers may pass the unmasked image
        and the encoder still never sees the values behind the holes.
        """
        mask = mask.to(masked.dtype)
        if conditions is None:
            conditions = self.prepare_conditions(None, masked.shape[0])
        return self.encoder(torch.cat([masked * (1 - mask), mask], dim=1), conditions)

    def decode_intrinsic(self, z: torch.Tensor,
                         conditions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, L) -> (unit-flux intrinsic profile (B, 1, F, F), log total flux (B,) in model space)."""
        if conditions is None:
            conditions = self.prepare_conditions(None, z.shape[0])
        logits, log_flux = self.decoder(z, conditions)
        b, _, f, _ = logits.shape
        profile = torch.softmax(logits.float().reshape(b, -1), dim=1).reshape(b, 1, f, f)
        return profile, log_flux.float()

    def decode(self, z: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, L) -> observed mean image (B, 1, H, W) in model space: flux x (PSF ⊗ pixel ⊗ profile)."""
        profile, log_flux = self.decode_intrinsic(z, conditions)
        return self.observe(profile) * torch.exp(log_flux)[:, None, None, None]

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Draw z ~ N(0, temperature^2 I) and decode: (n, 1, H, W), model space, noiseless mean."""
        z = torch.randn(n, self.settings.latent_dim, generator=generator, device=_draw_device(generator, self))
        return self.decode(temperature * z.to(self.device), conditions)

    def reconstruct(
        self,
        masked: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        n_samples: int = 1,
        conditions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Posterior samples z ~ q(z | masked, mask), decoded: (B, n_samples, H, W) in model space.

        With ``n_samples=1`` that is (B, 1, H, W), the same layout as :meth:`decode`.
        Known pixels are *not* pasted back; see :func:`lensforge.models.inpaint.inpaint_with_model`.
        """
        mu, logvar = self.encode(masked, mask, conditions)
        b, latent = mu.shape
        eps = torch.randn(b, n_samples, latent, generator=generator, device=_draw_device(generator, self))
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps.to(mu.device)
        repeated = None if conditions is None else conditions.repeat_interleave(n_samples, dim=0)
        decoded = self.decode(z.reshape(b * n_samples, latent), repeated)
        return decoded.reshape(b, n_samples, *masked.shape[-2:])


def _draw_device(generator: torch.Generator | None, model: nn.Module) -> torch.device:
    """Random numbers are drawn where the generator lives (a CPU generator keeps results device-independent)."""
    return generator.device if generator is not None else next(model.parameters()).device
