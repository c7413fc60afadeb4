"""Survey PSFs: a small registry of PSF builders keyed by name.

GalSim does the physics; this module only maps configuration to GalSim profiles.
"""

from __future__ import annotations

from collections.abc import Callable

import galsim
import numpy as np

from catalogs.errors import ConfigError
from pipeline.config import SurveyConfig

PSF_BUILDERS: dict[str, Callable[[SurveyConfig], galsim.GSObject]] = {}


def register_psf(name: str) -> Callable[[Callable[[SurveyConfig], galsim.GSObject]], Callable]:
    """Decorator registering a PSF builder ``f(survey) -> galsim.GSObject`` under ``name``."""
    def decorate(builder: Callable[[SurveyConfig], galsim.GSObject]) -> Callable:
        PSF_BUILDERS[name] = builder
        return builder
    return decorate


@register_psf("moffat")
def _moffat(survey: SurveyConfig) -> galsim.GSObject:
    return galsim.Moffat(beta=survey.moffat_beta, fwhm=survey.psf_fwhm_arcsec)


@register_psf("kolmogorov")
def _kolmogorov(survey: SurveyConfig) -> galsim.GSObject:
    return galsim.Kolmogorov(fwhm=survey.psf_fwhm_arcsec)


def build_psf(survey: SurveyConfig) -> galsim.GSObject:
    """The survey's atmospheric/optical PSF (without the pixel), sheared by (psf_g1, psf_g2)."""
    try:
        builder = PSF_BUILDERS[survey.psf_type]
    except KeyError:
        raise ConfigError(f"survey.psf_type: unknown PSF {survey.psf_type!r}; valid: {sorted(PSF_BUILDERS)}",
                          survey.psf_type) from None
    psf = builder(survey)
    if survey.psf_g1 or survey.psf_g2:
        psf = psf.shear(g1=survey.psf_g1, g2=survey.psf_g2)
    return psf


def draw_psf_image(survey: SurveyConfig) -> np.ndarray:
    """PSF image including the pixel response, ``stamp_size``² at the survey pixel scale, summing to 1."""
    image = build_psf(survey).drawImage(nx=survey.stamp_size, ny=survey.stamp_size,
                                        scale=survey.pixel_scale_arcsec, method="auto")
    array = image.array.astype(np.float64)
    return (array / array.sum()).astype(np.float32)


def draw_fine_psf_image(survey: SurveyConfig, oversampling: int) -> np.ndarray:
    """PSF *without* pixel response on the model's fine grid, summing to 1.

    ``(stamp_size * oversampling)``² pixels at ``pixel_scale_arcsec / oversampling``, with the
    PSF centred on pixel index ``size // 2`` (GalSim centres an even image between pixels;
    the half-pixel offset moves it onto one), as :class:`models.vaegan.PSFObservation` expects.
    The pixel response is left out because the model integrates fine pixels into stamp pixels itself.
    """
    size = survey.stamp_size * oversampling
    image = build_psf(survey).drawImage(nx=size, ny=size, scale=survey.pixel_scale_arcsec / oversampling,
                                        method="no_pixel", offset=(0.5, 0.5))
    array = image.array.astype(np.float64)
    return (array / array.sum()).astype(np.float32)
