"""Survey tiles: region rendering equals whole rendering, WCS round trips, photometry, bits, FITS layout."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lensforge.catalogs.schema import MASK_BITS
from lensforge.catalogs.tile_fits import mask_plane_bits, read_tile_fits, write_tile_fits
from lensforge.pipeline.config import build_config
from lensforge.pipeline.stamps.surveys import flux_from_magnitude, sky_noise_sigma_adu
from lensforge.pipeline.tiles.defects import DEFECT_BITS_DOC
from lensforge.pipeline.tiles.regions import Region, split_tile
from lensforge.pipeline.tiles.render import assemble, plan_tile, render_region, render_tile, tile_header


def _config(**tile):
    values = {"seed": 7, "survey": {"psf_type": "kolmogorov_optical", "psf_fwhm_arcsec": 0.7},
              "tile": {"size_pixels": [384, 256], "region_size_pixels": 128, "galaxy_density_per_arcmin2": 150,
                       "star_density_per_arcmin2": 20, "star_magnitude_min": 13.0,
                       "defects": {"cosmic_rays_per_megapixel": 300, "hot_pixel_fraction": 1e-3,
                                   "bad_columns_per_chip": 1.0, "satellite_trails_per_tile": 1.0,
                                   "chip_size_pixels": [200, 120], "chip_gap_pixels": 6, "edge_pixels": 4,
                                   "blank_patches_per_tile": 1.0, "blank_patch_size_max_pixels": 40}}}
    values["tile"].update(tile)
    return build_config(values)


@pytest.fixture(scope="module")
def plan():
    return plan_tile(_config())


def test_regions_render_the_same_bytes_as_the_whole_tile(plan):
    whole = render_tile(plan, region_size=512)  # one region covers the tile
    assert len(split_tile(plan.shape, 512)) == 1
    pieces = render_tile(plan, region_size=128)
    for name in ("image", "bitmask", "variance"):
        assert np.array_equal(getattr(whole, name), getattr(pieces, name)), name
    # Objects straddling region borders and a saturating star with bleed trails are part of the test.
    assert plan.defects.bleed_trails, "the test tile must hold a saturated star"
    assert np.any(whole.bitmask & MASK_BITS["BLEED"]) and np.any(whole.bitmask & MASK_BITS["CHIP_GAP"])
    # Regions may come back in any order (as from Dask workers).
    shuffled = [render_region(plan, r) for r in reversed(split_tile(plan.shape, 256))]
    assert np.array_equal(assemble(plan, shuffled).image, whole.image)


def test_the_same_seed_gives_the_same_tile_and_another_tile_id_another(plan):
    again = plan_tile(_config())
    assert all(np.array_equal(plan.objects[k], again.objects[k], equal_nan=True) for k in plan.objects)
    other = plan_tile(_config(), tile_id=1)
    assert not np.array_equal(plan.objects["x"][:5], other.objects["x"][:5])


def test_wcs_round_trips_and_agrees_between_astropy_and_galsim(plan):
    header = plan.header
    wcs = WCS(header)
    x, y = plan.objects["x"], plan.objects["y"]
    ra, dec = wcs.all_pix2world(x, y, 0)
    assert np.allclose(ra, plan.objects["ra"]) and np.allclose(dec, plan.objects["dec"])
    x_back, y_back = wcs.all_world2pix(ra, dec, 0)
    assert np.max(np.hypot(x_back - x, y_back - y)) < 1e-6  # pixels
    gs = galsim.GSFitsWCS(header=header)
    for i in range(0, len(x), max(1, len(x) // 10)):
        sky = gs.toWorld(galsim.PositionD(x[i] + 1, y[i] + 1))  # GalSim/FITS pixels are 1-based
        separation = sky.distanceTo(galsim.CelestialCoord(ra[i] * galsim.degrees, dec[i] * galsim.degrees))
        assert separation / galsim.arcsec < 1e-6
    # The centre pixel is the tile centre and the pixel scale is the survey's.
    cfg = plan.config
    centre = wcs.all_pix2world([[(cfg.tile.size_pixels[0] - 1) / 2, (cfg.tile.size_pixels[1] - 1) / 2]], 0)[0]
    assert centre == pytest.approx([cfg.tile.ra_deg, cfg.tile.dec_deg], abs=1e-10)
    assert np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600 == pytest.approx(0.2)


def test_rotated_tile_keeps_north_at_the_rotation_angle():
    header = tile_header(_config(rotation_deg=30.0))
    wcs = WCS(header)
    (ra0, dec0), (ra1, dec1) = wcs.all_pix2world([[100, 100], [100, 200]], 0)
    # Moving up the pixel grid goes 30 deg east of north.
    east = (ra1 - ra0) * np.cos(np.radians(dec0))
    assert np.degrees(np.arctan2(east, dec1 - dec0)) == pytest.approx(30.0, abs=1e-3)


def test_star_flux_and_sky_noise_follow_the_photometry():
    cfg = _config(noise=False, galaxy_density_per_arcmin2=0.0, star_density_per_arcmin2=3.0,
                  star_magnitude_min=19.0, star_magnitude_max=20.0,
                  defects={"cosmic_rays_per_megapixel": 0, "hot_pixel_fraction": 0, "bad_columns_per_chip": 0,
                           "satellite_trails_per_tile": 0, "edge_pixels": 0})
    plan = plan_tile(cfg)
    pixels = render_tile(plan)
    for i in range(len(plan)):
        x, y = plan.objects["x"][i], plan.objects["y"][i]
        if not (40 < x < 344 and 40 < y < 216):
            continue
        iy, ix = int(round(y)), int(round(x))
        aperture = pixels.image[iy - 30:iy + 31, ix - 30:ix + 31].sum()
        expected = float(flux_from_magnitude(plan.objects["mag"][i], cfg.survey))
        assert aperture == pytest.approx(expected, rel=0.02)  # 6" radius holds ~99% of a 0.7" Kolmogorov PSF
    noisy = render_tile(plan_tile(_config(galaxy_density_per_arcmin2=0.0, star_density_per_arcmin2=0.0)))
    good = noisy.bitmask == 0
    assert np.std(noisy.image[good]) == pytest.approx(sky_noise_sigma_adu(cfg.survey), rel=0.03)
    assert np.median(noisy.variance[good]) == pytest.approx(sky_noise_sigma_adu(cfg.survey) ** 2, rel=0.01)


def test_masked_bits_land_where_the_artefact_was_drawn(plan):
    pixels = render_tile(plan)
    bitmask = pixels.bitmask
    for ray in plan.defects.cosmic_rays:
        rows, cols = ray.pixels()
        inside = (rows >= 0) & (rows < plan.shape[0]) & (cols >= 0) & (cols < plan.shape[1])
        assert np.all(bitmask[rows[inside], cols[inside]] & MASK_BITS["COSMIC_RAY"])
    for column in plan.defects.bad_columns:
        segment = bitmask[column.y_start:column.y_stop, column.x]
        assert np.all(segment & MASK_BITS["BAD_COLUMN"]) and np.all(pixels.image[column.y_start:column.y_stop,
                                                                                    column.x] == 0)
    # Chip gaps: the 6 dead columns after each 200-pixel-wide chip and the 6 rows after each 120-pixel-high chip.
    assert np.all(bitmask[:, 200:206] & MASK_BITS["CHIP_GAP"]) and np.all(pixels.image[:, 200:206] == 0)
    assert np.all(bitmask[120:126, :] & MASK_BITS["CHIP_GAP"])
    assert not np.any(bitmask[:120, :200] & MASK_BITS["CHIP_GAP"])
    # Every saturated pixel is at the saturation level (sky-subtracted).
    saturated = (bitmask & MASK_BITS["SATURATED"]) != 0
    assert saturated.any() and np.ptp(pixels.image[saturated & ((bitmask & MASK_BITS["CHIP_GAP"]) == 0)]) < 1e-3


def test_tile_fits_is_a_multi_extension_file_astropy_reads(plan, tmp_path):
    pixels = render_tile(plan)
    path = write_tile_fits(tmp_path / "t.fits", plan.header, pixels.image, pixels.bitmask, pixels.variance,
                           DEFECT_BITS_DOC, {"RUNSEED": 7})
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "SCIENCE", "MASK", "VARIANCE"]
        assert hdus["MASK"].data.dtype.kind == "i" and hdus["SCIENCE"].header["BUNIT"] == "adu"
        assert WCS(hdus["VARIANCE"].header).wcs.ctype[0] == "RA---TAN"
    tile = read_tile_fits(path)
    assert np.array_equal(tile["science"], pixels.image) and np.array_equal(tile["mask"], pixels.bitmask)
    assert mask_plane_bits(tile["mask_header"]) == MASK_BITS
    assert tile["primary"]["RUNSEED"] == 7


def test_region_not_on_the_noise_grid_is_refused(plan):
    with pytest.raises(ValueError, match="noise grid"):
        render_region(plan, Region(0, 100, 64, 128))


@pytest.mark.slow
def test_two_dask_workers_render_the_same_bytes(plan):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        parallel = render_tile(plan, client=client)
    alone = render_tile(plan)
    assert np.array_equal(parallel.image, alone.image) and np.array_equal(parallel.bitmask, alone.bitmask)
    assert np.array_equal(parallel.snr, alone.snr) and np.isfinite(alone.snr).all()


COSMOS_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmos_example"


@pytest.mark.skipif(not (COSMOS_DIR / "real_galaxy_catalog_23.5_example.fits").is_file(),
                    reason="COSMOS example sample not present")
def test_cosmos_population_draws_real_fits_with_their_magnitudes():
    cfg = _config(population="cosmos", cosmos_dir=str(COSMOS_DIR), galaxy_density_per_arcmin2=60.0,
                  star_density_per_arcmin2=0.0)
    plan = plan_tile(cfg)
    galaxies = ~plan.objects["is_star"]
    catalog = galsim.COSMOSCatalog(file_name="real_galaxy_catalog_23.5_example.fits", dir=str(COSMOS_DIR),
                                   use_real=False)
    index = plan.objects["cosmos_index"][galaxies]
    assert np.all((index >= 0) & (index < catalog.nobjects))
    rows = catalog.orig_index[index]
    assert np.allclose(plan.objects["mag"][galaxies], catalog.param_cat["mag_auto"][rows])
    assert np.allclose(plan.objects["redshift"][galaxies], catalog.param_cat["zphot"][rows])
    # The drawn galaxy carries the flux its catalogue magnitude gives through the survey zero point.
    from lensforge.pipeline.tiles.render import object_profile

    first = int(np.flatnonzero(galaxies)[0])
    expected = float(flux_from_magnitude(plan.objects["mag"][first], cfg.survey)) * plan.objects["mu"][first]
    assert object_profile(plan, first).flux == pytest.approx(expected, rel=1e-6)
    pixels = render_tile(plan)
    assert np.isfinite(pixels.image).all() and np.isfinite(pixels.snr).all()


COSMOS_REAL_DIR = COSMOS_DIR.parent / "cosmos_real_stamps"
COSMOS_REAL_FILE = "real_galaxy_catalog_26_extension_example.fits"


@pytest.mark.skipif(not (COSMOS_REAL_DIR / COSMOS_REAL_FILE).is_file(), reason="COSMOS real stamps not present")
def test_cosmos_real_population_draws_real_hst_galaxies_at_the_tile_magnitudes():
    from lensforge.pipeline.tiles.render import draw_object, object_profile

    cfg = _config(population="cosmos_real", cosmos_dir=str(COSMOS_REAL_DIR), cosmos_file_name=COSMOS_REAL_FILE,
                  cosmos_exclusion_level="none", star_density_per_arcmin2=0.0)
    plan = plan_tile(cfg)
    galaxies = ~plan.objects["is_star"]
    index = plan.objects["cosmos_index"][galaxies]
    assert galaxies.sum() > 20 and np.all((index >= 0) & (index < 100)) and len(np.unique(index)) > 10
    assert np.isnan(plan.objects["e1_intrinsic"][galaxies]).all()
    # Sizes are the HST images' (COSMOS I < 26: a few tenths of an arcsec), and they size the stamps.
    radius = plan.objects["half_light_radius"][galaxies]
    assert np.all((radius > 0.03) & (radius < 2.0))
    wcs = galsim.GSFitsWCS(header=plan.header)
    for first in np.flatnonzero(galaxies)[:3]:
        profile = object_profile(plan, int(first))
        assert "galsim.RealGalaxy(" in repr(profile)  # drawn from the HST image, not a parametric fit
        expected = float(flux_from_magnitude(plan.objects["mag"][first], cfg.survey)) * plan.objects["mu"][first]
        assert profile.flux == pytest.approx(expected, rel=1e-6)
        stamp, _, _ = draw_object(plan, int(first), wcs)
        assert stamp.sum() == pytest.approx(expected, rel=0.02)  # the stamp holds the galaxy's light
    pixels = render_tile(plan)
    assert np.isfinite(pixels.image).all()
    # Every galaxy's HST noise stays below 0.2x the sky noise at its flux, though a typical shared
    # stamp drawn at the tile's brightest magnitude would carry several times the sky noise.
    from lensforge.pipeline.tiles.render import TILE_HST_NOISE_FRACTION, _real_hst_noise_per_flux

    def hst_sigma(row, flux):
        return flux * _real_hst_noise_per_flux(cfg.tile, cfg.survey, int(row))

    sky = sky_noise_sigma_adu(cfg.survey)
    unlensed_flux = np.asarray(flux_from_magnitude(plan.objects["mag"][galaxies], cfg.survey))
    shown = np.array([hst_sigma(row, flux) for row, flux in zip(index, unlensed_flux, strict=True)])
    assert np.all(shown <= TILE_HST_NOISE_FRACTION * sky)
    brightest = float(flux_from_magnitude(cfg.tile.magnitude_min, cfg.survey))
    assert np.median([hst_sigma(row, brightest) for row in range(100)]) > 2 * sky


@pytest.mark.skipif(not (COSMOS_REAL_DIR / COSMOS_REAL_FILE).is_file(), reason="COSMOS real stamps not present")
def test_cosmos_real_tile_too_bright_for_its_hst_noise_is_a_one_line_error():
    from lensforge.errors import InputError

    cfg = _config(population="cosmos_real", cosmos_dir=str(COSMOS_REAL_DIR), cosmos_file_name=COSMOS_REAL_FILE,
                  cosmos_exclusion_level="none", star_density_per_arcmin2=0.0, magnitude_min=14.0,
                  magnitude_max=14.5)
    with pytest.raises(InputError, match="tile.magnitude_min=14: none of 1000 COSMOS galaxies drawn for a galaxy "
                                         "of magnitude 14.[0-9]+ has HST noise below 0.2x"):
        plan_tile(cfg)


def test_missing_cosmos_directory_is_a_one_line_error(tmp_path):
    from lensforge.errors import InputError

    with pytest.raises(InputError, match="cannot read the COSMOS catalogue"):
        plan_tile(_config(population="cosmos", cosmos_dir=str(tmp_path)))


def test_noise_and_variance_plane_agree_for_a_gain_and_read_noise():
    # Faint sky and a large read noise at gain 2.5: the read noise must enter in the right units.
    cfg = _config(galaxy_density_per_arcmin2=0.0, star_density_per_arcmin2=0.0)
    cfg = cfg.model_copy(update={"survey": cfg.survey.model_copy(update={
        "gain_e_per_adu": 2.5, "read_noise_e": 20.0, "sky_brightness_mag_per_arcsec2": 24.0})})
    pixels = render_tile(plan_tile(cfg))
    good = pixels.bitmask == 0
    expected = sky_noise_sigma_adu(cfg.survey)
    assert expected > 8.0 / 2.5  # read noise dominates: 20 e- = 8 ADU
    assert np.std(pixels.image[good]) == pytest.approx(expected, rel=0.03)
    assert np.median(pixels.variance[good]) == pytest.approx(expected ** 2, rel=0.01)


def test_detected_magnitudes_of_bright_stars_match_the_truth(tmp_path):
    from lensforge.pipeline.tiles.stage import make_tile

    cfg = _config(galaxy_density_per_arcmin2=0.0, star_density_per_arcmin2=60.0, star_magnitude_min=18.0,
                  star_magnitude_max=20.0, size_pixels=[512, 512],
                  defects={"cosmic_rays_per_megapixel": 0, "hot_pixel_fraction": 0, "bad_columns_per_chip": 0,
                           "satellite_trails_per_tile": 0})
    cfg = cfg.model_copy(update={"out_dir": tmp_path, "survey": cfg.survey.model_copy(update={"gain_e_per_adu": 3.0})})
    make_tile(cfg)
    from astropy.table import Table

    detections = Table.read(tmp_path / "demo" / "catalogs" / "tile_0000_detections.parquet")
    truth = Table.read(tmp_path / "demo" / "catalogs" / "tile_0000_truth.parquet")
    matched = detections[detections["truth_id"] >= 0]
    assert len(matched) >= 5
    difference = np.asarray(matched["mag"]) - np.asarray(truth["mag"][matched["truth_id"]])
    assert np.median(difference) == pytest.approx(0.0, abs=0.05)  # Kron flux misses a little of the wings


def test_galaxies_are_kept_out_of_a_halos_strong_lensing_zone():
    from lensforge.pipeline.tiles.render import draw_object

    cfg = _config(galaxy_density_per_arcmin2=1000.0, star_density_per_arcmin2=0.0, size_pixels=[256, 256])
    cfg = cfg.model_copy(update={"shear": cfg.shear.model_copy(update={"kind": "nfw", "halo_mass_msun": 2e15})})
    plan = plan_tile(cfg)
    g = np.hypot(plan.objects["g1"], plan.objects["g2"])
    assert g.max() < 0.95 and plan.objects["mu"].min() > 0 and g.max() > 0.2
    strongest = int(np.argmax(g))  # GalSim can lens and draw even the most distorted one
    stamp, _, _ = draw_object(plan, strongest, galsim.GSFitsWCS(header=plan.header))
    assert np.isfinite(stamp).all() and stamp.sum() > 0


def test_a_tile_without_objects_still_writes_its_products(tmp_path):
    from lensforge.pipeline.tiles.stage import make_tile

    cfg = _config(galaxy_density_per_arcmin2=0.0, star_density_per_arcmin2=0.0)
    summary = make_tile(cfg.model_copy(update={"out_dir": tmp_path}))
    assert summary["n_objects"] == 0 and summary["detection"]["n_isolated_galaxies"] == 0


def test_optical_surveys_cannot_take_a_radio_beam():
    from lensforge.errors import ConfigError

    with pytest.raises(ConfigError, match="radio surveys and only they use psf_type=radio_beam"):
        build_config({"survey": {"psf_type": "radio_beam"}})
