"""Simulation stage: GalSim postage stamps of lensed bulge+disk galaxies, chunk by chunk.

Physics is GalSim's: Sersic profiles, ``shear`` for intrinsic shape and lensing,
convolution with the survey PSF, the pixel response (``method="auto"``) and Gaussian
noise at a target S/N (``Image.addNoiseSNR``). Object ``i`` is drawn from its own
(run seed, i) streams, so any split of the work gives identical pixels.
"""

from __future__ import annotations

import time

import galsim
import numpy as np

from catalogs.schema import LABEL_ARRAYS
from pipeline.artifacts import draw_bitmask
from pipeline.batch import StampBatch
from pipeline.config import RunConfig, SurveyConfig
from pipeline.lensing import LensingField, apply_lensing, build_lensing_field, is_position_dependent
from pipeline.populations import GalaxyParameters, draw_parameters
from pipeline.seeding import Stream, galsim_rng
from pipeline.surveys import build_psf, draw_psf_image

BULGE_SIZE_RATIO = 0.5  # bulge half-light radius / disk half-light radius


def bulge_disk_galaxy(flux: float, half_light_radius: float, bulge_fraction: float, e1: float, e2: float,
                      bulge_sersic_n: float = 4.0, disk_sersic_n: float = 1.0) -> galsim.GSObject:
    """An unlensed, pre-PSF bulge + disk galaxy: Sersic profiles [flux: ADU; radius: arcsec] sheared by (e1, e2).

    The bulge's half-light radius is ``BULGE_SIZE_RATIO`` times the disk's (``half_light_radius``).
    """
    disk = galsim.Sersic(n=disk_sersic_n, half_light_radius=half_light_radius, flux=flux * (1.0 - bulge_fraction))
    profile = disk
    if bulge_fraction > 0:
        bulge = galsim.Sersic(n=bulge_sersic_n, half_light_radius=BULGE_SIZE_RATIO * half_light_radius,
                              flux=flux * bulge_fraction)
        profile = galsim.Add([bulge, disk])
    return profile.shear(g1=e1, g2=e2)


def intrinsic_galaxy(params: GalaxyParameters) -> galsim.GSObject:
    """The unlensed, pre-PSF galaxy of a stamp: bulge + disk Sersic profiles with the intrinsic shape."""
    return bulge_disk_galaxy(params.flux, params.half_light_radius, params.bulge_fraction, params.e1_intrinsic,
                             params.e2_intrinsic, params.bulge_sersic_n, params.disk_sersic_n)


def lensed_galaxy(params: GalaxyParameters) -> galsim.GSObject:
    """The intrinsic galaxy lensed by its (g1, g2, mu): exactly the shear and magnification its labels state."""
    return apply_lensing(intrinsic_galaxy(params), params.g1, params.g2, params.mu)


def observe(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig, snr: float,
            noise_rng: galsim.BaseDeviate) -> tuple[np.ndarray, np.ndarray, float]:
    """Convolve a lensed galaxy with ``psf``, draw it with the pixel response and add noise at ``snr``.

    Returns (noisy image, noiseless image) as float32 [adu] and the noise sigma [adu]. Shared by
    parametric and generated galaxies, so both are observed the same way.
    """
    observed = galsim.Convolve([galaxy, psf])
    image = observed.drawImage(nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec,
                               method="auto")
    noiseless = image.array.astype(np.float32)
    variance = image.addNoiseSNR(galsim.GaussianNoise(noise_rng), snr, preserve_flux=True)
    return image.array.astype(np.float32), noiseless, float(np.sqrt(variance))


def render_stamp(params: GalaxyParameters, psf: galsim.GSObject, survey: SurveyConfig,
                 run_seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one stamp: returns (noisy image, noiseless image) as float32 [adu] and the noise sigma [adu]."""
    return observe(lensed_galaxy(params), psf, survey, params.snr,
                   galsim_rng(run_seed, Stream.NOISE, params.object_id))


def stamp_lensing_field(config: RunConfig) -> LensingField | None:
    """The run's lensing field over the stamps' field (``None`` for constant / uniform shear)."""
    if not is_position_dependent(config.shear):
        return None
    return build_lensing_field(config.shear, config.seed, 60.0 * config.shear.field_size_arcmin)


COUNTERFACTUAL_SHIFTS = (("g1", 1.0), ("g1", -1.0), ("g2", 1.0), ("g2", -1.0))  # order of the counterfactual axis


def render_counterfactuals(params: GalaxyParameters, psf: galsim.GSObject, survey: SurveyConfig, run_seed: int,
                           noise_sigma: float, delta_g: float) -> np.ndarray:
    """The same galaxy and the same noise field drawn at g1 ± delta_g and g2 ± delta_g (metacalibration-style).

    Returns (4, ny, nx) float32 [ADU] in the order of ``COUNTERFACTUAL_SHIFTS``. The noise is the
    object's own realisation (its NOISE stream) at the object's ``noise_sigma`` [ADU], so
    ``image - noiseless`` is identical to the stamp's and differences between counterfactuals
    are pure shear response: R = (e(+dg) - e(-dg)) / (2 dg) needs no noise bias correction.
    """
    if not 0 < delta_g < 0.1:
        raise ValueError(f"delta_g must be in (0, 0.1), got {delta_g}")
    out = np.empty((len(COUNTERFACTUAL_SHIFTS), survey.stamp_size, survey.stamp_size), np.float32)
    intrinsic = intrinsic_galaxy(params)
    for row, (component, sign) in enumerate(COUNTERFACTUAL_SHIFTS):
        g1 = params.g1 + sign * delta_g if component == "g1" else params.g1
        g2 = params.g2 + sign * delta_g if component == "g2" else params.g2
        image = galsim.Convolve([apply_lensing(intrinsic, g1, g2, params.mu), psf]).drawImage(
            nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec, method="auto")
        # The same deviate stream and sigma as Image.addNoiseSNR used for the stamp: the same draws.
        image.addNoise(galsim.GaussianNoise(galsim_rng(run_seed, Stream.NOISE, params.object_id), sigma=noise_sigma))
        out[row] = image.array
    return out


def simulate_stamps(config: RunConfig, start: int, stop: int) -> StampBatch:
    """Simulate objects ``start .. stop-1`` (stamps, masks, PSF and labels) as a ``StampBatch``."""
    began = time.perf_counter()
    survey = config.survey
    n, size = stop - start, survey.stamp_size
    psf = build_psf(survey, config.radio)
    field = stamp_lensing_field(config)
    images = np.empty((n, size, size), dtype=np.float32)
    noiseless = np.empty_like(images)
    masks = np.empty((n, size, size), dtype=np.uint8)
    labels = {name: np.empty(n, dtype=spec.dtype) for name, spec in LABEL_ARRAYS.items()}
    for row, index in enumerate(range(start, stop)):
        params = draw_parameters(config.population, config.shear, config.seed, index,
                                 config.simulation.ring_pairs, field)
        images[row], noiseless[row], noise_sigma = render_stamp(params, psf, survey, config.seed)
        masks[row] = draw_bitmask(config.masks, config.seed, index, (size, size))
        for name, value in params.as_dict().items():
            labels[name][row] = value
        labels["noise_sigma"][row] = noise_sigma
        labels["masked_fraction"][row] = np.count_nonzero(masks[row]) / masks[row].size
    psf_stack = np.broadcast_to(draw_psf_image(survey, config.radio), images.shape).copy()
    return StampBatch(start=start, images=images, masks=masks, psf=psf_stack, labels=labels,
                      noiseless=noiseless if config.simulation.store_noiseless else None,
                      seconds=time.perf_counter() - began)


def chunk_ranges(n_objects: int, chunk_size: int) -> list[tuple[int, int]]:
    """Object ranges ``[(start, stop), ...]`` aligned to the store's chunks."""
    return [(start, min(start + chunk_size, n_objects)) for start in range(0, n_objects, chunk_size)]
