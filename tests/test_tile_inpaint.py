"""Tile in-painting with a stamp in-painter: window planning, blending, determinism, errors."""

import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.models.baselines import inpaint_biharmonic
from lensforge.pipeline.inpaint.images import inpaint_tile, plan_windows, window_weight


def _median_inpainter(images, masks, noise_sigma, first_index):
    """Fills each window's masked pixels with the median of its known pixels; std = the window's sigma."""
    mean = images.astype(np.float64, copy=True)
    for image, mask in zip(mean, masks, strict=True):
        image[mask] = np.median(image[~mask]) if (~mask).any() else 0.0
    # Garbage on known pixels: inpaint_tile must paste the originals back anyway.
    mean[~masks] = -1e9
    return mean, np.broadcast_to(noise_sigma[:, None, None], images.shape).copy()


def _indexed_inpainter(values, stds=None):
    """Constant prediction values[i] (std stds[i]) for the window of tile-wide index i."""

    def inpaint(images, masks, noise_sigma, first_index):
        index = first_index + np.arange(len(images))
        mean = np.broadcast_to(np.asarray(values)[index][:, None, None], images.shape).copy()
        std = None if stds is None else np.broadcast_to(np.asarray(stds)[index][:, None, None], images.shape).copy()
        return mean, std

    return inpaint


def _biharmonic_inpainter(images, masks, noise_sigma, first_index):
    return inpaint_biharmonic(images, masks), None


def _mixed_mask(shape=(300, 200), seed=3) -> np.ndarray:
    """Blobs, a diagonal line, an L, scattered hot pixels and masks touching the image edges."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    mask[rng.random(shape) < 0.002] = True
    mask[40:50, 30:45] = True
    mask[0:5, 190:200] = True  # corner
    mask[280:300, 5:8] = True  # bottom edge
    idx = np.arange(150)
    mask[100 + idx // 2, 20 + idx] = True  # long diagonal: its bounding box is mostly unmasked
    mask[200:260, 150] = True
    mask[259, 150:199] = True  # L shape
    return mask


def _check_plan(mask, corners, window):
    height, width = mask.shape
    covered = np.zeros(mask.shape, dtype=bool)
    for y0, x0 in corners:
        assert 0 <= y0 <= height - window and 0 <= x0 <= width - window
        assert mask[y0:y0 + window, x0:x0 + window].any()  # no window without a masked pixel
        covered[y0:y0 + window, x0:x0 + window] = True
    assert covered[mask].all()  # every masked pixel covered
    assert corners == sorted(set(corners))  # no duplicates, row-major order


@pytest.mark.parametrize(("window", "overlap"), [(64, 16), (32, 0), (20, 19), (17, 5)])
def test_plan_covers_every_masked_pixel_and_only_masked_areas(window, overlap):
    mask = _mixed_mask()
    corners = plan_windows(mask, window, overlap)
    _check_plan(mask, corners, window)
    assert plan_windows(mask, window, overlap) == corners  # deterministic
    assert plan_windows(mask.astype(np.uint8), window, overlap) == corners


def test_plan_small_regions_get_one_centred_window():
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:14, 30:36] = True  # centre (12, 33): window corner (12 - 8, 33 - 8) for window 16
    mask[90:100, 110:120] = True  # in the corner: the centred window is shifted inside the image
    assert plan_windows(mask, 16, 4) == [(4, 25), (84, 104)]
    assert plan_windows(np.zeros((100, 120), dtype=bool), 16, 4) == []


def test_plan_long_region_uses_the_stride():
    mask = np.zeros((8, 20), dtype=bool)
    mask[3, :] = True
    # stride 8 - 3 = 5 from x = 0; the last window ends at the region's edge.
    assert plan_windows(mask, 8, 3) == [(0, 0), (0, 5), (0, 10), (0, 12)]


def test_plan_skips_pixels_already_well_inside_a_window():
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:24, 20:24] = True  # centred window 16: rows/cols 14..29, interior (margin 2) 16..27
    mask[26, 26] = True  # a separate region inside that interior: no window of its own
    assert plan_windows(mask, 16, 4) == [(14, 14)]
    mask[29, 29] = True  # near the window edge: it gets its own window
    assert len(plan_windows(mask, 16, 4)) == 2


def test_plan_rejects_bad_arguments():
    with pytest.raises(InputError, match="smaller than"):
        plan_windows(np.ones((30, 100), dtype=bool), 32, 8)
    with pytest.raises(InputError, match="overlap"):
        plan_windows(np.ones((64, 64), dtype=bool), 32, 32)
    with pytest.raises(InputError, match="window"):
        plan_windows(np.ones((64, 64), dtype=bool), 0, 0)
    with pytest.raises(InputError, match=r"\(H, W\)"):
        plan_windows(np.ones((2, 64, 64), dtype=bool), 32, 8)


def test_window_weight_is_positive_symmetric_and_peaked():
    weight = window_weight(64)
    assert weight.shape == (64, 64) and weight.min() > 0 and weight.max() <= 1
    assert np.array_equal(weight, weight[::-1, ::-1]) and np.array_equal(weight, weight.T)
    assert weight[0, 0] < weight[0, 32] < weight[32, 32]


def test_known_pixels_unchanged_and_masked_filled():
    rng = np.random.default_rng(7)
    image = rng.normal(50.0, 4.0, size=(300, 200)).astype(np.float32)
    mask = _mixed_mask()
    image[mask] = np.nan  # garbage behind the mask is allowed
    mean, std = inpaint_tile(image, mask, 4.0, _median_inpainter, window=32, overlap=8, batch_size=5)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == image.shape
    assert np.array_equal(mean[~mask], image[~mask])  # bit for bit, overlaps included
    assert np.all(std[~mask] == 0)
    assert np.isfinite(mean).all()
    assert np.all(np.abs(mean[mask] - 50.0) < 4.0)  # window medians of N(50, 4)
    # Overlapping windows agree on the std (4) but their medians differ a little, which widens the mixture.
    assert np.all(std[mask] >= 4.0 - 1e-5) and np.all(std[mask] < 4.1)


def test_full_height_bad_column_is_filled():
    y, x = np.mgrid[:300, :200]
    image = (20.0 + 0.05 * y + 0.1 * x).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, 77] = True
    truth = image.copy()
    image[mask] = np.nan
    mean, std = inpaint_tile(image, mask, 1.0, _biharmonic_inpainter, window=64, overlap=16)
    assert np.isfinite(mean).all()
    assert np.abs(mean - truth)[mask].max() < 0.01  # ADU, on a 20-55 ADU ramp
    assert np.all(std == 0)  # the in-painter gives no std


def test_result_does_not_depend_on_batch_size():
    rng = np.random.default_rng(11)
    image = rng.normal(0.0, 1.0, size=(300, 200)).astype(np.float32)
    mask = _mixed_mask()
    n = len(plan_windows(mask, 32, 8))
    inpainter = _indexed_inpainter(rng.normal(0, 5, n), rng.uniform(0.5, 2.0, n))
    reference = inpaint_tile(image, mask, 1.0, inpainter, window=32, overlap=8, batch_size=1)
    for batch_size in (3, 64, n + 10):
        mean, std = inpaint_tile(image, mask, 1.0, inpainter, window=32, overlap=8, batch_size=batch_size)
        assert np.array_equal(mean, reference[0]) and np.array_equal(std, reference[1])


def test_first_index_runs_over_consecutive_windows():
    mask = _mixed_mask()
    corners = plan_windows(mask, 32, 8)
    calls = []

    def recorder(images, masks, noise_sigma, first_index):
        calls.append((first_index, len(images)))
        y0, x0 = corners[first_index]
        assert np.array_equal(masks[0], mask[y0:y0 + 32, x0:x0 + 32])  # windows in plan order
        assert images.dtype == np.float32 and masks.dtype == bool and noise_sigma.shape == (len(images),)
        assert not np.isnan(images).any()  # masked pixels zeroed before they are passed on
        return images, None

    inpaint_tile(np.ones(mask.shape), mask, 1.0, recorder, window=32, overlap=8, batch_size=7)
    assert [c[0] for c in calls] == list(range(0, len(corners), 7))
    assert sum(c[1] for c in calls) == len(corners) and all(c[1] == 7 for c in calls[:-1])


def test_blended_value_lies_between_window_constants():
    mask = _mixed_mask()
    corners = plan_windows(mask, 32, 16)
    values = np.random.default_rng(2).uniform(-10, 10, len(corners))
    mean, std = inpaint_tile(np.zeros(mask.shape, np.float32), mask, 1.0, _indexed_inpainter(values), window=32,
                             overlap=16)
    count = np.zeros(mask.shape, dtype=int)
    for y0, x0 in corners:
        count[y0:y0 + 32, x0:x0 + 32] += 1
    assert (count[mask] > 1).any()
    for i, (y0, x0) in enumerate(corners):
        # Each masked pixel's blend lies within the constants of the windows covering it ...
        covering = [values[j] for j, (y1, x1) in enumerate(corners) if abs(y1 - y0) < 32 and abs(x1 - x0) < 32]
        inside = mean[y0:y0 + 32, x0:x0 + 32][mask[y0:y0 + 32, x0:x0 + 32]]
        assert min(covering) - 1e-5 <= inside.min() and inside.max() <= max(covering) + 1e-5
        # ... and equals the window's constant where no other window reaches.
        alone = (count[y0:y0 + 32, x0:x0 + 32] == 1) & mask[y0:y0 + 32, x0:x0 + 32]
        assert np.all(mean[y0:y0 + 32, x0:x0 + 32][alone] == np.float32(values[i]))
    assert np.all(std == 0)


def test_std_is_the_std_of_the_weighted_mixture():
    # One masked row, window 8, overlap 3: windows at x0 = 0, 5, 10, 12 (see the planning test).
    mask = np.zeros((8, 20), dtype=bool)
    mask[3, :] = True
    means, stds = [0.0, 4.0, 100.0, 100.0], [1.0, 3.0, 1.0, 1.0]
    mean, std = inpaint_tile(np.zeros(mask.shape, np.float32), mask, 1.0, _indexed_inpainter(means, stds),
                             window=8, overlap=3, batch_size=1)
    # Pixel x = 6 sits at offset 6 in window 0 and offset 1 in window 1; the taper is symmetric, so equal
    # weights: mean (0 + 4) / 2 = 2, variance (1 + 9) / 2 + ((0 - 4) / 2)**2 = 9, std 3.
    assert mean[3, 6] == pytest.approx(2.0, abs=1e-6)
    assert std[3, 6] == pytest.approx(3.0, abs=1e-6)
    # Pixel x = 0 is covered by window 0 only.
    assert mean[3, 0] == 0.0 and std[3, 0] == pytest.approx(1.0)
    # Unequal weights at x = 7 (offsets 7 and 2): check against the formula.
    taper = window_weight(8)[3]
    w0, w1 = taper[7], taper[2]
    mu = (w0 * 0.0 + w1 * 4.0) / (w0 + w1)
    var = (w0 * (1.0 + 0.0) + w1 * (9.0 + 16.0)) / (w0 + w1) - mu**2
    assert mean[3, 7] == pytest.approx(mu, rel=1e-6) and std[3, 7] == pytest.approx(np.sqrt(var), rel=1e-6)


def test_noise_sigma_map_median_over_each_window():
    mask = np.zeros((64, 128), dtype=bool)
    mask[30, 10] = mask[30, 100] = True
    sigma_map = np.where(np.arange(128) < 64, 2.0, 5.0)[None, :].repeat(64, axis=0)
    sigma_map[mask] = np.nan  # masked pixels of the map are ignored
    seen = []

    def recorder(images, masks, noise_sigma, first_index):
        seen.extend(noise_sigma.tolist())
        return images, None

    inpaint_tile(np.ones(mask.shape), mask, sigma_map, recorder, window=32, overlap=8)
    assert seen == [2.0, 5.0]
    with pytest.raises(InputError, match="noise_sigma map"):
        inpaint_tile(np.ones(mask.shape), mask, sigma_map[:, :100], recorder, window=32)
    sigma_map[0, 0] = np.nan
    with pytest.raises(InputError, match="1 known pixels"):
        inpaint_tile(np.ones(mask.shape), mask, sigma_map, recorder, window=32)


def test_nothing_masked_passes_through_without_calls():
    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)

    def never(*args):
        raise AssertionError("called")

    mean, std = inpaint_tile(image, np.zeros(image.shape, bool), 1.0, never, window=32)
    assert np.array_equal(mean, image) and np.all(std == 0)


def test_biharmonic_on_a_smooth_blob():
    y, x = np.mgrid[:200, :260]
    image = (10.0 + 1000.0 * np.exp(-((y - 90) ** 2 + (x - 140) ** 2) / (2 * 40.0**2))).astype(np.float32)
    truth = image.copy()
    mask = np.zeros(image.shape, dtype=bool)
    mask[70:80, 115:125] = True  # on the blob's shoulder
    mask[:, 200] = True  # full-height bad column
    image[mask] = 0.0  # blank
    mean, std = inpaint_tile(image, mask, 3.0, _biharmonic_inpainter, window=64, overlap=16, batch_size=4)
    assert np.array_equal(mean[~mask], truth[~mask])
    residual = np.abs(mean - truth)[mask]
    assert residual.max() < 0.5  # ADU, against a 1000 ADU peak
    assert np.all(std == 0)


def test_input_errors():
    image = np.zeros((100, 120), dtype=np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[50, 50] = True
    ok = _median_inpainter
    with pytest.raises(InputError, match="smaller than"):
        inpaint_tile(image[:40], mask[:40], 1.0, ok, window=64)
    with pytest.raises(InputError, match="does not match"):
        inpaint_tile(image, mask[:, :100], 1.0, ok, window=32)
    with pytest.raises(InputError, match=r"\(H, W\)"):
        inpaint_tile(image[None], mask[None], 1.0, ok, window=32)
    bad = image.copy()
    bad[0, :3] = np.nan
    with pytest.raises(InputError, match="3 known"):
        inpaint_tile(bad, mask, 1.0, ok, window=32)
    with pytest.raises(InputError, match="batch_size"):
        inpaint_tile(image, mask, 1.0, ok, window=32, batch_size=0)
    with pytest.raises(InputError, match="overlap"):
        inpaint_tile(image, mask, 1.0, ok, window=32, overlap=-1)
    with pytest.raises(InputError, match="noise_sigma"):
        inpaint_tile(image, mask, -1.0, ok, window=32)
    with pytest.raises(InputError, match="shape"):
        inpaint_tile(image, mask, 1.0, lambda im, m, s, i: (im[:, :-1], None), window=32)
    with pytest.raises(InputError, match="non-finite mean"):
        inpaint_tile(image, mask, 1.0, lambda im, m, s, i: (im + np.nan, None), window=32)
