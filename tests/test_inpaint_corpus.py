"""The in-painter's image corpus: splits, real FIRST and COSMOS images, mosaics, defect masks, simulated tiles.

Tests that read the real data skip without ``../shared/data`` (a user's fresh clone); the rest
run on synthetic inputs. The simulated tiles are small (256 pixels) and cached in a temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.datasets import corpus

DATA = corpus.shared_data_dir()
HAVE_FIRST = (DATA / corpus.FIRST_FILE).is_file()
HAVE_COSMOS = (DATA / corpus.COSMOS_DIR / corpus.COSMOS_CATALOGUE).is_file()
needs_first = pytest.mark.skipif(not HAVE_FIRST, reason=f"no FIRST cube under {DATA}")
needs_cosmos = pytest.mark.skipif(not HAVE_COSMOS, reason=f"no COSMOS stamps under {DATA}")


# --- shared data and splits ----------------------------------------------------------------------


def test_shared_data_dir_follows_the_environment_else_the_checkout(monkeypatch, tmp_path):
    from conftest import SHARED_DATA

    monkeypatch.setenv(corpus.SHARED_DATA_ENV, str(tmp_path))
    assert corpus.shared_data_dir() == tmp_path
    monkeypatch.delenv(corpus.SHARED_DATA_ENV)
    assert corpus.shared_data_dir() == SHARED_DATA


def test_missing_data_raise_one_line_input_errors_naming_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv(corpus.SHARED_DATA_ENV, str(tmp_path / "nowhere"))
    for load, missing in ((corpus.load_first, corpus.FIRST_FILE),
                          (corpus.load_cosmos_real, corpus.COSMOS_DIR / corpus.COSMOS_CATALOGUE)):
        with pytest.raises(InputError) as err:
            load()
        assert str(tmp_path / "nowhere" / missing) in str(err.value)
        assert "\n" not in str(err.value)


def test_an_unknown_split_is_refused():
    with pytest.raises(ConfigError, match="split"):
        corpus.load_first("validation")


def test_splits_are_deterministic_order_free_and_70_10_20():
    names = [f"J{i:05d}+{(7 * i) % 9000:04d}" for i in range(20000)]
    splits = [corpus.split_of(name) for name in names]
    shuffled = list(np.random.default_rng(1).permutation(names))
    assert dict(zip(names, splits, strict=True)) == {name: corpus.split_of(name) for name in shuffled}
    share = {s: splits.count(s) / len(names) for s in corpus.SPLITS}
    assert set(share) == set(splits)  # nothing outside SPLITS
    # 3 sigma of a binomial of 20000 draws is < 1%.
    assert share == pytest.approx({"train": 0.7, "calibration": 0.1, "test": 0.2}, abs=0.01)


def test_split_of_is_pinned():
    # Changing the hash would move sources between splits: test images would leak into training.
    assert corpus.split_of("100_010.451-009.284_0.0529_0080.60") == "train"
    assert corpus.split_of("100_114.330+029.492_0.1105_0034.32") == "calibration"
    assert corpus.split_of("100_016.236+000.073_0.2797_0058.67") == "test"


# --- FIRST ---------------------------------------------------------------------------------------


@needs_first
def test_first_splits_are_disjoint_cover_the_cube_and_are_near_70_10_20():
    from astropy.table import Table

    names = {split: corpus.load_first(split).names for split in corpus.SPLITS}
    catalogue = [str(n).strip() for n in Table.read(DATA / corpus.FIRST_FILE, hdu="CATALOG")["name"]]
    for a in corpus.SPLITS:
        for b in corpus.SPLITS:
            if a < b:
                assert not set(names[a]) & set(names[b])
    assert sorted(sum(names.values(), ())) == sorted(catalogue)
    share = {s: len(n) / len(catalogue) for s, n in names.items()}
    # 1255 sources: 3.5 sigma of the test share is 0.04 (the file gives 72.7 / 9.9 / 17.4%).
    assert share == pytest.approx({"train": 0.7, "calibration": 0.1, "test": 0.2}, abs=0.04)


@needs_first
def test_load_first_gives_native_float32_jy_per_beam_planes_with_their_catalogue():
    from astropy.io import fits

    first = corpus.load_first("calibration")
    n = len(first)
    assert n > 50 and first.images.shape == (n, 150, 150)
    assert first.images.dtype == np.float32 and first.images.dtype.isnative
    assert first.unit == "Jy/beam"
    assert first.pixel_scale_arcsec == pytest.approx(1.8)
    assert first.resolution_fwhm_arcsec == pytest.approx(5.4)
    assert all(corpus.split_of(name) == "calibration" for name in first.names)
    assert first.noise_sigma.shape == (n,) and np.all(first.noise_sigma > 0)
    # The README's thermal noise: median rms ~1.5e-4 Jy/beam in the corners.
    assert 1.2e-4 < np.median(first.noise_sigma) < 2.0e-4
    assert first.extra["fr_code"].shape == (n,) and set(first.extra["fr_code"] // 100) <= {1, 2, 3}
    with fits.open(DATA / corpus.FIRST_FILE, memmap=True) as hdus:
        plane = int(first.extra["plane"][7])
        np.testing.assert_array_equal(first.images[7], hdus[0].data[plane])
        assert str(hdus["CATALOG"].data["name"][plane]).strip() == first.names[7]


# --- COSMOS --------------------------------------------------------------------------------------


@needs_cosmos
def test_load_cosmos_real_gives_100_stamps_with_their_own_noise():
    stamps = corpus.load_cosmos_real()
    assert len(stamps) == 100
    for image, sigma in stamps:
        assert image.dtype == np.float32 and image.ndim == 2 and 16 <= min(image.shape)
        assert np.isfinite(image).all() and np.isfinite(sigma) and sigma > 0
    # Each stamp's noise goes with its own image: the catalogue sigma follows the noise measured in
    # the stamp's top and bottom rows (rank correlation ~0.5; ~0.1 when the pairing is shifted by one).
    measured = [corpus.robust_sigma(np.concatenate([a[:3].ravel(), a[-3:].ravel()])) for a, _ in stamps]
    assert spearmanr(measured, [s for _, s in stamps]).statistic > 0.35
    mosaic, sigma = corpus.cosmos_mosaic(stamps, seed=3)
    corners, _ = corpus.mosaic_layout([a.shape for a, _ in stamps])
    for (image, _), (y0, x0) in zip(stamps, corners, strict=True):
        np.testing.assert_array_equal(mosaic[y0:y0 + image.shape[0], x0:x0 + image.shape[1]], image)
    assert sigma == pytest.approx(np.median([s for _, s in stamps]))


def _synthetic_stamps(n: int = 23, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    stamps = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(16, 80, size=2))
        stamps.append((np.full((h, w), 100.0 + i, np.float32) + rng.normal(0, 0.1, (h, w)).astype(np.float32),
                       float(rng.uniform(0.5, 1.5))))
    return stamps


def test_cosmos_mosaic_keeps_every_stamp_and_fills_only_the_gaps_with_median_noise():
    stamps = _synthetic_stamps()
    mosaic, sigma = corpus.cosmos_mosaic(stamps, seed=5)
    corners, side = corpus.mosaic_layout([a.shape for a, _ in stamps])
    assert mosaic.shape == (side, side) and mosaic.dtype == np.float32
    covered = np.zeros(mosaic.shape, dtype=int)
    for (image, _), (y0, x0) in zip(stamps, corners, strict=True):
        np.testing.assert_array_equal(mosaic[y0:y0 + image.shape[0], x0:x0 + image.shape[1]], image)
        covered[y0:y0 + image.shape[0], x0:x0 + image.shape[1]] += 1
    assert covered.max() == 1  # no overlap
    gaps = mosaic[covered == 0]
    assert sigma == pytest.approx(np.median([s for _, s in stamps]))
    assert gaps.size > 1000 and np.std(gaps) == pytest.approx(sigma, rel=0.05) and abs(np.mean(gaps)) < 0.1 * sigma
    other, _ = corpus.cosmos_mosaic(stamps, seed=6)
    assert not np.array_equal(other[covered == 0], gaps)
    np.testing.assert_array_equal(other[covered == 1], mosaic[covered == 1])
    np.testing.assert_array_equal(corpus.cosmos_mosaic(stamps, seed=5)[0], mosaic)


def test_cosmos_mosaic_of_a_given_size_or_a_clear_refusal():
    stamps = _synthetic_stamps()
    mosaic, _ = corpus.cosmos_mosaic(stamps, size=400)
    assert mosaic.shape == (400, 400)
    with pytest.raises(InputError, match="do not fit"):
        corpus.cosmos_mosaic(stamps, size=120)


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (150, 150), (96, 200)])
def test_training_masks_land_within_the_masked_fraction_and_vary(shape):
    masks = [corpus.draw_training_mask(np.random.default_rng(seed), shape) for seed in range(120)]
    fractions = np.array([m.mean() for m in masks])
    assert all(m.dtype == bool and m.shape == shape for m in masks)
    assert fractions.min() >= 0.01 and fractions.max() <= 0.15
    assert fractions.std() > 0.02  # the target fraction is drawn, not fixed
    custom = [corpus.draw_training_mask(np.random.default_rng(seed), shape, masked_fraction=(0.2, 0.3)).mean()
              for seed in range(30)]
    assert min(custom) >= 0.2 and max(custom) <= 0.3


def test_training_masks_are_reproducible_from_the_rng():
    a = corpus.draw_training_mask(np.random.default_rng(11), (128, 128))
    b = corpus.draw_training_mask(np.random.default_rng(11), (128, 128))
    c = corpus.draw_training_mask(np.random.default_rng(12), (128, 128))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_masks_with_a_signal_land_on_the_sources():
    rng = np.random.default_rng(0)
    yy, xx = np.indices((128, 128))
    sources = sum(50.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 4.0**2)) for y, x in
                  ((30, 40), (90, 100), (64, 20)))
    signal = rng.normal(size=(128, 128)) + sources  # noise-sigma units
    on = sources > 1.0  # ~7% of the image
    guided, blind = [], []
    for seed in range(40):
        guided_mask = corpus.draw_training_mask(np.random.default_rng(seed), signal.shape, signal)
        blind_mask = corpus.draw_training_mask(np.random.default_rng(seed), signal.shape)
        guided.append((on[guided_mask].mean(), signal[guided_mask].mean()))
        blind.append(on[blind_mask].mean())
    guided = np.array(guided)
    assert guided[:, 0].mean() > 2 * on.mean()  # measured 0.20 against 0.073
    assert np.mean(blind) < 1.5 * on.mean()
    assert guided[:, 1].mean() > 2 * signal.mean()


def test_evaluation_masks_depend_on_seed_and_index_only():
    shape = (100, 120)
    masks = {i: corpus.evaluation_mask(shape, 9, i) for i in (4, 0, 2)}
    for i in (0, 2, 4):  # another order gives the same masks
        np.testing.assert_array_equal(corpus.evaluation_mask(shape, 9, i), masks[i])
    np.testing.assert_array_equal(masks[2], corpus.draw_training_mask(np.random.default_rng([9, 2]), shape))
    assert not np.array_equal(masks[0], masks[2])
    assert not np.array_equal(corpus.evaluation_mask(shape, 10, 2), masks[2])


def test_mask_arguments_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="masked_fraction"):
        corpus.draw_training_mask(rng, (32, 32), masked_fraction=(0.3, 0.2))
    with pytest.raises(InputError, match="signal"):
        corpus.draw_training_mask(rng, (32, 32), signal=np.zeros((16, 16)))


# --- simulated tiles -----------------------------------------------------------------------------


def _no_render(*args, **kwargs):
    raise AssertionError("rendered again instead of reading the cache")


def test_simulated_optical_tile_and_its_cache(tmp_path, monkeypatch):
    image = corpus.simulated_image("lsst", 256, seed=1, cache_dir=tmp_path)
    assert image.image.shape == image.bad.shape == (256, 256)
    assert image.image.dtype == np.float32 and image.bad.dtype == bool and np.isfinite(image.image).all()
    assert image.unit == "ADU" and image.preset == "lsst" and image.pixel_scale_arcsec == pytest.approx(0.2)
    assert image.resolution_fwhm_arcsec == pytest.approx(0.71, rel=0.1)  # the preset's delivered FWHM
    good = image.image[~image.bad]
    # The model's sky + read noise is the noise of the sky-subtracted image (faint galaxies add ~1%).
    assert corpus.robust_sigma(good) == pytest.approx(image.noise_sigma, rel=0.05)
    assert abs(np.median(good)) < 0.1 * image.noise_sigma
    files = list(tmp_path.glob("*.npz"))
    assert [f.name for f in files] == [corpus.cache_path("lsst", 256, 1, tmp_path).name]
    monkeypatch.setattr(corpus, "_render", _no_render)
    again = corpus.simulated_image("lsst", 256, seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.image, image.image)
    np.testing.assert_array_equal(again.bad, image.bad)
    assert (again.noise_sigma, again.unit, again.resolution_fwhm_arcsec) == \
        (image.noise_sigma, image.unit, image.resolution_fwhm_arcsec)
    with pytest.raises(AssertionError, match="rendered again"):  # another seed is another file
        corpus.simulated_image("lsst", 256, seed=2, cache_dir=tmp_path)


def test_a_damaged_cache_file_is_rendered_again(tmp_path):
    path = corpus.cache_path("ska_mid", 256, 0, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 a truncated zip")
    radio = corpus.simulated_image("ska_mid", 256, seed=0, cache_dir=tmp_path)
    assert radio.image.shape == radio.bad.shape == (256, 256)
    assert radio.image.dtype == np.float32 and radio.bad.dtype == bool and np.isfinite(radio.image).all()
    assert radio.unit == "Jy/beam" and radio.bad.any()  # the preset's flagged patches
    assert np.all(radio.image[radio.bad] == 0)
    good = radio.image[~radio.bad]
    # The dirty image's zero level is removed; its background (sidelobes) is far above the thermal noise.
    assert abs(np.median(good)) < 1e-3 * radio.noise_sigma
    assert radio.noise_sigma == pytest.approx(corpus.robust_sigma(good), rel=1e-6)
    assert radio.noise_sigma > 3 * radio.extra["thermal_noise_sigma"] > 0
    assert 2.0 < radio.resolution_fwhm_arcsec < 8.0  # the measured beam (~4.4"), 0.5" pixels
    np.testing.assert_array_equal(corpus.simulated_image("ska_mid", 256, seed=0, cache_dir=tmp_path).image,
                                  radio.image)


def test_an_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="ska_mid"):
        corpus.simulated_image("vla", 256, cache_dir=tmp_path)


def test_a_mask_of_defects_that_add_nothing_still_terminates():
    # One bright pixel: every signal-guided bleed trail lands on the same, already masked, pixels
    # (the draw of training step 1983 that once looped forever).
    signal = np.zeros((64, 64))
    signal[30, 30] = 1e4
    for seed in range(40):
        mask = corpus.draw_training_mask(np.random.default_rng(seed), (64, 64), signal)
        assert 0.01 <= mask.mean() <= 0.15
