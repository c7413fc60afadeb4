"""Radio surveys: the synthesized beam as the PSF of radio stamps, and whole radio tiles.

Glue between the configuration and :mod:`pipeline.radio` (the interferometer physics).
A radio tile is a sky of extended and compact sources drawn by GalSim, observed at the uv
tracks of ``radio.layout`` over the hour-angle range (Earth rotation), gridded and imaged
into a dirty image with its beam, with thermal noise from the radiometer equation and
flagged (blank) patches. Written as MEF FITS: SCIENCE (dirty, Jy/beam), MASK, VARIANCE,
BEAM and MODEL (the true sky, Jy/pixel), with a truth catalogue of the sources.

Image axes follow the interferometer's (l, m): +x is east (l) and +y north (m), so the
SIN-projection WCS has a positive CD1_1 (east to the right); the phase centre is pixel
(n//2, n//2) at (tile.ra_deg, radio.declination_deg). Truth e1, e2 are in that image frame
(so e2 has the opposite sign to the optical tiles' +u-west frame). Radio tiles are not lensed
and ignore tile.dec_deg, tile.rotation_deg, tile.noise and tile.defects.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import astropy.units as u
import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from catalogs.errors import ConfigError
from catalogs.schema import MASK_BITS
from catalogs.tile_fits import write_tile_fits
from catalogs.truth import write_truth_catalogue
from pipeline.config import RadioConfig, RunConfig, SurveyConfig
from pipeline.radio import (
    baselines_xyz,
    blank_patches,
    get_layout,
    hour_angles_rad,
    observe,
    radio_sky,
    synthesized_beam,
    thermal_noise_sigma_jy,
    uvw_tracks,
)
from pipeline.seeding import Stream, numpy_rng
from pipeline.tiles import product_paths, run_cards, tile_paths

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


def radio_header(config: RunConfig) -> fits.Header:
    """TAN WCS of a radio tile: +x east (l), +y north (m), phase centre at pixel (n//2, n//2)."""
    n = config.tile.size_pixels[0]
    scale_deg = config.survey.pixel_scale_arcsec / 3600.0
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"  # interferometric images use SIN
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = config.tile.ra_deg, config.radio.declination_deg
    header["CRPIX1"], header["CRPIX2"] = n // 2 + 1.0, n // 2 + 1.0
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = scale_deg, 0.0, 0.0, scale_deg
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    header["RESTFRQ"] = config.radio.frequency_hz
    return header


def make_radio_tile(config: RunConfig, tile_id: int = 0, progress: bool = False) -> dict[str, Any]:
    """Observe one radio tile and write its FITS and truth catalogue; returns a summary."""
    began = time.perf_counter()
    nx, ny = config.tile.size_pixels
    if nx != ny:
        raise ConfigError(f"tile.size_pixels: a radio tile must be square (the FFT grid), got {[nx, ny]}", [nx, ny])
    radio, scale = config.radio, config.survey.pixel_scale_arcsec
    rng = numpy_rng(config.seed, Stream.RADIO, tile_id)
    sky, sources = radio_sky(nx, scale, rng, n_extended=radio.n_extended, n_compact=radio.n_compact,
                             flux_min_jy=radio.flux_min_jy, flux_max_jy=radio.flux_max_jy)
    noise_jy = thermal_noise_sigma_jy(radio.sefd_jy, radio.bandwidth_hz, radio.integration_s)
    observation = observe(sky, layout_for(radio), radio.declination_deg,
                          (radio.hour_angle_start_h, radio.hour_angle_stop_h), radio.n_times, radio.frequency_hz,
                          scale, noise_sigma_jy=noise_jy, rng=rng)
    blank = blank_patches((ny, nx), rng, radio.blank_patches, 4, radio.blank_patch_size_max_pixels)
    dirty = observation.dirty.astype(np.float32)
    dirty[blank] = 0.0
    bitmask = np.where(blank, MASK_BITS["BLANK"], 0).astype(np.int32)
    variance = np.full((ny, nx), observation.noise_sigma_jy_per_beam ** 2, np.float32)
    variance[blank] = 0.0
    header = radio_header(config)
    paths = tile_paths(config.run_dir, tile_id)
    meta = {**run_cards(config, tile_id), "LAYOUT": radio.layout, "FREQ": radio.frequency_hz,
            "NVIS": observation.n_visibilities,
            "BMAJ": observation.beam_fwhm_arcsec / 3600.0, "BMIN": observation.beam_fwhm_arcsec / 3600.0}
    extra = [fits.ImageHDU(observation.beam.astype(np.float32), header=header.copy(), name="BEAM"),
             fits.ImageHDU(sky.astype(np.float32), header=header.copy(), name="MODEL")]
    extra[1].header["BUNIT"] = "Jy/pixel"
    write_tile_fits(paths["fits"], header, dirty, bitmask, variance, {"BLANK": "flagged / blank patch; no data"},
                    meta, units="Jy/beam", extra_hdus=extra)
    ra, dec = WCS(header).all_pix2world(sources["x"], sources["y"], 0)
    truth = Table(meta={"RUNNAME": config.name, "TILEID": tile_id, "SURVEY": config.survey.name})
    truth["object_id"] = np.arange(len(sources["x"]))
    truth["kind"] = sources["kind"]
    truth["x"], truth["y"] = sources["x"] * u.pix, sources["y"] * u.pix
    truth["ra"], truth["dec"] = ra * u.deg, dec * u.deg
    truth["flux"] = sources["flux_jy"] * u.Jy
    truth["half_light_radius"] = sources["half_light_radius_arcsec"] * u.arcsec
    truth["e1"], truth["e2"] = sources["e1"], sources["e2"]
    write_truth_catalogue(truth, paths["truth"].parent, paths["truth"].name)
    return {"tile_id": tile_id, "fits": str(paths["fits"]), "n_objects": len(truth),
            "n_visibilities": observation.n_visibilities, "beam_fwhm_arcsec": observation.beam_fwhm_arcsec,
            "noise_jy_per_beam": observation.noise_sigma_jy_per_beam, "blank_fraction": float(blank.mean()),
            "seconds": time.perf_counter() - began,
            "paths": product_paths(paths, detected=False)}
