"""The real-galaxy stamp population (``population.kind: cosmos_real``, GalSim ``RealGalaxy``).

Physics: the labels' shear is exactly what GalSim applied (a ring partner is the 90-degree turn of
its first member seen at -g, pixel for pixel, whitening and survey noise included); the noise does not
depend on the shear; any split of the work gives the same bytes. Needs the 100 shared COSMOS stamps
(``../shared/data/cosmos_real_stamps``) and skips without them, except the bad-input tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lensforge.errors import InputError
from lensforge.flows.cli import app
from lensforge.pipeline.config import build_config
from lensforge.pipeline.stamps.pairing import GALSIM_QUARTER_TURN
from lensforge.pipeline.stamps.real_galaxies import HST_NOISE_MARGIN, REAL_UNKNOWN_LABELS, cosmos_catalogue
from lensforge.pipeline.stamps.simulate import simulate_stamps
from lensforge.pipeline.stamps.surveys import build_psf

COSMOS_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmos_real_stamps"
CATALOGUE = "real_galaxy_catalog_26_extension_example.fits"
needs_cosmos = pytest.mark.skipif(not (COSMOS_REAL / CATALOGUE).is_file(), reason="no ../shared COSMOS stamps")


def _config(**sections):
    values = {"population": {"kind": "cosmos_real", "cosmos_dir": str(COSMOS_REAL), "cosmos_file_name": CATALOGUE,
                             "cosmos_exclusion_level": "none"},
              "simulation": {"n_objects": 8, "counterfactual_delta_g": 0.01, "store_noiseless": True}}
    for key, value in sections.items():
        values.setdefault(key, {}).update(value)
    return build_config(values)


@needs_cosmos
def test_ring_partner_is_the_first_member_turned_at_minus_g():
    # image(R G, g, R n) = R image(G, -g, n): the whole stamp, whitening and survey noise included.
    # Holds only if the shear label is the shear applied and the noise ignores the shear.
    plus = simulate_stamps(_config(shear={"kind": "constant", "g1": 0.04, "g2": -0.03}), 0, 4)
    minus = simulate_stamps(_config(shear={"kind": "constant", "g1": -0.04, "g2": 0.03}), 0, 4)
    for first in (0, 2):
        turned = np.rot90(minus.images[first], GALSIM_QUARTER_TURN)
        peak = float(np.max(np.abs(turned)))
        assert np.max(np.abs(plus.images[first + 1] - turned)) < 1e-5 * peak
        # and the shear is really there: the unturned first members differ by far more
        assert np.max(np.abs(plus.images[first] - minus.images[first])) > 1e-3 * peak
    np.testing.assert_array_equal(plus.labels["noise_sigma"], minus.labels["noise_sigma"])
    assert plus.labels["g1"].tolist() == [0.04] * 4 and plus.labels["g2"].tolist() == [-0.03] * 4


@needs_cosmos
def test_counterfactuals_share_the_stamp_noise_and_respond_to_their_shear():
    batch = simulate_stamps(_config(shear={"kind": "constant", "g1": 0.02, "g2": 0.0}), 0, 2)
    survey_noise = batch.images - batch.noiseless
    # The counterfactual at g1 - 0.01 of a stamp at g1 = 0.02 equals the stamp of a run at g1 = 0.01.
    lower = simulate_stamps(_config(shear={"kind": "constant", "g1": 0.01, "g2": 0.0}), 0, 2)
    np.testing.assert_allclose(batch.counterfactuals[:, 1], lower.images, rtol=0, atol=1e-4 * lower.images.max())
    # The same survey noise (up to the float32 rounding of image = noiseless + noise).
    np.testing.assert_allclose(survey_noise, lower.images - lower.noiseless, rtol=0, atol=1e-5 * batch.images.max())


@needs_cosmos
def test_labels_noise_and_chunking():
    config = _config(simulation={"n_objects": 6})
    whole = simulate_stamps(config, 0, 6)
    part = simulate_stamps(config, 3, 5)
    np.testing.assert_array_equal(whole.images[3:5], part.images)
    np.testing.assert_array_equal(whole.counterfactuals[3:5], part.counterfactuals)
    for name in REAL_UNKNOWN_LABELS:
        assert np.isnan(whole.labels[name]).all(), name
    sigma, snr = whole.labels["noise_sigma"], whole.labels["snr"]
    assert np.all(sigma[0::2] == sigma[1::2]) and np.all(snr[0::2] == snr[1::2])  # ring partners share both
    assert np.all((snr > 0) & (snr <= config.population.snr_max * (1 + 1e-9)))
    # The survey noise (images - noiseless) has the survey part of the total sigma: never more than it.
    survey = (whole.images - whole.noiseless).std(axis=(1, 2))
    assert np.all(survey < sigma * 1.1) and np.all(survey > sigma * math.sqrt(1 - 1 / HST_NOISE_MARGIN**2) * 0.85)
    # Fluxes are the drawn ones: within the population's range.
    flux, population = whole.labels["flux"], config.population
    assert np.all((flux >= population.flux_min) & (flux <= population.flux_max))


FAINT_ROW = 57  # a galaxy of I ~ 26 whose HST noise outweighs it once seen through a 0.7" PSF


def _hst_noise_pairs(galaxy_row: int, treatment: str | None, n: int = 4, g1: float = 0.0, **survey
                     ) -> tuple[np.ndarray, float]:
    """Differences of two observations of one galaxy (sheared by ``g1``) that differ only in their noise
    padding (and the noise ``treatment`` adds): (n, H, W), and the modelled variance of one observation
    [ADU^2]. Inside the HST cutout the HST noise is the image's own, the same in both: it cancels."""
    from lensforge.pipeline.stamps import real_galaxies as real

    config = _config(survey=survey)
    catalogue, survey, psf = cosmos_catalogue(config.population), config.survey, build_psf(config.survey)

    def observed(seed):
        galaxy = real.real_intrinsic_galaxy(catalogue, real.RealGalaxyDraw(galaxy_row, 30.0, seed), 5000.0,
                                            survey).shear(g1=g1, g2=0.0)
        image = real.draw_real_observed(galaxy, psf, survey).astype(np.float64)
        if treatment is None:
            return image, real.observed_noise(galaxy, psf, survey).getVariance()
        field, variance = real.hst_noise_field(galaxy, psf, survey, seed + 1000, treatment)
        return image + field, variance

    differences = []
    for k in range(n):
        (first, variance), (second, _) = observed(2 * k + 1), observed(2 * k + 2)
        differences.append(first - second)
    return np.array(differences), variance


@needs_cosmos
def test_hst_noise_is_modelled_in_the_survey_pixels():
    # GalSim's noise model of a RealGalaxy is in flux per HST pixel; drawn in 0.2" pixels the noise is
    # (0.2/0.03)^2 = 44x larger (GalSim #1071). The padding seeds differ, the galaxy does not: the
    # difference is pure HST noise, and its variance must be the modelled one, not 2,000x it.
    differences, variance = _hst_noise_pairs(FAINT_ROW, None)
    assert np.mean(differences[:, OUTSIDE_CUTOUT] ** 2) / 2 == pytest.approx(variance, rel=0.1)


OUTSIDE_CUTOUT = np.ones((64, 64), bool)
OUTSIDE_CUTOUT[16:48, 16:48] = False  # FAINT_ROW's 16-pixel HST cutout (0.5") and a wide margin


def _lag_correlation(noise: np.ndarray, dy: int, dx: int) -> float:
    """Correlation of (n, H, W) noise with itself shifted by (dy, dx) pixels."""
    h, w = noise.shape[1:]
    a = noise[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    b = noise[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return float(np.mean(a * b) / np.mean(noise**2))


@needs_cosmos
def test_symmetrized_hst_noise_loses_its_shape_and_has_the_returned_variance():
    # A sharp PSF and a strong shear leave the HST noise plainly anisotropic: neighbours correlate at
    # 0.73 along y and 0.37 along x (measured). Symmetrized (4-fold), 0.53 and 0.48: 85% of the
    # anisotropy goes. The rest is GalSim's noise padding being more anisotropic than its own noise
    # model (on noise drawn from the model, symmetrizeImage leaves x and y equal to 0.001).
    sharp = {"pixel_scale_arcsec": 0.1, "psf_fwhm_arcsec": 0.2}
    raw, _ = _hst_noise_pairs(FAINT_ROW, None, n=10, g1=0.5, **sharp)
    symmetrized, variance = _hst_noise_pairs(FAINT_ROW, "symmetrize", n=10, g1=0.5, **sharp)
    for lag, turned in (((1, 0), (0, 1)), ((2, 0), (0, 2))):
        anisotropy = _lag_correlation(raw, *lag) - _lag_correlation(raw, *turned)
        assert anisotropy > 0.3
        assert abs(_lag_correlation(symmetrized, *lag) - _lag_correlation(symmetrized, *turned)) < 0.25 * anisotropy
    # Its variance is the returned one (measured 1.06x), where the padding's noise differs.
    assert np.mean(symmetrized[:, OUTSIDE_CUTOUT] ** 2) / 2 == pytest.approx(variance, rel=0.1)


@needs_cosmos
def test_whitened_hst_noise_is_white_with_the_returned_variance():
    differences, variance = _hst_noise_pairs(FAINT_ROW, "whiten")
    assert np.mean(differences**2) / 2 == pytest.approx(variance, rel=0.1)
    for lag in ((1, 0), (0, 1)):  # unwhitened, neighbours of this PSF-smoothed noise correlate at ~0.9
        assert abs(_lag_correlation(differences, *lag)) < 0.05


@needs_cosmos
def test_each_pair_shows_a_galaxy_whose_hst_noise_lets_it_reach_its_snr():
    from lensforge.pipeline.stamps import real_galaxies as real
    from lensforge.pipeline.stamps.populations import draw_parameters

    config = _config(simulation={"n_objects": 8})
    catalogue, psf = cosmos_catalogue(config.population), build_psf(config.survey)
    treatment = config.population.hst_noise
    assert treatment == "whiten"
    assert real.snr_ceiling(catalogue, FAINT_ROW, psf, config.survey, treatment) < config.population.snr_min
    batch = simulate_stamps(config, 0, 8)
    for pair in range(4):
        target = draw_parameters(config.population, config.shear, config.seed, 2 * pair, True).snr
        draw = real.draw_reaching_snr(catalogue, np.arange(catalogue.nobjects), psf, config.survey,
                                      config.population, config.seed, pair, target)
        assert real.snr_ceiling(catalogue, draw.cosmos_index, psf, config.survey, treatment) >= target
        # Shown at its target: the ceiling is measured at another orientation, so to a percent.
        assert batch.labels["snr"][2 * pair] == pytest.approx(target, rel=0.02)
    # A target no galaxy reaches falls back to snr_min; one that nothing reaches is a one-line error.
    rows = np.arange(catalogue.nobjects)
    fallback = real.draw_reaching_snr(catalogue, rows, psf, config.survey, config.population, config.seed, 0, 1e6)
    fallback_ceiling = real.snr_ceiling(catalogue, fallback.cosmos_index, psf, config.survey, treatment)
    assert fallback_ceiling >= config.population.snr_min
    strict = config.population.model_copy(update={"snr_min": 1e6})
    with pytest.raises(InputError, match="population.snr_min=1e\\+06: none of 1000 COSMOS galaxies"):
        real.draw_reaching_snr(catalogue, rows, psf, config.survey, strict, config.seed, 0, 1e6)


@needs_cosmos
def test_symmetrizing_lets_a_galaxy_reach_a_higher_snr_than_whitening():
    # Whitening this PSF-smoothed HST noise adds ~40x its variance, symmetrizing about 1x (default survey):
    # each galaxy's S/N ceiling is ~6.4x higher symmetrized (measured on the first 20 rows).
    from lensforge.pipeline.stamps import real_galaxies as real

    config = _config()
    catalogue, psf = cosmos_catalogue(config.population), build_psf(config.survey)
    for row in range(20):
        symmetrized = real.snr_ceiling(catalogue, row, psf, config.survey, "symmetrize")
        whitened = real.snr_ceiling(catalogue, row, psf, config.survey, "whiten")
        assert 5.0 < symmetrized / whitened < 8.0, row
    whitened_store = simulate_stamps(config, 0, 2)
    symmetrized_store = simulate_stamps(_config(population={"hst_noise": "symmetrize"}), 0, 2)
    # The same galaxy draws and survey noise seeds, another added field: the stamps differ.
    assert not np.allclose(whitened_store.noiseless, symmetrized_store.noiseless)
    with pytest.raises(InputError, match="population.hst_noise=blur: not symmetrize or whiten"):
        real.hst_noise_field(real.real_intrinsic_galaxy(catalogue, real.RealGalaxyDraw(0, 0.0, 1), 1e3, config.survey),
                             psf, config.survey, 1, "blur")


def test_missing_cosmos_directory_is_one_line(tmp_path):
    config = build_config({"population": {"kind": "cosmos_real", "cosmos_dir": str(tmp_path / "nowhere")}})
    with pytest.raises(InputError, match="population.cosmos_dir=.*nowhere: no such directory"):
        cosmos_catalogue(config.population)
    not_a_catalogue = tmp_path / "cat"
    not_a_catalogue.mkdir()
    (not_a_catalogue / "real.fits").write_bytes(b"not fits at all")
    config = build_config({"population": {"kind": "cosmos_real", "cosmos_dir": str(not_a_catalogue),
                                          "cosmos_file_name": "real.fits"}})
    with pytest.raises(InputError, match="not a COSMOS real-galaxy catalogue GalSim can open"):
        cosmos_catalogue(config.population)


def test_cli_refuses_a_missing_cosmos_directory_before_writing(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path), "--name", "r", "--quiet",
                                      "--set", "population.kind=cosmos_real",
                                      "--set", f"population.cosmos_dir={tmp_path / 'nowhere'}"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("lensforge: error: population.cosmos_dir=")
    assert not (tmp_path / "r").exists()


def test_cosmos_split_is_pinned_and_a_fifth_of_galaxies_are_test():
    from lensforge.pipeline.stamps.real_galaxies import cosmos_split_of

    # Changing the hash would move galaxies between splits: test galaxies would leak into training.
    assert [cosmos_split_of(str(i)) for i in (5, 6, 7, 8)] == ["test", "test", "test", "train"]
    shares = np.mean([cosmos_split_of(str(i)) == "test" for i in range(20000)])
    assert abs(shares - 0.2) < 0.01


@needs_cosmos
def test_a_split_population_draws_only_its_own_galaxies(monkeypatch):
    import lensforge.pipeline.stamps.real_galaxies as real
    from lensforge.pipeline.stamps.real_galaxies import cosmos_split_of, galaxy_indices

    catalogue = cosmos_catalogue(_config().population)
    test_rows = galaxy_indices(catalogue, "test")
    train_rows = galaxy_indices(catalogue, "train")
    assert set(test_rows).isdisjoint(train_rows) and len(test_rows) + len(train_rows) == catalogue.nobjects
    np.testing.assert_array_equal(galaxy_indices(catalogue, "all"), np.arange(catalogue.nobjects))
    drawn: list[int] = []
    original = real.reference_noise

    def recording(catalogue, draw, *args, **kwargs):
        drawn.append(draw.cosmos_index)
        return original(catalogue, draw, *args, **kwargs)

    monkeypatch.setattr(real, "reference_noise", recording)
    for split in ("test", "train"):
        drawn.clear()
        simulate_stamps(_config(population={"cosmos_split": split}, simulation={"n_objects": 16}), 0, 16)
        idents = {str(catalogue.real_cat.ident[catalogue.orig_index[i]]) for i in drawn}
        assert len(drawn) == 8 and {cosmos_split_of(i) for i in idents} == {split}
    # "all": the pair's row is drawn among all rows, the first whose S/N ceiling reaches the pair's target.
    from lensforge.pipeline.stamps.populations import draw_parameters

    drawn.clear()
    config = _config(simulation={"n_objects": 4})
    simulate_stamps(config, 0, 4)
    psf = build_psf(config.survey)
    targets = [draw_parameters(config.population, config.shear, config.seed, 2 * pair, True).snr for pair in (0, 1)]
    expected = [real.draw_reaching_snr(catalogue, np.arange(catalogue.nobjects), psf, config.survey, config.population,
                                       config.seed, pair, target).cosmos_index for pair, target in enumerate(targets)]
    assert drawn == expected


COSMOS_FITS = COSMOS_REAL.parent / "cosmos_example"
FITS_CATALOGUE = "real_galaxy_catalog_23.5_example.fits"
needs_fits = pytest.mark.skipif(not (COSMOS_FITS / FITS_CATALOGUE).is_file(), reason="no ../shared COSMOS fits")


def _fits_config(**population):
    return build_config({"population": {"kind": "cosmos", "cosmos_dir": str(COSMOS_FITS),
                                        "cosmos_file_name": FITS_CATALOGUE, **population},
                         "shear": {"kind": "constant", "g1": 0.03, "g2": -0.02},
                         "simulation": {"n_objects": 4, "store_noiseless": True}})


@needs_fits
def test_parametric_fits_population_draws_galsim_fits_lensed_exactly():
    import galsim

    from lensforge.pipeline.stamps.real_galaxies import draw_real_galaxy

    config = _fits_config()
    batch = simulate_stamps(config, 0, 4)
    catalogue = cosmos_catalogue(config.population)
    assert not catalogue.use_real and catalogue.nobjects == 96  # GalSim's marginal selection of the 100
    survey, psf = config.survey, build_psf(config.survey)
    for index in (0, 1):  # a first member and its ring partner (turned by 90 degrees)
        draw = draw_real_galaxy(config.seed, 0, catalogue.nobjects)
        fit = catalogue.makeGalaxy(draw.cosmos_index, gal_type="parametric")
        expected = galsim.Convolve([fit.withFlux(batch.labels["flux"][index])
                                    .rotate((draw.orientation_deg + 90.0 * index) * galsim.degrees)
                                    .shear(g1=0.03, g2=-0.02), psf]).drawImage(
            nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec).array
        # No HST noise to whiten: the noiseless plane is GalSim's rendering of the fit, and nothing else.
        np.testing.assert_allclose(batch.noiseless[index], expected, rtol=0, atol=1e-5 * expected.max())
    sigma = batch.labels["noise_sigma"]
    assert np.all(sigma[0::2] == sigma[1::2]) and np.all(sigma > 0)
    # The survey noise is all the noise: its std is the label's.
    noise = (batch.images - batch.noiseless).std()
    assert noise == pytest.approx(float(np.sqrt(np.mean(sigma**2))), rel=0.05)
    assert np.isnan(batch.labels["half_light_radius"]).all()


@needs_fits
def test_parametric_fits_split_and_a_catalogue_without_fits_is_one_line():
    from lensforge.pipeline.stamps.real_galaxies import cosmos_split_of, galaxy_indices

    catalogue = cosmos_catalogue(_fits_config().population)
    test_rows = galaxy_indices(catalogue, "test")
    assert {cosmos_split_of(str(catalogue.param_cat["IDENT"][catalogue.orig_index[i]])) for i in test_rows} == {"test"}
    assert 0 < len(test_rows) < catalogue.nobjects
    if (COSMOS_REAL / CATALOGUE).is_file():  # the 26 sample has no Sersic fits
        config = build_config({"population": {"kind": "cosmos", "cosmos_dir": str(COSMOS_REAL),
                                              "cosmos_file_name": CATALOGUE, "cosmos_exclusion_level": "none"}})
        with pytest.raises(InputError, match="not a COSMOS catalogue with parametric fits GalSim can open"):
            cosmos_catalogue(config.population)
