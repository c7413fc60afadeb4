"""Lensing fields: NFW shear measured on ring-paired galaxies, power-spectrum fields, magnification, labels."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from lensforge.errors import ConfigError
from lensforge.pipeline.config import ShearConfig, build_config
from lensforge.pipeline.stamps.galaxies import lensed_galaxy
from lensforge.pipeline.stamps.lensing import NFWLensing, build_lensing_field
from lensforge.pipeline.stamps.populations import draw_parameters
from lensforge.pipeline.stamps.simulate import simulate_stamps, stamp_lensing_field
from lensforge.pipeline.stamps.surveys import build_psf

SCALE = 0.2


def _ksb_shear(galaxy: galsim.GSObject, psf: galsim.GSObject) -> tuple[float, float]:
    image = galsim.Convolve([galaxy, psf]).drawImage(nx=64, ny=64, scale=SCALE)
    psf_image = psf.drawImage(nx=64, ny=64, scale=SCALE)
    result = galsim.hsm.EstimateShear(image, psf_image, shear_est="KSB")
    return result.corrected_g1, result.corrected_g2


def test_mean_shear_of_ring_pairs_at_an_nfw_position_is_the_halos():
    shear = ShearConfig(kind="nfw", halo_mass_msun=1e15, halo_concentration=4.0, halo_redshift=0.3)
    field = build_lensing_field(shear, run_seed=1, extent_arcsec=600.0)
    x, y, z = np.array([70.0]), np.array([-50.0]), np.array([1.2])
    lensing = field.at(x, y, z)
    g1, g2, mu = float(lensing.g1[0]), float(lensing.g2[0]), float(lensing.mu[0])
    assert 0.03 < np.hypot(g1, g2) < 0.3 and mu > 1.0
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    measured = []
    for angle in np.arange(8) * 22.5:  # 4 ring pairs: intrinsic shapes cancel in the mean
        intrinsic = galsim.Exponential(half_light_radius=0.6, flux=1e4).shear(e=0.3, beta=angle * galsim.degrees)
        measured.append(_ksb_shear(intrinsic.lens(g1=g1, g2=g2, mu=mu), psf))
    mean = np.mean(measured, axis=0)
    assert mean == pytest.approx([g1, g2], abs=0.05 * np.hypot(g1, g2) + 2e-3)
    # The same galaxies without the halo measure no shear.
    unlensed = np.mean([_ksb_shear(galsim.Exponential(half_light_radius=0.6, flux=1e4)
                                   .shear(e=0.3, beta=a * galsim.degrees), psf) for a in np.arange(8) * 22.5], axis=0)
    assert np.abs(unlensed).max() < 2e-3


def test_nfw_is_tangential_and_ignores_sources_in_front_of_the_halo():
    halo = NFWLensing(1e15, 4.0, 0.3, 0.0, 0.0, 0.3)
    values = halo.at(np.array([60.0, 0.0, 60.0]), np.array([0.0, 60.0, 0.0]), np.array([1.0, 1.0, 0.2]))
    # Tangential shear: along +x, g1 < 0; along +y, g1 > 0 (GalSim convention); kappa > 0, mu > 1.
    assert values.g1[0] < 0 < values.g1[1] and abs(values.g2[0]) < 1e-12
    assert values.kappa[0] > 0 and values.mu[0] > 1
    assert (values.g1[2], values.g2[2], values.kappa[2], values.mu[2]) == (0.0, 0.0, 0.0, 1.0)
    farther = halo.at(np.array([60.0]), np.array([0.0]), np.array([2.0]))
    assert abs(farther.g1[0]) > abs(values.g1[0])  # more distant sources are lensed more


def test_power_spectrum_field_is_reproducible_and_scales_with_the_amplitude():
    xy = np.random.default_rng(0).uniform(-300, 300, size=(2, 4000))
    low = build_lensing_field(ShearConfig(kind="power_spectrum", power_spectrum_amplitude=1e-4), 3, 700.0)
    high = build_lensing_field(ShearConfig(kind="power_spectrum", power_spectrum_amplitude=4e-4), 3, 700.0)
    a, b = low.at(*xy, 1.0), high.at(*xy, 1.0)
    again = build_lensing_field(ShearConfig(kind="power_spectrum", power_spectrum_amplitude=1e-4), 3, 700.0)
    assert np.array_equal(a.g1, again.at(*xy, 1.0).g1)
    assert np.std(a.g1) > 1e-3
    # Same seed, 4x the power: the same field at twice the amplitude (to the reduced-shear nonlinearity).
    assert np.std(b.g1) / np.std(a.g1) == pytest.approx(2.0, rel=0.05)
    other_seed = build_lensing_field(ShearConfig(kind="power_spectrum", power_spectrum_amplitude=1e-4), 4, 700.0)
    assert not np.allclose(other_seed.at(*xy, 1.0).g1, a.g1)


def test_stamp_labels_carry_the_fields_shear_convergence_and_magnification():
    config = build_config({"seed": 2, "shear": {"kind": "nfw", "field_size_arcmin": 4.0},
                           "survey": {"stamp_size": 32}, "simulation": {"n_objects": 6, "chunk_size": 6}})
    batch = simulate_stamps(config, 0, 6)
    labels = batch.labels
    field = stamp_lensing_field(config)
    expected = field.at(labels["field_x"], labels["field_y"], labels["redshift"])
    for name, values in (("g1", expected.g1), ("g2", expected.g2), ("kappa", expected.kappa), ("mu", expected.mu)):
        assert np.allclose(labels[name], values), name
    assert np.all(np.abs(labels["field_x"]) <= 120) and np.all(labels["mu"] > 1)
    # Ring-pair members sit at the same position and see the same lensing.
    assert labels["field_x"][0] == labels["field_x"][1] and labels["g1"][0] == labels["g1"][1]


def test_magnification_scales_the_flux_by_mu():
    config = build_config({"shear": {"kind": "nfw", "field_size_arcmin": 2.0}})
    params = draw_parameters(config.population, config.shear, config.seed, 0, True, stamp_lensing_field(config))
    assert params.mu > 1.01
    observed = galsim.Convolve([lensed_galaxy(params), build_psf(config.survey)])
    drawn = observed.drawImage(nx=128, ny=128, scale=SCALE).array.sum()
    assert drawn == pytest.approx(params.flux * params.mu, rel=0.01)


def test_uniform_shear_is_not_a_field_of_position():
    with pytest.raises(ConfigError, match="not a field of position"):
        build_lensing_field(ShearConfig(kind="uniform"), 1, 100.0)
