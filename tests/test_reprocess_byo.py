"""Reprocessing one's own FITS images: 4-D radio images, mask files, beams, the domain check, ``--method auto``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import scipy.ndimage
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from typer.testing import CliRunner

from lensforge.errors import InputError, ModelError
from lensforge.pipeline.inpaint import images
from lensforge.pipeline.inpaint.domain import check_domain, domain_warning, image_resolution
from lensforge.pipeline.tiles.reprocess import (
    MASK_FILE_BIT,
    NONFINITE_BIT,
    ReprocessSettings,
    check_wcs,
    list_tiles,
    reprocess_tile,
)

N = 150  # FIRST-like cutout: 150 x 150 pixels of 1.8 arcsec, a 5.4 arcsec beam (3 pixels FWHM), Jy/beam
PIXEL_DEG = 1.8 / 3600.0
BEAM_DEG = 5.4 / 3600.0
BEAM_SIGMA_PIXELS = (BEAM_DEG / PIXEL_DEG) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
RADIO_NOISE = 1.5e-4  # Jy/beam
FIRST = Path("/work/shared/data/first_radio/first_mirabest_150.fits")

CARD = {"weights_sha256": "a" * 64,
        "domain": {"resolution_fwhm_pixels": [1.5, 8.0], "peak_snr_max": 2000.0,
                   "background_offset_sigma_max": 5.0, "units": ["adu", "jy/beam"]}}


# --- images ---------------------------------------------------------------------------------------------

def radio_galaxy(seed: int = 0) -> np.ndarray:
    """A FIRST-like FR II: two Gaussian lobes and a core, convolved with the beam, plus beam-correlated noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    lobes = sum(amp * np.exp(-((xx - 75 - dx) ** 2 + (yy - 75 - dy) ** 2) / (2 * width**2))
                for dx, dy, amp, width in ((-25, -8, 1.0, 5.0), (25, 8, 0.8, 6.0)))
    lobes = scipy.ndimage.gaussian_filter(lobes, BEAM_SIGMA_PIXELS)
    core = np.zeros((N, N))
    core[75, 75] = 1.0
    core = scipy.ndimage.gaussian_filter(core, BEAM_SIGMA_PIXELS)
    noise = scipy.ndimage.gaussian_filter(rng.normal(size=(N, N)), BEAM_SIGMA_PIXELS)
    image = 5e-3 * lobes / lobes.max() + 2e-2 * core / core.max() + RADIO_NOISE * noise / noise.std()
    return image.astype(np.float32)


def radio_header(crval=(150.0, 2.0), crpix=(75.5, 75.5)) -> fits.Header:
    """The header of a 4-D radio image (RA, Dec, FREQ, STOKES), beam and units included."""
    header = fits.Header()
    header["BUNIT"] = "JY/BEAM"
    header["BMAJ"], header["BMIN"], header["BPA"] = BEAM_DEG, BEAM_DEG, 0.0
    for i, (ctype, crval_i, cdelt, crpix_i, cunit) in enumerate(
            [("RA---SIN", crval[0], -PIXEL_DEG, crpix[0], "deg"), ("DEC--SIN", crval[1], PIXEL_DEG, crpix[1], "deg"),
             ("FREQ", 1.4e9, 3e6, 1.0, "Hz"), ("STOKES", 1.0, 1.0, 1.0, "")], start=1):
        header[f"CTYPE{i}"], header[f"CRVAL{i}"] = ctype, crval_i
        header[f"CDELT{i}"], header[f"CRPIX{i}"] = cdelt, crpix_i
        if cunit:
            header[f"CUNIT{i}"] = cunit
    return header


def write_radio(path: Path, image: np.ndarray, header: fits.Header | None = None) -> Path:
    fits.PrimaryHDU(image[None, None], header=header or radio_header()).writeto(path)
    return path


def optical(seed: int = 0, sky: float = 0.0, size: int = 96) -> np.ndarray:
    """Sky-subtracted optical-like image in ADU: white noise (sigma 1) and a few PSF-sized stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = rng.normal(sky, 1.0, (size, size))
    for x, y in ((20, 30), (60, 50), (40, 75)):
        image += 60.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return image.astype(np.float32)


def fake_model_inpaint(calls: list):
    """A stand-in for the image in-painter: the median of the known pixels, std 1 on the holes."""
    def inpaint_image(image, mask, noise_sigma, model, card, **options):
        calls.append(card["weights_sha256"])
        fill = float(np.median(image[~mask]))
        return np.where(mask, fill, image), np.where(mask, 1.0, 0.0)
    return inpaint_image


@pytest.fixture
def fake_model(monkeypatch):
    calls: list = []
    monkeypatch.setattr(images, "inpaint_image", fake_model_inpaint(calls), raising=False)
    return calls


# --- 4-D radio images ------------------------------------------------------------------------------------

def test_check_wcs_accepts_a_4d_radio_header():
    check_wcs(radio_header(), "radio.fits", (N, N))


def test_a_4d_radio_image_gives_2d_outputs_with_its_celestial_wcs(tmp_path):
    path = write_radio(tmp_path / "radio.fits", radio_galaxy())
    out = tmp_path / "out"
    row = reprocess_tile(str(path), out, ReprocessSettings())
    assert row["status"] == "done" and row["bunit"] == "JY/BEAM"
    assert row["fwhm_source"] == "BMAJ/BMIN" and row["fwhm_pixels"] == pytest.approx(3.0)
    with fits.open(out / "radio.reprocessed.fits") as hdus:
        for name in ("SCIENCE", "MASK", "INPAINT_STD"):
            assert hdus[name].data.ndim == 2 and hdus[name].header["NAXIS"] == 2
            wcs = WCS(hdus[name].header)
            assert wcs.naxis == 2 and wcs.has_celestial
        header = hdus["SCIENCE"].header
        assert "CTYPE3" not in header and "CTYPE4" not in header and header["BUNIT"] == "JY/BEAM"
        assert header["LFFWHMSR"] == "BMAJ/BMIN"
        np.testing.assert_array_equal(hdus["SCIENCE"].data, radio_galaxy())
    catalog = Table.read(out / "radio.catalog.fits")
    assert {"ra", "dec"} <= set(catalog.colnames)
    assert catalog.meta["BUNIT"] == "JY/BEAM" and catalog.meta["FWHMSRC"] == "BMAJ/BMIN"
    assert catalog.meta["FWHMPIX"] == pytest.approx(3.0)
    assert catalog["segment_flux"].unit == u.Jy / u.beam and catalog["x"].unit == u.pix


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32)])
def test_a_real_cube_is_refused_in_one_line_naming_its_shape(tmp_path, shape):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.ones(shape, np.float32)).writeto(path)
    with pytest.raises(InputError, match="cube of " + "x".join(map(str, reversed(shape)))) as caught:
        reprocess_tile(str(path), tmp_path / "out", ReprocessSettings())
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# --- mask files ------------------------------------------------------------------------------------------

def _mask(size: int = 96, block=(slice(40, 50), slice(10, 30))) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[block] = 1
    return mask


def test_a_sibling_mask_file_masks_pixels_is_no_tile_and_changes_the_key(tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    fits.PrimaryHDU(optical()).writeto(source / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(source / "a.mask.fits")
    assert list_tiles(str(source)) == [str(source / "a.fits")]
    out = tmp_path / "out"
    row = reprocess_tile(str(source / "a.fits"), out, ReprocessSettings())
    assert row["status"] == "done" and row["mask_file"] == str(source / "a.mask.fits")
    with fits.open(out / "a.reprocessed.fits") as hdus:
        mask = hdus["MASK"].data
    assert (mask[40:50, 10:30] == 1).all() and np.count_nonzero(mask) == 200
    assert reprocess_tile(str(source / "a.fits"), out, ReprocessSettings())["status"] == "skipped"

    (source / "a.mask.fits").unlink()  # a changed mask redoes the tile
    fits.PrimaryHDU(_mask(block=(slice(0, 5), slice(0, 96))).astype(np.float32)).writeto(source / "a.mask.fits")
    assert reprocess_tile(str(source / "a.fits"), out, ReprocessSettings())["status"] == "done"
    with fits.open(out / "a.reprocessed.fits") as hdus:
        mask = hdus["MASK"].data
    assert (mask[:5] == MASK_FILE_BIT).all() and np.count_nonzero(mask) == 5 * 96  # float mask: nonzero = masked


def test_a_mask_file_of_another_shape_is_one_line(tmp_path):
    fits.PrimaryHDU(optical()).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(np.zeros((50, 60), np.uint8)).writeto(tmp_path / "a.mask.fits")
    with pytest.raises(InputError, match=r"a\.mask\.fits: mask of 60x50 pixels, the image has 96x96") as caught:
        reprocess_tile(str(tmp_path / "a.fits"), tmp_path / "out", ReprocessSettings())
    assert "\n" not in str(caught.value)


def test_a_4d_radio_image_with_a_named_4d_mask_and_nans(tmp_path):
    image = radio_galaxy()
    image[10:14, 10:14] = np.nan
    path = write_radio(tmp_path / "radio.fits", image)
    mask_path = tmp_path / "flags.fits"
    fits.PrimaryHDU(_mask(N, (slice(60, 70), slice(100, 120)))[None, None]).writeto(mask_path)
    row = reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(), mask=str(mask_path))
    assert row["mask_file"] == str(mask_path)
    with fits.open(tmp_path / "out" / "radio.reprocessed.fits") as hdus:
        mask, science = hdus["MASK"].data, hdus["SCIENCE"].data
    assert (mask[10:14, 10:14] == NONFINITE_BIT).all() and (mask[60:70, 100:120] == 1).all()
    assert np.isfinite(science).all()


def test_the_mask_option_takes_a_single_image_only(tmp_path):
    from lensforge.flows.tile_batch import check_mask_option

    fits.PrimaryHDU(optical()).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "m.fits")
    assert check_mask_option(str(tmp_path / "a.fits"), [str(tmp_path / "a.fits")], str(tmp_path / "m.fits"))
    with pytest.raises(InputError, match="not a single image"):
        check_mask_option(str(tmp_path), [str(tmp_path / "a.fits"), str(tmp_path / "m.fits")],
                          str(tmp_path / "m.fits"))
    with pytest.raises(InputError, match="no such file"):
        check_mask_option(str(tmp_path / "a.fits"), [str(tmp_path / "a.fits")], str(tmp_path / "nothing.fits"))


# --- beams, PSFs and detection ---------------------------------------------------------------------------

def test_the_beam_sets_the_detection_of_a_radio_galaxy(tmp_path):
    """One FR II (core and two lobes) in beam-correlated noise is a handful of sources, not hundreds."""
    from lensforge.pipeline.tiles.detect import detect

    for seed in range(3):
        path = write_radio(tmp_path / f"radio{seed}.fits", radio_galaxy(seed))
        row = reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(threshold_nsigma=0.6))
        assert 1 <= row["n_sources"] <= 6, row
        # The optical defaults the issue reported find many times more "sources" in the same pixels.
        assert len(detect(radio_galaxy(seed), psf_fwhm_pixels=3.5, threshold_nsigma=0.6)) > 5 * row["n_sources"]


@pytest.mark.skipif(not FIRST.is_file(), reason="the shared FIRST cube is absent")
def test_a_real_first_radio_galaxy_gives_a_handful_of_sources(tmp_path):
    with fits.open(FIRST, memmap=True) as hdus:
        cube_header = hdus[0].header
        catalog = Table.read(hdus["CATALOG"])
        rows = []
        for plane in (0, 1, 2):
            header = radio_header(crval=(catalog["crval1"][plane], catalog["crval2"][plane]),
                                  crpix=(catalog["crpix1"][plane], catalog["crpix2"][plane]))
            for key in ("BUNIT", "BMAJ", "BMIN"):
                header[key] = cube_header[key]
            header["CTYPE1"], header["CTYPE2"] = cube_header["CTYPE1"], cube_header["CTYPE2"]
            header["CDELT1"], header["CDELT2"] = cube_header["CDELT1"], cube_header["CDELT2"]
            path = write_radio(tmp_path / f"first{plane}.fits", np.asarray(hdus[0].data[plane], np.float32), header)
            rows.append(reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(threshold_nsigma=0.6)))
    for row in rows:
        assert row["fwhm_source"] == "BMAJ/BMIN" and row["fwhm_pixels"] == pytest.approx(3.0)
        assert 1 <= row["n_sources"] <= 15, row


def test_optical_psf_keywords_and_the_default():
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 0.0,
                          "CRPIX1": 1.0, "CRPIX2": 1.0, "CD1_1": -0.2 / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                          "CD2_2": 0.2 / 3600, "BUNIT": "adu"})
    assert image_resolution(header).source == "unknown"
    header["SEEING"] = (0.7, "[arcsec] seeing FWHM")
    resolution = image_resolution(header)
    assert resolution.fwhm_pixels == pytest.approx(3.5) and resolution.source == "SEEING [arcsec]"
    assert not resolution.radio
    header["PSF_FWHM"] = (4.0, "[pixel] PSF FWHM")
    assert image_resolution(header).fwhm_pixels == pytest.approx(4.0)
    plain = fits.Header({"PIXSCALE": 0.5})  # no WCS: the pixel-scale keyword of a primary header
    assert image_resolution(fits.Header({"SEEING": 1.0}), plain).fwhm_pixels == pytest.approx(2.0)


def test_an_image_without_resolution_keywords_uses_the_default(tmp_path):
    fits.PrimaryHDU(optical()).writeto(tmp_path / "a.fits")
    row = reprocess_tile(str(tmp_path / "a.fits"), tmp_path / "out", ReprocessSettings(psf_fwhm_pixels=2.5))
    assert row["fwhm_source"] == "default" and row["fwhm_pixels"] == 2.5 and row["bunit"] is None
    assert 2 <= row["n_sources"] <= 4


# --- the domain check ------------------------------------------------------------------------------------

def _header(**cards) -> fits.Header:
    return fits.Header(cards)


def test_an_in_domain_image_gives_no_reason():
    image = optical()
    report = check_domain(image, np.zeros(image.shape, bool), _header(BUNIT="ADU", BITPIX=-32), CARD)
    assert report.reasons == [] and report.in_domain
    assert report.measured["resolution_fwhm_pixels"] is None and report.measured["noise"] == pytest.approx(1, rel=0.2)


@pytest.mark.parametrize(("case", "phrase"), [
    ("8-bit", "8-bit quantised data, a display stretch, not calibrated pixels"),
    ("integer levels", "8-bit quantised data"),
    ("sky", "sky left in?"),
    ("dynamic range", "dynamic range: peak"),
    ("units", "units BUNIT 'MJy/sr'"),
    ("resolution", "resolution 20 px FWHM from BMAJ/BMIN (trained 1.5-8 px)"),
])
def test_domain_check_reasons(case, phrase):
    image, header = optical(), _header(BUNIT="adu", BITPIX=-32)
    if case == "8-bit":
        image = np.clip(np.round(image * 20 + 30), 0, 255).astype(np.uint8)
        header["BITPIX"] = 8
    elif case == "integer levels":
        image = np.clip(np.round(image * 20 + 30), 0, 255).astype(np.float32)
    elif case == "sky":
        image = optical(sky=1000.0)
    elif case == "dynamic range":
        image[5, 5] = 1e5
    elif case == "units":
        header["BUNIT"] = "MJy/sr"
    elif case == "resolution":
        header.update(radio_header())
        header["BMAJ"] = header["BMIN"] = 20 * PIXEL_DEG
    report = check_domain(image, np.zeros(image.shape, bool), header, CARD)
    assert len(report.reasons) == 1 and phrase in report.reasons[0], report.reasons
    warning = domain_warning("img.fits", report)
    assert warning.startswith("img.fits: outside the in-painting model's training domain (") and "\n" not in warning


def test_a_constant_image_has_no_usable_noise():
    report = check_domain(np.ones((32, 32)), np.zeros((32, 32), bool), None, CARD)
    assert report.reasons and "not positive and finite" in report.reasons[0]


# --- methods ---------------------------------------------------------------------------------------------

def _out_of_domain(path: Path) -> Path:
    fits.PrimaryHDU(optical(), header=_header(BUNIT="MJy/sr")).writeto(path)
    return path


def test_auto_falls_back_to_biharmonic_outside_the_domain_with_a_warning(tmp_path, fake_model):
    path = _out_of_domain(tmp_path / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "a.mask.fits")
    row = reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(method="auto"), model=object(), card=CARD)
    assert row["method_used"] == "biharmonic" and not fake_model
    assert row["warning"].startswith(f"{path}: outside the in-painting model's training domain (units BUNIT 'MJy/sr'")
    with fits.open(tmp_path / "out" / "a.reprocessed.fits") as hdus:
        assert hdus["SCIENCE"].header["LFMETHOD"] == "biharmonic" and hdus["SCIENCE"].header["LFMETREQ"] == "auto"
    marker = json.loads((tmp_path / "out" / "a.done.json").read_text())
    assert marker["warning"] == row["warning"]
    again = reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(method="auto"), model=object(), card=CARD)
    assert again["status"] == "skipped" and again["warning"] == row["warning"]  # the warning is never lost


def test_model_and_auto_use_the_model_inside_the_domain(tmp_path, fake_model):
    fits.PrimaryHDU(optical(), header=_header(BUNIT="adu")).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "a.mask.fits")
    row = reprocess_tile(str(tmp_path / "a.fits"), tmp_path / "auto", ReprocessSettings(method="auto"),
                         model=object(), card=CARD)
    assert row["method_used"] == "model" and "warning" not in row and fake_model == [CARD["weights_sha256"]]
    with fits.open(tmp_path / "auto" / "a.reprocessed.fits") as hdus:
        assert (hdus["INPAINT_STD"].data[40:50, 10:30] == 1.0).all()
        assert hdus["SCIENCE"].header["LFMODEL"] == CARD["weights_sha256"][:16]
    # The model's checksum is in the key: another model redoes the tile.
    other = {**CARD, "weights_sha256": "b" * 64}
    assert reprocess_tile(str(tmp_path / "a.fits"), tmp_path / "auto", ReprocessSettings(method="auto"),
                          model=object(), card=other)["status"] == "done"


def test_the_model_method_warns_but_still_inpaints_outside_the_domain(tmp_path, fake_model):
    path = _out_of_domain(tmp_path / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "a.mask.fits")
    row = reprocess_tile(str(path), tmp_path / "out", ReprocessSettings(method="model"), model=object(), card=CARD)
    assert row["method_used"] == "model" and fake_model and "units BUNIT" in row["warning"]


@pytest.mark.parametrize("method", ["biharmonic", "interpolate", "model", "auto"])
def test_known_pixels_are_unchanged_by_every_method(tmp_path, fake_model, monkeypatch, method):
    def no_windows(*args, **kwargs):
        raise AssertionError("reprocess in-paints the whole image, not windows")

    monkeypatch.setattr(images, "inpaint_tile", no_windows)
    image = optical(seed=4)
    image[70:74, 5:9] = np.nan
    fits.PrimaryHDU(image, header=_header(BUNIT="adu")).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "a.mask.fits")
    row = reprocess_tile(str(tmp_path / "a.fits"), tmp_path / "out", ReprocessSettings(method=method),
                         model=object(), card=CARD)
    assert row["status"] == "done"
    with fits.open(tmp_path / "out" / "a.reprocessed.fits") as hdus:
        science, mask = hdus["SCIENCE"].data, hdus["MASK"].data
    known = mask == 0
    np.testing.assert_array_equal(science[known], image[known])
    assert np.isfinite(science).all() and np.count_nonzero(~known) == 200 + 16


def test_an_unknown_method_is_one_line():
    with pytest.raises(InputError, match="valid methods are model, auto, biharmonic, interpolate"):
        ReprocessSettings(method="magic")


# --- the flow and the command line ----------------------------------------------------------------------

def test_a_worker_row_carries_the_warning(tmp_path, fake_model, monkeypatch):
    import lensforge.flows.tile_batch as flow

    monkeypatch.setattr(flow, "cached_image_inpainter", lambda model_dir: (object(), CARD))
    path = _out_of_domain(tmp_path / "a.fits")
    row = flow.tile_row(str(path), str(tmp_path / "out"), {"method": "auto", "psf_fwhm_pixels": 3.5,
                                                            "threshold_nsigma": 1.5}, "somewhere")
    assert row["status"] == "done" and row["method_used"] == "biharmonic" and "training domain" in row["warning"]


def test_the_cli_prints_one_warning_line_per_tile(tmp_path, monkeypatch):
    from lensforge.flows import stages
    from lensforge.flows.cli import app

    rows = [{"tile": f"t{i}.fits", "status": "done", "warning": f"t{i}.fits: outside the in-painting model's "
             "training domain (units BUNIT 'MJy/sr' (trained on 'adu'))"} for i in range(2)]
    monkeypatch.setattr(stages, "reprocess", lambda *args, **kwargs: {
        "n_tiles": 2, "done": 2, "skipped": 0, "failed": 0, "wall_seconds": 1.0, "tile_seconds": 1.0,
        "summary_path": "x", "tiles": rows})
    result = CliRunner().invoke(app, ["reprocess", str(tmp_path), "--output", str(tmp_path / "o"), "--method", "auto",
                                      "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and warnings[0].startswith("lensforge: warning: t0.fits: outside the in-painting")


def test_the_cli_refuses_a_mask_for_a_directory_in_one_line(tmp_path):
    from lensforge.flows.cli import app

    fits.PrimaryHDU(optical()).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(optical()).writeto(tmp_path / "b.fits")
    result = CliRunner().invoke(app, ["reprocess", str(tmp_path), "--output", str(tmp_path / "o"), "--mask",
                                      str(tmp_path / "a.fits"), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2 and "is not a single image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def _model_dir(directory: Path, damaged: bool = False) -> Path:
    import hashlib

    from lensforge.models.image_inpainter import CARD_FILE, CARD_FORMAT, CARD_FORMAT_VERSION, WEIGHTS_FILE

    directory.mkdir(parents=True)
    blob = b"weights"
    (directory / WEIGHTS_FILE).write_bytes(blob + (b"!" if damaged else b""))
    (directory / CARD_FILE).write_text(json.dumps({**CARD, "format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION,
                                                   "weights_sha256": hashlib.sha256(blob).hexdigest()}))
    return directory


def test_the_inpainter_is_found_by_path_or_run_version_never_by_working_directory(tmp_path, monkeypatch):
    import lensforge.models.image_inpainter as inpainter
    from lensforge.flows.tile_batch import resolve_inpainter
    from lensforge.layout import RunLayout
    from lensforge.pipeline.config import build_config

    config = build_config({"out_dir": str(tmp_path / "runs"), "name": "mine"})
    layout = RunLayout(config.run_dir)
    given = _model_dir(tmp_path / "trained")
    assert resolve_inpainter(config, str(given)) == given
    missing = re.escape(f"unknown model version 'v1' (no in-painter directory {layout.inpainters_dir}")
    with pytest.raises(ModelError, match=missing):
        resolve_inpainter(config, "v1")
    _model_dir(layout.inpainter_dir("v1"))
    assert resolve_inpainter(config, "v1") == layout.inpainter_dir("v1").absolute()
    unknown = re.escape(f"unknown model version 'v2' in {layout.inpainters_dir} (versions: v1)")
    with pytest.raises(ModelError, match=unknown):
        resolve_inpainter(config, "v2")
    with pytest.raises(ModelError, match="does not match its model card"):
        resolve_inpainter(config, str(_model_dir(tmp_path / "damaged", damaged=True)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inpainter, "SHIPPED_DIR", tmp_path / "nothing_shipped")
    with pytest.raises(ModelError, match=re.escape(f"no shipped image in-painter in {tmp_path / 'nothing_shipped'}")):
        resolve_inpainter(config, None)
    monkeypatch.setattr(inpainter, "SHIPPED_DIR", given)
    assert resolve_inpainter(config, None) == given


@pytest.mark.slow
def test_a_batch_of_own_images_then_a_rerun_and_a_named_mask(tmp_path):
    """``lensforge reprocess`` on a directory: a 4-D radio image with its .mask.fits and a plain optical FITS
    with a MASK extension; the rerun skips both; then one image with --mask."""
    from lensforge.flows.cli import app

    source = tmp_path / "mine"
    source.mkdir()
    write_radio(source / "radio.fits", radio_galaxy())
    fits.PrimaryHDU(_mask(N, (slice(60, 70), slice(100, 120)))).writeto(source / "radio.mask.fits")
    fits.HDUList([fits.PrimaryHDU(optical(), header=_header(BUNIT="adu")),
                  fits.ImageHDU(_mask().astype(np.int16), name="MASK")]).writeto(source / "optical.fits")
    out = tmp_path / "out"
    options = ["--output", str(out), "--quiet", "--set", "dask.n_workers=1", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, ["reprocess", str(source), *options])
    assert result.exit_code == 0, result.output
    assert "2 tiles: 2 done, 0 skipped, 0 failed" in result.stdout
    summary = json.loads((out / "reprocess_summary.json").read_text())
    radio, plain = summary["tiles"][1], summary["tiles"][0]
    assert radio["fwhm_source"] == "BMAJ/BMIN" and radio["mask_file"] == str(source / "radio.mask.fits")
    assert 1 <= radio["n_sources"] <= 6 and plain["fwhm_source"] == "default" and plain["bunit"] == "adu"
    result = CliRunner().invoke(app, ["reprocess", str(source), *options])
    assert "2 tiles: 0 done, 2 skipped, 0 failed" in result.stdout, result.output

    single = tmp_path / "single"
    single.mkdir()
    fits.PrimaryHDU(optical()).writeto(single / "img.fits")
    fits.PrimaryHDU(_mask()).writeto(tmp_path / "flags.fits")
    result = CliRunner().invoke(app, ["reprocess", str(single / "img.fits"), "--mask", str(tmp_path / "flags.fits"),
                                      *options])
    assert result.exit_code == 0, result.output
    with fits.open(out / "img.reprocessed.fits") as hdus:
        assert np.count_nonzero(hdus["MASK"].data) == 200
