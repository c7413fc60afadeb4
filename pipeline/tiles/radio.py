"""Whole radio tiles: a GalSim sky observed through an interferometer, written as MEF FITS.

Glue between the configuration, the tile products and :mod:`lensforge.pipeline.radio` (the
interferometer physics and the beam). A radio tile is a sky of extended and compact sources
drawn by GalSim, observed at the uv tracks of ``radio.layout`` over the hour-angle range
(Earth rotation), gridded and imaged into a dirty image with its beam, with thermal noise
from the radiometer equation and flagged (blank) patches. Written as MEF FITS: SCIENCE
(dirty, Jy/beam), MASK, VARIANCE, BEAM and MODEL (the true sky, Jy/pixel), with a truth
catalogue of the sources.

Image axes follow the interferometer's (l, m): +x is east (l) and +y north (m), so the
SIN-projection WCS has a positive CD1_1 (east to the right); the phase centre is pixel
(n//2, n//2) at (tile.ra_deg, radio.declination_deg). Truth e1, e2 are in that image frame
(so e2 has the opposite sign to the optical tiles' +u-west frame). Radio tiles are not lensed
and ignore tile.dec_deg, tile.rotation_deg, tile.noise and tile.defects.
"""

from __future__ import annotations

import time
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from lensforge.catalogs.schema import MASK_BITS
from lensforge.catalogs.tile_fits import write_tile_fits
from lensforge.catalogs.truth import write_truth_catalogue
from lensforge.errors import ConfigError
from lensforge.layout import RunLayout
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.radio.beam import layout_for
from lensforge.pipeline.radio.imaging import observe, thermal_noise_sigma_jy
from lensforge.pipeline.radio.sky import blank_patches, radio_sky
from lensforge.pipeline.tiles.render import product_paths, run_cards
from lensforge.seeding import Stream, numpy_rng


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
    paths = RunLayout(config.run_dir).tile(tile_id).as_dict()
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
