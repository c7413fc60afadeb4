"""The image in-painter: normalisation, pull-push start, model files, any size, known pixels, training."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from lensforge.errors import InputError, ModelError
from lensforge.models.image_inpainter import (
    CARD_FILE,
    SHIPPED_DIR,
    WEIGHTS_FILE,
    ImageInpainterNet,
    InpainterSettings,
    calibrated_std,
    load_image_inpainter,
    pull_push_at,
    pull_push_fill,
    read_card,
    robust_background_noise,
    save_image_inpainter,
    stretch,
    unstretch,
)
from lensforge.pipeline.inpaint.images import _mirror_padded, image_inpainter, inpaint_image

SMALL = InpainterSettings(channels=(8, 8, 8), latent_channels=2, posterior_channels=4)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A randomly initialised small network saved and loaded back (the format round trip)."""
    torch.manual_seed(3)
    directory = save_image_inpainter(ImageInpainterNet(SMALL), tmp_path_factory.mktemp("model") / "m",
                                     {"calibration": None, "domain": {}})
    return load_image_inpainter(directory)


def _scene(shape, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    source = 500.0 * np.exp(-((y - shape[0] / 2) ** 2 + (x - shape[1] / 3) ** 2) / 18.0)
    return (source + rng.normal(0.0, 2.0, shape) + 100.0).astype(np.float32)


def test_stretch_round_trip_and_linear_near_zero():
    x = np.array([-1e4, -3.0, 0.0, 0.5, 1.0, 1e3])
    assert np.allclose(unstretch(stretch(x)), x, rtol=1e-12)
    assert np.allclose(stretch(np.array([1e-3])), 1e-3 / 2.0, rtol=1e-6)  # slope 1/STRETCH at 0
    assert stretch(np.array([1000.0]))[0] < 7.0  # a 1000-sigma core stays within a few units


def test_robust_noise_ignores_sources_and_refuses_constant_data():
    rng = np.random.default_rng(1)
    image = rng.normal(10.0, 3.0, (200, 200))
    image[50:60, 50:60] += 1e4
    background, noise = robust_background_noise(image, np.ones(image.shape, bool))
    assert abs(background - 10.0) < 0.1 and abs(noise - 3.0) < 0.1
    with pytest.raises(InputError, match="constant"):
        robust_background_noise(np.ones((8, 8)), np.ones((8, 8), bool))
    with pytest.raises(InputError, match="every pixel is masked"):
        robust_background_noise(np.ones((8, 8)), np.zeros((8, 8), bool))


def test_pull_push_keeps_known_pixels_and_fills_constants_and_gradients():
    known = torch.ones(1, 1, 64, 64)
    known[..., 20:40, 10:30] = 0
    flat = torch.full((1, 1, 64, 64), 7.0)
    assert torch.allclose(pull_push_fill(flat * known, known), flat)
    ramp = torch.arange(64.0).repeat(64, 1)[None, None]
    filled = pull_push_fill(ramp * known, known)
    assert torch.equal(filled[known > 0], ramp[known > 0])
    assert (filled[..., 20:40, 10:30] - ramp[..., 20:40, 10:30]).abs().max() < 8.0  # the hole's width is 20


def test_calibrated_std_scales_by_bin_of_the_predicted_mean():
    calibration = {"mean_sigma_edges": [0.0, 1.0, 10.0, 1e30], "std_scale": [2.0, 3.0, 5.0]}
    std = calibrated_std(np.ones(4), np.array([0.5, -5.0, 50.0, 0.0]), calibration)
    assert std.tolist() == [2.0, 3.0, 5.0, 2.0]
    assert calibrated_std(np.ones(2), np.zeros(2), None).tolist() == [1.0, 1.0]


def test_source_context_std_scales_holes_inside_a_source_and_the_others_by_their_own_bin_factors():
    from lensforge.models.image_inpainter import source_context_std

    calibration = {"mean_sigma_edges": [0.0, 1.0, 1e30], "std_scale": [1.0, 1.0],
                   "source_context_std_scale": {"source": [2.0, 3.0], "sky": [5.0, 7.0]}}
    mean, in_source = np.array([0.5, 5.0, 0.5, -5.0]), np.array([True, True, False, False])
    assert source_context_std(np.ones(4), mean, in_source, calibration).tolist() == [2.0, 3.0, 5.0, 7.0]
    assert source_context_std(np.ones(4), mean, in_source, {"std_scale": [1.0]}).tolist() == [1.0] * 4
    assert source_context_std(np.ones(4), mean, in_source, None).tolist() == [1.0] * 4


def test_source_context_equals_the_smoothed_threshold_the_evaluation_finds_segments_with():
    from astropy.convolution import convolve
    from photutils.segmentation import make_2dgaussian_kernel

    from lensforge.pipeline.evaluation.image_inpainting import (
        SEGMENT_SMOOTH_FWHM_PIXELS,
        SEGMENT_SMOOTH_SIZE_PIXELS,
        SEGMENT_THRESHOLD_SIGMA,
    )
    from lensforge.pipeline.inpaint.images import source_context

    rng = np.random.default_rng(16)
    yy, xx = np.mgrid[:120, :100]
    # Smoothed values crowd the threshold, so a kernel that differs in the second decimal changes decisions.
    filled = 0.3 * rng.normal(size=yy.shape) + np.where(xx < 50, SEGMENT_THRESHOLD_SIGMA, 0.0)
    filled = filled.astype(np.float32)
    hole_y, hole_x = np.nonzero(rng.random(filled.shape) < 0.2)
    inside = (hole_y >= 2) & (hole_y < 118) & (hole_x >= 2) & (hole_x < 98)
    hole_y, hole_x = hole_y[inside], hole_x[inside]
    kernel = make_2dgaussian_kernel(SEGMENT_SMOOTH_FWHM_PIXELS, size=SEGMENT_SMOOTH_SIZE_PIXELS)
    smoothed = convolve(filled.astype(np.float64), kernel)
    expected = smoothed[hole_y, hole_x] > SEGMENT_THRESHOLD_SIGMA
    got = source_context(filled, hole_y, hole_x)
    # Float32 sums against astropy's float64 convolution: only values within rounding of the threshold may differ.
    differ = got != expected
    assert 0 < expected.sum() < expected.size
    assert np.all(np.abs(smoothed[hole_y, hole_x][differ] - SEGMENT_THRESHOLD_SIGMA) < 1e-5)


def test_calibrated_std_takes_the_factors_of_the_sky_regime_and_falls_back_to_the_pooled_ones():
    from lensforge.pipeline.inpaint.images import sky_regime

    calibration = {"mean_sigma_edges": [0.0, 1.0, 1e30], "std_scale": [2.0, 3.0],
                   "std_scale_by_regime": {"white": [4.0, 6.0]}}
    mean = np.array([0.5, 5.0])
    assert calibrated_std(np.ones(2), mean, calibration, "white").tolist() == [4.0, 6.0]
    assert calibrated_std(np.ones(2), mean, calibration, "beam").tolist() == [2.0, 3.0]  # no table of its own
    assert calibrated_std(np.ones(2), mean, calibration).tolist() == [2.0, 3.0]
    # White noise (optical), FIRST's 3-pixel beam, SKA-MID's smooth dirty sky.
    assert [sky_regime(c) for c in (0.02, 0.49, 0.5, 0.8, 0.95, 0.994)] == [
        "white", "white", "beam", "beam", "smooth", "smooth"]


@pytest.mark.parametrize("shape", [(150, 150), (37, 201), (300, 17), (16, 16)])
def test_any_size_and_position_keeps_known_pixels_bit_for_bit(small_model, shape):
    model, card = small_model
    image = _scene(shape)
    mask = np.zeros(shape, bool)
    mask[0, 0] = mask[-1, -1] = True  # corners
    mask[:, shape[1] // 2] = True  # a bad column through the source
    mask[shape[0] // 3:shape[0] // 3 + 5, : min(5, shape[1])] = True  # a patch on the border
    garbage = np.where(mask, np.nan, image)
    mean, std = inpaint_image(garbage, mask, 2.0, model, card, sky_shortcut=False)
    assert mean.dtype == np.float32 and mean.shape == shape
    assert np.array_equal(mean[~mask], image[~mask])
    assert np.isfinite(mean[mask]).all() and (std[mask] > 0).all() and (std[~mask] == 0).all()


def test_known_pixels_are_never_read_behind_the_mask(small_model):
    model, card = small_model
    image = _scene((96, 96))
    mask = np.zeros(image.shape, bool)
    mask[40:52, 20:30] = True
    first = inpaint_image(np.where(mask, 1e9, image), mask, 2.0, model, card)[0]
    second = inpaint_image(np.where(mask, -5.0, image), mask, 2.0, model, card)[0]
    assert np.array_equal(first, second)


def test_sky_cells_take_the_start_and_signal_cells_the_network(small_model):
    model, card = small_model
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (256, 256)).astype(np.float32)
    image[10:30, 10:30] += 200.0  # a bright source in one corner cell
    mask = np.zeros(image.shape, bool)
    mask[15:18, 15:18] = True  # on the source
    mask[200:203, 200:203] = True  # on empty sky
    diagnostics: dict = {}
    inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics)
    assert diagnostics["n_cells"] == 2 and diagnostics["n_network_cells"] == 1
    assert diagnostics["from_network"][15:18, 15:18].all() and not diagnostics["from_network"][200:203, 200:203].any()


def test_pull_push_at_the_holes_equals_the_full_fill_and_mirror_padding_equals_numpy():
    generator = torch.Generator().manual_seed(5)
    for shape in [(1, 1, 301, 17), (1, 1, 64, 64), (1, 1, 2, 9)]:
        x = torch.randn(shape, generator=generator)
        known = (torch.rand(shape, generator=generator) > 0.3).float()
        rows, cols = np.nonzero(known[0, 0].numpy() == 0)
        for levels in (1, 6, 12):
            full = pull_push_fill(x, known, levels)[0, 0].numpy()
            np.testing.assert_allclose(pull_push_at(x, known, rows, cols, levels).numpy(), full[rows, cols],
                                       rtol=0, atol=1e-6)
    values = np.random.default_rng(1).normal(size=(10, 7))
    for pad in [((3, 5), (2, 4)), ((0, 6), (7, 7)), ((8, 11), (8, 11))]:  # the last one reflects several times
        assert np.array_equal(_mirror_padded(values, pad, np.float32),
                              np.pad(values.astype(np.float32), pad, mode="symmetric"))
        assert np.array_equal(_mirror_padded(values > 0, pad, bool), np.pad(values > 0, pad, mode="symmetric"))


def test_sky_holes_take_the_start_exactly_and_thin_and_wide_holes_on_sources_the_network(small_model):
    model, card = small_model
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 1.0, (300, 300)).astype(np.float32)
    yy, xx = np.mgrid[:300, :300]
    image += (300.0 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / 50.0)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[40:80, 60] = True  # a bad column through the source: thin
    mask[55:62, 40:47] = True  # a blank patch on the source: wide
    mask[200:260, 230] = True  # a bad column on empty sky
    mask[220:226, 150:156] = True  # a blank patch on empty sky
    diagnostics: dict = {}
    mean, std = inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics, thin_holes="network")
    network = diagnostics["from_network"]
    assert network[40:80, 60].all() and network[55:62, 40:47].all()
    assert not network[200:260, 230].any() and not network[220:226, 150:156].any()
    # Sky holes: the start fill itself (pull-push over the whole normalised image), bit for bit up to float32.
    background, noise = diagnostics["background"], diagnostics["noise"]
    x = torch.as_tensor(np.where(mask, 0.0, (image - background) / noise).astype(np.float32))[None, None]
    known = torch.as_tensor(~mask, dtype=torch.float32)[None, None]
    start = background + noise * pull_push_fill(x, known, 10)[0, 0].numpy()
    sky = mask & ~network
    np.testing.assert_allclose(mean[sky], start[sky], rtol=0, atol=1e-4)
    # The result does not depend on how the network's windows are batched.
    for batch_size in (1, 7):
        again, again_std = inpaint_image(image, mask, 1.0, model, card, batch_size=batch_size, thin_holes="network")
        assert np.array_equal(again, mean) and np.array_equal(again_std, std)


def test_whole_image_baselines_keep_known_pixels_and_reject_unknown_methods():
    image = _scene((64, 64))
    mask = np.zeros(image.shape, bool)
    mask[30:34, 30:34] = True
    for method in ("biharmonic", "interpolate"):
        mean, std = image_inpainter(method)(image, mask, 2.0)
        assert std is None and np.array_equal(mean[~mask], image[~mask]) and np.isfinite(mean[mask]).all()
    with pytest.raises(InputError, match="unknown in-painting method"):
        image_inpainter("magic")


def test_damaged_weights_and_foreign_cards_are_refused_in_one_line(small_model, tmp_path):
    model, card = small_model
    directory = save_image_inpainter(model, tmp_path / "m", {"calibration": None})
    blob = bytearray((directory / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 1
    (directory / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="does not match the model card") as caught:
        load_image_inpainter(directory)
    assert "\n" not in str(caught.value)
    (directory / CARD_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelError, match="not a lensforge image in-painter card"):
        read_card(directory)
    with pytest.raises(ModelError, match="missing"):
        read_card(tmp_path / "nothing")


def test_the_shipped_weights_match_their_card_and_stay_small():
    card = read_card(None)
    blob = (SHIPPED_DIR / WEIGHTS_FILE).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == card["weights_sha256"]
    total = sum(path.stat().st_size for path in SHIPPED_DIR.iterdir())
    assert total <= 20 * 2**20
    for key in ("training_data", "training", "domain", "calibration", "settings"):
        assert card[key], key
    assert "non-commercial" in card["training_data"]["first"]["terms"]
    model, _ = load_image_inpainter(None)
    assert isinstance(model, ImageInpainterNet)


def test_training_is_a_function_of_data_settings_and_seed():
    from lensforge.models.train_image_inpainter import InpainterTrainSettings, TrainingImage, train_image_inpainter

    images = [TrainingImage(_scene((80, 80), seed) / 2.0, np.zeros((80, 80), bool)) for seed in range(3)]

    def holes(rng, shape, signal):
        mask = np.zeros(shape, bool)
        y, x = rng.integers(0, shape[0] - 8, 2)
        mask[y:y + 6, x:x + 6] = True
        return mask

    settings = InpainterTrainSettings(steps=3, batch_size=4, crop_pixels=32, gan_start=0.0)
    first, record = train_image_inpainter(images, holes, settings, SMALL, progress=False)
    second, _ = train_image_inpainter(images, holes, settings, SMALL, progress=False)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert record["losses_csv"].splitlines()[0].startswith("step,nll")
    with pytest.raises(InputError, match="crop_pixels"):
        InpainterTrainSettings(crop_pixels=40)


def test_cards_without_a_start_fill_keep_pull_push_and_unknown_starts_are_refused():
    old = {"channels": [8, 8, 8], "latent_channels": 2, "posterior_channels": 4}
    assert InpainterSettings.from_dict(old).start_fill == "pull_push"
    assert InpainterSettings.from_dict({**old, "start_fill": "biharmonic"}).start_fill == "biharmonic"
    assert InpainterSettings().start_fill == "stretched_biharmonic"
    with pytest.raises(ModelError, match="start_fill"):
        InpainterSettings(start_fill="zeros")


def _start_only(settings: InpainterSettings) -> tuple[ImageInpainterNet, dict]:
    """A network whose correction is 0: in-painting returns its start fill (and unit std in stretched units)."""
    model = ImageInpainterNet(settings).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    return model, {"calibration": None, "settings": settings.to_dict()}


def test_the_stretched_start_follows_a_hidden_beam_peak_that_the_linear_fill_flattens():
    # A 1000-sigma Gaussian beam (FWHM 3 pixels, as FIRST's) with its peak under a 3x3 hole: near the
    # peak asinh is a log, the log of a Gaussian a quadratic, and a biharmonic fill keeps quadratics.
    from lensforge.models.image_inpainter import start_fill_of

    yy, xx = np.mgrid[:32, :32]
    beam = 1000.0 * np.exp(-4.0 * np.log(2.0) * ((yy - 16.2) ** 2 + (xx - 15.7) ** 2) / 3.0**2)
    hole = np.zeros(beam.shape, bool)
    hole[15:18, 15:18] = True
    error = {kind: np.abs(start_fill_of(np.where(hole, 0.0, beam)[None], hole[None], kind)[0] - beam)[hole].max()
             for kind in ("biharmonic", "stretched_biharmonic")}
    assert error["stretched_biharmonic"] < 0.02 * beam.max()  # within 2 % of the peak
    assert error["biharmonic"] > 0.2 * beam.max()  # the clipped linear fill flattens it
    assert start_fill_of(beam[None], hole[None], "pull_push") is None
    with pytest.raises(ModelError, match="start_fill"):
        start_fill_of(beam[None], hole[None], "zeros")


def test_the_stretched_start_of_a_sky_only_window_stays_within_its_known_range():
    # A hole at an image border, mirrored by the padding: 28 columns wide, the window's full height, with
    # a strip of two known sky columns beyond it. Extrapolating the strip's noise across the hole
    # overshot the known range; a window without a source gets no headroom (scikit-image's clip).
    from lensforge.models.biharmonic import biharmonic_fill
    from lensforge.models.image_inpainter import (
        HEADROOM_MIN_PEAK_SIGMA,
        STRETCHED_HEADROOM,
        start_fill_of,
        start_headroom,
        stretch,
        unstretch,
    )

    rng = np.random.default_rng(3)
    sky = np.clip(rng.normal(0.0, 1.0, (64, 64)), -3.5, 3.5)
    hole = np.zeros(sky.shape, bool)
    hole[:, 2:30] = True
    hole[33, :] = True
    x = np.where(hole, 0.0, sky)[None]
    known = sky[~hole]
    assert known.max() < HEADROOM_MIN_PEAK_SIGMA
    with_room = unstretch(biharmonic_fill(stretch(x), hole[None], STRETCHED_HEADROOM))[0]
    assert with_room[hole].max() > known.max() + 1.0 or with_room[hole].min() < known.min() - 1.0  # the overshoot
    start = start_fill_of(x, hole[None], "stretched_biharmonic")[0]
    assert known.min() - 1e-5 <= start[hole].min() and start[hole].max() <= known.max() + 1e-5
    # A window that shows a source keeps the room for a hidden peak.
    bright = x.copy()
    bright[0, 50, 50] = HEADROOM_MIN_PEAK_SIGMA
    assert list(start_headroom(np.concatenate([x, bright]), np.stack([hole, hole]))) == [0.0, STRETCHED_HEADROOM]


@pytest.mark.parametrize("start_fill", ["biharmonic", "stretched_biharmonic"])
def test_a_biharmonic_model_corrects_scikit_images_fill_of_each_window(start_fill):
    from dataclasses import replace

    from skimage.restoration import inpaint_biharmonic

    from lensforge.pipeline.inpaint.images import WIDE_CELL_PIXELS, WIDE_HALO_PIXELS

    rng = np.random.default_rng(6)
    image = rng.normal(0.0, 1.0, (160, 160))
    yy, xx = np.mgrid[:160, :160]
    image += 400.0 * np.exp(-((yy - 74) ** 2 + (xx - 76) ** 2) / 40.0)
    mask = np.zeros(image.shape, bool)
    mask[70:80, 70:82] = True  # a blank patch on the source, inside the wide cell (2, 2)
    mask[130:134, 20:24] = True  # a patch on empty sky
    diagnostics: dict = {}
    model, card = _start_only(replace(SMALL, start_fill=start_fill))
    mean, _ = inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics)
    assert not diagnostics["smooth_sky"]
    network = diagnostics["from_network"]
    assert np.array_equal(network, mask & (yy < 100))
    # With a zero correction the network's holes keep their start: scikit-image's fill of the
    # cell's window (the 32-pixel cell and a 16-pixel halo), as each training crop was filled.
    lo = 2 * WIDE_CELL_PIXELS - WIDE_HALO_PIXELS
    window = (slice(lo, lo + WIDE_CELL_PIXELS + 2 * WIDE_HALO_PIXELS),) * 2
    background, noise = diagnostics["background"], diagnostics["noise"]
    crop = (np.where(mask, 0.0, image)[window] - background) / noise
    if start_fill == "biharmonic":
        solved = background + noise * inpaint_biharmonic(crop, mask[window])
    else:  # the fill of asinh(crop / 2), mapped back; scikit-image's equations, its clip widened
        from lensforge.models.biharmonic import biharmonic_fill
        from lensforge.models.image_inpainter import STRETCHED_HEADROOM

        stretched = biharmonic_fill(np.arcsinh(crop / 2.0)[None], mask[window][None], STRETCHED_HEADROOM)[0]
        solved = background + noise * 2.0 * np.sinh(stretched)
    np.testing.assert_allclose(mean[window][mask[window]], solved[mask[window]], rtol=0, atol=1e-3 * noise)
    assert np.array_equal(mean[~mask], image[~mask].astype(np.float32))


def test_the_batched_biharmonic_solve_equals_scikit_image():
    from skimage.restoration import inpaint_biharmonic

    from lensforge.models.biharmonic import biharmonic_fill
    from lensforge.pipeline.datasets.corpus import draw_training_mask

    rng = np.random.default_rng(8)
    images = rng.normal(0.0, 1.0, (6, 48, 40))
    images[:, 10:20, 10:30] += 300.0
    holes = np.stack([draw_training_mask(rng, (48, 40), image) for image in images])
    holes[3] = True  # nothing known: filled with 0, as the baseline wrapper does
    filled = biharmonic_fill(np.where(holes, np.nan, images), holes)
    for image, hole, fill in zip(images, holes, filled, strict=True):
        expected = np.zeros_like(image) if hole.all() else inpaint_biharmonic(np.where(hole, 0.0, image), hole)
        np.testing.assert_allclose(fill, expected, rtol=0, atol=1e-9)
    for shape in [(1, 9), (3, 4), (7, 2)]:  # stencils cut on every side
        image, hole = rng.normal(size=shape), rng.random(shape) < 0.4
        hole[0, 0], hole[-1, -1] = True, False
        np.testing.assert_allclose(biharmonic_fill(image[None], hole[None])[0],
                                   inpaint_biharmonic(np.where(hole, 0.0, image), hole), rtol=0, atol=1e-9)


def test_on_a_smooth_sky_every_hole_starts_from_the_biharmonic_fill():
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import inpaint_biharmonic

    from lensforge.pipeline.inpaint.images import SMOOTH_SKY_CORRELATION, sky_correlation

    rng = np.random.default_rng(7)
    white = rng.normal(0.0, 1.0, (128, 128))
    smooth = gaussian_filter(rng.normal(0.0, 1.0, (128, 128)), 4.0, mode="wrap")  # a beam ~9 pixels wide
    assert sky_correlation(white, np.ones(white.shape, bool)) < 0.1
    assert sky_correlation(smooth / smooth.std(), np.ones(smooth.shape, bool)) > SMOOTH_SKY_CORRELATION
    mask = np.zeros(smooth.shape, bool)
    mask[30:36, 30:38] = True
    mask[90, 10:100] = True
    diagnostics: dict = {}
    model, card = _start_only(InpainterSettings(channels=(8, 8, 8), latent_channels=2, posterior_channels=4))
    mean, _ = inpaint_image(smooth, mask, None, model, card, diagnostics=diagnostics)
    assert diagnostics["smooth_sky"] and diagnostics["biharmonic_sky"] and not diagnostics["from_network"].any()
    solved = inpaint_biharmonic(np.where(mask, 0.0, smooth), mask)
    np.testing.assert_allclose(mean[mask], solved[mask], rtol=0, atol=1e-5)
    # The biharmonic fill is what makes the smooth sky worth it: a fraction of the local mean's error.
    pull_push_model, pull_push_card = _start_only(InpainterSettings(channels=(8, 8, 8), latent_channels=2,
                                                                    posterior_channels=4, start_fill="pull_push"))
    local_mean, _ = inpaint_image(smooth, mask, None, pull_push_model, pull_push_card)
    rms = {name: np.sqrt(np.mean((fill[mask] - smooth[mask]) ** 2)) for name, fill in
           (("biharmonic", mean), ("pull_push", local_mean))}
    assert rms["biharmonic"] < 0.5 * rms["pull_push"], rms


def test_on_a_smooth_sky_the_network_windows_keep_the_biharmonic_fill_and_the_network_sets_their_std(
        small_model, monkeypatch):
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import inpaint_biharmonic

    import lensforge.pipeline.inpaint.images as images

    rng = np.random.default_rng(11)
    sky = gaussian_filter(rng.normal(0.0, 1.0, (128, 128)), 4.0, mode="wrap")
    yy, xx = np.mgrid[:128, :128]
    image = sky / sky.std() + 300.0 * np.exp(-((yy - 64.0) ** 2 + (xx - 60.0) ** 2) / (2 * 4.0**2))
    mask = np.zeros(image.shape, bool)
    mask[58:70, 50:62] = True  # over the source: the network's window
    model, card = small_model
    diagnostics: dict = {}
    mean, std = inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics)
    network = diagnostics["from_network"]
    assert diagnostics["smooth_sky"] and diagnostics["biharmonic_sky"] and not diagnostics["network_mean"]
    assert network[mask].all()
    solved = inpaint_biharmonic(np.where(mask, 0.0, image), mask)
    np.testing.assert_allclose(mean[mask], solved[mask], rtol=0, atol=1e-3)
    # The std is the network's (it varies over the hole), not the sky's single value.
    assert (std[mask] > 0).all() and np.ptp(std[mask]) > 0.1 * std[mask].mean()
    # Without the rule the (untrained) network's mean is taken, and it differs.
    monkeypatch.setattr(images, "SMOOTH_SKY_NETWORK_STD_ONLY", False)
    diagnostics = {}
    network_mean, _ = inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics)
    assert diagnostics["network_mean"] and np.abs(network_mean[mask] - solved[mask]).max() > 1.0


def test_the_cross_check_prefers_the_biharmonic_fill_on_correlated_noise_and_the_local_mean_on_white():
    from scipy.ndimage import gaussian_filter

    from lensforge.pipeline.inpaint.images import sky_cross_check

    rng = np.random.default_rng(9)
    white = rng.normal(0.0, 1.0, (150, 150))
    beam = gaussian_filter(rng.normal(0.0, 1.0, (150, 150)), 1.5, mode="wrap")  # FIRST-like: ~3.5 px FWHM
    beam /= beam.std()
    holes = np.zeros(white.shape, bool)
    holes[20, 10:140] = True  # thin trails: neighbours know a correlated sky pixel well
    holes[60:140, 100] = True
    holes[100:103, 30:60] = True
    on_beam, on_white = sky_cross_check(beam, holes), sky_cross_check(white, holes)
    assert on_beam.biharmonic_better and not on_white.biharmonic_better
    # White noise: the local mean's error is about the noise, the biharmonic extrapolation's larger.
    assert 0.9 < on_white.local_mean_rms < 1.2 < on_white.biharmonic_rms, on_white
    assert on_beam.biharmonic_rms < 0.5, on_beam
    assert sky_cross_check(white, np.zeros(white.shape, bool)) is None  # nothing to cross-check with


def test_under_a_beam_the_skipped_sky_holes_are_kriged_with_the_images_own_covariance():
    from scipy.ndimage import binary_dilation, gaussian_filter

    from lensforge.models.image_inpainter import KRIGING_STD_EDGES, biharmonic_fill
    from lensforge.pipeline.inpaint.images import known_sky
    from lensforge.pipeline.inpaint.kriging import kriging_fill, sky_autocovariance

    rng = np.random.default_rng(1)
    beam = gaussian_filter(rng.normal(0.0, 1.0, (200, 200)), 1.0, mode="wrap")  # a beam ~2.4 px FWHM
    beam = (beam / beam.std()).astype(np.float32)
    white = rng.normal(0.0, 1.0, beam.shape).astype(np.float32)
    holes = np.zeros(beam.shape, bool)
    holes[20, 10:190], holes[60:190, 100] = True, True  # thin trails: next to known pixels
    holes[100:124, 30:54], holes[30:54, 40:64], holes[140:170, 140:170] = True, True, True  # blank patches: deep
    model, card = _start_only(SMALL)
    calibration = {"mean_sigma_edges": [0.0, 1e30], "std_scale": [1.0], "sky_std_sigma": 1.0,
                   "kriging_sky_std_scale": [1.1, 1.2, 1.3, 1.4, 1.5]}
    diagnostics: dict = {}
    mean, std = inpaint_image(beam, holes, 1.0, model, {**card, "calibration": calibration}, diagnostics=diagnostics)
    assert diagnostics["sky_regime"] == "beam" and not diagnostics["biharmonic_sky"]
    skipped = holes & ~diagnostics["from_network"] & ~diagnostics["from_thin_fill"]
    assert (diagnostics["kriged_sky"] == skipped).all()
    # The skipped holes hold the kriging fill of the image in noise units, as inpaint_image normalises it.
    background = np.median(beam[~holes])
    noise = 1.0  # the noise_sigma given
    x = np.where(holes, 0.0, beam - background).astype(np.float32)
    rows, cols = np.nonzero(skipped)
    expected, expected_std = kriging_fill(x, ~holes, rows, cols, sky_autocovariance(x, known_sky(x, ~holes)))
    np.testing.assert_allclose(mean[rows, cols], background + noise * expected, atol=1e-4)
    factor = np.array([1.1, 1.2, 1.3, 1.4, 1.5])[np.clip(np.searchsorted(KRIGING_STD_EDGES, expected_std, "right") - 1,
                                                          0, 4)]
    assert len(np.unique(factor)) >= 3  # the std spans several of the calibration's bins
    np.testing.assert_allclose(std[rows, cols], factor * noise * expected_std, rtol=1e-4)
    # Next to known pixels it beats both classical fills by far. Deep in the patches little of this sky is
    # predictable: it stays within a few per cent of the better of the biharmonic fill and the sky's true
    # mean level, which it estimates from the context (ordinary kriging; FIRST's sky has a local level).
    filled = biharmonic_fill(x[None], holes[None])[0] + background
    shallow = skipped & binary_dilation(~holes, np.ones((3, 3), bool))
    deep = skipped & ~shallow
    assert shallow.sum() > 20 and deep.sum() > 100
    for pixels, margin in ((shallow, 0.85), (deep, 1.03)):
        kriged, biharmonic, level = (np.sqrt(np.mean((fill - beam[pixels]) ** 2))
                                     for fill in (mean[pixels], filled[pixels], background))
        assert kriged < margin * min(biharmonic, level), (kriged, biharmonic, level)
    # White noise is not kriged: its skipped holes keep the local mean.
    diagnostics = {}
    inpaint_image(white, holes, 1.0, model, card, diagnostics=diagnostics)
    assert diagnostics["sky_regime"] == "white" and not diagnostics["kriged_sky"].any()
    # Calibration scales the kriging std of those holes to 68 % coverage per bin of that std (a bin with too
    # few pixels takes the pooled factor), found without a calibrated card.
    from lensforge.pipeline.datasets.inpainter_training import MIN_PIXELS_PER_BIN, ONE_SIGMA, NormalisedImage, calibrate

    case = NormalisedImage("beam", beam, np.zeros(beam.shape, bool), "first", "jy/beam", 2.4)
    calibration = calibrate(model, {**card, "calibration": None}, [(case, holes)])
    assert calibration["n_kriged_sky_pixels"] == skipped.sum() and calibration["n_biharmonic_sky_pixels"] == 0
    ratio = np.abs(beam[rows, cols] - background - expected) / expected_std
    bins = np.clip(np.searchsorted(KRIGING_STD_EDGES, expected_std, "right") - 1, 0, 4)
    assert calibration["kriged_sky_pixels_per_bin"] == np.bincount(bins, minlength=5).tolist()
    for k, factor in enumerate(calibration["kriging_sky_std_scale"]):
        in_bin = ratio[bins == k] if (bins == k).sum() >= MIN_PIXELS_PER_BIN else ratio
        np.testing.assert_allclose(factor, np.quantile(in_bin, ONE_SIGMA), rtol=1e-3)


def _thin_scene(sky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bright source on ``sky`` with a bad column through it (thin), a blank patch on its wing (deep: the
    network's) and one on empty sky."""
    yy, xx = np.mgrid[: sky.shape[0], : sky.shape[1]]
    image = sky + 300.0 * np.exp(-((yy - 60) ** 2 + (xx - 61) ** 2) / 30.0)
    image[30:40, 56:64] += 50.0
    mask = np.zeros(image.shape, bool)
    mask[50:70, 60] = True
    mask[100:108, 100:108] = True
    mask[20:28, 56:64] = True
    return image, mask


THIN_CALIBRATION = {"mean_sigma_edges": [0.0, 100.0, 1e30], "std_scale": [1.0, 1.0], "sky_std_sigma": 1.0,
                    "thin_fill_std_scale": [2.0, 3.0]}


def test_thin_holes_on_white_noise_take_the_stretched_quadratic_fit_and_next_to_a_peak_the_start(small_model):
    from scipy import ndimage

    from lensforge.models.image_inpainter import one_pixel_sky_error, start_fill_of, stretched_quadratic_fill
    from lensforge.pipeline.inpaint.images import QUADRATIC_MAX_SIGNAL_SIGMA, THIN_CELL_PIXELS, THIN_HALO_PIXELS

    model, card = small_model  # random weights: the network's value is far from any classical fill
    image, mask = _thin_scene(np.random.default_rng(12).normal(0.0, 1.0, (160, 160)))
    mask[70:90, 60] = True  # the bad column goes on into the source's faint wing
    diagnostics: dict = {}
    mean, std = inpaint_image(image, mask, 1.0, model, {**card, "calibration": THIN_CALIBRATION},
                              diagnostics=diagnostics)
    assert diagnostics["thin_fill"] == "quadratic" and not diagnostics["smooth_sky"]
    thin = diagnostics["from_thin_fill"]
    assert thin[50:80, 60].all() and not (thin & ~mask).any() and not (thin & diagnostics["from_network"]).any()
    assert diagnostics["from_network"][20:28, 56:64].all()
    background, noise = diagnostics["background"], diagnostics["noise"]
    x = np.where(mask, 0.0, (image - background) / noise)
    bright = ndimage.maximum_filter(np.abs(x), size=5) >= QUADRATIC_MAX_SIGNAL_SIGMA
    fitted, kept = thin & ~bright, thin & bright
    assert fitted.sum() >= 5 and kept.sum() >= 5
    rows, cols = np.nonzero(fitted)
    np.testing.assert_allclose(mean[fitted], background + noise * stretched_quadratic_fill(x, mask, rows, cols),
                               rtol=0, atol=1e-4)
    window = (slice(48 - THIN_HALO_PIXELS, 48 + THIN_CELL_PIXELS + THIN_HALO_PIXELS),) * 2  # the core's thin cell
    start = start_fill_of(x[window][None], mask[window][None], model.settings.start_fill)[0]
    cell = np.zeros_like(mask)
    cell[48:64, 48:64] = True
    inside = (kept & cell)[window]
    assert inside.sum() >= 5
    np.testing.assert_allclose(mean[window][inside], background + noise * start[inside], rtol=0, atol=1e-4)
    assert diagnostics["one_pixel_sky_error"] == pytest.approx(one_pixel_sky_error(x, ~mask), rel=1e-6)
    # Their std: the image's one-pixel sky error times the card's factor of their |mean| bin.
    factor = np.where(np.abs(mean[thin] - background) / noise < 100.0, 2.0, 3.0)
    assert (factor == 3.0).any() and (factor == 2.0).any()
    np.testing.assert_allclose(std[thin], noise * diagnostics["one_pixel_sky_error"] * factor, rtol=1e-5)
    # thin_holes="network": the network predicts them; an unknown choice is refused.
    diagnostics = {}
    inpaint_image(image, mask, 1.0, model, card, diagnostics=diagnostics, thin_holes="network")
    assert diagnostics["thin_fill"] == "network" and not diagnostics["from_thin_fill"].any()
    assert diagnostics["from_network"][50:80, 60].all()
    with pytest.raises(InputError, match="thin_holes 'start'"):
        inpaint_image(image, mask, 1.0, model, card, thin_holes="start")


def test_thin_holes_on_a_smooth_sky_keep_the_start_and_under_a_few_pixel_beam_the_network(small_model):
    from scipy.ndimage import gaussian_filter

    from lensforge.models.image_inpainter import start_fill_of
    from lensforge.pipeline.inpaint.images import THIN_CELL_PIXELS, THIN_HALO_PIXELS, thin_hole_fill

    assert [thin_hole_fill(c) for c in (0.0, 0.49, 0.5, 0.94, 0.95, 1.0)] == [
        "quadratic", "quadratic", "network", "network", "start", "start"]
    model, card = small_model
    white = np.random.default_rng(16).normal(size=(160, 160))
    for width, expected in ((4.0, "start"), (0.8, "network")):  # SKA-MID-like and FIRST-like skies
        sky = gaussian_filter(white, width)
        image, mask = _thin_scene(sky / sky.std())
        diagnostics: dict = {}
        mean, _ = inpaint_image(image, mask, 1.0, model, {**card, "calibration": THIN_CALIBRATION},
                                diagnostics=diagnostics)
        assert diagnostics["thin_fill"] == expected
        if expected == "network":
            assert not diagnostics["from_thin_fill"].any() and diagnostics["from_network"][50:70, 60].all()
            continue
        thin = diagnostics["from_thin_fill"]
        assert thin[50:70, 60].all() and not thin[20:28, 56:64].any()
        background, noise = diagnostics["background"], diagnostics["noise"]
        x = np.where(mask, 0.0, (image - background) / noise)
        for top in (48, 64):  # the column's two thin cells: each keeps the start fill of its own window
            window = (slice(top - THIN_HALO_PIXELS, top + THIN_CELL_PIXELS + THIN_HALO_PIXELS),
                      slice(48 - THIN_HALO_PIXELS, 48 + THIN_CELL_PIXELS + THIN_HALO_PIXELS))
            start = start_fill_of(x[window][None], mask[window][None], model.settings.start_fill)[0]
            cell = np.zeros_like(mask)
            cell[top:top + THIN_CELL_PIXELS, 48:64] = True
            inside = (thin & cell)[window]
            np.testing.assert_allclose(mean[window][inside], background + noise * start[inside], rtol=0, atol=1e-4)


def test_the_stretched_quadratic_fit_follows_a_log_quadratic_peak_and_averages_white_noise_down():
    from lensforge.models.image_inpainter import stretched_quadratic_fill, unstretch

    yy, xx = np.mgrid[:40, :40].astype(float)
    # A peak that is exactly quadratic once stretched (a Gaussian core is, nearly): recovered to rounding.
    peak = unstretch(6.0 - 0.05 * (yy - 20.3) ** 2 - 0.08 * (xx - 19.6) ** 2 + 0.01 * (yy - 20) * (xx - 20))
    hole = np.zeros(peak.shape, bool)
    hole[19:22, 20] = True
    rows, cols = np.nonzero(hole)
    np.testing.assert_allclose(stretched_quadratic_fill(peak, hole, rows, cols), peak[hole], rtol=1e-5)
    # On white noise a hidden pixel is predicted with far less than the biharmonic fill's 1.3 sigma error.
    noise = np.random.default_rng(17).normal(size=(300, 300))
    hole = np.zeros(noise.shape, bool)
    hole[10:290:7, 10:290:7] = True
    rows, cols = np.nonzero(hole)
    error = stretched_quadratic_fill(noise, hole, rows, cols) - noise[hole]
    assert 1.0 < np.sqrt(np.mean(error**2)) < 1.12


def test_one_pixel_sky_error_is_1_3_on_white_noise_and_small_under_a_beam():
    from scipy.ndimage import gaussian_filter

    from lensforge.models.image_inpainter import one_pixel_sky_error

    white = np.random.default_rng(13).normal(size=(600, 600))
    known = np.ones(white.shape, bool)
    # sqrt(1 + (4 * 8^2 + 4 * 2^2 + 4 * 1^2) / 20^2) = 1.30 for independent pixels (a little less: |x| < 3 kept).
    assert 1.26 < one_pixel_sky_error(white, known) < 1.31
    beam = gaussian_filter(white, 1.3)
    assert one_pixel_sky_error(beam / beam.std(), known) < 0.2
    source = white.copy()
    source[200:400, 200:400] += 50.0  # a bright source and holes are left out, not counted as sky
    holes = np.zeros(white.shape, bool)
    holes[::7] = True
    assert one_pixel_sky_error(np.where(holes, 1e6, source), ~holes) == pytest.approx(
        one_pixel_sky_error(white, known), abs=0.05)
    assert one_pixel_sky_error(white[:4], known[:4]) == 1.0  # too small to say


def test_network_holes_equal_the_filtered_definition():
    from scipy import ndimage

    from lensforge.pipeline.inpaint.images import SIGNAL_REACH_PIXELS, SIGNAL_SIGMA, _network_holes

    rng = np.random.default_rng(14)
    x = rng.normal(size=(300, 280)).astype(np.float32)
    x[100:140, 60:90] += 4.0
    x[200:203, 200:203] += 30.0
    holes = rng.random(x.shape) < 0.02
    holes[120:135, 70:80] = True
    holes[:8], holes[:, :8], holes[-8:], holes[:, -8:] = False, False, False, False  # pad, as inpaint_image does
    x[holes] = 0.0
    hole_y, hole_x = np.nonzero(holes)
    for box_noise_sigma in (1.0 / 3.0, 1.0):
        need, deep = _network_holes(x, holes, hole_y, hole_x, True, box_noise_sigma)
        # The definition: a 3x3 mean of known pixels above SIGNAL_SIGMA x its noise within reach of the hole.
        box_mean = ndimage.uniform_filter(x.astype(np.float64), 3)
        box_known = ndimage.uniform_filter((~holes).astype(np.float64), 3)
        strong = (np.abs(box_mean) > SIGNAL_SIGMA * box_noise_sigma * np.maximum(box_known, 1e-3)) & ~holes
        near = ndimage.maximum_filter(strong, size=2 * SIGNAL_REACH_PIXELS + 1)
        assert np.array_equal(need, near[hole_y, hole_x]) and 0 < need.sum() < need.size
        eroded = ndimage.binary_erosion(holes, np.ones((3, 3), bool), border_value=1)
        assert np.array_equal(deep, eroded[hole_y, hole_x]) and deep.any()
    assert _network_holes(x, holes, hole_y, hole_x, False)[0].all()


def test_calibration_covers_the_thin_holes_that_take_a_classical_fill(small_model):
    from lensforge.pipeline.datasets.inpainter_training import MEAN_SIGMA_EDGES, NormalisedImage, calibrate

    model, card = small_model
    rng = np.random.default_rng(15)
    yy, xx = np.mgrid[:192, :192]
    cases = []
    for index in range(6):
        pixels = rng.normal(size=(192, 192))
        for cy, cx in rng.uniform(30, 162, size=(6, 2)):
            pixels += rng.uniform(20, 400) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(8, 40))
        holes = rng.random(pixels.shape) < 0.02  # hot pixels: thin everywhere
        holes[:, 40 + 20 * index] = True  # a bad column through some of the sources
        pixels += 200.0 * np.exp(-((yy - 105) ** 2 + (xx - 25) ** 2) / 20.0)
        holes[100:110, 20:30] = True  # and one blank patch on a source: the network's
        cases.append((NormalisedImage(f"case{index}", pixels.astype(np.float32), np.zeros(pixels.shape, bool),
                                      "lsst", "adu", 3.0), holes))
    calibration = calibrate(model, {**card, "calibration": None}, cases)
    factors = calibration["thin_fill_std_scale"]
    assert len(factors) == len(MEAN_SIGMA_EDGES) - 1 and calibration["n_thin_fill_pixels"] > 1000
    # On the same cases, thin holes near sources that took the quadratic fill are covered 68 % of the time.
    inside = total = 0
    for image, holes in cases:
        diagnostics: dict = {}
        mean, std = inpaint_image(image.pixels, holes, 1.0, model, {**card, "calibration": calibration},
                                  diagnostics=diagnostics)
        assert diagnostics["thin_fill"] == "quadratic"
        thin = diagnostics["from_thin_fill"]
        inside += int((np.abs(mean - image.pixels)[thin] <= std[thin]).sum())
        total += int(thin.sum())
    assert total == calibration["n_thin_fill_pixels"]
    assert 0.66 < inside / total < 0.71


def test_source_context_factors_cover_holes_inside_and_outside_sources_68_percent_each(monkeypatch):
    from lensforge.models.image_inpainter import source_context_std
    from lensforge.pipeline.datasets import inpainter_training
    from lensforge.pipeline.datasets.inpainter_training import NormalisedImage, source_context_factors
    from lensforge.pipeline.inpaint import images

    # An in-painter whose errors are twice as large inside sources (the left half) as outside, std 1 everywhere.
    def fake_inpaint(pixels, hidden, noise_sigma, model, card, diagnostics):
        rng = np.random.default_rng(int(pixels[0, 0]))
        in_source = np.zeros(pixels.shape, bool)
        in_source[:, : pixels.shape[1] // 2] = True
        mean = pixels + rng.normal(size=pixels.shape) * np.where(in_source, 2.0, 1.0)
        diagnostics.update(in_source=in_source & hidden)
        return mean.astype(np.float32), np.where(hidden, 1.0, 0.0).astype(np.float32)

    monkeypatch.setattr(images, "inpaint_image", fake_inpaint)
    cases = []
    for index in range(4):
        pixels = np.full((100, 100), 1000.0 + index, np.float32)  # every |mean| in the last bin (> 300 sigma)
        cases.append((NormalisedImage(f"c{index}", pixels, np.zeros(pixels.shape, bool), "lsst", "adu", 3.0),
                      np.ones(pixels.shape, bool)))
    calibration = {"mean_sigma_edges": [e if np.isfinite(e) else 1e30 for e in inpainter_training.MEAN_SIGMA_EDGES]}
    table = source_context_factors(None, {}, cases, calibration)
    assert sum(table["pixels_per_bin_by_context"]["source"]) == sum(table["pixels_per_bin_by_context"]["sky"]) == 20000
    calibration.update(table)
    for context, scale in ((True, 2.0), (False, 1.0)):
        inside = total = 0
        for image, holes in cases:
            diagnostics: dict = {}
            mean, std = fake_inpaint(image.pixels, holes, 1.0, None, {}, diagnostics)
            selected = diagnostics["in_source"] == context
            std = source_context_std(std, mean, diagnostics["in_source"], calibration)
            inside += int((np.abs(mean - image.pixels) <= std)[selected].sum())
            total += int(selected.sum())
        # Unscaled, the source holes would be covered 38 % of the time (P(|N(0, 2)| <= 1)).
        assert 0.675 < inside / total < 0.69, (context, inside / total)
        factors = table["source_context_std_scale"]["source" if context else "sky"]
        assert factors[-1] == pytest.approx(scale, rel=0.03) and factors[:-1] == [1.0] * (len(factors) - 1)


def test_kriged_sky_std_takes_the_factor_of_its_bin_on_the_cards_own_edges():
    from lensforge.models.image_inpainter import kriged_sky_std

    raw = np.array([0.1, 0.6, 1.5, 3.0], np.float32)
    np.testing.assert_allclose(kriged_sky_std(raw, None), raw)  # uncalibrated: the raw std
    np.testing.assert_allclose(kriged_sky_std(raw, {"kriging_sky_std_scale": [0.5, 1.0, 1.1, 1.2, 2.0]}),
                               raw * np.array([0.5, 1.1, 2.0, 2.0]))  # default edges 0/0.25/0.5/0.75/1
    card_edges = {"kriging_sky_std_scale": [2.0, 3.0], "kriging_std_edges": [0.0, 2.0, 1e30]}
    np.testing.assert_allclose(kriged_sky_std(raw, card_edges), raw * np.array([2.0, 2.0, 2.0, 3.0]))
