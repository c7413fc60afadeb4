"""A generator of radio galaxies learned from real VLA FIRST images, with the FIRST beam as its last layer.

The stamp VAE-GAN (:class:`~lensforge.models.vaegan.VAEGAN`) learns the *intrinsic* (pre-beam) sky
of the FIRST train split (:func:`~lensforge.pipeline.datasets.corpus.load_first`; the calibration and
test splits are never trained on), conditioned on

* ``flux``: integrated flux density [Jy], the sum of the pixels above 3 sigma over the beam area;
* ``size_arcsec``: the catalogue's largest angular size [arcsec];
* ``fr_class``: Fanaroff-Riley class, 1 (FRI), 2 (FRII) or 1.5 (hybrid: FRI on one side, FRII on
  the other).

Its observation layer (:class:`~lensforge.models.vaegan.PSFObservation`) is the FIRST restoring
beam, a Gaussian of the header's FWHM drawn by GalSim, so the decoder learns the sky, not the beam.
Generation hands the intrinsic profile to GalSim, which convolves it with the beam and adds
noise (:func:`render_radio_galaxies`): by default white noise correlated by the beam, or, given a
correlation function measured from real images
(:func:`~lensforge.pipeline.datasets.radio_noise.measure_noise_correlation`), FIRST's own noise
with its sidelobes and CLEAN residuals.

Stamps: the central 128x128 pixels of each 150x150 FIRST cutout (1.8"), averaged in 2x2 blocks to
64x64 pixels of 3.6" (230" across: 97% of MiraBest sources are smaller). The profile's fine grid
(2x oversampled) is FIRST's own 1.8" pixel. Training adds the eight rotations and flips of
every stamp: a radio galaxy's class and size do not depend on its orientation on the sky.

Cite Becker, White & Helfand 1995 (FIRST) and Porter & Scaife 2023 (MiraBest) wherever results
from these images appear; FIRST images are for scholarly, educational and non-commercial use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import galsim
import numpy as np

from lensforge.errors import InputError
from lensforge.models.train import TrainResult, TrainSettings, train
from lensforge.models.vaegan import VAEGAN, ModelSettings
from lensforge.pipeline.datasets.corpus import RealImages, border_sigma
from lensforge.pipeline.datasets.radio_noise import (
    NOISE_PATCH_PIXELS,
    correlated_noise,
    measure_noise_correlation,
    noise_kernel,
)
from lensforge.seeding import Stream, galsim_rng

RADIO_CONDITIONS: tuple[str, ...] = ("flux", "size_arcsec", "fr_class")
"""Conditions of the radio generator: integrated flux [Jy], largest angular size [arcsec], FR class."""
STAMP_PIXELS = 64  # generator pixels per side
BINNING = 2  # FIRST pixels per generator pixel along each axis
BORDER_FRACTION = 8  # noise of a stamp from its outer 1/8 frame (8 pixels, 29", on a 64x64 stamp)
FLUX_THRESHOLD_SIGMA = 3.0  # pixels summed into the integrated flux
MAX_PEAK_SNR = 64.0  # training weighs each stamp as if its peak were at most this many noise sigma
# 128 (9000 steps, judged on the calibration split against train subsets) kept bright sources' reconstructions
# as symmetric and made size, |e|, Gini and the power-spectrum slope worse; 256 was worse at 3000 steps.
# KL weight: TrainSettings' default 0.1. 0.02 (more of each source in its latent; sampling reads the kept posteriors,
# not the prior) was tried at 9000 steps, judged on the calibration split against the train split over generation
# seeds 0-8: mean asymmetry ratio 2.02, mean largest ratio 2.21, all seven <= 2 in 3 of 9 draws (the 0.1 generator
# of 8a50a01: 1.87, 1.99, 5 of 9). Not kept.
# Adversarial weight 0.1 (TrainSettings' default 0.05), judged the same way (9000 steps, 32 min): mean asymmetry
# ratio 2.10, mean largest ratio 2.36, 4 of 9 draws with all seven <= 2. Not kept. The generated sources are too
# symmetric where FIRST's are large and diffuse: FR I median asymmetry 0.195 generated (KL 0.02 generator, seed 0),
# 0.287 real (calibration split); 0.174 and 0.163 for FR II.
# Sampling bandwidth (AGGREGATE_BANDWIDTH) on that 0.1 generator, same judging: 0.25 gave mean asymmetry 2.42 and
# mean largest 2.62 (1 of 9), 1.0 gave 1.77 and 2.46 (2 of 9; |e| 2.17), against 2.10 and 2.36 at 0.5.
# Feature-matching weight 0.3 (default 0.1; adversarial 0.05), same judging (9000 steps, 30 min): mean asymmetry
# ratio 1.98, mean largest 2.15, 4 of 9 draws with all seven <= 2. Not kept.
LIKELIHOOD_STRETCH = 3.0  # the pixel likelihood turns logarithmic above 3 noise sigma (StretchedGaussianNLL)
# Why: with the linear likelihood, reconstructions of bright train sources (posterior means, observed with FIRST's
# noise) kept the cores and dropped faint lobes and tails: mean asymmetry 0.42 against 0.54 real at peak S/N
# 150-500. Continuing the KL-0.02 generator 1000 steps with the stretch at 3 sigma (ad hoc, calibration side,
# seeds 0-8) gave mean asymmetry ratio 1.40, mean largest ratio 2.03, 6 of 9 draws all <= 2, against 1.89 / 2.14 /
# 3 of 9 for the same 1000 steps with the linear likelihood. Trained from scratch with the shipped settings (9000
# steps, 31 min), same judging: mean asymmetry ratio 1.43, mean largest ratio 1.89, 7 of 9 draws all <= 2, mean
# power-spectrum slope ratio 0.67 (the linear likelihood of 8a50a01: 1.87, 1.99, 5 of 9).
ORIENTATIONS = 8  # training stamps per source: dihedral_augment's four rotations and their flips
AGGREGATE_LATENTS = 4096  # training posteriors kept for sampling (of 8 x ~900 with the orientations)
AGGREGATE_BANDWIDTH = 0.5  # condition-kernel width, standardised units
GAUSSIAN_BEAM_AREA = math.pi / (4.0 * math.log(2.0))  # area of a peak-1 Gaussian / FWHM^2 (1.1331)


def fr_class(fr_code) -> np.ndarray:
    """MiraBest ``fr_code`` (first digit 1 FRI, 2 FRII, 3 hybrid) -> class 1, 2 or 1.5."""
    first_digit = np.asarray(fr_code, dtype=np.int64) // 100
    if not np.isin(first_digit, (1, 2, 3)).all():
        raise InputError(f"fr_code must start with 1 (FRI), 2 (FRII) or 3 (hybrid); got "
                         f"{sorted(set(first_digit.tolist()) - {1, 2, 3})}")
    return np.where(first_digit == 3, 1.5, first_digit.astype(np.float64))


def beam_area_pixels(beam_fwhm_arcsec: float, pixel_scale_arcsec: float) -> float:
    """Area of a Gaussian restoring beam in pixels: converts a sum of Jy/beam pixels to Jy."""
    return GAUSSIAN_BEAM_AREA * (beam_fwhm_arcsec / pixel_scale_arcsec) ** 2


def stamp_noise_sigma(stamps: np.ndarray) -> np.ndarray:
    """Robust noise sigma of each (N, H, W) stamp from its outer frame, H // 8 pixels wide [image unit]."""
    return border_sigma(stamps, max(2, np.shape(stamps)[1] // BORDER_FRACTION))


def bin_stamps(images: np.ndarray, stamp_pixels: int = STAMP_PIXELS, binning: int = BINNING) -> np.ndarray:
    """Central ``stamp_pixels * binning`` square of each (N, H, W) image, averaged in ``binning``² blocks.

    Averaging keeps the unit (Jy/beam). Returns float32 (N, stamp_pixels, stamp_pixels).
    """
    images = np.asarray(images)
    side = stamp_pixels * binning
    if images.ndim != 3 or min(images.shape[1:]) < side:
        raise InputError(f"need (N, H, W) images of at least {side} pixels, got {images.shape}", images.shape)
    top, left = (images.shape[1] - side) // 2, (images.shape[2] - side) // 2
    crop = images[:, top:top + side, left:left + side].astype(np.float64)
    blocks = crop.reshape(len(images), stamp_pixels, binning, stamp_pixels, binning)
    return blocks.mean(axis=(2, 4)).astype(np.float32)


@dataclass(frozen=True)
class RadioStamps:
    """FIRST galaxies as generator stamps.

    Attributes:
        images: (N, 64, 64) float32 [Jy/beam] at ``pixel_scale_arcsec``.
        noise_sigma: (N,) robust noise of each stamp's outer frame [Jy/beam].
        conditions: (N, 3) [flux Jy, size arcsec, FR class] (:data:`RADIO_CONDITIONS`).
        native_noise_sigma: (N,) noise of the 1.8" image the stamp came from [Jy/beam].
        pixel_scale_arcsec: stamp pixel scale [arcsec].
        beam_fwhm_arcsec: restoring-beam FWHM [arcsec].
        names: source names.
    """

    images: np.ndarray
    noise_sigma: np.ndarray
    conditions: np.ndarray
    native_noise_sigma: np.ndarray
    pixel_scale_arcsec: float
    beam_fwhm_arcsec: float
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def first(self, n: int | None) -> RadioStamps:
        """The first ``n`` sources (all of them when ``n`` is None): every per-source field cut alike."""
        if n is None:
            return self
        return replace(self, **{f.name: getattr(self, f.name)[:n] for f in fields(self)
                                if isinstance(getattr(self, f.name), np.ndarray | tuple)})


def integrated_flux_jy(stamps: np.ndarray, noise_sigma: np.ndarray, beam_fwhm_arcsec: float,
                       pixel_scale_arcsec: float) -> np.ndarray:
    """Sum of each stamp's pixels above 3 noise sigma over the beam area in pixels [Jy] (stamps in Jy/beam)."""
    bright = stamps > FLUX_THRESHOLD_SIGMA * np.asarray(noise_sigma)[:, None, None]
    return np.where(bright, stamps, 0.0).sum(axis=(1, 2)) / beam_area_pixels(beam_fwhm_arcsec, pixel_scale_arcsec)


def radio_stamps(real: RealImages) -> RadioStamps:
    """FIRST images (:func:`~lensforge.pipeline.datasets.corpus.load_first`) as 64x64 generator stamps with conditions.

    Raises:
        InputError: the images are not FIRST-like (no ``fr_code`` / ``size_arcsec``), or a stamp has no
            pixel above 3 sigma (no flux to condition on).
    """
    if "fr_code" not in real.extra or "size_arcsec" not in real.extra:
        raise InputError("radio stamps need the FIRST catalogue columns fr_code and size_arcsec")
    images = bin_stamps(real.images)
    scale = real.pixel_scale_arcsec * BINNING
    sigma = stamp_noise_sigma(images)
    flux = integrated_flux_jy(images, sigma, real.resolution_fwhm_arcsec, scale)
    if not (flux > 0).all():
        raise InputError(f"{int((flux <= 0).sum())} FIRST stamps have no pixel above "
                         f"{FLUX_THRESHOLD_SIGMA:g} sigma: no flux to condition on")
    conditions = np.stack([flux, np.asarray(real.extra["size_arcsec"], dtype=np.float64),
                           fr_class(real.extra["fr_code"])], axis=1)
    return RadioStamps(images, sigma, conditions, np.asarray(real.noise_sigma, dtype=np.float64), scale,
                       real.resolution_fwhm_arcsec, real.names)


def dihedral_augment(images: np.ndarray) -> np.ndarray:
    """The eight rotations and flips of each (N, H, W) stamp, as (8N, H, W), transform-major."""
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(turns + [t[:, :, ::-1] for t in turns]))


def beam_psf(beam_fwhm_arcsec: float, fine_pixels: int, fine_pixel_scale_arcsec: float) -> np.ndarray:
    """The Gaussian restoring beam on the generator's fine grid, sum 1, centred on index ``fine_pixels // 2``."""
    image = galsim.Gaussian(fwhm=beam_fwhm_arcsec).drawImage(
        nx=fine_pixels, ny=fine_pixels, scale=fine_pixel_scale_arcsec, method="no_pixel", offset=(0.5, 0.5))
    return (image.array / image.array.sum()).astype(np.float32)


def stamp_noise_kernel(beam_fwhm_arcsec: float, pixel_scale_arcsec: float, pixels: int = 7) -> np.ndarray:
    """The kernel that turns white noise into a stamp's noise: the beam drawn with the stamp's pixel.

    A CLEANed image's noise is white noise convolved by the restoring beam; averaging 1.8" pixels
    into the stamp's adds the pixel's box. Returns (pixels, pixels) float64, sum 1 (GalSim draws it).
    """
    image = galsim.Gaussian(fwhm=beam_fwhm_arcsec).drawImage(nx=pixels, ny=pixels, scale=pixel_scale_arcsec)
    return image.array / image.array.sum()


def stamp_noise_correlation(real: RealImages) -> np.ndarray:
    """Noise correlation function of FIRST images on the generator's stamp grid (2x2-binned, 3.6").

    Measured (:func:`~lensforge.pipeline.datasets.radio_noise.measure_noise_correlation`) on the
    source-free corners of the binned images, patches of half the native side: what the
    discriminator's fakes carry in :func:`train_radio_generator`. Pass the train split only.
    """
    pixels = min(real.images.shape[1:]) // BINNING
    binned = bin_stamps(real.images, pixels, BINNING)
    correlation, _ = measure_noise_correlation(binned, stamp_noise_sigma(binned), real.pixel_scale_arcsec * BINNING,
                                               patch_pixels=NOISE_PATCH_PIXELS // BINNING)
    return correlation


# base_channels 24 (9000 steps, calibration split) improved Gini and the power-spectrum slope but left the
# asymmetry deficit of bright sources' reconstructions as it was, at twice the training time: not the default.
def radio_model_settings(stamps: RadioStamps, latent_dim: int = 64, base_channels: int = 16,
                         aggregate_latents: int = AGGREGATE_LATENTS) -> ModelSettings:
    """Generator architecture for FIRST stamps: 64x64 at 3.6", fine grid 2x (1.8"), radio conditions.

    New galaxies come from the aggregate posterior (``aggregate_latents`` kept training posteriors,
    weighted by their conditions' distance to the requested ones): a joint Gaussian over the latents
    of all eight orientations of every stamp puts its mass near their mean, a round source, and
    generated galaxies came out rounder and less structured than the real ones.
    """
    return ModelSettings(stamp_size=STAMP_PIXELS, latent_dim=latent_dim, base_channels=base_channels,
                         oversampling=BINNING, pixel_scale_arcsec=stamps.pixel_scale_arcsec,
                         conditions=RADIO_CONDITIONS, aggregate_latents=aggregate_latents,
                         aggregate_bandwidth=AGGREGATE_BANDWIDTH)


def training_noise_sigma(stamps: RadioStamps, max_peak_snr: float = MAX_PEAK_SNR) -> np.ndarray:
    """Per-stamp sigma of the training likelihood: the noise, raised to ``peak / max_peak_snr`` [Jy/beam].

    FIRST peaks reach 1000 sigma; with the noise as the likelihood's sigma the brightest cores hold
    nearly all of the loss, the networks see inputs of hundreds, and training learns a round blob.
    Tempering the likelihood of bright stamps weighs every source's morphology alike: structure at
    1/``max_peak_snr`` of the peak and brighter is fitted, fainter diffuse emission counts less.
    """
    peaks = stamps.images.reshape(len(stamps), -1).max(axis=1)
    return np.maximum(stamps.noise_sigma, peaks / max_peak_snr)


def train_radio_generator(stamps: RadioStamps, out_dir: Path, settings: TrainSettings,
                          model_settings: ModelSettings | None = None, progress: bool = True,
                          resume: bool = False, max_peak_snr: float = MAX_PEAK_SNR,
                          noise_correlation: np.ndarray | None = None,
                          likelihood_stretch: float = LIKELIHOOD_STRETCH) -> TrainResult:
    """Train the radio generator on ``stamps`` (all eight orientations of each) into ``out_dir``.

    The likelihood's sigma is :func:`training_noise_sigma` (``max_peak_snr``), and its pixels are
    asinh-stretched above ``likelihood_stretch`` sigmas of each stamp's own noise (it replaces
    ``settings.likelihood_stretch``; 0: linear): a bright core then counts by its relative error and no
    longer outweighs its faint lobes and tails (:class:`~lensforge.models.losses.StretchedGaussianNLL`). The fakes the
    discriminator sees carry each stamp's own noise level, correlated by the beam
    (:func:`stamp_noise_kernel`): with the likelihood's white noise instead, the discriminator tells
    real from generated by the noise alone and teaches the decoder nothing about morphology. With
    ``noise_correlation`` (on the stamp grid, :func:`stamp_noise_correlation`) that noise has FIRST's
    own correlation (:func:`~lensforge.pipeline.datasets.radio_noise.noise_kernel`), sidelobes and
    CLEAN residuals included, rather than the Gaussian beam's. The stamps carry no defects; training
    still hides random partner masks as the stamp model does.
    """
    model_settings = model_settings or radio_model_settings(stamps)
    settings = replace(settings, likelihood_stretch=likelihood_stretch)
    images = dihedral_augment(stamps.images)
    n_orientations = len(images) // len(stamps)
    psf = beam_psf(stamps.beam_fwhm_arcsec, model_settings.fine_size, model_settings.fine_pixel_scale_arcsec)
    sigma = np.tile(training_noise_sigma(stamps, max_peak_snr), n_orientations)
    return train(images, np.zeros(images.shape, dtype=np.uint8), sigma, model_settings, settings, out_dir,
                 progress=progress, conditions=np.tile(stamps.conditions, (n_orientations, 1)), psf_image=psf,
                 resume=resume, pixel_noise_sigma=np.tile(stamps.noise_sigma, n_orientations),
                 noise_kernel=stamp_noise_kernel(stamps.beam_fwhm_arcsec, stamps.pixel_scale_arcsec)
                 if noise_correlation is None else noise_kernel(noise_correlation))


def render_radio_galaxies(model: VAEGAN, conditions: np.ndarray, native_noise_sigma: np.ndarray,
                          beam_fwhm_arcsec: float, seed: int = 0, temperature: float = 1.0,
                          device: str = "cpu", noise_correlation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Generate galaxies for ``conditions`` (n, 3) and observe them as FIRST does, with GalSim.

    Each intrinsic profile (unit flux, 1.8" fine grid) gets the condition's flux [Jy], is convolved
    with the Gaussian beam (peak 1 Jy/beam per Jy/beam-area) and sampled at 1.8" in Jy/beam. GalSim
    adds noise of ``native_noise_sigma`` [Jy/beam] per object: white noise convolved by the beam
    (``galsim.UncorrelatedNoise(...).convolvedWith(beam)``) or, with ``noise_correlation`` (an odd
    square correlation function at the 1.8" pixel, :func:`~lensforge.pipeline.datasets.radio_noise.
    measure_noise_correlation`), noise of that correlation, which carries the sidelobe stripes and
    CLEAN residuals of real FIRST noise that the beam model lacks. The 1.8" image is then averaged to
    the 3.6" stamp. Object i's latent and noise come from (``seed``, i).

    Returns:
        ``images`` (n, 64, 64) float32 [Jy/beam], ``noiseless`` (same, no noise), ``profiles`` (n, F, F)
        unit-flux intrinsic, ``noise_sigma`` (n,) of the stamps' outer frames [Jy/beam].
    """
    from lensforge.models.inpaint import sample_galaxies

    conditions = np.asarray(conditions, dtype=np.float64)
    native_noise_sigma = np.asarray(native_noise_sigma, dtype=np.float64)
    if conditions.ndim != 2 or conditions.shape[1] != len(model.conditions):
        raise InputError(f"conditions must be (n, {len(model.conditions)}) [{', '.join(model.conditions)}], "
                         f"got {conditions.shape}")
    if native_noise_sigma.shape != (len(conditions),) or not (native_noise_sigma > 0).all():
        raise InputError("native_noise_sigma must hold one positive sigma [Jy/beam] per galaxy")
    # Decoded one at a time: the float32 kernels' rounding depends on the batch size, and object i
    # must not depend on which others are drawn with it.
    profiles = sample_galaxies(model, len(conditions), temperature, seed, device, conditions=conditions,
                               intrinsic=True, batch_size=1)
    observed = observe_radio_profiles(profiles, conditions[:, 0], native_noise_sigma, beam_fwhm_arcsec,
                                      model.settings.fine_pixel_scale_arcsec, model.settings.oversampling, seed,
                                      noise_correlation)
    return {**observed, "profiles": profiles}


def observe_radio_profiles(profiles: np.ndarray, flux_jy: np.ndarray, native_noise_sigma: np.ndarray,
                           beam_fwhm_arcsec: float, fine_pixel_scale_arcsec: float, binning: int = BINNING,
                           seed: int = 0, noise_correlation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Observe intrinsic profiles as FIRST does, with GalSim (the last step of :func:`render_radio_galaxies`).

    Args:
        profiles: (n, F, F) unit-flux intrinsic profiles on the fine grid.
        flux_jy: (n,) integrated flux density of each [Jy].
        native_noise_sigma: (n,) noise of the 1.8" image [Jy/beam]; object i's noise comes from (seed, i).
        beam_fwhm_arcsec: restoring-beam FWHM [arcsec].
        fine_pixel_scale_arcsec: the profiles' pixel scale, which is also the native image's [arcsec].
        binning: native pixels per stamp pixel along each axis.
        noise_correlation: the noise's correlation function at the native pixel (odd square, zero lag
            at the centre); None: white noise convolved by the beam.

    Returns:
        ``images`` (n, F / binning, F / binning) float32 [Jy/beam], ``noiseless`` (same, no noise) and
        ``noise_sigma`` (n,) of the stamps' outer frames [Jy/beam].
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    native_pixels = profiles.shape[-1]
    # A Jy/beam image is the sky [Jy/arcsec^2] convolved with a peak-1 beam: a beam of flux equal to its
    # area, drawn without pixel response and divided by the pixel area, samples exactly that.
    beam_area = GAUSSIAN_BEAM_AREA * beam_fwhm_arcsec ** 2
    beam = galsim.Gaussian(fwhm=beam_fwhm_arcsec, flux=beam_area / fine_pixel_scale_arcsec ** 2)
    if noise_correlation is None:  # white noise convolved by the beam
        unit_noise = galsim.UncorrelatedNoise(1.0, scale=fine_pixel_scale_arcsec).convolvedWith(
            galsim.Gaussian(fwhm=beam_fwhm_arcsec))
    else:
        unit_noise = correlated_noise(noise_correlation, fine_pixel_scale_arcsec)
    noiseless = np.empty((len(profiles), native_pixels, native_pixels))
    noisy = np.empty_like(noiseless)
    for i, (profile, flux) in enumerate(zip(profiles, np.asarray(flux_jy, dtype=np.float64), strict=True)):
        sky = galsim.InterpolatedImage(galsim.Image(profile, scale=fine_pixel_scale_arcsec), flux=float(flux))
        image = galsim.Convolve(sky, beam).drawImage(nx=native_pixels, ny=native_pixels,
                                                     scale=fine_pixel_scale_arcsec, method="no_pixel")
        noiseless[i] = image.array
        image.addNoise(unit_noise.copy(rng=galsim_rng(seed, Stream.GENERATED_NOISE, i))
                       .withVariance(float(native_noise_sigma[i]) ** 2))
        noisy[i] = image.array
    stamp_pixels = native_pixels // binning
    images = bin_stamps(noisy, stamp_pixels, binning)
    return {"images": images, "noiseless": bin_stamps(noiseless, stamp_pixels, binning),
            "noise_sigma": stamp_noise_sigma(images)}
