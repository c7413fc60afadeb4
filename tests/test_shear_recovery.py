"""Shear recovery on noiseless rings (``pipeline/shear/recovery.py``): a galaxy lensed by its label's shear
measures as that shear under HSM KSB, for analytic, real COSMOS and generated real-morphology galaxies.

Generated galaxies go through the generation path's own pieces (``intrinsic_from_profile``, then
``apply_lensing`` and ``draw_observed`` as in ``render_generated_stamp``) at orientations spread over a
full ring; ``tests/test_generate.py`` checks ``generate_stamps``' labels and ring pairs. They come
from a stamp generator trained here on a ``cosmos_real`` store (the train
split of the 100 shared COSMOS stamps) for a few steps: the test is of the generation path's labels
(a generated profile is lensed by GalSim, never by the network), not of the generator's realism,
which ``benchmarks/realism.py`` measures with a fully trained one. Needs ``../shared`` for the real
and generated cases and skips without it.
"""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.pipeline.config import build_config
from lensforge.pipeline.shear.recovery import ring_shear_recovery
from lensforge.pipeline.stamps.surveys import build_psf

COSMOS_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmos_real_stamps"
CATALOGUE = "real_galaxy_catalog_26_extension_example.fits"
needs_cosmos = pytest.mark.skipif(not (COSMOS_REAL / CATALOGUE).is_file(), reason="no ../shared COSMOS stamps")
SHEARS = ((0.05, 0.0), (0.0, -0.03))  # as the round-profile test of tests/test_generate.py
TOLERANCE = 2e-3  # the bar of the issue: HSM KSB within +-2e-3 of the label


def _survey_and_psf():
    config = build_config({})
    return config.survey, build_psf(config.survey)


def _assert_recovered(result, g, tolerance=TOLERANCE):
    for component in (0, 1):
        offset = result["calibrated"][component] - g[component]
        # Within the bar, and within 3 standard errors of the sample (the rings' scatter is not hiding a
        # bias) plus 4e-4: calibrating with the response at g leaves an O(g^2) term, 2.5e-4 at g = 0.05
        # for an elliptical Gaussian (the first test).
        assert abs(offset) < tolerance, (g, result)
        assert abs(offset) <= 3 * result["calibrated_error"][component] + 4e-4, (g, result)


def test_an_elliptical_gaussian_is_recovered():
    survey, psf = _survey_and_psf()
    galaxies = [galsim.Gaussian(sigma=0.5, flux=1000.0).shear(e1=0.3, e2=-0.1)]
    for g in SHEARS:
        result = ring_shear_recovery(galaxies, *g, psf, survey)
        assert result["n_measured"] == 1
        assert np.subtract(result["calibrated"], g) == pytest.approx((0, 0), abs=5e-4)
        np.testing.assert_allclose(np.diag(result["response"]), 1.0, atol=0.1)  # KSB: a shear estimate
    with pytest.raises(InputError, match="n_rotations"):  # one orientation is no ring
        ring_shear_recovery(galaxies, 0.05, 0.0, psf, survey, n_rotations=1)


@needs_cosmos
def test_real_cosmos_galaxies_are_recovered():
    from lensforge.pipeline.stamps.real_galaxies import cosmos_catalogue

    config = build_config({"population": {"kind": "cosmos_real", "cosmos_dir": str(COSMOS_REAL),
                                          "cosmos_file_name": CATALOGUE, "cosmos_exclusion_level": "none"}})
    catalogue = cosmos_catalogue(config.population)
    galaxies = [catalogue.makeGalaxy(i, gal_type="real", noise_pad_size=0).withFlux(1000.0) for i in range(12)]
    psf = build_psf(config.survey)
    for g in SHEARS:
        result = ring_shear_recovery(galaxies, *g, psf, config.survey)
        assert result["n_measured"] >= 10
        _assert_recovered(result, g)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A stamp generator trained for a few steps on 64 stamps of the train COSMOS galaxies."""
    from lensforge.catalogs.store import create_store
    from lensforge.pipeline.generative.training import load_models, train_stage
    from lensforge.pipeline.rundir import store_path
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    if not (COSMOS_REAL / CATALOGUE).is_file():
        pytest.skip("no ../shared COSMOS stamps")
    out = tmp_path_factory.mktemp("cosmos_generator")
    config = build_config({
        "name": "real", "out_dir": str(out), "seed": 7,
        "population": {"kind": "cosmos_real", "cosmos_dir": str(COSMOS_REAL), "cosmos_file_name": CATALOGUE,
                       "cosmos_exclusion_level": "none", "cosmos_split": "train"},
        "simulation": {"n_objects": 64, "chunk_size": 64},
        "train": {"steps": 20, "batch_size": 16, "base_channels": 8, "latent_dim": 8, "checkpoint_every": 20,
                  "device": "cpu"},
        "dask": {"n_workers": 1}})
    create_store(store_path(config), 64, config.survey.stamp_size, 64)
    simulate_stamps(config, 0, 64).write(store_path(config))
    train_stage(config, progress=False)
    return load_models(config)["vaegan"], config


@needs_cosmos
def test_generated_real_morphology_galaxies_are_recovered(generator):
    from lensforge.pipeline.generative.generate import intrinsic_from_profile, sample_conditioned

    model, config = generator
    survey, psf = config.survey, build_psf(config.survey)
    drawn = sample_conditioned(model, survey, 12, flux=1000.0, half_light_radius=None, snr=1e6)
    fine_scale = survey.pixel_scale_arcsec / model.settings.oversampling
    galaxies = [intrinsic_from_profile(profile, fine_scale, 1000.0) for profile in drawn["profiles"]]
    for g in SHEARS:
        result = ring_shear_recovery(galaxies, *g, psf, survey)
        assert result["n_measured"] >= 10
        _assert_recovered(result, g)
