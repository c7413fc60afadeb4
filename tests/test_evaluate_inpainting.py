"""Image in-painting evaluation (``lensforge evaluate-inpainting``): metrics with known answers, the CLI."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import typer
from astropy.io import fits
from typer.testing import CliRunner

from lensforge.errors import InputError
from lensforge.flows.evaluate_inpainting_cli import evaluate_inpainting
from lensforge.pipeline.evaluation.image_inpainting import (
    REPORT_JSON,
    Case,
    evaluate_cases,
    plot_examples,
    write_report,
)

SIZE = 32


def _noise_case(name="a", sigma=1.0, seed=0, group="g", size=SIZE) -> Case:
    rng = np.random.default_rng(seed)
    truth = 10.0 + rng.normal(0.0, sigma, (size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[8:14, 5:20] = True
    return Case(name, truth, mask, sigma, group=group)


def _oracle(cases, offset=0.0, std=None, source_offset=None):
    """An in-painter that knows the truth: hidden pixels become truth + offset (source_offset on > 50 ADU)."""
    truths = [case.truth.astype(np.float32).astype(np.float64) for case in cases]  # as the evaluation scores

    def fill(image, hidden, noise_sigma):
        truth = next(t for t in truths if np.array_equal(image[~hidden], t[~hidden]))
        out = image.astype(np.float64)
        add = np.full(truth.shape, offset)
        if source_offset is not None:
            add = np.where(truth > 50, source_offset, offset)
        out[hidden] = truth[hidden] + add[hidden]
        return out, (None if std is None else np.full(truth.shape, std))

    return fill


def test_exact_inpainter_scores_zero_and_full_coverage():
    case = _noise_case()
    result = evaluate_cases([case], {"exact": _oracle([case], std=1e-3)}, progress=False)
    metrics = result["groups"]["g"]["methods"]["exact"]
    assert metrics["rmse"] == 0.0 and metrics["rmse_sky"] == 0.0
    assert metrics["coverage_1sigma"] == 1.0 and metrics["coverage_2sigma"] == 1.0
    assert metrics["known_pixel_violations"] == 0 and metrics["nonfinite_fill_pixels"] == 0
    assert metrics["n_scored_pixels"] == 6 * 15 == result["groups"]["g"]["n_masked_pixels"]
    assert metrics["seconds"] >= 0 and metrics["seconds_per_megapixel"] is not None
    json.dumps(dict(result), allow_nan=False)


def test_offset_gives_rmse_in_sigma_units_and_pools_by_pixels():
    one = _noise_case("one", sigma=1.0, seed=1)
    two = _noise_case("two", sigma=2.0, seed=2)
    two.mask[20:30, 20:30] = True  # 90 + 100 pixels
    c = 0.6
    result = evaluate_cases([one, two], {"shift": _oracle([one, two], offset=c)}, progress=False)
    rows = {row["name"]: row["methods"]["shift"]["rmse"] for row in result["per_image"]}
    assert rows["one"] == pytest.approx(c / 1.0, rel=1e-12)
    assert rows["two"] == pytest.approx(c / 2.0, rel=1e-12)
    pooled = math.sqrt((90 * (c / 1.0) ** 2 + 190 * (c / 2.0) ** 2) / 280)
    metrics = result["groups"]["g"]["methods"]["shift"]
    assert metrics["rmse"] == pytest.approx(pooled, rel=1e-12)
    assert metrics["rmse"] != pytest.approx((rows["one"] + rows["two"]) / 2)
    assert metrics["n_images"] == 2 and result["groups"]["g"]["n_masked_pixels"] == 280
    assert metrics["coverage_1sigma"] is None and metrics["has_std"] is False  # no std returned


def test_groups_are_pooled_apart_and_overall():
    one, two = _noise_case("one", group="lsst"), _noise_case("two", sigma=2.0, group="")
    result = evaluate_cases([one, two], {"shift": _oracle([one, two], offset=1.0)}, progress=False)
    assert set(result["groups"]) == {"lsst", "default"}
    assert result["groups"]["lsst"]["methods"]["shift"]["rmse"] == pytest.approx(1.0)
    assert result["groups"]["default"]["methods"]["shift"]["rmse"] == pytest.approx(0.5)
    assert result["overall"]["methods"]["shift"]["rmse"] == pytest.approx(math.sqrt((1 + 0.25) / 2))


def test_source_and_sky_pixels_are_scored_apart():
    sigma = 1.0
    truth = np.random.default_rng(3).normal(0.0, 0.01, (SIZE, SIZE))
    truth[10:20, 10:20] += 100.0  # a bright block: source pixels
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[12:16, 4:16] = True  # 4 x 6 on sky, 4 x 6 on the block
    case = Case("block", truth, mask, sigma)
    result = evaluate_cases([case], {"m": _oracle([case], offset=0.5, source_offset=1.5, std=1.0)}, progress=False)
    metrics = result["groups"]["default"]["methods"]["m"]
    assert metrics["n_source_pixels"] == 24 and metrics["n_sky_pixels"] == 24
    assert metrics["rmse_source"] == pytest.approx(1.5, rel=1e-9)
    assert metrics["rmse_sky"] == pytest.approx(0.5, rel=1e-9)
    assert metrics["rmse"] == pytest.approx(math.sqrt((1.5**2 + 0.5**2) / 2), rel=1e-9)
    # std 1: every sky pixel (error 0.5) lies within 1 sigma, no source pixel (error 1.5) does; all within 2.
    assert metrics["coverage_1sigma"] == pytest.approx(0.5) and metrics["coverage_1sigma_source"] == 0.0
    assert metrics["coverage_2sigma"] == 1.0 and metrics["coverage_2sigma_source"] == 1.0


def test_sources_the_holes_hide_whole_are_scored_apart_from_visible_ones():
    # Two bright blocks: the holes hide one whole and half of the other. Only the half-hidden one is
    # a visible source (its segment keeps >= 5 unhidden source pixels); the hidden one counts among
    # the source pixels but not the visible ones, in RMSE, coverage and aperture flux alike.
    truth = np.random.default_rng(4).normal(0.0, 0.01, (48, 48))
    truth[5:11, 5:11] += 100.0  # hidden whole
    truth[30:40, 30:40] += 100.0  # the left half hidden
    mask = np.zeros(truth.shape, dtype=bool)
    mask[3:13, 3:13] = True
    mask[30:40, 28:35] = True
    case = Case("blocks", truth, mask, 1.0)

    def fill(image, hidden, noise_sigma):  # error 0.5 on the visible block, 3.0 on the hidden one
        out = np.where(hidden, truth, image)
        out[30:40, 28:35] += np.where(truth[30:40, 28:35] > 50, 0.5, 0.0)
        out[3:13, 3:13] += np.where(truth[3:13, 3:13] > 50, 3.0, 0.0)
        return out, np.full(truth.shape, 1.0)

    metrics = evaluate_cases([case], {"m": fill}, progress=False)["groups"]["default"]["methods"]["m"]
    assert metrics["n_source_pixels"] == 36 + 50 and metrics["n_visible_source_pixels"] == 50
    assert metrics["rmse_visible_source"] == pytest.approx(0.5, rel=1e-5)  # truth scored as float32
    assert metrics["rmse_source"] == pytest.approx(math.sqrt((36 * 9.0 + 50 * 0.25) / 86), rel=1e-5)
    assert metrics["coverage_1sigma_visible_source"] == 1.0
    assert metrics["coverage_1sigma_source"] == pytest.approx(50 / 86)
    assert metrics["n_sources"] == 2 and metrics["n_visible_sources"] == 1
    # The visible segment: its 10x10 block, a little more after smoothing; its error sum is 50 x 0.5.
    assert 25.0 / math.sqrt(200) < metrics["aperture_flux_error_rms_visible"] < 25.0 / math.sqrt(100)
    assert metrics["aperture_flux_error_rms"] > 2 * metrics["aperture_flux_error_rms_visible"]


def test_aperture_flux_of_a_half_masked_gaussian_source():
    size = 64  # the background (median of the unmasked half) is then ~0
    yy, xx = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    truth = 200.0 * np.exp(-((yy - centre) ** 2 + (xx - centre) ** 2) / (2 * 2.5**2))
    mask = xx < size // 2  # the left half, source included (symmetric about the centre)
    case = Case("gauss", truth, mask, 1.0)

    def zeros(image, hidden, noise_sigma):
        return np.where(hidden, 0.0, image), None

    result = evaluate_cases([case], {"zeros": zeros, "exact": _oracle([case])}, progress=False)
    methods = result["groups"]["default"]["methods"]
    assert methods["zeros"]["n_sources"] == 1
    assert methods["zeros"]["aperture_flux_rel_error_median_abs"] == pytest.approx(0.5, rel=1e-6)
    assert methods["zeros"]["aperture_flux_error_mean"] < -10  # half the flux, in sigma sqrt(npix) units
    assert methods["zeros"]["aperture_flux_error_rms"] == pytest.approx(-methods["zeros"]["aperture_flux_error_mean"])
    assert methods["exact"]["aperture_flux_error_rms"] == 0.0
    assert result["per_image"][0]["n_sources_hit"] == 1


def test_known_pixel_violation_is_counted():
    case = _noise_case()

    def meddles(image, hidden, noise_sigma):
        out = np.where(hidden, 10.0, image)
        out[0, 0] += 1e-3
        return out, None

    result = evaluate_cases([case], {"meddles": meddles}, progress=False)
    assert result["groups"]["g"]["methods"]["meddles"]["known_pixel_violations"] == 1


def test_bad_pixels_are_hidden_but_never_scored_and_nan_is_not_seen():
    case = _noise_case()
    truth = case.truth.copy()
    bad = np.zeros(truth.shape, dtype=bool)
    bad[8:10, 5:20] = True  # inside the test hole
    truth[bad] = np.nan
    seen = {}

    def spy(image, hidden, noise_sigma):
        seen["hidden"], seen["nan"] = hidden.copy(), np.isnan(image)
        return np.where(hidden, 10.0, image), None

    case = Case("bad", truth, case.mask, 1.0, bad=bad, group="g")
    result = evaluate_cases([case], {"spy": spy}, progress=False)
    assert np.array_equal(seen["hidden"], case.mask | bad) and np.array_equal(seen["nan"], case.mask | bad)
    assert result["groups"]["g"]["n_masked_pixels"] == 4 * 15
    assert result["groups"]["g"]["methods"]["spy"]["rmse"] is not None


def test_baselines_ratios_and_report(tmp_path):
    from lensforge.pipeline.inpaint.images import image_inpainter

    cases = [_noise_case("a", seed=5), _noise_case("b", seed=6)]
    inpainters = {"biharmonic": image_inpainter("biharmonic"), "interpolate": image_inpainter("interpolate"),
                  "fake": _oracle(cases, offset=0.1, std=1.0)}
    result = evaluate_cases(cases, inpainters, progress=False, keep_examples=1)
    group = result["groups"]["g"]
    for name in inpainters:
        assert group["methods"][name]["known_pixel_violations"] == 0
    assert group["methods"]["biharmonic"]["coverage_1sigma"] is None
    ratios = group["ratios_vs_biharmonic"]
    assert set(ratios) == {"interpolate", "fake"}
    assert ratios["fake"]["rmse"] == pytest.approx(group["methods"]["fake"]["rmse"]
                                                   / group["methods"]["biharmonic"]["rmse"])
    assert len(result.example_cases) == 1 and set(result.example_fills[result.example_cases[0].name]) == set(inpainters)
    png = tmp_path / "examples.png"
    plot_examples(result.example_cases, result.example_fills, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_report(result, tmp_path, {"note": float("nan")})
    assert path == tmp_path / REPORT_JSON
    assert json.loads(path.read_text())["provenance"] == {"note": None}
    with pytest.raises(InputError, match="overwrite"):
        write_report(result, tmp_path)
    write_report(result, tmp_path, overwrite=True)


def test_case_checks_shapes():
    with pytest.raises(InputError, match="mask shape"):
        Case("x", np.zeros((4, 4)), np.zeros((4, 5), bool), 1.0)
    with pytest.raises(InputError, match="noise_sigma"):
        Case("x", np.zeros((4, 4)), np.zeros((4, 4), bool), 0.0)


# --- the command ---------------------------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("evaluate-inpainting")(evaluate_inpainting)
    app.command("unused")(lambda: None)  # two commands: the first is invoked by name, as in lensforge's app
    return app


def _invoke(*args: str):
    return CliRunner().invoke(_app(), ["evaluate-inpainting", *map(str, args)])


@pytest.fixture
def fits_inputs(tmp_path):
    """A LSST-like tile (SCIENCE, MASK, VARIANCE) and a radio-like (1, 1, N, N) cube with NaNs, plus masks."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    tile = (5.0 + rng.normal(0, 2.0, (SIZE, SIZE))
            + 80 * np.exp(-((yy - 15) ** 2 + (xx - 12) ** 2) / 8.0)).astype(np.float32)
    bad = np.zeros((SIZE, SIZE), np.int32)
    bad[0, :4] = 1
    (tmp_path / "lsst").mkdir()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tile, name="SCIENCE"), fits.ImageHDU(bad, name="MASK"),
                  fits.ImageHDU(np.full((SIZE, SIZE), 4.0, np.float32), name="VARIANCE")]).writeto(
        tmp_path / "lsst" / "tile.fits")
    cube = rng.normal(0, 1e-3, (1, 1, SIZE, SIZE))
    cube[0, 0, 3, 3] = np.nan
    (tmp_path / "radio").mkdir()
    fits.PrimaryHDU(cube).writeto(tmp_path / "radio" / "cube.fits")
    holes = np.zeros((SIZE, SIZE), np.uint8)
    holes[10:20, 8:16] = 1
    for name in ("m1.fits", "m2.fits"):
        fits.PrimaryHDU(holes).writeto(tmp_path / name)
    return tmp_path


def test_cli_writes_json_and_pngs(fits_inputs):
    tmp = fits_inputs
    out = tmp / "eval"
    done = _invoke(tmp / "lsst" / "tile.fits", tmp / "radio" / "cube.fits", "--out", out, "--mask", tmp / "m1.fits",
                   "--mask", tmp / "m2.fits", "--method", "biharmonic,interpolate", "--quiet")
    assert done.exit_code == 0, done.output
    report = json.loads((out / REPORT_JSON).read_text())
    assert set(report["groups"]) == {"lsst", "radio"}
    lsst = report["groups"]["lsst"]
    assert lsst["n_images"] == 1 and lsst["n_masked_pixels"] == 80 and lsst["n_bad_pixels"] == 4
    assert set(lsst["methods"]) == {"biharmonic", "interpolate"} and "interpolate" in lsst["ratios_vs_biharmonic"]
    assert report["per_image"][0]["noise_sigma"] == pytest.approx(2.0)  # sqrt of the VARIANCE extension
    assert report["per_image"][1]["n_bad_pixels"] == 1  # the NaN of the cube
    assert report["provenance"]["methods"] == ["biharmonic", "interpolate"]
    for png in ("inpainting_examples.png", "inpainting_rmse.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "biharmonic" in done.stdout and str(out / REPORT_JSON) in done.stdout
    assert "visible" in done.stdout.splitlines()[0] and "rmse_visible_source" in lsst["methods"]["biharmonic"]
    assert "source/biharmonic [68%]" in done.stdout.splitlines()[0]
    # One image per group: a ratio, but no interval over images.
    assert lsst["ratio_intervals_vs_biharmonic"]["interpolate"]["rmse"] is None
    assert report["overall"]["ratio_intervals_vs_biharmonic"]["interpolate"]["rmse"] is not None


def test_cli_draws_masks_with_evaluation_mask(fits_inputs, monkeypatch):
    calls = []

    def evaluation_mask(shape, seed, index, signal=None):
        calls.append((shape, seed, index, None if signal is None else signal.shape))
        mask = np.zeros(shape, dtype=bool)
        mask[5:9, 5:9] = True
        return mask

    monkeypatch.setitem(__import__("sys").modules, "lensforge.pipeline.datasets.corpus",
                        types.SimpleNamespace(evaluation_mask=evaluation_mask))
    out = fits_inputs / "eval"
    done = _invoke(fits_inputs / "lsst" / "tile.fits", "--out", out, "--method", "interpolate", "--seed", "4",
                   "--group", "first_test", "--examples", "0", "--quiet")
    assert done.exit_code == 0, done.output
    assert calls == [((SIZE, SIZE), 4, 0, (SIZE, SIZE))]
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["groups"]["first_test"]["n_masked_pixels"] == 16
    assert not (out / "inpainting_examples.png").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such"),
    ("not_fits", "not a readable FITS"),
    ("mask_shape", "does not match"),
    ("method", "unknown in-painting method"),
    ("mask_count", "one per image"),
    ("exists", "--overwrite"),
    ("model_dir", "no such model directory"),
])
def test_cli_bad_input_is_one_line_exit_2(fits_inputs, case, message):
    tmp = fits_inputs
    image, out = tmp / "lsst" / "tile.fits", tmp / "eval"
    args = [image, "--out", out, "--method", "biharmonic", "--mask", tmp / "m1.fits"]
    if case == "missing":
        args[0] = tmp / "nope.fits"
    elif case == "not_fits":
        args[0] = tmp / "text.fits"
        args[0].write_text("not a FITS file\n" * 10)
    elif case == "mask_shape":
        fits.PrimaryHDU(np.zeros((5, 5), np.uint8)).writeto(tmp / "small.fits")
        args[-1] = tmp / "small.fits"
    elif case == "method":
        args[4] = "biharmonic,magic"
    elif case == "mask_count":
        args += ["--mask", tmp / "m2.fits"]
    elif case == "exists":
        out.mkdir()
        (out / REPORT_JSON).write_text("{}")
    elif case == "model_dir":
        args[4] = "model"
        args += ["--model", tmp / "no-model"]
    done = _invoke(*args)
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lensforge: error:") and message in lines[0], done.stderr
    assert "Traceback" not in done.output
    if case == "exists":
        assert (out / REPORT_JSON).read_text() == "{}"


def test_source_segment_pixels_are_the_truth_segments_and_get_their_own_coverage():
    truth = np.random.default_rng(3).normal(0.0, 0.01, (SIZE, SIZE))
    truth[10:20, 10:20] += 100.0
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[12:16, 4:16] = True  # 4 x 6 on sky, 4 x 6 on the block
    case = Case("block", truth, mask, 1.0)
    result = evaluate_cases([case], {"m": _oracle([case], offset=0.5, source_offset=1.5, std=1.0)}, progress=False)
    metrics = result["groups"]["default"]["methods"]["m"]
    n_segment = metrics["n_source_segment_pixels"]
    # The segment (smoothed by a 2-pixel FWHM Gaussian) holds the block and a rim of a pixel or two, not the far sky.
    assert 24 + 4 <= n_segment <= 24 + 4 * 3
    # Within 1 sigma: the rim's pixels (error 0.5), not the block's (1.5).
    assert metrics["coverage_1sigma_source_segment"] == pytest.approx((n_segment - 24) / n_segment)
    assert metrics["rmse_source_segment"] == pytest.approx(
        math.sqrt((24 * 1.5**2 + (n_segment - 24) * 0.5**2) / n_segment), rel=1e-9)


def test_coverage_floor_is_fair_on_segments_and_low_above_3_sigma():
    from lensforge.pipeline.evaluation.image_inpainting import coverage_floor

    rng = np.random.default_rng(5)
    size = 192
    y, x = np.mgrid[0:size, 0:size]
    cases = []
    for index in range(4):
        sky = np.zeros((size, size))
        for _ in range(40):  # faint, resolved sources: most of their pixels lie near 3 sigma
            cy, cx = rng.uniform(10, size - 10, 2)
            sky += rng.uniform(3.0, 8.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 4.0**2))
        mask = np.zeros((size, size), dtype=bool)
        for cy, cx in rng.integers(0, size - 12, (80, 2)):
            mask[cy:cy + 12, cx:cx + 12] = True
        cases.append(Case(f"c{index}", sky + rng.normal(0.0, 1.0, sky.shape), mask, 1.0, group="g"))
    floor = coverage_floor(cases, seed=0)["g"]
    assert floor["n_source_segment"] > 1500 and floor["n_source"] > 1500
    # ~2,000 pixels each: a binomial standard error of 0.01 on a coverage.
    assert floor["all"] == pytest.approx(0.683, abs=0.02)
    assert floor["source_segment"] == pytest.approx(0.683, abs=0.03)  # a set that does not look at the noise
    assert floor["source"] < floor["source_segment"] - 0.04  # picked for its noise going up (here 0.61 vs 0.68)
    assert coverage_floor(cases, seed=0) == coverage_floor(cases, seed=0)


def test_ratio_intervals_resample_images_paired_and_bracket_the_pooled_ratio():
    from lensforge.pipeline.evaluation.image_inpainting import RATIO_KEYS, ratio_intervals

    # Every image's error over biharmonic's is the same factor: every resample gives that ratio exactly.
    cases = [_noise_case(f"c{i}", seed=i) for i in range(6)]
    result = evaluate_cases(cases, {"biharmonic": _oracle(cases, offset=2.0), "half": _oracle(cases, offset=1.0)},
                            progress=False)
    interval = result["groups"]["g"]["ratio_intervals_vs_biharmonic"]["half"]["rmse"]
    assert interval == pytest.approx([0.5, 0.5], rel=1e-12)
    assert result["overall"]["ratio_intervals_vs_biharmonic"]["half"]["rmse"] == pytest.approx([0.5, 0.5], rel=1e-12)
    # One image holds most of biharmonic's error and the method's gain: the pooled ratio depends on drawing
    # it, and the interval shows it (a bootstrap over pixels would not).
    base = np.array([[1.0] * len(RATIO_KEYS)] * 9 + [[100.0] * len(RATIO_KEYS)])
    method = base * np.array([[1.0]] * 9 + [[0.25]])
    intervals = ratio_intervals({"biharmonic": base, "m": method}, seed=0)["m"]["rmse_source"]
    pooled = math.sqrt(method.sum(axis=0)[0] / base.sum(axis=0)[0])
    assert intervals[0] < pooled < intervals[1]
    assert intervals[0] < 0.6 and intervals[1] > 0.9
    assert ratio_intervals({"biharmonic": base, "m": method}, seed=0) == ratio_intervals(
        {"biharmonic": base, "m": method}, seed=0)
    # One image: no interval; a baseline with no error where the method has some: no ratio.
    assert ratio_intervals({"biharmonic": base[:1], "m": method[:1]})["m"]["rmse"] is None
    assert ratio_intervals({"biharmonic": 0 * base, "m": method})["m"]["rmse"] is None
