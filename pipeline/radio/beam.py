"""The synthesized beam of a configured interferometer: uv coverage and the beam as a GalSim PSF.

Glue between :class:`~lensforge.pipeline.config.RadioConfig` and the interferometer physics of
:mod:`lensforge.pipeline.radio.uv` and :mod:`lensforge.pipeline.radio.imaging`. Radio stamps use
:func:`beam_profile` as their PSF
(``lensforge.pipeline.stamps.surveys``), radio tiles use :func:`uv_coverage` to observe their sky.
"""

from __future__ import annotations

from functools import lru_cache

import galsim
import numpy as np

from lensforge.pipeline.config import RadioConfig, SurveyConfig
from lensforge.pipeline.radio.imaging import synthesized_beam
from lensforge.pipeline.radio.layouts import get_layout
from lensforge.pipeline.radio.uv import baselines_xyz, hour_angles_rad, uvw_tracks

BEAM_OVERSAMPLING = 4  # fine beam pixels per stamp pixel for the GalSim PSF profile


def layout_for(radio: RadioConfig):
    """The antenna layout of the configuration (``max_radius_m`` goes to the scalable layouts only)."""
    if radio.layout == "two-element":
        return get_layout(radio.layout)
    return get_layout(radio.layout, max_radius_m=radio.max_radius_m)


@lru_cache(maxsize=8)
def uv_coverage(radio: RadioConfig) -> np.ndarray:
    """(n, 3) uv samples [wavelengths] of the configured track (one per baseline and time; read-only, cached)."""
    layout = layout_for(radio)
    hours = hour_angles_rad((radio.hour_angle_start_h, radio.hour_angle_stop_h), radio.n_times)
    uvw = uvw_tracks(baselines_xyz(layout), hours, np.radians(radio.declination_deg), radio.frequency_hz)
    uvw.setflags(write=False)  # shared by every caller of the cache
    return uvw


@lru_cache(maxsize=8)
def _beam_image(radio: RadioConfig, n_pixels: int, pixel_scale_arcsec: float) -> np.ndarray:
    return synthesized_beam(uv_coverage(radio), n_pixels, pixel_scale_arcsec)


def beam_profile(survey: SurveyConfig, radio: RadioConfig) -> galsim.GSObject:
    """The synthesized (dirty) beam as a GalSim profile, for stamps of a radio survey.

    Sampled on a grid ``BEAM_OVERSAMPLING`` times finer than the stamp pixels over the stamp and
    scaled so that a point source of flux S [Jy] drawn with the pixel response peaks at ~S: the
    stamps are in Jy/beam, the convention of radio images (the beam peaks at 1 and, without zero
    spacings, integrates to ~0, so it is not normalised to unit flux).
    """
    fine_scale = survey.pixel_scale_arcsec / BEAM_OVERSAMPLING
    beam = _beam_image(radio, survey.stamp_size * BEAM_OVERSAMPLING, fine_scale)
    surface_brightness = beam / survey.pixel_scale_arcsec ** 2
    # The beam image is band-limited by the uv coverage: maxk from the longest baseline keeps GalSim's
    # FFTs small (its own estimate from the image would ask for a 12k x 12k FFT); stepk from the stamp.
    uv = uv_coverage(radio)
    max_uv = float(np.max(np.hypot(uv[:, 0], uv[:, 1])))
    max_k = 2.0 * np.pi * max_uv * (np.pi / 180.0 / 3600.0) * 1.5  # [1/arcsec], with margin
    # use_true_center=False: the beam peaks on pixel n//2 of the even grid, not between pixels.
    return galsim.InterpolatedImage(galsim.ImageD(surface_brightness, scale=fine_scale), normalization="sb",
                                    use_true_center=False,
                                    _force_maxk=max_k, _force_stepk=2.0 * np.pi / (survey.stamp_size *
                                                                                  survey.pixel_scale_arcsec * 2))
