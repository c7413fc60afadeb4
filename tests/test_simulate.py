from __future__ import annotations

import dataclasses

import galsim
import numpy as np
import pytest

from lensforge.pipeline.config import build_config
from lensforge.pipeline.stamps.galaxies import intrinsic_galaxy, lensed_galaxy
from lensforge.pipeline.stamps.populations import draw_parameters
from lensforge.pipeline.stamps.simulate import chunk_ranges, render_stamp, ring_partner, simulate_stamps, unrotated
from lensforge.pipeline.stamps.surveys import build_psf, draw_psf_image


def _config(**sections):
    base = {"seed": 99, "survey": {"stamp_size": 32}, "simulation": {"n_objects": 12, "chunk_size": 4}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.update({key: value})
    return build_config(base)


@pytest.mark.parametrize("g1, g2", [(0.05, 0.0), (0.0, -0.04), (0.03, 0.02)])
def test_round_galaxy_sheared_by_g_measures_g(g1, g2):
    """A noiseless round (e=0) bulge+disk galaxy sheared by g: HSM adaptive moments return g."""
    config = _config(population={"ellipticity_sigma": 0.0}, shear={"kind": "constant", "g1": g1, "g2": g2})
    params = draw_parameters(config.population, config.shear, config.seed, 0, ring_pairs=False)
    assert (params.g1, params.g2, params.e1_intrinsic) == (g1, g2, 0.0)
    image = lensed_galaxy(params).drawImage(nx=128, ny=128, scale=0.05, method="no_pixel")
    shape = galsim.hsm.FindAdaptiveMom(image).observed_shape
    assert shape.g1 == pytest.approx(g1, abs=2e-4)
    assert shape.g2 == pytest.approx(g2, abs=2e-4)


def test_psf_corrected_shear_of_simulated_stamp():
    """Through PSF and pixels, REGAUSS on the noiseless stamp recovers the applied shear."""
    g1, g2 = 0.04, -0.02
    config = _config(survey={"stamp_size": 64}, population={"ellipticity_sigma": 0.0},
                     shear={"kind": "constant", "g1": g1, "g2": g2})
    batch = simulate_stamps(config, 0, 2)
    psf = galsim.Image(draw_psf_image(config.survey), scale=config.survey.pixel_scale_arcsec)
    for noiseless in batch.noiseless:
        result = galsim.hsm.EstimateShear(galsim.Image(noiseless, scale=0.2), psf, shear_est="REGAUSS")
        # REGAUSS returns a distortion e; for a round source e = 2g / (1 + g^2).
        shear = galsim.Shear(e1=result.corrected_e1, e2=result.corrected_e2)
        # Noiseless, so what is left is REGAUSS's own bias: its PSF correction assumes Gaussian
        # profiles, and on this bulge+disk (hlr 0.70", R2 0.66) it returns a shear 2.0% low in each
        # component (-1.0% to -2.0% across the population). 4% is twice that, and still fails the
        # mistakes this test is for: a PSF FWHM 5% too small or large gives -7.7% / +4.7%, a PSF
        # image drawn without the pixel response -4.3%, a distortion read as a shear +100%.
        assert shear.g1 == pytest.approx(g1, rel=0.04)
        assert shear.g2 == pytest.approx(g2, rel=0.04)


def test_flux_and_noise_follow_galsim():
    config = _config(simulation={"n_objects": 6, "chunk_size": 6})
    batch = simulate_stamps(config, 0, 6)
    flux = batch.labels["flux"]
    # The 32x32 stamp holds most but not all of the light.
    total = batch.noiseless.sum(axis=(1, 2))
    assert np.all(total <= flux * 1.0001) and np.all(total > 0.8 * flux)
    # addNoiseSNR: snr = sqrt(sum(I^2)) / sigma for I the noiseless image of the unlensed, unrotated galaxy.
    psf = build_psf(config.survey)
    for row in range(6):
        params = unrotated(draw_parameters(config.population, config.shear, config.seed, row, ring_pairs=True))
        unlensed = galsim.Convolve([intrinsic_galaxy(params), psf]).drawImage(nx=32, ny=32, scale=0.2).array
        snr = np.sqrt((unlensed.astype(np.float64) ** 2).sum()) / batch.labels["noise_sigma"][row]
        assert snr == pytest.approx(batch.labels["snr"][row], rel=1e-6)
    residual_std = (batch.images - batch.noiseless).std(axis=(1, 2))
    np.testing.assert_allclose(residual_std, batch.labels["noise_sigma"], rtol=0.1)


def test_ring_pairs_share_shape_and_shear_rotated_by_90_degrees():
    batch = simulate_stamps(_config(), 0, 4)
    labels = batch.labels
    np.testing.assert_array_equal(labels["ring_pair_id"], [0, 0, 1, 1])
    np.testing.assert_array_equal(labels["ring_rotation"], [0, 90, 0, 90])
    for a, b in ((0, 1), (2, 3)):
        assert labels["e1_intrinsic"][a] == -labels["e1_intrinsic"][b] != 0
        assert labels["e2_intrinsic"][a] == -labels["e2_intrinsic"][b]
        for name in ("g1", "g2", "flux", "half_light_radius", "snr", "bulge_fraction"):
            assert labels[name][a] == labels[name][b]
        assert not np.array_equal(batch.images[a] - batch.noiseless[a], batch.images[b] - batch.noiseless[b])


def test_stamps_do_not_depend_on_chunking():
    config = _config()
    whole = simulate_stamps(config, 0, 12)
    parts = [simulate_stamps(config, start, stop) for start, stop in chunk_ranges(12, 5)]
    for name, array in whole.to_arrays().items():
        np.testing.assert_array_equal(array, np.concatenate([p.to_arrays()[name] for p in parts]), err_msg=name)


def test_seed_changes_pixels_and_rerun_repeats_them():
    first = simulate_stamps(_config(), 0, 3)
    again = simulate_stamps(_config(), 0, 3)
    other = simulate_stamps(_config(seed=100), 0, 3)
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize("psf_type", ["moffat", "kolmogorov"])
def test_psf_image_has_the_configured_fwhm(psf_type):
    config = _config(survey={"psf_type": psf_type, "psf_fwhm_arcsec": 0.8, "stamp_size": 64})
    image = draw_psf_image(config.survey)
    assert image.sum() == pytest.approx(1.0, rel=1e-5)
    assert build_psf(config.survey).calculateFWHM() == pytest.approx(0.8, rel=1e-3)
    stored = simulate_stamps(config, 0, 2).psf
    np.testing.assert_array_equal(stored[0], image)
    np.testing.assert_array_equal(stored[1], image)


def test_render_stamp_returns_the_sigma_of_the_simulation():
    config = _config(shear={"kind": "constant", "g1": 0.05, "g2": -0.03})
    params = draw_parameters(config.population, config.shear, config.seed, 5, ring_pairs=True)
    image, noiseless, sigma = render_stamp(params, build_psf(config.survey), config.survey, config.seed)
    assert image.dtype == noiseless.dtype == np.float32
    assert sigma == simulate_stamps(config, 4, 6).labels["noise_sigma"][1]


def test_noise_sigma_does_not_depend_on_the_shear_and_ring_partners_share_it():
    """The noise comes from the unlensed galaxy's S/N: no shear, no ring rotation, no chunking changes it."""
    sigmas = []
    for g1, g2 in [(0.0, 0.0), (0.05, 0.0), (-0.03, 0.04)]:
        config = _config(shear={"kind": "constant", "g1": g1, "g2": g2},
                         simulation={"n_objects": 8, "chunk_size": 3, "counterfactual_delta_g": 0.01})
        batch = simulate_stamps(config, 0, 8)
        sigma = batch.labels["noise_sigma"]
        assert np.array_equal(sigma[0::2], sigma[1::2])  # ring partners: one sigma, bit for bit
        odd_chunks = np.concatenate([simulate_stamps(config, a, b).labels["noise_sigma"]
                                     for a, b in [(0, 3), (3, 5), (5, 8)]])  # partners split across chunks
        assert np.array_equal(odd_chunks, sigma)
        # The pixel noise is white at that sigma (counterfactuals reuse it: see the counterfactual test).
        noise = batch.images.astype(np.float64) - batch.noiseless
        assert (noise / sigma[:, None, None]).std() == pytest.approx(1.0, abs=0.03)
        sigmas.append(sigma)
    assert np.array_equal(sigmas[0], sigmas[1]) and np.array_equal(sigmas[0], sigmas[2])


def test_chunk_ranges_cover_every_object_once():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(4, 4) == [(0, 4)]


def test_counterfactuals_share_the_noise_and_differ_only_in_shear():
    from lensforge.pipeline.stamps.simulate import COUNTERFACTUAL_SHIFTS

    config = build_config({"seed": 5, "survey": {"stamp_size": 48},
                           "simulation": {"n_objects": 4, "chunk_size": 4, "counterfactual_delta_g": 0.02}})
    batch = simulate_stamps(config, 2, 4)
    assert batch.counterfactuals.shape == (2, 4, 48, 48)
    assert [c for c, _ in COUNTERFACTUAL_SHIFTS] == ["g1", "g1", "g2", "g2"]
    np.testing.assert_array_equal(batch.labels["counterfactual_id"], [2, 3])
    psf = build_psf(config.survey)
    for row in range(2):
        params = draw_parameters(config.population, config.shear, config.seed, 2 + row, ring_pairs=True)
        noise = batch.images[row].astype(np.float64) - batch.noiseless[row]
        sigma = batch.labels["noise_sigma"][row]
        for shift, (component, sign) in enumerate(COUNTERFACTUAL_SHIFTS):
            lensed = dataclasses.replace(params, **{component: getattr(params, component) + sign * 0.02})
            expected = galsim.Convolve([lensed_galaxy(lensed), psf]).drawImage(nx=48, ny=48, scale=0.2).array
            # The same noise field exactly (up to float32 rounding of the sums).
            assert np.allclose(batch.counterfactuals[row, shift] - expected, noise, atol=1e-5 * sigma)
        # The shear difference shows in the measured shapes with the right sign.
        e = [galsim.hsm.FindAdaptiveMom(galsim.Image(s, scale=0.2)).observed_shape for s in batch.counterfactuals[row]]
        assert e[0].g1 > e[1].g1 and e[2].g2 > e[3].g2


def test_ring_partner_is_the_rotated_twin_sheared_by_minus_g():
    """With pair_noise the partner's stamp is rot90 of (first galaxy at -g, same noise, same mask)."""
    from lensforge.pipeline.stamps.pairing import GALSIM_QUARTER_TURN, unit_noise
    from lensforge.seeding import Stream

    config = _config(survey={"stamp_size": 48}, shear={"kind": "constant", "g1": 0.04, "g2": -0.02},
                     masks={"cosmic_rays_per_stamp": 3.0, "bad_column_probability": 1.0})
    batch = simulate_stamps(config, 0, 2)
    first = draw_parameters(config.population, config.shear, config.seed, 0, ring_pairs=True)
    twin = dataclasses.replace(first, g1=-first.g1, g2=-first.g2)
    noise = unit_noise(config.seed, Stream.NOISE, 0, 0.0, False, (48, 48))
    twin_image = galsim.Convolve([lensed_galaxy(twin), build_psf(config.survey)]).drawImage(
        nx=48, ny=48, scale=0.2).array + batch.labels["noise_sigma"][1] * noise
    np.testing.assert_allclose(batch.images[1], np.rot90(twin_image, GALSIM_QUARTER_TURN),
                               atol=1e-4 * batch.images[1].max())
    np.testing.assert_array_equal(batch.masks[1], np.rot90(batch.masks[0], GALSIM_QUARTER_TURN))
    assert batch.masks[0].any()
    # Without pairing the partner's noise is its own.
    unpaired = simulate_stamps(_config(survey={"stamp_size": 48}, simulation={"pair_noise": False}), 0, 2)
    residual = unpaired.images - unpaired.noiseless
    assert abs(np.corrcoef(np.rot90(residual[0], GALSIM_QUARTER_TURN).ravel(), residual[1].ravel())[0, 1]) < 0.1


def test_split_weights_and_noise_do_not_depend_on_chunking():
    config = _config(masks={"cosmic_rays_per_stamp": 2.0})
    whole = simulate_stamps(config, 0, 12)
    parts = [simulate_stamps(config, a, b) for a, b in [(0, 5), (5, 12)]]
    np.testing.assert_array_equal(whole.images, np.concatenate([p.images for p in parts]))
    np.testing.assert_array_equal(whole.weights, np.concatenate([p.weights for p in parts]))
    # 12 objects, validation_fraction 0.1: objects 0-9 train, 10-11 held out (validation).
    np.testing.assert_array_equal(whole.labels["split"], [0] * 10 + [1] * 2)
    sigma = whole.labels["noise_sigma"]
    expected = np.where(whole.masks == 0, 1.0 / sigma[:, None, None] ** 2, 0.0)
    np.testing.assert_allclose(whole.weights, expected, rtol=1e-6)
    assert (whole.labels["counterfactual_id"] == -1).all() and whole.counterfactuals is None


def test_pair_draws_equal_the_per_object_draws_in_any_order():
    """The pair cache is an optimisation only: same noise and mask as unit_noise / stamp_mask, object by object."""
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.stamps.pairing import PairDraws, stamp_mask, unit_noise
    from lensforge.seeding import Stream

    config = build_config({"masks": {"cosmic_rays_per_stamp": 3.0, "bad_column_probability": 0.5}})
    draws = PairDraws(config.masks, config.seed, Stream.NOISE, True, (32, 32))
    # In order, then a second member first (a chunk starting mid-pair), then a repeat.
    for object_id, rotation in [(0, 0.0), (1, 90.0), (2, 0.0), (3, 90.0), (7, 90.0), (6, 0.0), (6, 0.0)]:
        field, mask = draws.noise_and_mask(object_id, rotation)
        np.testing.assert_array_equal(field, unit_noise(config.seed, Stream.NOISE, object_id, rotation, True, (32, 32)))
        np.testing.assert_array_equal(mask, stamp_mask(config.masks, config.seed, object_id, rotation, True, (32, 32)))


@pytest.mark.parametrize("shear_kind", ["uniform", "nfw"])
def test_ring_partner_equals_the_partner_drawn_from_its_stream(shear_kind):
    """simulate_stamps derives a partner from its pair's first member instead of drawing the pair's stream
    again: the two must be the same parameters, field-dependent shear included."""
    from lensforge.pipeline.stamps.simulate import stamp_lensing_field

    config = _config(shear={"kind": shear_kind})
    field = stamp_lensing_field(config)
    for first_id in (0, 6, 10):
        first = draw_parameters(config.population, config.shear, config.seed, first_id, True, field)
        assert ring_partner(first) == draw_parameters(config.population, config.shear, config.seed, first_id + 1,
                                                      True, field)
    with pytest.raises(ValueError, match="itself a ring partner"):
        ring_partner(draw_parameters(config.population, config.shear, config.seed, 1, True, field))


def test_without_ring_pairs_no_object_is_a_partner():
    batch = simulate_stamps(_config(simulation={"ring_pairs": False}), 0, 6)
    np.testing.assert_array_equal(batch.labels["ring_rotation"], 0.0)
    np.testing.assert_array_equal(batch.labels["ring_pair_id"], np.arange(6))
    assert len(set(batch.labels["e1_intrinsic"])) == 6  # each its own galaxy, none a turned twin
