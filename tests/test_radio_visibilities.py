"""Radio calibration sets with visibilities (radio.stamp_visibilities): the cells hold the whole track,
the stamp is their dirty image, the noise is the stamp's, and catalogs.open gives them back."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from lensforge import catalogs
from lensforge.catalogs.store import create_store, mark_complete
from lensforge.errors import InputError
from lensforge.pipeline.config import build_config
from lensforge.pipeline.generative import check_generated_config
from lensforge.pipeline.presets import deep_merge, preset_values
from lensforge.pipeline.radio.beam import uv_coverage
from lensforge.pipeline.radio.imaging import dirty_image, predict_visibilities
from lensforge.pipeline.radio.stamp_visibilities import StampVisibilities, stamp_visibilities
from lensforge.pipeline.stamps.simulate import simulate_stamps

N_OBJECTS, CHUNK = 8, 4


def radio_config(**simulation):
    values = deep_merge(preset_values("ska_mid"), {
        "radio": {"stamp_visibilities": True, "n_times": 8},  # a shorter track: the same physics, faster
        "simulation": {"n_objects": N_OBJECTS, "chunk_size": CHUNK, **simulation}})
    return build_config(values)


@pytest.fixture(scope="module")
def config():
    return radio_config(counterfactual_delta_g=0.01)


@pytest.fixture(scope="module")
def cells(config):
    return stamp_visibilities(config.survey, config.radio)


@pytest.fixture(scope="module")
def batch(config):
    return simulate_stamps(config, 0, N_OBJECTS)


def test_cells_hold_the_whole_track(config, cells):
    """The dirty image of the cells equals the dirty image of every sample of the track (1e-12 of the peak),
    and a cell's visibility is GalSim's transform of the galaxy at the cell, phase centre at pixel n//2."""
    uv = uv_coverage(config.radio)
    assert cells.n_samples == len(uv) and cells.n_cells < len(uv) / 100
    scale, n = config.survey.pixel_scale_arcsec, config.survey.stamp_size
    sky = np.zeros((n, n))
    sky[n // 2, n // 2 + 7] = 1.0  # a point source 7 pixels east of the phase centre
    every_sample = dirty_image(predict_visibilities(sky, uv, scale), uv, n, scale)
    # The same source as a GalSim profile: 7.5 pixels from the stamp's true centre along x, 0.5 along y.
    point = galsim.DeltaFunction(flux=1.0).shift(7.5 * scale, 0.5 * scale)
    assert np.abs(cells.dirty(cells.model(point)) - every_sample).max() < 1e-12

    galaxy = galsim.Exponential(half_light_radius=0.8, flux=2e-3).shear(g1=0.3, g2=-0.1)
    k = cells.cells * 2 * np.pi / (n * scale)  # [rad / arcsec]
    expected = np.array([galaxy.kValue(galsim.PositionD(*kk)) for kk in k]) * np.exp(0.5j * scale * k.sum(1))
    assert np.abs(cells.model(galaxy) - expected).max() < 1e-12 * 2e-3


def test_noise_gives_the_stamp_its_pixel_noise(cells):
    """Thermal noise drawn per cell makes a dirty image of the requested pixel rms, with weights
    that are the inverse variances of the cell means."""
    sigma = 3e-5  # [Jy/beam]
    images = np.stack([cells.dirty(cells.noise(sigma, 7, index)) for index in range(200)])
    assert images.std() == pytest.approx(sigma, rel=0.02)
    draws = np.stack([cells.noise(sigma, 7, index) for index in range(400)])
    assert np.allclose(draws.real.var(0) * cells.weights(sigma), 1.0, atol=0.35)  # 400 draws per cell
    assert np.allclose(1 / cells.weights(sigma), cells.sample_sigma(sigma) ** 2 / cells.samples_per_cell, rtol=1e-12)
    assert np.array_equal(cells.noise(sigma, 7, 3), cells.noise(sigma, 7, 3))
    assert not np.array_equal(cells.noise(sigma, 7, 3), cells.noise(sigma, 8, 3))


def test_stamps_are_the_dirty_images_of_their_visibilities(config, cells, batch):
    """Each image is the dirty image of its stored visibilities; its noise is theirs, shared by its
    counterfactuals; the labels' noise_sigma is the image's; chunks give the same bytes."""
    for row in range(N_OBJECTS):
        assert np.abs(cells.dirty(batch.visibilities[row]) - batch.images[row]).max() < 1e-6 * np.abs(
            batch.images[row]).max()
        assert np.allclose(batch.visibility_weights[row], cells.weights(batch.labels["noise_sigma"][row]), rtol=1e-6)
    noise = (batch.images - batch.noiseless).astype(np.float64) / batch.labels["noise_sigma"][:, None, None]
    assert noise.std() == pytest.approx(1.0, rel=0.05)
    assert np.all(batch.labels["noise_sigma"][0::2] == batch.labels["noise_sigma"][1::2])  # one sigma per ring pair
    halves = [simulate_stamps(config, 0, CHUNK), simulate_stamps(config, CHUNK, N_OBJECTS)]
    for name in ("images", "visibilities", "visibility_weights", "counterfactuals"):
        assert np.array_equal(np.concatenate([getattr(h, name) for h in halves]), getattr(batch, name)), name


def test_counterfactuals_share_the_noise_of_their_stamp(batch):
    """A counterfactual differs from its stamp by the dirty image of the sky's change at dg = 0.01 alone
    (a few % of the peak); with a noise field of its own the difference would be noise (max ~5 sigma)."""
    for row in range(N_OBJECTS):
        peak = np.abs(batch.noiseless[row]).max()
        assert peak < 30 * batch.labels["noise_sigma"][row]  # so that 2 sigma below tells a noise field from the sky
        change = batch.counterfactuals[row] - batch.images[row][None]
        assert np.abs(change).max() < 0.05 * peak
        assert np.abs(change).max() < 2 * batch.labels["noise_sigma"][row]


def test_a_radio_set_with_visibilities_opens_through_catalogs(tmp_path, config, cells, batch):
    path = tmp_path / "trainset.zarr"
    create_store(path, N_OBJECTS, config.survey.stamp_size, CHUNK, counterfactual_delta_g=0.01,
                 visibility_cells=cells.cell_table())
    for start in range(0, N_OBJECTS, CHUNK):
        simulate_stamps(config, start, start + CHUNK).write(path)
    mark_complete(path)
    opened = catalogs.open(path)
    read = opened.visibilities([1, 6])
    assert read["visibilities"].dtype == np.complex64 and read["weights"].dtype == np.float32
    assert np.array_equal(read["visibilities"], batch.visibilities[[1, 6]])
    assert np.array_equal(read["weights"], batch.visibility_weights[[1, 6]])
    assert np.array_equal(read["uv_wavelengths"], cells.uv_wavelengths)
    assert read["samples_per_cell"].sum() == read["n_samples"] == cells.n_samples
    assert opened.store["visibilities"].attrs["units"] == "Jy"
    assert opened.xarray()["visibilities"].dims == ("object", "uv")
    rebuilt = StampVisibilities(read["uv_wavelengths"], read["samples_per_cell"], read["n_samples"],
                                config.survey.stamp_size, config.survey.pixel_scale_arcsec)
    assert np.abs(rebuilt.dirty(read["visibilities"][0]) - batch.images[1]).max() < 1e-6 * np.abs(
        batch.images[1]).max()


def test_a_set_without_visibilities_says_so(tmp_path):
    path = tmp_path / "trainset.zarr"
    create_store(path, 4, 16, 4)
    with pytest.raises(InputError, match="no visibilities"):
        catalogs.open(path).visibilities()


def test_visibilities_need_radio_parametric_stamps():
    with pytest.raises(Exception, match="needs a radio survey"):
        build_config({"radio": {"stamp_visibilities": True}})
    with pytest.raises(InputError, match="generated sets have no visibilities"):
        check_generated_config(radio_config())
