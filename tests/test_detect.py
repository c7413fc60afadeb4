"""Source detection, truth matching and completeness/purity on small synthetic GalSim tiles."""

from __future__ import annotations

import warnings

import astropy.units as u
import galsim
import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from photutils.utils import NoDetectionsWarning

from lensforge.errors import InputError
from lensforge.pipeline.tiles.detect import (
    completeness_purity,
    detect,
    isolated,
    match_to_truth,
    optimal_snr,
    plot_detection_curves,
)

SIZE = 256  # tile side [pixels]
SKY_LEVEL = 100.0  # constant sky [ADU], removed by the background model
SKY_SIGMA = 5.0  # per-pixel Gaussian noise [ADU]
PSF_FWHM = 3.5  # [pixels], the pipeline default
PSF = galsim.Gaussian(fwhm=PSF_FWHM)
STAMP_HALF = 24  # drawing stamp half-size [pixels]; >6 sigma for the profiles used here

BASE_COLUMNS = ["label", "x", "y", "segment_flux", "segment_flux_err", "kron_flux", "kron_flux_err", "snr",
                "area", "semimajor_sigma", "semiminor_sigma", "orientation", "ellipticity", "near_mask",
                "deblended"]


def _galaxy(kind: str, flux: float, size_pixels: float = 1.5) -> galsim.GSObject:
    """A PSF-convolved Gaussian or exponential galaxy with half-light radius ``size_pixels``."""
    profile = galsim.Exponential if kind == "exponential" else galsim.Gaussian
    return galsim.Convolve(profile(half_light_radius=size_pixels, flux=flux), PSF)


def _flux_for_snr(kind: str, snr: float) -> float:
    """Flux [ADU] giving optimal S/N ``snr`` in the test noise, via the helper under test."""
    unit = _galaxy(kind, 1.0).drawImage(nx=2 * STAMP_HALF + 1, ny=2 * STAMP_HALF + 1, scale=1.0)
    return snr / optimal_snr(unit, SKY_SIGMA**2)


def _scene(sources: list[tuple[float, float, float, str]], seed: int, noise: bool = True) -> np.ndarray:
    """Sky + noise + galaxies; ``sources`` are (x, y, flux, kind) with 0-based numpy pixel centres."""
    image = galsim.ImageF(SIZE, SIZE, scale=1.0)
    for x, y, flux, kind in sources:
        # GalSim puts pixel [0, 0]'s centre at (1, 1): shift the 0-based truth by one.
        cx, cy = x + 1.0, y + 1.0
        bounds = galsim.BoundsI(int(cx) - STAMP_HALF, int(cx) + STAMP_HALF,
                                int(cy) - STAMP_HALF, int(cy) + STAMP_HALF) & image.bounds
        _galaxy(kind, flux).drawImage(image=image[bounds], add_to_image=True, center=galsim.PositionD(cx, cy))
    data = image.array.astype(np.float64) + SKY_LEVEL
    if noise:
        data += np.random.default_rng(seed).normal(0.0, SKY_SIGMA, data.shape)
    return data


def _grid(n_side: int, spacing: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel-jittered grid positions well inside the tile."""
    rng = np.random.default_rng(seed)
    start = 0.5 * (SIZE - (n_side - 1) * spacing)
    xs, ys = np.meshgrid(start + spacing * np.arange(n_side), start + spacing * np.arange(n_side))
    return xs.ravel() + rng.uniform(-0.5, 0.5, xs.size), ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)


@pytest.fixture(scope="module")
def bright_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16 bright (S/N ~ 60) galaxies, half Gaussian and half exponential."""
    x, y = _grid(4, 55.0, seed=1)
    kinds = ["gaussian", "exponential"] * 8
    sources = [(xi, yi, _flux_for_snr(kind, 60.0), kind) for xi, yi, kind in zip(x, y, kinds, strict=True)]
    return _scene(sources, seed=2), x, y


def test_bright_sources_found_within_one_pixel(bright_scene) -> None:
    data, x, y = bright_scene
    table = detect(data)
    assert table.colnames == BASE_COLUMNS
    assert table["x"].unit == u.pix and table["segment_flux"].unit == u.adu and table["area"].unit == u.pix**2
    assert len(table) == len(x)  # no spurious detections on top of the 16 sources
    det_to_truth, truth_to_det = match_to_truth(table["x"], table["y"], x, y, radius_pixels=1.0)
    assert np.all(truth_to_det >= 0)
    offsets = np.hypot(table["x"] - x[det_to_truth], table["y"] - y[det_to_truth])
    assert offsets.max() < 0.5
    assert np.all(table["snr"] > 20) and not table["deblended"].any() and not table["near_mask"].any()


def test_variance_map_sets_flux_errors(bright_scene) -> None:
    data, _, _ = bright_scene
    variance = np.full(data.shape, 4.0 * SKY_SIGMA**2)
    table = detect(data, variance=variance)
    # Quadrature sum over the segment of a constant per-pixel sigma of 2 * SKY_SIGMA.
    np.testing.assert_allclose(table["segment_flux_err"], 2 * SKY_SIGMA * np.sqrt(table["area"]), rtol=1e-10)
    np.testing.assert_allclose(table["snr"], table["segment_flux"] / table["segment_flux_err"])


def test_masked_source_not_detected_and_mask_never_segmented() -> None:
    flux = _flux_for_snr("gaussian", 80.0)
    sources = [(60.0, 60.0, flux, "gaussian"), (180.0, 180.0, flux, "gaussian"), (60.0, 180.0, flux, "gaussian"),
               (180.0, 60.0, flux, "gaussian")]
    data = _scene(sources, seed=3)
    bitmask = np.zeros(data.shape, dtype=np.uint16)
    bitmask[40:81, 40:81] = 8  # swallows the whole source at (60, 60)
    bitmask[170:190, 150:176] = 2  # ends 4 px left of the source at (180, 180): it touches the mask
    data[bitmask != 0] = 5e4  # saturated garbage under the mask must not matter
    data[100, 100] = np.nan  # and a non-finite pixel is masked implicitly

    table, segm = detect(data, bitmask, return_segmentation=True)
    assert len(table) == 3
    inside = (table["x"] > 35) & (table["x"] < 86) & (table["y"] > 35) & (table["y"] < 86)
    assert not inside.any()
    assert np.all(segm.data[bitmask != 0] == 0) and segm.data[100, 100] == 0
    near = np.hypot(table["x"] - 180.0, table["y"] - 180.0) < 1.0
    assert near.sum() == 1 and table["near_mask"][near][0] and not table["near_mask"][~near].any()

    with pytest.raises(InputError, match="bitmask has shape"):
        detect(data, bitmask[:-1])


def test_close_pair_is_deblended() -> None:
    flux = _flux_for_snr("exponential", 80.0)
    truth_x, truth_y = np.array([120.0, 127.0]), np.array([128.0, 129.0])
    data = _scene([(truth_x[0], truth_y[0], flux, "exponential"), (truth_x[1], truth_y[1], 0.8 * flux, "exponential")],
                  seed=4)
    blended = detect(data, deblend=False)
    assert len(blended) == 1 and not blended["deblended"].any()
    table = detect(data)
    assert len(table) == 2 and table["deblended"].all()
    _, truth_to_det = match_to_truth(table["x"], table["y"], truth_x, truth_y, radius_pixels=1.5)
    assert np.all(truth_to_det >= 0)


def test_pure_noise_gives_no_detections() -> None:
    noise = _scene([], seed=5)
    with pytest.warns(NoDetectionsWarning):
        table = detect(noise, threshold_nsigma=5.0)
    assert len(table) == 0 and table.colnames == BASE_COLUMNS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        assert len(detect(noise)) <= 1  # even at the default threshold
        blank = detect(np.zeros((64, 64)), wcs=_wcs(), zero_point_mag=27.0)  # a blank tile does not crash
    assert len(blank) == 0 and {"ra", "dec", "mag", "mag_err"} <= set(blank.colnames)
    assert blank["ra"].unit == u.deg


def test_completeness_high_at_snr20_and_low_at_snr2() -> None:
    x, y = _grid(6, 38.0, seed=6)
    tables = {}
    for snr, seed in ((20.0, 7), (2.0, 8)):
        sources = [(xi, yi, _flux_for_snr("gaussian", snr), "gaussian") for xi, yi in zip(x, y, strict=True)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDetectionsWarning)  # expected at S/N 2
            table = detect(_scene(sources, seed=seed))
        det_to_truth, truth_to_det = match_to_truth(table["x"], table["y"], x, y, radius_pixels=2.0)
        tables[snr] = completeness_purity(np.full(x.size, snr), truth_to_det, np.asarray(table["snr"]),
                                          det_to_truth, bins=[1.0, 5.0, 50.0, 1e4])
    high, low = tables[20.0], tables[2.0]
    assert high["n_truth"][1] == 36 and high["completeness"][1] == 1.0
    assert high["completeness_lo"][1] > 0.9 and high["completeness_hi"][1] == pytest.approx(1.0)
    assert np.nansum(high["n_detected"]) == 36 and np.all(high["purity"][high["n_detected"] > 0] == 1.0)
    assert low["n_truth"][0] == 36 and low["completeness"][0] < 0.2
    assert np.isnan(high["completeness"][0]) and np.isnan(high["completeness"][2])  # empty truth bins


def test_mag_matches_zero_point_formula() -> None:
    flux, exposure, zero_point = 2.0e4, 30.0, 27.0
    data = _scene([(100.3, 140.6, flux, "gaussian")], seed=9)
    table = detect(data, zero_point_mag=zero_point, exposure_time_s=exposure)
    assert len(table) == 1 and table["mag"].unit == u.mag
    expected = zero_point - 2.5 * np.log10(flux / exposure)
    assert table["mag"][0] == pytest.approx(expected, abs=0.04)  # Kron flux within ~4% of the total
    assert table["mag"][0] == pytest.approx(zero_point - 2.5 * np.log10(table["kron_flux"][0] / exposure))
    assert table["mag_err"][0] == pytest.approx(1.0857 * table["kron_flux_err"][0] / table["kron_flux"][0], rel=1e-3)


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [128.5, 128.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    wcs.wcs.radesys = "ICRS"
    return wcs


def test_sky_coordinates_follow_wcs(bright_scene) -> None:
    data, _, _ = bright_scene
    wcs = _wcs()
    table = detect(data, wcs=wcs)
    ra, dec = wcs.pixel_to_world_values(np.asarray(table["x"]), np.asarray(table["y"]))
    np.testing.assert_allclose(table["ra"], ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["dec"], dec, rtol=0, atol=1e-9)
    with pytest.raises(InputError, match="wcs must be"):
        detect(data, wcs="not a wcs")


def test_match_is_one_to_one() -> None:
    # Two detections near truth 0: the nearer one (listed second) wins, the other stays unmatched.
    det_to_truth, truth_to_det = match_to_truth([10.0, 10.3, 50.0, 90.0], [10.6, 10.0, 50.0, 90.0],
                                                [10.0, 50.2], [10.0, 50.0], radius_pixels=1.0)
    np.testing.assert_array_equal(det_to_truth, [-1, 0, 1, -1])
    np.testing.assert_array_equal(truth_to_det, [1, 2])
    # A detection between two truths goes to the nearer; the farther truth takes its own detection.
    det_to_truth, truth_to_det = match_to_truth([0.0, 1.4], [0.0, 0.0], [0.6, 2.0], [0.0, 0.0], radius_pixels=1.0)
    np.testing.assert_array_equal(det_to_truth, [0, 1])
    np.testing.assert_array_equal(truth_to_det, [0, 1])
    empty, none = match_to_truth([], [], [1.0], [1.0], radius_pixels=1.0)
    assert empty.size == 0 and none.tolist() == [-1]
    with pytest.raises(InputError, match="radius_pixels"):
        match_to_truth([1.0], [1.0], [1.0], [1.0], radius_pixels=0.0)
    with pytest.raises(InputError, match="equal length"):
        match_to_truth([1.0, 2.0], [1.0], [1.0], [1.0], radius_pixels=1.0)


def test_isolated() -> None:
    flags = isolated([0.0, 3.0, 50.0, 100.0], [0.0, 0.0, 50.0, 104.0], radius_pixels=5.0)
    np.testing.assert_array_equal(flags, [False, False, True, True])


def test_completeness_purity_inputs_and_nan_bins() -> None:
    table = completeness_purity(np.array([1.0, 1.5, 3.5, np.nan]), np.array([True, False, True, True]),
                                np.array([1.2, 3.6, 3.7]), np.array([0, -1, 2]), bins=[1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(table["n_truth"], [2, 0, 1])
    np.testing.assert_array_equal(table["completeness"], [0.5, np.nan, 1.0])
    np.testing.assert_array_equal(table["purity"], [1.0, np.nan, 0.5])
    assert np.all((table["completeness_lo"][[0, 2]] <= table["completeness"][[0, 2]])
                  & (table["completeness"][[0, 2]] <= table["completeness_hi"][[0, 2]]))
    with pytest.raises(InputError, match="strictly increasing"):
        completeness_purity([1.0], [True], [1.0], [True], bins=[2.0, 1.0])
    with pytest.raises(InputError, match="truth_matched must have shape"):
        completeness_purity([1.0, 2.0], [True], [1.0], [True], bins=[0.0, 3.0])


def test_plot_detection_curves(tmp_path) -> None:
    table = completeness_purity([1.0, 2.0, 3.0], [True, True, False], [1.0, 3.0], [True, False], bins=[0, 2, 4])
    path = plot_detection_curves({"tile A": table, "tile B": table}, tmp_path / "curves" / "c.png", "S/N")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="lacks columns"):
        plot_detection_curves({"bad": Table({"x": [1]})}, tmp_path / "bad.png", "S/N")


def test_optimal_snr_matches_galsim_add_noise_snr() -> None:
    image = _galaxy("exponential", 1.0e3).drawImage(nx=64, ny=64, scale=1.0)
    noiseless = image.array.copy()
    # preserve_flux=True makes GalSim pick the noise variance that gives S/N 25 and return it.
    variance = image.addNoiseSNR(galsim.GaussianNoise(galsim.BaseDeviate(10)), snr=25.0, preserve_flux=True)
    assert optimal_snr(noiseless, variance) == pytest.approx(25.0, rel=1e-6)
    with pytest.raises(InputError, match="sky_variance"):
        optimal_snr(noiseless, -1.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image": np.zeros(10)}, "image must be a non-empty 2-D array"),
    ({"psf_fwhm_pixels": -1.0}, "psf_fwhm_pixels must be"),
    ({"n_pixels": 0}, "n_pixels must be an integer"),
    ({"filter_size": 4}, "filter_size must be odd"),
    ({"contrast": 2.0}, "contrast must be in"),
    ({"variance": np.zeros((8, 8))}, "variance has shape"),
    ({"variance": -np.ones((32, 32))}, "variance must be finite"),
    ({"bitmask": np.ones((32, 32)) - np.eye(32)}, "cannot estimate the background"),  # 97% masked
])
def test_detect_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"image": np.zeros((32, 32))} | kwargs
    with pytest.raises(InputError, match=message):
        detect(**arguments)
