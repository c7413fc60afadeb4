"""Physics-aware generation: GalSim lenses generated profiles, so shear labels are exact."""

import galsim
import numpy as np
import pytest
import torch

from lensforge.errors import InputError
from lensforge.models.vaegan import VAEGAN, ModelSettings
from lensforge.pipeline.config import build_config
from lensforge.pipeline.generative.generate import (
    DECODE_BLOCK_PAIRS,
    decode_pairs,
    generate_stamps,
    intrinsic_from_profile,
    render_generated_stamp,
    sample_conditioned,
)
from lensforge.pipeline.stamps.surveys import build_psf


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=6, base_channels=4, oversampling=2,
                                 pixel_scale_arcsec=0.2)).eval()
    # An untrained decoder draws near-round blobs; tilt its log-profile so galaxies are lopsided
    # and a 90-degree rotation is visible.
    x = torch.arange(64, dtype=torch.float32)
    model.decoder.log_profile_prior += 0.08 * (x[None, :] - 31.5) + 0.03 * (x[:, None] - 31.5)
    return model


@pytest.fixture
def config(tiny_config_values):
    return build_config(tiny_config_values)


def test_generated_profile_is_sheared_by_exactly_its_label(config):
    """A round intrinsic profile on the fine grid, lensed by g through GalSim: HSM recovers g."""
    fine = galsim.Gaussian(sigma=0.5).drawImage(nx=64, ny=64, scale=0.1, method="no_pixel").array
    profile = fine / fine.sum()
    psf = build_psf(config.survey)
    psf_image = psf.drawImage(nx=32, ny=32, scale=0.2)
    for g1, g2 in ((0.05, 0.0), (0.0, -0.03)):
        intrinsic = intrinsic_from_profile(profile, 0.1, flux=1000.0)
        _, noiseless, _ = render_generated_stamp(intrinsic, g1, g2, 0.0, psf, config.survey, 1e6,
                                                 np.zeros((32, 32)))
        result = galsim.hsm.EstimateShear(galsim.Image(noiseless.astype(np.float64), scale=0.2), psf_image,
                                          shear_est="KSB")
        assert result.corrected_g1 == pytest.approx(g1, abs=2e-3)
        assert result.corrected_g2 == pytest.approx(g2, abs=2e-3)
        assert noiseless.sum() == pytest.approx(1000.0, rel=0.02)  # the requested flux (minus wings off the stamp)


def test_generate_stamps_ring_pairs_labels_and_determinism(model, config):
    config = config.model_copy(update={"shear": config.shear.model_copy(update={"kind": "constant"})})
    batch = generate_stamps(model, config, 0, 6)
    assert batch.images.shape == batch.noiseless.shape == batch.masks.shape == (6, 32, 32)
    assert np.isnan(batch.labels["e1_intrinsic"]).all() and np.isnan(batch.labels["bulge_fraction"]).all()
    assert np.array_equal(batch.labels["object_id"], np.arange(6))
    sigma = batch.labels["noise_sigma"]
    assert np.all(sigma > 0) and np.array_equal(sigma[0::2], sigma[1::2])  # one noise per ring pair
    # Zero shear: the two members of a ring pair are the same galaxy rotated by 90 degrees.
    for a in (0, 2, 4):
        first, second = batch.noiseless[a], batch.noiseless[a + 1]
        rotated = np.rot90(first, k=-1)  # GalSim rotates counter-clockwise with y up: rows are y
        assert np.abs(second - rotated).max() < 0.02 * first.max()
        assert np.abs(second - first).max() > 0.1 * first.max()  # and not the same image
    # Any split of the work gives the same bytes.
    parts = [generate_stamps(model, config, 0, 3), generate_stamps(model, config, 3, 6)]  # a pair split too
    assert np.array_equal(np.concatenate([p.images for p in parts]), batch.images)
    assert np.array_equal(np.concatenate([p.masks for p in parts]), batch.masks)


def test_decoded_pairs_do_not_depend_on_the_chunking(model):
    """Pairs on both sides of a decoder pass boundary: one call, or the same pairs in pieces, gives the same
    bytes, conditions and latents by pair id (what any split of a run into chunks asks for)."""
    block = DECODE_BLOCK_PAIRS["cpu"]
    ids = list(range(block - 3, block + 4))

    def conditions_of(pair_id):
        return [1000.0 + 50.0 * pair_id, 0.3 + 0.01 * pair_id]

    whole = decode_pairs(model, ids, conditions_of, seed=5)
    pieces = decode_pairs(model, ids[:2], conditions_of, seed=5) | decode_pairs(model, ids[2:], conditions_of, seed=5)
    assert sorted(whole) == ids
    for pair_id in ids:
        assert np.array_equal(whole[pair_id], pieces[pair_id])
        assert whole[pair_id].shape == (64, 64) and whole[pair_id].sum() == pytest.approx(1.0, abs=1e-6)
    # Another pair's condition changes its own profile only.
    changed = decode_pairs(model, ids, lambda i: [9000.0, 0.9] if i == ids[0] else conditions_of(i), seed=5)
    assert not np.array_equal(changed[ids[0]], whole[ids[0]])
    assert all(np.array_equal(changed[i], whole[i]) for i in ids[1:])


def test_sample_conditioned_outputs_and_errors(model, config):
    out = sample_conditioned(model, config.survey, 3, flux=2000.0, half_light_radius=0.5, g1=0.02, snr=30.0)
    assert out["profiles"].shape == (3, 64, 64)
    np.testing.assert_allclose(out["profiles"].sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert out["noiseless"].shape == out["images"].shape == (3, 32, 32)
    assert out["noise_sigma"].shape == (3,)
    with pytest.raises(InputError, match="flux must be > 0"):
        sample_conditioned(model, config.survey, 1, flux=-1.0, half_light_radius=None)
    for bad, message in (({"g1": 0.8, "g2": 0.7}, r"\|g\| must be < 1"), ({"snr": 0.0}, "snr must be > 0"),
                         ({"seed": -1}, "seed must be >= 0")):
        with pytest.raises(InputError, match=message):
            sample_conditioned(model, config.survey, 1, flux=1e3, half_light_radius=None, **bad)
    with pytest.raises(InputError, match="empty"):
        generate_stamps(model, config, 4, 4)
    with pytest.raises(InputError, match="finite square"):
        intrinsic_from_profile(np.ones((4, 5)), 0.1, 1.0)
    wrong = config.model_copy(update={"survey": config.survey.model_copy(update={"stamp_size": 48})})
    with pytest.raises(InputError, match="the survey wants 48px"):
        generate_stamps(model, wrong, 0, 2)
