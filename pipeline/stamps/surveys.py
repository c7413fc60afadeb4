"""Survey PSFs and photometry: a registry of PSF builders keyed by name, magnitudes -> fluxes.

GalSim does the physics; this module only maps configuration to GalSim profiles:
ground-based PSFs are a Kolmogorov atmosphere convolved with the telescope's optical PSF
(``galsim.OpticalPSF``: obscured aperture, struts, aberrations), space PSFs the optical PSF
alone, and a radio survey's PSF is the interferometer's synthesized (dirty) beam.
Photometric conventions: ``zero_point_mag`` is the AB magnitude giving 1 electron per
second; fluxes are in ADU summed over ``n_exposures`` exposures of ``exposure_time_s``.
"""

from __future__ import annotations

from collections.abc import Callable

import galsim
import numpy as np

from lensforge.errors import ConfigError
from lensforge.pipeline.config import RadioConfig, SurveyConfig

PSFBuilder = Callable[[SurveyConfig, RadioConfig], galsim.GSObject]
PSF_BUILDERS: dict[str, PSFBuilder] = {}


def register_psf(name: str) -> Callable[[PSFBuilder], PSFBuilder]:
    """Decorator registering a PSF builder ``f(survey, radio) -> galsim.GSObject`` under ``name``."""
    def decorate(builder: PSFBuilder) -> PSFBuilder:
        PSF_BUILDERS[name] = builder
        return builder
    return decorate


@register_psf("moffat")
def _moffat(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    return galsim.Moffat(beta=survey.moffat_beta, fwhm=survey.psf_fwhm_arcsec)


@register_psf("kolmogorov")
def _kolmogorov(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    return galsim.Kolmogorov(fwhm=survey.psf_fwhm_arcsec)


def optical_psf(survey: SurveyConfig) -> galsim.GSObject:
    """The telescope's diffraction PSF: ``galsim.OpticalPSF`` of the obscured, strutted aperture.

    lambda/D in arcsec from ``wavelength_nm`` and ``mirror_diameter_m``; ``aberrations_waves``
    start at Noll index 4 (defocus). Without struts or aberrations this is an obscured Airy.
    """
    lam_over_diam = survey.wavelength_nm * 1e-9 / survey.mirror_diameter_m * galsim.radians / galsim.arcsec
    if not survey.n_struts and not any(survey.aberrations_waves):
        optics = galsim.Airy(lam_over_diam=lam_over_diam, obscuration=survey.obscuration)
    else:
        aberrations = [0.0] * 4 + list(survey.aberrations_waves)
        optics = galsim.OpticalPSF(lam_over_diam=lam_over_diam, obscuration=survey.obscuration,
                                   nstruts=survey.n_struts, strut_angle=survey.strut_angle_deg * galsim.degrees,
                                   aberrations=aberrations if any(survey.aberrations_waves) else None)
    if survey.detector_blur_fwhm_arcsec > 0:  # charge diffusion and jitter broaden a space PSF measurably
        optics = galsim.Convolve([optics, galsim.Gaussian(fwhm=survey.detector_blur_fwhm_arcsec)])
    return optics


@register_psf("airy")
def _airy(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    lam_over_diam = survey.wavelength_nm * 1e-9 / survey.mirror_diameter_m * galsim.radians / galsim.arcsec
    return galsim.Airy(lam_over_diam=lam_over_diam, obscuration=survey.obscuration)


@register_psf("optical")
def _optical(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    return optical_psf(survey)


@register_psf("kolmogorov_optical")
def _kolmogorov_optical(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    return galsim.Convolve([galsim.Kolmogorov(fwhm=survey.psf_fwhm_arcsec), optical_psf(survey)])


@register_psf("radio_beam")
def _radio_beam(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    from lensforge.pipeline.radio.beam import beam_profile  # interferometer physics: only radio surveys pay its import

    return beam_profile(survey, radio)


def build_psf(survey: SurveyConfig, radio: RadioConfig | None = None) -> galsim.GSObject:
    """The survey's atmospheric/optical PSF or radio beam (without the pixel), sheared by (psf_g1, psf_g2).

    ``radio`` (the run's interferometer settings) is used by ``psf_type=radio_beam`` only.
    """
    try:
        builder = PSF_BUILDERS[survey.psf_type]
    except KeyError:
        raise ConfigError(f"survey.psf_type: unknown PSF {survey.psf_type!r}; valid: {sorted(PSF_BUILDERS)}",
                          survey.psf_type) from None
    psf = builder(survey, radio or RadioConfig())
    if survey.psf_g1 or survey.psf_g2:
        psf = psf.shear(g1=survey.psf_g1, g2=survey.psf_g2)
    return psf


def _normalised(array: np.ndarray, survey: SurveyConfig) -> np.ndarray:
    # An optical PSF integrates to 1. A radio beam keeps its Jy/beam scale (peak ~1): without zero
    # spacings it integrates to ~0 over the sky, so dividing by its sum would be meaningless.
    array = array.astype(np.float64)
    if survey.kind == "optical":
        array = array / array.sum()
    return array.astype(np.float32)


def draw_psf_image(survey: SurveyConfig, radio: RadioConfig | None = None) -> np.ndarray:
    """PSF image including the pixel response, ``stamp_size``² at the survey pixel scale (optical: sum 1)."""
    image = build_psf(survey, radio).drawImage(nx=survey.stamp_size, ny=survey.stamp_size,
                                               scale=survey.pixel_scale_arcsec, method="auto")
    return _normalised(image.array, survey)


def draw_fine_psf_image(survey: SurveyConfig, oversampling: int, radio: RadioConfig | None = None) -> np.ndarray:
    """PSF *without* pixel response on the model's fine grid, summing to 1.

    ``(stamp_size * oversampling)``² pixels at ``pixel_scale_arcsec / oversampling``, with the
    PSF centred on pixel index ``size // 2`` (GalSim centres an even image between pixels;
    the half-pixel offset moves it onto one), as :class:`lensforge.models.vaegan.PSFObservation` expects.
    The pixel response is left out because the model integrates fine pixels into stamp pixels itself.
    """
    size = survey.stamp_size * oversampling
    image = build_psf(survey, radio).drawImage(nx=size, ny=size, scale=survey.pixel_scale_arcsec / oversampling,
                                               method="no_pixel", offset=(0.5, 0.5))
    return _normalised(image.array, survey)


def flux_from_magnitude(magnitude, survey: SurveyConfig):
    """Total flux [ADU] of a source of AB ``magnitude`` over the survey's exposures (array or scalar)."""
    electrons_per_second = 10.0 ** (-0.4 * (np.asarray(magnitude, dtype=float) - survey.zero_point_mag))
    return electrons_per_second * survey.exposure_time_s * survey.n_exposures / survey.gain_e_per_adu


def sky_level_adu(survey: SurveyConfig) -> float:
    """Sky background per pixel [ADU] over the survey's exposures."""
    per_arcsec2 = float(flux_from_magnitude(survey.sky_brightness_mag_per_arcsec2, survey))
    return per_arcsec2 * survey.pixel_scale_arcsec ** 2


def read_noise_adu(survey: SurveyConfig) -> float:
    """Read noise per pixel of the summed exposures [ADU] (independent reads add in quadrature)."""
    return survey.read_noise_e * np.sqrt(survey.n_exposures) / survey.gain_e_per_adu


def sky_noise_sigma_adu(survey: SurveyConfig) -> float:
    """Background noise per pixel [ADU]: sky Poisson noise and read noise in quadrature."""
    sky_e = sky_level_adu(survey) * survey.gain_e_per_adu
    return float(np.sqrt(sky_e / survey.gain_e_per_adu ** 2 + read_noise_adu(survey) ** 2))


def saturation_adu(survey: SurveyConfig) -> float:
    """Pixel value [ADU] at which a pixel is full (``full_well_e`` per exposure, summed exposures)."""
    return survey.full_well_e * survey.n_exposures / survey.gain_e_per_adu


def predicted_depth(survey: SurveyConfig, snr: float = 5.0, radio: RadioConfig | None = None) -> float:
    """Point-source magnitude detected at ``snr`` by PSF-weighted (optimal) photometry, sky-limited [mag].

    Optimal S/N of a point source of flux F on background noise sigma is F sqrt(sum p_i^2) / sigma,
    where p is the pixelised PSF (sum 1); this is the matched-filter definition GalSim's
    ``addNoiseSNR`` uses, equal to F / (sigma sqrt(n_eff)) with n_eff = 1 / sum p_i^2.
    """
    psf = build_psf(survey, radio).drawImage(nx=128, ny=128, scale=survey.pixel_scale_arcsec, method="auto").array
    psf = psf / psf.sum()
    flux_adu = snr * sky_noise_sigma_adu(survey) / np.sqrt(np.sum(psf ** 2))
    zero_flux = float(flux_from_magnitude(0.0, survey))
    return float(-2.5 * np.log10(flux_adu / zero_flux))
