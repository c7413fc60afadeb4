"""Whole radio tiles: a GalSim sky observed through an interferometer, written as MEF FITS.

Glue between the configuration, the tile products and :mod:`lensforge.pipeline.radio` (the
interferometer physics and the beam). A radio tile is a sky of extended and compact sources
drawn by GalSim, observed at the uv tracks of ``radio.layout`` over the hour-angle range
(Earth rotation), gridded and imaged into a dirty image with its beam, with thermal noise
from the radiometer equation and flagged (blank) patches. Written as MEF FITS: SCIENCE
(dirty, Jy/beam), MASK, VARIANCE, BEAM and MODEL (the true sky, Jy/pixel), with a truth
catalogue of the sources.

Image axes follow the standard sky orientation, as the optical tiles: north up (+y = m) and
east to the left (+x = -l, west), so the SIN-projection WCS has a negative CD1_1. The
interferometer images in (l, m) with +x east; every image (dirty, mask, variance, beam, model)
is mirrored in x about the phase centre, pixel (n//2, n//2) at (tile.ra_deg,
radio.declination_deg), before it is written (exact for the FFT images, which are periodic: the
column that would fall off the grid wraps onto itself), and the truth x follows. Truth e1, e2
are in that image frame (the same frame as the optical tiles). Every image extension carries the
synthesized beam's half-power ellipse as BMAJ, BMIN [deg] and BPA [deg, north through east]
(the AIPS / CASA cards), measured from the beam's main lobe. Sources are lensed by the run's
``shear`` (constant, NFW or power spectrum; ``uniform`` means its constant g1, g2, as on optical
tiles) at ``shear.source_redshift``; the truth holds g1, g2 (same frame), kappa, mu and ``lensed``
(false for a source in a halo's strong-lensing zone, drawn unlensed). Radio tiles ignore
tile.dec_deg, tile.rotation_deg, tile.noise and tile.defects.
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
from lensforge.pipeline.radio.imaging import beam_ellipse, observe, thermal_noise_sigma_jy
from lensforge.pipeline.radio.sky import blank_patches, radio_sky
from lensforge.pipeline.stamps.lensing import LensingValues
from lensforge.pipeline.tiles.render import product_paths, run_cards, tile_lensing_field
from lensforge.seeding import Stream, numpy_rng


def mirror_x(image: np.ndarray) -> np.ndarray:
    """``image`` mirrored in x about column n//2 (l -> -l on the FFT grid): column j takes column
    (2 (n//2) - j) mod n."""
    n = image.shape[-1]
    return np.take(image, (2 * (n // 2) - np.arange(n)) % n, axis=-1)


def radio_header(config: RunConfig, beam: tuple[float, float, float] | None = None) -> fits.Header:
    """SIN WCS of a radio tile: +x west (east to the left, CD1_1 < 0), +y north, phase centre at pixel
    (n//2, n//2); with ``beam`` = (BMAJ, BMIN, BPA) [deg]
    (:func:`lensforge.pipeline.radio.imaging.beam_ellipse`), its cards too."""
    n = config.tile.size_pixels[0]
    scale_deg = config.survey.pixel_scale_arcsec / 3600.0
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"  # interferometric images use SIN
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = config.tile.ra_deg, config.radio.declination_deg
    header["CRPIX1"], header["CRPIX2"] = n // 2 + 1.0, n // 2 + 1.0
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -scale_deg, 0.0, 0.0, scale_deg
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    header["RESTFRQ"] = config.radio.frequency_hz
    if beam is not None:
        header["BMAJ"] = (beam[0], "[deg] synthesized beam FWHM, major axis")
        header["BMIN"] = (beam[1], "[deg] synthesized beam FWHM, minor axis")
        header["BPA"] = (beam[2], "[deg] beam major axis, north through east")
    return header


def make_radio_tile(config: RunConfig, tile_id: int = 0, progress: bool = False) -> dict[str, Any]:
    """Observe one radio tile and write its FITS and truth catalogue; returns a summary."""
    began = time.perf_counter()
    nx, ny = config.tile.size_pixels
    if nx != ny:
        raise ConfigError(f"tile.size_pixels: a radio tile must be square (the FFT grid), got {[nx, ny]}", [nx, ny])
    radio, scale = config.radio, config.survey.pixel_scale_arcsec
    rng = numpy_rng(config.seed, Stream.RADIO, tile_id)
    field = tile_lensing_field(config)

    def lensing(x: np.ndarray, y: np.ndarray) -> LensingValues:
        # The sky is drawn in the (l, m) frame (+x east); the field's frame is GalSim's (+u west, +v north),
        # a mirror image: u = -l, and g2 changes sign. Sources are at shear.source_redshift.
        values = field.at(-(x - nx // 2) * scale, (y - ny // 2) * scale, np.full(len(x), config.shear.source_redshift))
        return LensingValues(values.g1, -values.g2, values.kappa, values.mu)

    sky, sources = radio_sky(nx, scale, rng, n_extended=radio.n_extended, n_compact=radio.n_compact,
                             flux_min_jy=radio.flux_min_jy, flux_max_jy=radio.flux_max_jy, lensing=lensing)
    noise_jy = thermal_noise_sigma_jy(radio.sefd_jy, radio.bandwidth_hz, radio.integration_s)
    observation = observe(sky, layout_for(radio), radio.declination_deg,
                          (radio.hour_angle_start_h, radio.hour_angle_stop_h), radio.n_times, radio.frequency_hz,
                          scale, noise_sigma_jy=noise_jy, rng=rng)
    blank = blank_patches((ny, nx), rng, radio.blank_patches, 4, radio.blank_patch_size_max_pixels)
    # (l, m) images (+x east) to the standard orientation (+x west); blank patches are drawn in the latter.
    dirty, beam, sky = (mirror_x(image) for image in (observation.dirty, observation.beam, sky))
    sources = {**sources, "x": (2 * (nx // 2) - np.asarray(sources["x"], dtype=np.float64)) % nx,
               "e2": -np.asarray(sources["e2"]), "g2": -np.asarray(sources["g2"])}
    dirty = dirty.astype(np.float32)
    dirty[blank] = 0.0
    bitmask = np.where(blank, MASK_BITS["BLANK"], 0).astype(np.int32)
    variance = np.full((ny, nx), observation.noise_sigma_jy_per_beam ** 2, np.float32)
    variance[blank] = 0.0
    ellipse = beam_ellipse(beam, scale)
    header = radio_header(config, ellipse)
    paths = RunLayout(config.run_dir).tile(tile_id).as_dict()
    meta = {**run_cards(config, tile_id), "LAYOUT": radio.layout, "FREQ": radio.frequency_hz,
            "NVIS": observation.n_visibilities, "BMAJ": ellipse[0], "BMIN": ellipse[1], "BPA": ellipse[2]}
    extra = [fits.ImageHDU(beam.astype(np.float32), header=header.copy(), name="BEAM"),
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
    # Applied lensing, GalSim world frame (+u west, +v north) like the optical tiles' truth.
    for name in ("g1", "g2", "kappa", "mu", "lensed"):
        truth[name] = sources[name]
    write_truth_catalogue(truth, paths["truth"].parent, paths["truth"].name)
    return {"tile_id": tile_id, "fits": str(paths["fits"]), "n_objects": len(truth),
            "n_visibilities": observation.n_visibilities, "beam_fwhm_arcsec": observation.beam_fwhm_arcsec,
            "noise_jy_per_beam": observation.noise_sigma_jy_per_beam, "blank_fraction": float(blank.mean()),
            "seconds": time.perf_counter() - began,
            "paths": product_paths(paths, detected=False)}
