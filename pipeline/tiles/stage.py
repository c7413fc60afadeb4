"""The tile stage: plan → render (regions, optionally on Dask) → MEF FITS + truth → detection → report.

Products of tile ``N`` in the run directory (see :meth:`lensforge.layout.RunLayout.tile`):
``tiles/tile_NNNN.fits`` (SCIENCE / MASK / VARIANCE, TAN WCS), ``catalogs/tile_NNNN_truth.{fits,parquet}``,
``catalogs/tile_NNNN_detections.{fits,parquet}``, ``report/tile_NNNN_detection.{png,json}``.
Radio surveys (``survey.kind=radio``) are observed through the interferometer instead
(:mod:`lensforge.pipeline.tiles.radio`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS

from lensforge.atomic import atomic_write_text
from lensforge.catalogs.schema import MASK_BITS, TILE_TRUTH_COLUMNS
from lensforge.catalogs.tile_fits import write_tile_fits
from lensforge.catalogs.truth import labels_table, write_truth_catalogue
from lensforge.errors import InputError
from lensforge.layout import RunLayout
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.tiles.defects import DEFECT_BITS_DOC
from lensforge.pipeline.tiles.detect import completeness_purity, detect, isolated, match_to_truth, plot_detection_curves
from lensforge.pipeline.tiles.render import TilePixels, plan_tile, product_paths, render_tile, run_cards

SNR_BINS = np.array([1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 300, 1000], dtype=float)


def provenance(config: RunConfig, tile_id: int) -> dict[str, Any]:
    """FITS cards of an optical tile: the run's cards plus its photometry (zero point, gain, exposure)."""
    return {**run_cards(config, tile_id), "ZP_MAG": config.survey.zero_point_mag,
            "GAIN": config.survey.gain_e_per_adu,
            "EXPTIME": config.survey.exposure_time_s * config.survey.n_exposures}


def write_tile_products(pixels: TilePixels) -> dict[str, Path]:
    """Write the MEF FITS tile and its truth catalogue; return the product paths."""
    plan, config = pixels.plan, pixels.plan.config
    paths = RunLayout(config.run_dir).tile(plan.tile_id).as_dict()
    write_tile_fits(paths["fits"], plan.header, pixels.image, pixels.bitmask, pixels.variance, DEFECT_BITS_DOC,
                    provenance(config, plan.tile_id))
    truth = pixels.truth()
    columns = {name: truth[name] for name in TILE_TRUTH_COLUMNS}
    write_truth_catalogue(labels_table(columns, provenance(config, plan.tile_id), specs=TILE_TRUTH_COLUMNS),
                          paths["truth"].parent, paths["truth"].name)
    return paths


def detection_report(pixels: TilePixels) -> dict[str, Any]:
    """Detect sources with photutils, match them to truth, write the catalogue, curves and summary.

    Completeness is measured for isolated galaxies (no other truth object within
    ``detect.isolation_radius_arcsec``) in bins of their optimal S/N and magnitude; purity is
    the matched share of detections. The target quoted is completeness in the 5 ≤ S/N < 6 bin.
    """
    plan, config = pixels.plan, pixels.plan.config
    survey, settings = config.survey, config.detect
    paths = RunLayout(config.run_dir).tile(plan.tile_id).as_dict()
    scale = survey.pixel_scale_arcsec
    psf_fwhm_pixels = plan.psf.drawImage(nx=64, ny=64, scale=scale, method="auto").calculateFWHM() / scale
    # EDGE pixels hold good data: only the defects that spoil a pixel keep it out of detection.
    spoiled = pixels.bitmask & ~np.int32(MASK_BITS["EDGE"])
    # A background box must fit the tile a few times over (small test tiles).
    box_size = min(settings.box_size_pixels, max(8, min(plan.shape) // 4))
    try:
        catalogue = detect(pixels.image, spoiled, psf_fwhm_pixels=psf_fwhm_pixels,
                           threshold_nsigma=settings.threshold_nsigma, n_pixels=settings.n_pixels,
                           box_size=box_size, deblend=settings.deblend, wcs=WCS(plan.header),
                           zero_point_mag=survey.zero_point_mag,
                           # flux [ADU] / (t n / gain) = electrons per second, what the zero point refers to
                           exposure_time_s=survey.exposure_time_s * survey.n_exposures / survey.gain_e_per_adu,
                           variance=pixels.variance)
    except InputError as err:
        raise InputError(f"tile {plan.tile_id}: detection failed ({err}); check detect.box_size_pixels "
                         f"({box_size}) against tile.size_pixels {list(config.tile.size_pixels)} and the masks, or "
                         "set detect.enabled=false", plan.tile_id) from None
    truth = pixels.truth()
    det_to_truth, truth_to_det = match_to_truth(np.asarray(catalogue["x"]), np.asarray(catalogue["y"]), truth["x"],
                                                truth["y"], settings.match_radius_arcsec / scale)
    catalogue["truth_id"] = det_to_truth
    # FITS keys of at most 8 characters (photutils' long meta keys would become HIERARCH cards).
    catalogue.meta = {"RUNNAME": config.name, "TILEID": plan.tile_id, "THRESH": settings.threshold_nsigma,
                      "NPIXELS": settings.n_pixels, "MATCHRAD": settings.match_radius_arcsec}
    write_truth_catalogue(catalogue, paths["detections"].parent, paths["detections"].name)

    # Galaxies whose centre pixel is unmasked and that have no neighbour within the isolation radius.
    iy = np.clip(np.floor(truth["y"] + 0.5).astype(int), 0, plan.shape[0] - 1)
    ix = np.clip(np.floor(truth["x"] + 0.5).astype(int), 0, plan.shape[1] - 1)
    clean = pixels.bitmask[iy, ix] == 0
    alone = isolated(truth["x"], truth["y"], settings.isolation_radius_arcsec / scale)
    sample = (~truth["is_star"]) & clean & alone
    recovered = truth_to_det >= 0
    matched = det_to_truth >= 0
    # Purity is binned by what a user sees of a detection: its measured S/N and magnitude.
    by_snr = completeness_purity(truth["snr"][sample], recovered[sample], np.asarray(catalogue["snr"], float),
                                 matched, SNR_BINS)
    mags = truth["mag"] if len(truth["mag"]) else np.array([config.tile.magnitude_min, config.tile.magnitude_max])
    mag_bins = np.arange(np.floor(mags.min()), np.ceil(mags.max()) + 0.5, 0.5)
    det_mag = np.asarray(catalogue["mag"], dtype=float)
    by_mag = completeness_purity(truth["mag"][sample], recovered[sample], det_mag, matched, mag_bins)
    plot_detection_curves({"isolated galaxies": by_snr}, paths["figure"],
                          "S/N (completeness: true optimal S/N; purity: measured S/N)", log_x=True)
    plot_detection_curves({"isolated galaxies": by_mag}, paths["figure"].with_name(
        paths["figure"].stem + "_mag.png"), "magnitude (completeness: true; purity: measured Kron)")
    at_5 = by_snr[(by_snr["bin_lo"] == 5)][0]
    summary = {
        "tile_id": plan.tile_id, "survey": survey.name, "n_truth": len(truth["x"]), "n_detected": len(catalogue),
        "n_isolated_galaxies": int(sample.sum()), "purity": float(np.mean(matched)) if len(catalogue) else None,
        "completeness_at_snr_5": _finite(at_5["completeness"]), "n_at_snr_5": int(at_5["n_truth"]),
        "threshold_nsigma": settings.threshold_nsigma,
        "by_snr": {c: [None if not np.isfinite(v) else float(v) for v in by_snr[c]]
                   for c in ("bin_lo", "bin_hi", "n_truth", "completeness", "purity")},
        "by_mag": {c: [None if not np.isfinite(v) else float(v) for v in by_mag[c]]
                   for c in ("bin_lo", "bin_hi", "n_truth", "completeness", "purity")},
    }
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2))
    return summary


def _finite(value) -> float | None:
    """A number for the JSON summary: NaN (an empty bin) becomes null, which strict JSON readers accept."""
    value = float(value)
    return value if np.isfinite(value) else None


def make_tile(config: RunConfig, tile_id: int = 0, client=None, progress: bool = False) -> dict[str, Any]:
    """Render tile ``tile_id`` of the run and write its products; returns a summary with timings."""
    if config.survey.kind == "radio":
        from lensforge.pipeline.tiles.radio import make_radio_tile

        return make_radio_tile(config, tile_id, progress=progress)
    began = time.perf_counter()
    plan = plan_tile(config, tile_id)
    pixels = render_tile(plan, client=client, progress=progress)
    rendered = time.perf_counter()
    paths = write_tile_products(pixels)
    summary = {"tile_id": tile_id, "fits": str(paths["fits"]), "n_objects": len(plan),
               "n_stars": int(plan.objects["is_star"].sum()), "plan_seconds": plan.seconds,
               "render_seconds": rendered - began - plan.seconds, "region_seconds": float(sum(pixels.region_seconds))}
    if config.detect.enabled:
        summary["detection"] = detection_report(pixels)
    summary["seconds"] = time.perf_counter() - began
    summary["paths"] = product_paths(paths, config.detect.enabled)
    return summary

