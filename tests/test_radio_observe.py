"""Radio surveys end to end: a radio tile as MEF FITS with beam and model, and radio stamps the model trains on."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import ConfigError
from lensforge.pipeline.config import load_config
from lensforge.pipeline.stamps.surveys import draw_fine_psf_image, draw_psf_image
from lensforge.pipeline.tiles.radio import make_radio_tile


def _config(tmp_path, *overrides):
    return load_config(preset="ska_mid", overrides=[f"out_dir={tmp_path}", "name=radio", "tile.size_pixels=[256,256]",
                                                    "radio.n_compact=30", "radio.n_extended=5", *overrides])


def test_radio_tile_holds_dirty_image_beam_model_and_flags(tmp_path):
    config = _config(tmp_path, "radio.blank_patches=2")
    summary = make_radio_tile(config)
    with fits.open(summary["fits"]) as hdus:
        names = [h.name for h in hdus]
        assert names == ["PRIMARY", "SCIENCE", "MASK", "VARIANCE", "BEAM", "MODEL"]
        dirty, mask, beam, model = (hdus[n].data for n in ("SCIENCE", "MASK", "BEAM", "MODEL"))
        assert hdus["SCIENCE"].header["BUNIT"] == "Jy/beam" and WCS(hdus["SCIENCE"].header).wcs.ctype[0] == "RA---SIN"
        assert hdus[0].header["NVIS"] == summary["n_visibilities"] > 0
    assert beam[128, 128] == pytest.approx(1.0) and beam.max() == pytest.approx(1.0)
    blank = (mask & MASK_BITS["BLANK"]) != 0
    assert blank.any() and np.all(dirty[blank] == 0) and np.all(dirty[~blank] != 0)
    truth = Table.read(tmp_path / "radio" / "catalogs" / "tile_0000_truth.parquet")
    assert len(truth) == 35 and str(truth["flux"].unit) == "Jy"
    assert model.sum() == pytest.approx(float(truth["flux"].sum()), rel=0.05)  # light of edge sources is lost
    # The brightest compact source stands out of the dirty image at its true position.
    compact = truth[truth["kind"] == "compact"]
    brightest = compact[np.argmax(compact["flux"])]
    iy, ix = int(round(float(brightest["y"]))), int(round(float(brightest["x"])))
    local_peak = dirty[iy - 2:iy + 3, ix - 2:ix + 3].max()
    assert local_peak > 0.5 * float(brightest["flux"])


def test_radio_tile_has_the_standard_sky_orientation_and_the_beam_in_every_image_header(tmp_path):
    """East to the left (CD1_1 < 0), as the optical tiles; pixels, WCS and truth agree.

    Radio tiles used to keep the interferometer's (l, m) axes (east to the right, CD1_1 > 0) and put
    BMAJ / BMIN in the primary header only, without BPA; readers that assume the usual orientation
    (DS9, astropy cutouts, stacking with the optical tiles) saw them mirrored, and beam-aware tools
    look for the beam in the image extension they read.
    """
    from lensforge.pipeline.radio.imaging import beam_fwhm_arcsec

    config = _config(tmp_path)
    summary = make_radio_tile(config)
    scale = config.survey.pixel_scale_arcsec
    with fits.open(summary["fits"]) as hdus:
        for name in ("SCIENCE", "MASK", "VARIANCE", "BEAM", "MODEL"):
            header = hdus[name].header
            assert header["CD1_1"] < 0 < header["CD2_2"], name
            assert header["BMAJ"] >= header["BMIN"] > 0 and -90 < header["BPA"] <= 90, name
        header, beam, model = hdus["SCIENCE"].header, hdus["BEAM"].data, hdus["MODEL"].data
    # The header beam is the beam image's half-power ellipse (area-equivalent FWHM as imaging measures it).
    circular = np.sqrt(header["BMAJ"] * header["BMIN"]) * 3600
    assert circular == pytest.approx(beam_fwhm_arcsec(beam, scale), rel=0.03)
    assert circular == pytest.approx(summary["beam_fwhm_arcsec"], rel=0.03)
    wcs = WCS(header)
    ra_left, _ = wcs.all_pix2world([100.0], [128.0], 0)
    ra_right, _ = wcs.all_pix2world([156.0], [128.0], 0)
    assert ra_left[0] > ra_right[0]  # RA grows to the left (east)
    crval = wcs.all_world2pix([config.tile.ra_deg], [config.radio.declination_deg], 0)
    assert float(crval[0][0]) == pytest.approx(128.0) and float(crval[1][0]) == pytest.approx(128.0)
    # Truth x, ra follow the mirrored pixels: the brightest compact source sits on its model peak.
    truth = Table.read(tmp_path / "radio" / "catalogs" / "tile_0000_truth.parquet")
    brightest = truth[truth["kind"] == "compact"][np.argmax(truth[truth["kind"] == "compact"]["flux"])]
    x, y = float(brightest["x"]), float(brightest["y"])
    iy, ix = int(round(y)), int(round(x))
    patch = model[iy - 2:iy + 3, ix - 2:ix + 3]
    assert patch.max() == model[max(iy - 6, 0):iy + 7, max(ix - 6, 0):ix + 7].max()
    ra, dec = wcs.all_pix2world([x], [y], 0)
    assert float(brightest["ra"]) == pytest.approx(float(ra[0]))
    assert float(brightest["dec"]) == pytest.approx(float(dec[0]))


def test_beam_ellipse_measures_a_rotated_gaussian():
    from lensforge.pipeline.radio.imaging import beam_ellipse

    n, sigma_major, sigma_minor, angle = 64, 4.0, 2.0, np.radians(30.0)  # major axis 30 deg from +x (west) to +y
    y, x = np.mgrid[:n, :n] - n // 2
    along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    beam = np.exp(-0.5 * ((along / sigma_major) ** 2 + (across / sigma_minor) ** 2))
    bmaj, bmin, bpa = beam_ellipse(beam, pixel_scale_arcsec=3600.0)  # 1 deg pixels
    fwhm = 2 * np.sqrt(2 * np.log(2))
    assert bmaj == pytest.approx(sigma_major * fwhm, rel=0.01) and bmin == pytest.approx(sigma_minor * fwhm, rel=0.01)
    assert bpa == pytest.approx(-60.0, abs=0.5)  # west of north: east is -x


def test_radio_tile_must_be_square(tmp_path):
    with pytest.raises(ConfigError, match="must be square"):
        make_radio_tile(_config(tmp_path, "tile.size_pixels=[256,128]"))


def test_radio_stamp_psf_is_the_beam_in_jy_per_beam(tmp_path):
    config = _config(tmp_path)
    coarse = draw_psf_image(config.survey, config.radio)
    fine = draw_fine_psf_image(config.survey, 2, config.radio)
    centre = config.survey.stamp_size // 2
    assert coarse[centre, centre] == pytest.approx(1.0, abs=0.06)  # peak ~1: point source of S Jy -> S Jy/beam
    assert fine.max() == pytest.approx(0.25, rel=0.02)  # 2x2 fine pixels sum to one stamp pixel
    # Sampled at the pixel centres (no pixel response), the GalSim profile is the synthesized beam of the track.
    from lensforge.pipeline.radio.beam import uv_coverage
    from lensforge.pipeline.radio.imaging import synthesized_beam
    from lensforge.pipeline.stamps.surveys import build_psf

    size, scale = config.survey.stamp_size, config.survey.pixel_scale_arcsec
    beam = synthesized_beam(uv_coverage(config.radio), size, scale)
    sampled = build_psf(config.survey, config.radio).drawImage(nx=size, ny=size, scale=scale, method="no_pixel",
                                                               offset=(0.5, 0.5)).array
    assert np.max(np.abs(sampled - beam)) < 1e-5


@pytest.mark.slow
def test_the_inpainting_model_trains_on_radio_stamps(tmp_path):
    from lensforge.catalogs.store import create_store, finalize_store
    from lensforge.pipeline.generative.training import train_stage
    from lensforge.pipeline.rundir import store_path
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    config = load_config(preset="ska_mid", overrides=[f"out_dir={tmp_path}", "name=radio", "survey.stamp_size=32",
                                                      "train.steps=4", "train.batch_size=8", "train.latent_dim=8",
                                                      "train.checkpoint_every=4", "train.device=cpu"])
    batch = simulate_stamps(config, 0, 32)
    assert np.all(batch.labels["flux"] < 0.02)  # Jy
    store = store_path(config)  # the run's own store: the train stage reads it from the layout
    create_store(store, n_objects=32, stamp_size=32, chunk_size=32)
    batch.write(store)
    finalize_store(store)
    result = train_stage(config, progress=False)
    assert result.steps == 4 and all(np.isfinite(v) for v in result.final_losses.values())


def test_radio_tiles_are_lensed_in_the_world_frame(tmp_path):
    """A constant shear lenses every radio source as GalSim's reduced-shear composition predicts, read off
    the MODEL image in the standard orientation (+x west): (e + g) / (1 + g* e), both in the world frame."""
    import galsim

    config = _config(tmp_path, "shear.kind=constant", "shear.g1=0.06", "shear.g2=-0.08", "radio.n_compact=0",
                     "radio.n_extended=6")
    summary = make_radio_tile(config)
    with fits.open(summary["fits"]) as hdus:
        model = hdus["MODEL"].data.astype(np.float64)
    truth = Table.read(tmp_path / "radio" / "catalogs" / "tile_0000_truth.parquet")
    assert np.all(truth["lensed"]) and np.allclose(truth["g1"], 0.06) and np.allclose(truth["g2"], -0.08)
    assert np.allclose(truth["mu"], 1.0) and np.allclose(truth["kappa"], 0.0)
    g = 0.06 - 0.08j
    checked = 0
    for source in truth:
        x, y = float(source["x"]), float(source["y"])
        half = 24
        others = np.hypot(np.asarray(truth["x"]) - x, np.asarray(truth["y"]) - y)
        if not (half <= x < 256 - half and half <= y < 256 - half) or np.sort(others)[1] < 2 * half:
            continue  # a source cut by the tile's edge or blended with a neighbour has no clean shape
        iy, ix = int(round(y)), int(round(x))
        cutout = galsim.Image(model[iy - half:iy + half, ix - half:ix + half].copy(), scale=0.5)
        moments = galsim.hsm.FindAdaptiveMom(cutout, strict=False)
        if moments.moments_status != 0:
            continue
        intrinsic = complex(float(source["e1"]), float(source["e2"]))
        expected = (intrinsic + g) / (1 + g.conjugate() * intrinsic)
        measured = complex(moments.observed_shape.g1, moments.observed_shape.g2)
        assert abs(measured - expected) < 0.02, (source["object_id"], measured, expected)
        checked += 1
    assert checked >= 2
