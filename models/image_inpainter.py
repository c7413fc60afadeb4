"""The image in-painter: a fully convolutional VAE-GAN that fills the masked pixels of any image.

What it sees. An image is normalised robustly (:func:`normalise`): the background (median of
the known pixels) is subtracted and the result divided by the noise (1.4826 x MAD of the known
pixels, or the noise the caller knows), so pixel values are in noise-sigma units whatever the
survey, units or exposure. A stretch ``y = asinh(x / STRETCH)`` then keeps a 1000-sigma radio core
and 1-sigma sky within the same few units, so both train. The network gets four channels per
pixel: the stretched known pixels (0 in holes), the mask, a cheap strong *start* fill of the
holes, stretched, and the log of the local noise relative to the image's (a noise map, when the
data have one). The start (:func:`start_fill_of`; the model's ``start_fill``) is scikit-image's
biharmonic fill of the *stretched* pixels, so the network learns what a smooth interpolation
misses; the stretch makes that fill follow the near-Gaussian peak of a beam or PSF across a hole
instead of flattening it. Earlier models used the biharmonic fill of the linear pixels or
:func:`pull_push_fill` (known-weighted averages over a pyramid of 2x2 blocks, a local mean),
which still fills the sky holes the network skips on skies of white noise. Masked pixels are
never read: they are zeroed before anything else.

What it returns. A correction to the start and a log standard deviation per pixel, in stretched
units, for a latent draw ``z``. :class:`ImageInpainterNet` is a U-Net of gated convolutions
(Yu et al. 2019: each layer learns where its inputs are valid, which is what a hole needs) on a
2x pixel-unshuffled grid (cheaper per pixel on CPUs than full-resolution convolutions), with a
spatial latent map at 1/8 resolution. As in pluralistic image completion (Zheng et al. 2019)
a *prior* head infers p(z | known pixels) and, in training only, a *posterior* encoder
q(z | all pixels); their KL divergence ties them, a Gaussian likelihood scores the prediction and
a patch discriminator (:class:`PatchDiscriminator`) scores posterior samples (the GAN half of
the hybrid). Posterior samples of the image come from prior draws of ``z`` plus the predicted
per-pixel noise; the per-pixel uncertainty is calibrated on a held-out split
(:func:`calibrated_std`, factors in the model card).

Everything is fully convolutional: any size or position works; :mod:`lensforge.pipeline.inpaint.images`
cuts large images into overlapping windows around the holes and batches them.

A model directory holds ``weights.safetensors`` and ``model_card.json``: the architecture
settings, the training data and their terms, the training settings, the calibration, the metrics
on held-out data, the sha256 of the weights and the training *domain* that the domain check
(:mod:`lensforge.pipeline.inpaint.domain`) compares an image with::

    "domain": {
        "resolution_fwhm_pixels": [lo, hi],   # PSF / beam FWHM in pixels seen in training
        "peak_snr_max": float,                # brightest (background-subtracted) pixel / noise seen
        "background_offset_sigma_max": float, # |sky level| / noise the training images had at most
        "units": [str, ...]                   # BUNIT values (lower case) of the training images
    }

The shipped weights live in ``lensforge/models/weights/image_inpainter/`` (package data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from lensforge.atomic import atomic_write_bytes, atomic_write_text
from lensforge.errors import InputError, ModelError

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "weights.safetensors"
CARD_FORMAT = "lensforge-image-inpainter"
CARD_FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / "image_inpainter"

STRETCH = 2.0  # noise sigmas: the stretch is linear below about this, logarithmic above
MAD_TO_SIGMA = 1.4826  # Gaussian standard deviation per median absolute deviation
_LOG_STD_RANGE = (-6.0, 3.0)  # stretched units: exp() stays finite early in training
_LOGVAR_RANGE = (-10.0, 6.0)
ROBUST_SAMPLE_PIXELS = 1_000_000  # known pixels the background and noise are measured on, at most
DOWNSAMPLE = 16  # pixel unshuffle (2) x three stride-2 stages: window sides are multiples of this
START_FILLS = ("stretched_biharmonic", "biharmonic", "pull_push")
# Stretched units the stretched biharmonic start may rise above the window's brightest known pixel
# (about a factor e in flux): room for a hidden peak. The FIRST calibration split's source-pixel RMSE
# of the start is 37.9 sigma clipped at the known range (scikit-image's rule) and 37.4 with this.
STRETCHED_HEADROOM = 1.0
# The headroom is given only to a window that shows a source: a known pixel at least this many noise
# sigma above the background. A sky-only window is clipped to its known range, as scikit-image clips.
# Why: a wide hole beside a thin strip of known sky (a hole at the image border, mirrored by the padding)
# made the stretched fill extrapolate the strip's noise to 10 sigma across the hole, and the network kept
# it (FIRST calibration split: one image's sky RMSE 1.28x biharmonic's, 1.035 with this rule; source and
# sky RMSE of every preset within 0.001 of before; 5 sigma was the smallest of 5, 10, 20, 40 that did it).
HEADROOM_MIN_PEAK_SIGMA = 5.0
BIHARMONIC_STARTS = ("stretched_biharmonic", "biharmonic")
# Kinds of sky, by the lag-1 correlation of an image's known sky pixels (``sky_regime`` of
# lensforge.pipeline.inpaint.images): near-white noise (optical), noise under a beam a few pixels wide
# (FIRST) and a smooth sky (SKA-MID dirty images). The network's errors relative to its std differ
# between them, so the calibration keeps factors per regime.
SKY_REGIMES = ("white", "beam", "smooth")


# --- normalisation -----------------------------------------------------------------------------------

def robust_background_noise(image: np.ndarray, known: np.ndarray) -> tuple[float, float]:
    """Background (median) and noise (1.4826 x MAD) of the known pixels, in the image's units.

    Images of more than :data:`ROBUST_SAMPLE_PIXELS` known pixels use every k-th of them.

    Raises:
        InputError: no known pixel, or a noise of 0 (a constant image: nothing to scale by).
    """
    image, known = np.asarray(image), np.asarray(known, bool)
    # A regular subsample of a large image: the median's error is then ~1e-3 sigma.
    step = max(1, image.size // ROBUST_SAMPLE_PIXELS)
    values = image.ravel()[::step][known.ravel()[::step]].astype(np.float64)
    if values.size == 0 and step > 1:
        values = image[known].astype(np.float64)
    if values.size == 0:
        raise InputError("every pixel is masked: nothing to in-paint from")
    background = float(np.median(values))
    noise = float(MAD_TO_SIGMA * np.median(np.abs(values - background)))
    if not noise > 0:
        # MAD is 0 when over half the known pixels share one value (blank or clipped data).
        spread = float(np.std(values))
        if not spread > 0:
            raise InputError("the known pixels are constant: no noise to normalise by")
        noise = spread
    return background, noise


def stretch(x: torch.Tensor | np.ndarray):
    """Noise-sigma units -> model units: ``asinh(x / STRETCH)``."""
    return torch.asinh(x / STRETCH) if isinstance(x, torch.Tensor) else np.arcsinh(x / STRETCH)


def unstretch(y: torch.Tensor | np.ndarray):
    """Model units -> noise-sigma units: ``STRETCH * sinh(y)``."""
    return STRETCH * torch.sinh(y) if isinstance(y, torch.Tensor) else STRETCH * np.sinh(y)


def pull_push_fill(x: torch.Tensor, known: torch.Tensor, levels: int = 6) -> torch.Tensor:
    """Fill holes with known-weighted means over a pyramid of 2x2 blocks (pull-push, Gortler et al. 1996).

    Pull: each level halves the grid, summing ``x * known`` and ``known`` over 2x2 blocks. Push:
    from the coarsest level down, a pixel's estimate is its own known-weighted mean, blended with
    the upsampled coarser estimate by the share of the block that is known. Known pixels keep
    their values; a hole takes the mean of the nearest known pixels at the scale of the hole.

    Args:
        x: (B, 1, H, W) values (noise-sigma units), holes arbitrary but finite.
        known: (B, 1, H, W) 1 for known pixels, 0 for holes.
        levels: pyramid depth; holes wider than ``2**levels`` pixels get the window's mean.

    Returns:
        (B, 1, H, W) filled values; equal to ``x`` on known pixels.
    """
    coarse = _block_estimate(x, known, levels)
    if coarse is None:  # too small to pool: nothing to fill holes from
        return torch.where(known > 0, x, torch.zeros_like(x))
    # At full resolution a pixel is all known or all hole, so the push keeps x or takes the coarser estimate.
    up = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
    return torch.where(known > 0, x, up[..., : x.shape[-2], : x.shape[-1]])


def pull_push_at(x: torch.Tensor, known: torch.Tensor, rows: np.ndarray, cols: np.ndarray, levels: int = 6
                 ) -> torch.Tensor:
    """:func:`pull_push_fill` of one (1, 1, H, W) image at the hole pixels (rows, cols) only.

    The last push step (a full-resolution bilinear upsampling) is evaluated at those pixels alone,
    which is most of the cost on a large image with few holes. Returns a 1-D tensor of their values.
    """
    coarse = _block_estimate(x, known, levels)
    if coarse is None:
        return torch.zeros(len(rows), dtype=x.dtype)
    coarse = coarse[0, 0]

    def source(index: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # F.interpolate's (align_corners=False, scale 2) source coordinate, clamped at 0 as it does.
        position = torch.clamp((torch.as_tensor(index, dtype=torch.float32) + 0.5) * 0.5 - 0.5, min=0.0)
        lower = position.floor().long()
        return lower, torch.clamp(lower + 1, max=size - 1), position - lower
    r0, r1, wr = source(rows, coarse.shape[0])
    c0, c1, wc = source(cols, coarse.shape[1])
    top = (1 - wc) * coarse[r0, c0] + wc * coarse[r0, c1]
    bottom = (1 - wc) * coarse[r1, c0] + wc * coarse[r1, c1]
    return (1 - wr) * top + wr * bottom


def _block_estimate(x: torch.Tensor, known: torch.Tensor, levels: int) -> torch.Tensor | None:
    """The pull-push estimate on the grid of 2x2 blocks (pyramid level 1); None below 2 pixels."""
    sums, weights = [x * known], [known]
    for _ in range(levels):
        if min(sums[-1].shape[-2:]) < 2:
            break
        sums.append(F.avg_pool2d(sums[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    if len(sums) == 1:
        return None
    estimate = sums[-1] / weights[-1].clamp_min(1e-6)
    estimate = torch.where(weights[-1] > 0, estimate, torch.zeros_like(estimate))
    for s, w in zip(reversed(sums[1:-1]), reversed(weights[1:-1]), strict=True):
        coarse = F.interpolate(estimate, scale_factor=2.0, mode="bilinear", align_corners=False)
        coarse = coarse[..., : s.shape[-2], : s.shape[-1]]
        own = s / w.clamp_min(1e-6)
        share = w.clamp(0.0, 1.0)
        estimate = share * own + (1.0 - share) * coarse
    return estimate


# --- network -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InpainterSettings:
    """Architecture of :class:`ImageInpainterNet` (stored in the model card)."""

    channels: tuple[int, int, int] = (16, 32, 64)  # at 1/2, 1/4 and 1/8 (and 1/16) resolution
    latent_channels: int = 8  # z at 1/16 resolution
    posterior_channels: int = 24
    # The fill the network corrects (:func:`start_fill_of`): "stretched_biharmonic" (scikit-image's
    # biharmonic fill of the stretched pixels), "biharmonic" (of the linear pixels) or "pull_push"
    # (:func:`pull_push_fill`; cards written before the setting existed).
    start_fill: str = "stretched_biharmonic"

    def __post_init__(self) -> None:
        if self.start_fill not in START_FILLS:
            raise ModelError(f"start_fill must be one of {', '.join(START_FILLS)}; got {self.start_fill!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict) -> InpainterSettings:
        known = {k: data[k] for k in ("channels", "latent_channels", "posterior_channels", "start_fill") if k in data}
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        known.setdefault("start_fill", "pull_push")  # the only start of cards without the key
        return cls(**known)


class GatedConv(nn.Module):
    """A gated convolution: ``act(conv_f(x)) * sigmoid(conv_g(x))`` (Yu et al. 2019)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 2 * c_out, 3, stride=stride, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


def _gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over channels and positions, per batch element."""
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1)


class ImageInpainterNet(nn.Module):
    """Gated-convolution U-Net with a spatial latent (prior and posterior heads); see the module docstring.

    Inputs are (B, 4, H, W) in model units (:func:`network_inputs`), H and W multiples of
    :data:`DOWNSAMPLE`. Outputs (B, 1, H, W) correction and log std, stretched units.
    """

    def __init__(self, settings: InpainterSettings | None = None):
        super().__init__()
        self.settings = settings or InpainterSettings()
        c1, c2, c3 = self.settings.channels
        z = self.settings.latent_channels
        self.enc1 = nn.Sequential(GatedConv(4 * 4, c1), GatedConv(c1, c1))                    # 1/2
        self.enc2 = nn.Sequential(GatedConv(c1, c2, stride=2), GatedConv(c2, c2))             # 1/4
        self.enc3 = nn.Sequential(GatedConv(c2, c3, stride=2), GatedConv(c3, c3, dilation=2))  # 1/8
        self.enc4 = nn.Sequential(GatedConv(c3, c3, stride=2), GatedConv(c3, c3, dilation=2))  # 1/16
        self.prior = nn.Conv2d(c3, 2 * z, 3, padding=1)
        p = self.settings.posterior_channels
        # q(z | everything): sees the true pixels, so it is cheap plain convolutions to 1/16.
        self.posterior = nn.Sequential(
            nn.Conv2d(5 * 4, p, 3, padding=1), nn.ELU(), nn.Conv2d(p, p, 3, stride=2, padding=1), nn.ELU(),
            nn.Conv2d(p, p, 3, stride=2, padding=1), nn.ELU(), nn.Conv2d(p, p, 3, stride=2, padding=1), nn.ELU(),
            nn.Conv2d(p, 2 * z, 3, padding=1))
        self.dec4 = GatedConv(c3 + z, c3)
        self.dec3 = GatedConv(c3 + c3, c3)
        self.dec2 = GatedConv(c3 + c2, c2)
        self.dec1 = GatedConv(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 2 * 4, 3, padding=1)  # pixel-shuffled back to (correction, log std)
        with torch.no_grad():  # start as "the start fill, with unit uncertainty"
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, inputs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Features of the masked image and the prior p(z | known pixels) as (mu, logvar)."""
        h1 = self.enc1(F.pixel_unshuffle(inputs, 2))
        h2 = self.enc2(h1)
        h3 = self.enc3(h2)
        h4 = self.enc4(h3)
        mu, logvar = self.prior(h4).chunk(2, dim=1)
        return [h1, h2, h3, h4], mu, logvar.clamp(*_LOGVAR_RANGE)

    def encode_posterior(self, inputs: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | all pixels) as (mu, logvar); ``truth`` (B, 1, H, W) stretched, training only."""
        mu, logvar = self.posterior(F.pixel_unshuffle(torch.cat([inputs, truth], 1), 2)).chunk(2, dim=1)
        return mu, logvar.clamp(*_LOGVAR_RANGE)

    def decode(self, features: list[torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correction, log std), each (B, 1, H, W) in stretched units, for latent ``z``."""
        h1, h2, h3, h4 = features
        d = self.dec4(torch.cat([h4, z], 1))
        d = self.dec3(torch.cat([F.interpolate(d, size=h3.shape[-2:]), h3], 1))
        d = self.dec2(torch.cat([F.interpolate(d, size=h2.shape[-2:]), h2], 1))
        d = self.dec1(torch.cat([F.interpolate(d, size=h1.shape[-2:]), h1], 1))
        correction, log_std = F.pixel_shuffle(self.out(d), 2).chunk(2, dim=1)
        return correction, log_std.clamp(*_LOG_STD_RANGE)


class PatchDiscriminator(nn.Module):
    """Patch discriminator on (image, mask) in stretched units: one realness score per ~16x16 patch."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(2 * 4, c, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, padding=1))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(F.pixel_unshuffle(torch.cat([image, mask], 1), 2))


def biharmonic_fill(x: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """scikit-image's biharmonic fill of the holes of each (H, W) image of ``x`` (B, H, W); float32.

    One sparse solve for the batch (:func:`lensforge.models.biharmonic.biharmonic_fill`, equal to
    ``skimage.restoration.inpaint_biharmonic`` per image). Known pixels keep their values; hole
    values of ``x`` are never read. An image with every pixel a hole is filled with 0 (the
    background of normalised images).
    """
    from lensforge.models import biharmonic

    return biharmonic.biharmonic_fill(x, hole).astype(np.float32)


def start_headroom(x: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """(B,) stretched units the stretched start of each image of ``x`` (B, H, W) may pass its known range by.

    :data:`STRETCHED_HEADROOM` where a known pixel reaches :data:`HEADROOM_MIN_PEAK_SIGMA` (noise-sigma
    units, background subtracted), else 0.
    """
    brightest = np.where(np.asarray(hole, bool), -np.inf, np.asarray(x, np.float64)).reshape(len(x), -1).max(axis=1)
    return np.where(brightest >= HEADROOM_MIN_PEAK_SIGMA, STRETCHED_HEADROOM, 0.0)


def start_fill_of(x: np.ndarray, hole: np.ndarray, kind: str) -> np.ndarray | None:
    """The start fill ``kind`` (a model's ``start_fill``) of each (H, W) image of ``x`` (B, H, W), noise-sigma units.

    ``"biharmonic"``: :func:`biharmonic_fill` of the pixels. ``"stretched_biharmonic"``: the
    biharmonic fill of the stretched pixels ``asinh(x / STRETCH)``, mapped back. Bright sources
    are close to Gaussian near their peaks (a beam, a PSF), and the log of a Gaussian is a quadratic,
    which a biharmonic fill reproduces exactly; ``asinh`` is that log above a few sigma and linear
    on the sky. Linear biharmonic fills of a hidden core or lobe edge undershoot and ring instead
    (on the FIRST calibration split: source-pixel RMSE 0.90x and sky-pixel RMSE 0.40x the linear
    fill's). Both keep known pixels; the linear fill stays within their range (scikit-image's clip),
    the stretched one within it widened by :data:`STRETCHED_HEADROOM` (room for a hidden peak) where
    the image shows a source (:func:`start_headroom`).
    ``"pull_push"``: None (the network computes :func:`pull_push_fill` itself).
    """
    if kind == "biharmonic":
        return biharmonic_fill(x, hole)
    if kind == "stretched_biharmonic":
        from lensforge.models import biharmonic

        filled = biharmonic.biharmonic_fill(stretch(np.asarray(x, np.float64)), hole, headroom=start_headroom(x, hole))
        return unstretch(filled).astype(np.float32)
    if kind == "pull_push":
        return None
    raise ModelError(f"start_fill must be one of {', '.join(START_FILLS)}; got {kind!r}")


def network_inputs(x: torch.Tensor, hole: torch.Tensor, log_noise_ratio: torch.Tensor | None = None,
                   start_fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's (B, 4, H, W) input and the stretched start fill (B, 1, H, W).

    Args:
        x: (B, 1, H, W) background-subtracted pixels in noise-sigma units (holes: anything finite).
        hole: (B, 1, H, W) 1 where the pixel is to be filled.
        log_noise_ratio: (B, 1, H, W) log(local noise / image noise), None for 0 (uniform noise).
        start_fill: (B, 1, H, W) the start in noise-sigma units (e.g. :func:`start_fill_of`; its
            hole values are used), None for :func:`pull_push_fill`.
    """
    known = 1.0 - hole
    x = x * known
    start = stretch(pull_push_fill(x, known) if start_fill is None else torch.where(hole > 0, start_fill, x))
    noise = torch.zeros_like(x) if log_noise_ratio is None else log_noise_ratio * known
    return torch.cat([stretch(x) * known, hole, start, noise], 1), start


# --- model directories -------------------------------------------------------------------------------

def save_image_inpainter(model: ImageInpainterNet, out_dir: Path, card: dict) -> Path:
    """Write ``weights.safetensors`` (generator only) and ``model_card.json`` (``card`` + format fields)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    blob = safetensors.torch.save(tensors)
    card = {**card, "format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION,
            "settings": model.settings.to_dict(), "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "weights_bytes": len(blob), "torch_version": torch.__version__.split("+")[0]}
    # Weights first, then the card that vouches for them: a crash between leaves a checksum mismatch.
    atomic_write_bytes(out_dir / WEIGHTS_FILE, blob)
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_card(model_dir: str | Path | None = None) -> dict:
    """The model card of ``model_dir`` (None: the shipped weights); ``ModelError`` naming the file otherwise."""
    directory = SHIPPED_DIR if model_dir is None else Path(model_dir)
    path = directory / CARD_FILE
    if not path.is_file():
        what = "the shipped image in-painter" if model_dir is None else "an image in-painter directory"
        raise ModelError(f"{path}: missing; {directory} is not {what} (train one: lensforge train-inpainter)", path)
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: unreadable model card ({type(err).__name__})", path) from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelError(f"{path}: not a lensforge image in-painter card", path)
    if card.get("format_version") != CARD_FORMAT_VERSION:
        raise ModelError(f"{path}: card format version {card.get('format_version')!r}, this lensforge reads "
                         f"{CARD_FORMAT_VERSION}", path)
    return card


def load_image_inpainter(model_dir: str | Path | None = None, device: str | torch.device = "cpu"
                         ) -> tuple[ImageInpainterNet, dict]:
    """Load an image in-painter (None: the shipped weights) after checking its weights' sha256.

    Returns:
        ``(model, card)``: the network in eval mode on ``device`` and its model card.

    Raises:
        ModelError: missing or unreadable files, a checksum that does not match the card, or
            tensors that do not fit the card's architecture.
    """
    from lensforge.models.device import resolve_device

    directory = SHIPPED_DIR if model_dir is None else Path(model_dir)
    card = read_card(model_dir)
    weights = directory / WEIGHTS_FILE
    try:
        blob = weights.read_bytes()
    except OSError as err:
        raise ModelError(f"{weights}: unreadable ({type(err).__name__})", weights) from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card.get("weights_sha256"):
        raise ModelError(f"{weights}: sha256 {digest[:12]}... does not match the model card's "
                         f"{str(card.get('weights_sha256'))[:12]}...: damaged or replaced weights", weights)
    model = ImageInpainterNet(InpainterSettings.from_dict(card.get("settings", {})))
    try:
        model.load_state_dict(safetensors.torch.load(blob))
    except Exception as err:  # noqa: BLE001 - safetensors / shape errors
        raise ModelError(f"{weights}: tensors do not fit the card's architecture "
                         f"({' '.join(str(err).split())[:160]})", weights) from None
    return model.to(resolve_device(device)).eval(), card


# --- prediction --------------------------------------------------------------------------------------

def _mean_bin(mean_sigma: np.ndarray, calibration: dict, n_bins: int) -> np.ndarray:
    """Index of each |mean| [noise sigmas] among the card's ``mean_sigma_edges`` bins (0..n_bins-1)."""
    edges = np.asarray(calibration["mean_sigma_edges"], dtype=np.float64)
    return np.clip(np.searchsorted(edges, np.abs(mean_sigma), side="right") - 1, 0, n_bins - 1)


def calibrated_std(std_sigma: np.ndarray, mean_sigma: np.ndarray, calibration: dict | None,
                   sky_regime: str | None = None) -> np.ndarray:
    """Scale predicted standard deviations by the card's factors, binned by the predicted |mean|.

    ``calibration`` = {"mean_sigma_edges": [e0=0, e1, ..., inf], "std_scale": [f per bin],
    "std_scale_by_regime": {regime: [f per bin]}}: factors that made the 1-sigma coverage 68.3 % per
    bin on the calibration split, over all its images and over those of each sky regime
    (:data:`SKY_REGIMES`). With ``sky_regime`` the regime's factors are used (cards without them:
    the pooled ones). None: unscaled.
    """
    if not calibration:
        return std_sigma
    table = (calibration.get("std_scale_by_regime") or {}).get(sky_regime) if sky_regime else None
    scale = np.asarray(table if table else calibration["std_scale"], dtype=np.float64)
    return std_sigma * scale[_mean_bin(mean_sigma, calibration, len(scale))]


SOURCE_CONTEXTS = ("source", "sky")  # keys of the card's ``source_context_std_scale``


def source_context_std(std_sigma: np.ndarray, mean_sigma: np.ndarray, in_source: np.ndarray,
                       calibration: dict | None) -> np.ndarray:
    """The last calibration step: scale each hole's std by whether the filled image shows a source there.

    ``calibration["source_context_std_scale"]`` = {"source": [f per |mean| bin], "sky": [...]}: on
    the calibration split, after every other factor, the 68.27 % quantile of |truth - mean| / std
    over the holes the filled image puts inside a source (``in_source``: its smoothed value above
    a detection threshold, see ``lensforge.pipeline.inpaint.images.source_context``) and over the
    others, per bin of the predicted |mean| [noise sigmas] (the bins of :func:`calibrated_std`).
    Why: within one |mean| bin, a hole that shows no source is more often a source the hole hid
    whole, whose error the pooled factor under-states. One table for every kind of sky: factors per
    kind of sky fitted on half of the calibration split covered the other half's source pixels
    worse than these (they follow a few images). Cards without the table: unchanged.
    """
    table = (calibration or {}).get("source_context_std_scale")
    if not table:
        return std_sigma
    factors = np.stack([np.asarray(table[context], np.float32) for context in SOURCE_CONTEXTS])
    bins = _mean_bin(mean_sigma, calibration, factors.shape[1])
    return std_sigma * factors[np.where(in_source, 0, 1), bins]


def thin_fill_std(mean_sigma: np.ndarray, calibration: dict | None, one_pixel_error: float) -> np.ndarray:
    """Standard deviation [noise sigmas] of thin holes near sources that take a classical fill, not the network.

    Such holes keep the start fill or take :func:`stretched_quadratic_fill` (``thin_holes`` of
    ``lensforge.pipeline.inpaint.images.inpaint_image``). Their std is
    ``one_pixel_error * calibration["thin_fill_std_scale"][bin]``, the bin being the fill's |mean|
    (the bins of :func:`calibrated_std`): ``one_pixel_error`` is how well this image's sky pixels
    are predicted from their neighbours (:func:`one_pixel_sky_error`: about 1.3 on white noise, less
    under a beam), and each factor the 68.27 % quantile of |truth - fill| / that error on the
    calibration split. An uncalibrated card: ``one_pixel_error`` itself.
    """
    table = (calibration or {}).get("thin_fill_std_scale")
    if not table:
        return np.full(np.shape(mean_sigma), one_pixel_error, np.float32)
    table = np.asarray(table, dtype=np.float32)
    return np.float32(one_pixel_error) * table[_mean_bin(mean_sigma, calibration, len(table))]


# Bins of the raw kriging std [noise sigmas] for its calibration: on the FIRST calibration split the raw std
# covered 93 % of the errors below 0.36 sigma (holes next to a known pixel, where a small error of the estimated
# covariance dominates the true error) and 71 % above 0.76 (deep), so one factor could not fit both.
KRIGING_STD_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0, float("inf"))


def kriged_sky_std(kriging_std_sigma: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Calibrated std [noise sigmas] of kriged sky holes (``lensforge.pipeline.inpaint.kriging``).

    ``calibration["kriging_sky_std_scale"]`` holds one factor per bin of the raw kriging std
    (the card's ``kriging_std_edges``, :data:`KRIGING_STD_EDGES` when it has none): the 68.27 %
    quantile of |truth - mean| / raw std over the bin's kriged sky pixels of the calibration
    split. Cards without it: the raw std.
    """
    table = (calibration or {}).get("kriging_sky_std_scale")
    raw = np.asarray(kriging_std_sigma, dtype=np.float32)
    if not table:
        return raw
    edges = np.asarray(calibration.get("kriging_std_edges", KRIGING_STD_EDGES), dtype=np.float64)
    bins = np.clip(np.searchsorted(edges, raw, side="right") - 1, 0, len(table) - 1)
    return raw * np.asarray(table, dtype=np.float32)[bins]


QUADRATIC_RADIUS = 3  # pixels: the local fit of a thin hole uses the known pixels of a 7x7 window
QUADRATIC_WEIGHT_SIGMA = 2.5  # pixels: their Gaussian weight (chosen on the calibration split)
_QUADRATIC_CHUNK = 8192  # hole pixels per batched solve (memory: chunk x 49 x 6 floats)


def stretched_quadratic_fill(x: np.ndarray, hole: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                             radius: int = QUADRATIC_RADIUS, weight_sigma: float = QUADRATIC_WEIGHT_SIGMA
                             ) -> np.ndarray:
    """Fill of the pixels (rows, cols) by a local quadratic fit to the stretched known pixels around each.

    For each pixel, the quadratic surface ``a + b dx + c dy + d dx^2 + e dx dy + f dy^2`` is fitted by
    least squares to ``asinh(x / STRETCH)`` of the known pixels within ``radius`` (a Gaussian weight of
    ``weight_sigma`` pixels), and its value at the pixel is mapped back. On white noise it averages
    the noise down where a biharmonic fill, which passes through its neighbours, amplifies it
    (about 1.3 sigma); the stretch makes a beam or PSF core log-quadratic, so a peak is still followed.
    For thin holes (every hole pixel next to a known one) on a sky of near-white noise it beat both
    the stretched biharmonic start and the network on the calibration split (``thin_holes`` of the
    error budget gives the test split).

    Args:
        x: (H, W) background-subtracted pixels in noise-sigma units (hole values are not read).
        hole: (H, W) bool.
        rows, cols: the pixels to fill, each at least ``radius`` from the edge of ``x``.

    Returns:
        (len(rows),) float32 values in noise-sigma units.
    """
    dy, dx = (offset.ravel() for offset in np.mgrid[-radius:radius + 1, -radius:radius + 1])
    design = np.stack([np.ones(dy.size), dx, dy, dx * dx, dx * dy, dy * dy], axis=1).astype(np.float64)
    weight = np.exp(-(dx**2 + dy**2) / (2.0 * weight_sigma**2))
    width = x.shape[1]
    x_flat, known_flat = x.ravel(), ~hole.ravel()
    offsets = dy * width + dx
    out = np.empty(rows.size, np.float32)
    for first in range(0, rows.size, _QUADRATIC_CHUNK):
        at = (rows[first:first + _QUADRATIC_CHUNK] * width + cols[first:first + _QUADRATIC_CHUNK])[:, None] + offsets
        weights = weight * known_flat[at]  # (n, K)
        values = np.arcsinh(x_flat[at].astype(np.float64) / STRETCH)
        weighted = design.T[None] * weights[:, None, :]  # (n, 6, K)
        normal = weighted @ design + 1e-9 * np.eye(design.shape[1])
        rhs = (weighted @ values[..., None])[..., 0]
        out[first:first + _QUADRATIC_CHUNK] = unstretch(np.linalg.solve(normal, rhs[..., None])[:, 0, 0])
    return out


# The biharmonic stencil laplace(laplace(delta)) of an interior pixel: centre 20, the four nearest -8, the
# four diagonal 2, the four two pixels away 1. A single hidden pixel's biharmonic fill is minus the
# weighted sum of the others over 20.
_ONE_PIXEL_STENCIL = (((-1, 0), (1, 0), (0, -1), (0, 1), 8.0), ((-1, -1), (-1, 1), (1, -1), (1, 1), -2.0),
                      ((-2, 0), (2, 0), (0, -2), (0, 2), -1.0))
SKY_ROWS_SAMPLED = 256  # rows of a large image :func:`one_pixel_sky_error` looks at, at most


def one_pixel_sky_error(x: np.ndarray, known: np.ndarray) -> float:
    """RMS error [noise sigmas] of the biharmonic fill of one hidden sky pixel from its known neighbours.

    Over sky pixels of ``x`` (background-subtracted, noise-sigma units) whose 5x5 stencil is known
    and within 3 sigma, on at most :data:`SKY_ROWS_SAMPLED` evenly spaced rows. On white noise it
    is sqrt(1 + 276 / 400) = 1.30; on noise correlated by a beam it is smaller. 1.0 when fewer than
    100 such pixels exist.
    """
    height, width = x.shape
    if height < 5 or width < 5:
        return 1.0
    rows = np.unique(np.linspace(2, height - 3, min(SKY_ROWS_SAMPLED, height - 4)).astype(int))
    strips = {dy: (x[rows + dy], known[rows + dy]) for dy in range(-2, 3)}  # a few rows: cheap copies

    def at(dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
        values, is_known = strips[dy]
        return values[:, 2 + dx:width - 2 + dx], is_known[:, 2 + dx:width - 2 + dx]

    centre, usable = at(0, 0)
    usable = usable & (np.abs(centre) < 3)
    weighted = np.zeros(centre.shape, np.float64)
    for *offsets, weight in _ONE_PIXEL_STENCIL:
        for dy, dx in offsets:
            values, is_known = at(dy, dx)
            usable &= is_known & (np.abs(values) < 3)
            weighted += weight * values
    if usable.sum() < 100:
        return 1.0
    return float(np.sqrt(np.mean((centre - weighted / 20.0)[usable] ** 2)))


@torch.inference_mode()
def predict_windows(model: ImageInpainterNet, x: np.ndarray, hole: np.ndarray, log_noise_ratio: np.ndarray | None,
                    n_samples: int = 0, generator: torch.Generator | None = None,
                    start_fill: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (noise-sigma units, uncalibrated) of the holes of a batch of windows.

    Args:
        model: the network (its device is used).
        x: (B, H, W) background-subtracted pixels in noise-sigma units; H, W multiples of DOWNSAMPLE.
        hole: (B, H, W) bool.
        log_noise_ratio: (B, H, W) or None.
        n_samples: 0 = one pass at the prior's mean latent (deterministic); k > 0 = k prior draws,
            whose spread adds to the per-pixel noise (the latent's share of the uncertainty).
        generator: torch generator of the draws (on the model's device).
        start_fill: (B, H, W) the model's start fill of these windows if already computed (e.g. the
            :func:`start_fill_of` of the same windows turned), None to compute it here.

    Returns:
        (mean, std), each (B, H, W) float32, noise-sigma units: the median of the predictive
        distribution mapped back through the stretch, and its standard deviation by the delta method.
    """
    device = model.device
    tx = torch.as_tensor(x, dtype=torch.float32, device=device)[:, None]
    th = torch.as_tensor(hole, dtype=torch.float32, device=device)[:, None]
    tn = None if log_noise_ratio is None else torch.as_tensor(log_noise_ratio, dtype=torch.float32,
                                                                device=device)[:, None]
    ts = None
    if model.settings.start_fill in BIHARMONIC_STARTS:  # each window's own fill, as training filled each crop
        start_fill = start_fill_of(x, hole, model.settings.start_fill) if start_fill is None else start_fill
        ts = torch.as_tensor(start_fill, dtype=torch.float32, device=device)[:, None]
    inputs, start = network_inputs(tx, th, tn, ts)
    features, mu_p, logvar_p = model.encode(inputs)
    draws = [mu_p] if n_samples <= 0 else [
        mu_p + (0.5 * logvar_p).exp() * torch.randn(mu_p.shape, generator=generator, device=device)
        for _ in range(n_samples)]
    means, variances = [], []
    for z in draws:
        correction, log_std = model.decode(features, z)
        mu = start + correction
        # Delta method through x = STRETCH sinh(y): d x / d y = STRETCH cosh(y).
        means.append(unstretch(mu))
        variances.append((STRETCH * torch.cosh(mu) * log_std.exp()) ** 2)
    mean = torch.stack(means).mean(0)
    variance = torch.stack(variances).mean(0) + (torch.stack(means).var(0, unbiased=False) if len(means) > 1 else 0.0)
    return mean[:, 0].float().cpu().numpy(), variance.sqrt()[:, 0].float().cpu().numpy()
