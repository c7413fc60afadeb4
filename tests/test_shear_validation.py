"""The shear validation harness: conventions, pairing, control variate, injected biases, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lensforge.catalogs.store import create_store, finalize_store, open_store, read_labels, write_objects
from lensforge.errors import InputError
from lensforge.pipeline.config import build_config
from lensforge.pipeline.inpaint.symmetry import interpolated_centre, psf_fwhm_pixels
from lensforge.pipeline.shear.calibration import bias_shift, distortion_to_shear
from lensforge.pipeline.shear.validation import (
    check_request,
    complete_pairs,
    measure_chunk,
    response_control_variate,
    response_shift,
    validation_report,
)
from lensforge.pipeline.stamps.simulate import simulate_stamps


@pytest.mark.parametrize("axis_ratio", [1.0, 0.9, 0.5, 0.2])
def test_distortion_to_shear_of_an_ellipse(axis_ratio):
    angle = np.deg2rad(30.0)
    distortion = (1 - axis_ratio**2) / (1 + axis_ratio**2)
    shear = (1 - axis_ratio) / (1 + axis_ratio)
    g1, g2 = distortion_to_shear(np.array([distortion * np.cos(2 * angle)]), np.array([distortion * np.sin(2 * angle)]))
    assert g1[0] == pytest.approx(shear * np.cos(2 * angle), abs=1e-12)
    assert g2[0] == pytest.approx(shear * np.sin(2 * angle), abs=1e-12)


def test_distortion_beyond_one_has_no_shear():
    g1, g2 = distortion_to_shear(np.array([0.8, 1.0]), np.array([0.7, 0.0]))
    assert np.isnan(g1).all() and np.isnan(g2).all()


def test_complete_pairs_drops_lone_members():
    groups = np.array([0, 0, 1, 1, 2, 2])
    usable = np.array([True, True, True, False, True, True])
    np.testing.assert_array_equal(complete_pairs(groups, usable), [True, True, False, False, True, True])


def test_control_variate_keeps_the_mean_and_removes_response_scatter():
    rng = np.random.default_rng(1)
    n = 2000
    g1, g2 = rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n)
    response = np.eye(2) * rng.normal(1.0, 0.2, n)[:, None, None]
    e1, e2 = response[:, 0, 0] * g1, response[:, 1, 1] * g2  # each shape exactly its own response times g
    y1, y2 = response_control_variate(e1, e2, response, g1, g2, np.ones(n, bool))
    mean = response[:, 0, 0].mean()
    np.testing.assert_allclose(y1, mean * g1, atol=1e-15)  # scatter from R_i gone; <R> g remains
    np.testing.assert_allclose(y2, mean * g2, atol=1e-15)


def test_bias_shift_is_the_difference_of_the_fits():
    rng = np.random.default_rng(2)
    n = 400
    labels = {"g1": rng.uniform(-0.05, 0.05, n), "g2": rng.uniform(-0.05, 0.05, n), "ring_pair_id": np.arange(n) // 2}
    e1, e2 = 1.7 * labels["g1"], 1.7 * labels["g2"]
    shift = bias_shift(labels, e1, e2, 1.02 * e1 + 3e-4, 1.02 * e2, 1.7, rng=np.random.default_rng(0))
    assert shift["g1"]["dm"] == pytest.approx(0.02, abs=1e-12)
    assert shift["g1"]["dc"] == pytest.approx(3e-4 / 1.7, abs=1e-12)
    assert shift["g2"]["dm"] == pytest.approx(0.02, abs=1e-12) and shift["g2"]["dm_err"] < 1e-12


def test_response_shift_error_counts_the_scatter_of_the_response_change():
    # Masks change each object's response by a random factor (1 - f_i); shapes are exactly R_i g. The control
    # variate leaves dm = -<f> with no noise in the shapes, so the error must be that of the mean of f itself.
    rng = np.random.default_rng(3)
    n_pairs = 2000
    g = np.repeat(rng.uniform(-0.05, 0.05, (n_pairs, 2)), 2, axis=0)
    labels = {"g1": g[:, 0], "g2": g[:, 1], "ring_pair_id": np.repeat(np.arange(n_pairs), 2)}
    raw_response = np.eye(2) * rng.normal(1.0, 0.1, 2 * n_pairs)[:, None, None]
    loss = np.where(rng.random(2 * n_pairs) < 0.5, 0.0, rng.exponential(0.02, 2 * n_pairs))  # half the masks miss
    response = raw_response * (1.0 - loss)[:, None, None]
    raw_shapes = (raw_response[:, 0, 0] * g[:, 0], raw_response[:, 1, 1] * g[:, 1])
    shapes = (response[:, 0, 0] * g[:, 0], response[:, 1, 1] * g[:, 1])
    usable = np.ones(2 * n_pairs, bool)
    shift = response_shift(labels, raw_shapes, raw_response, shapes, response, usable, n_bootstrap=400)
    expected = (response[:, 0, 0].mean() - raw_response[:, 0, 0].mean()) / raw_response[:, 0, 0].mean()
    assert shift["g1"]["dm"] == pytest.approx(expected, rel=1e-9)
    pair_loss = loss.reshape(n_pairs, 2).mean(axis=1)
    assert shift["g1"]["dm_err"] == pytest.approx(pair_loss.std() / np.sqrt(n_pairs), rel=0.2)
    # The same shift from shapes adjusted once with the whole sample's means: equal dm, an error ~100x too small.
    adjusted_raw = response_control_variate(*raw_shapes, raw_response, g[:, 0], g[:, 1], usable)
    adjusted = response_control_variate(*shapes, response, g[:, 0], g[:, 1], usable)
    fixed = bias_shift(labels, *adjusted_raw, *adjusted, raw_response.mean(axis=0), rng=np.random.default_rng(0))
    assert fixed["g1"]["dm"] == pytest.approx(shift["g1"]["dm"], abs=1e-12)
    assert fixed["g1"]["dm_err"] < 0.01 * shift["g1"]["dm_err"]
    # A second variant whose responses differ from the first by a small, steady amount: each shift carries the
    # scatter of f, their difference (same pairs, same draws) does not.
    first, second = [], []
    response_shift(labels, raw_shapes, raw_response, shapes, response, usable, n_bootstrap=400, draws_out=first)
    near = response * 1.001
    other = response_shift(labels, raw_shapes, raw_response, (near[:, 0, 0] * g[:, 0], near[:, 1, 1] * g[:, 1]),
                           near, usable, n_bootstrap=400, draws_out=second)
    assert first[0].shape == (400, 2, 2)
    difference = second[0][:, 0, 0] - first[0][:, 0, 0]
    assert other["g1"]["dm"] - shift["g1"]["dm"] == pytest.approx(0.001 * (1 + expected), rel=1e-6)
    assert difference.std() < 0.05 * shift["g1"]["dm_err"]


@pytest.mark.parametrize(("methods", "variants", "match"), [
    (["HSM"], ["raw"], "unknown shear methods"),
    (["KSB"], ["raw", "inpaint"], "unknown variants"),
    (["KSB"], ["biharmonic"], "must include 'raw'"),
])
def test_check_request_names_what_is_wrong(methods, variants, match):
    with pytest.raises(InputError, match=match):
        check_request(methods, variants)


def _calibration_store(tmp_path, n=96, g_min=0.01, g_max=0.05):
    """A small store with counterfactuals: bright stamps, per-object shears g_min <= |g| <= g_max."""
    config = build_config({"seed": 21, "survey": {"stamp_size": 32},
                           "population": {"snr_min": 200.0, "snr_max": 400.0},
                           "shear": {"kind": "uniform", "g_min": g_min, "g_max": g_max},
                           "simulation": {"n_objects": n, "chunk_size": 48, "counterfactual_delta_g": 0.01}})
    path = tmp_path / "cal.zarr"
    create_store(path, n, 32, 48, counterfactual_delta_g=0.01, attrs={"pixel_scale_arcsec": 0.2})
    for start in range(0, n, 48):
        simulate_stamps(config, start, start + 48).write(path)
    finalize_store(path)
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    path = _calibration_store(tmp_path_factory.mktemp("cal"))
    parts = [measure_chunk(path, a, a + 48, ("REGAUSS",), ("raw", "biharmonic")) for a in (0, 48)]
    measurements = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return path, read_labels(open_store(path)), measurements


def test_raw_set_is_unbiased_within_its_errors(measured):
    _, labels, measurements = measured
    report = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=100)
    entry = report["methods"]["REGAUSS"]
    assert entry["n_pairs_used"] >= 45
    for component in ("g1", "g2"):
        fit = entry["raw"][component]
        # The requirement itself: |m| < 1e-3, |c| < 1e-4. The control-variate errors (m_err ~2e-4,
        # c_err ~5e-6) resolve it; measured m1, m2 = -8.4e-4, -1.5e-4 and c1, c2 = 0.9e-5, 1.1e-5.
        assert fit["m_err"] < 5e-4 and fit["c_err"] < 5e-5
        assert abs(fit["m"]) < 1e-3
        assert abs(fit["c"]) < 1e-4
        # The control variate must shrink the error, not hide a bias: same data, smaller error bars.
        assert fit["m_err"] < entry["raw_without_control_variate"][component]["m_err"]
    assert entry["biharmonic"]["control_variate_response"] == "biharmonic"
    assert entry["biharmonic"]["shift"]["g1"]["dm_err"] > 0
    # The noise test: S/N does not know the shear, so weighting by it leaves m within its (paired) error.
    weighting = entry["snr_weighting"]
    assert all(0 < weighting[c]["dm_err"] < 5e-4 for c in ("g1", "g2"))
    secant = entry["snr_weighting_secant"]  # the same test on the O(g^2)-free calibration: the verdict's
    assert all(0 < secant[c]["dm_err"] < 5e-4 for c in ("g1", "g2"))
    zero = entry["snr_weighting_zero_shear"]  # its g -> 0 limit: the verdict's
    assert all(secant[c]["dm_err"] < zero[c]["dm_err"] < 5e-3 for c in ("g1", "g2"))
    verdict = report["verdicts"]["REGAUSS"]
    assert verdict["m_unchanged_when_snr_weighted"] is verdict["m_unchanged_when_snr_weighted_zero_shear"] is True
    assert verdict["m_unchanged_when_snr_weighted_secant"] is verdict["m_unchanged_when_snr_weighted_local"] is True


def test_a_set_at_one_shear_modulus_is_judged_at_its_own_shear(measured):
    # g_min = g_max: no g -> 0 limit to take (three values of |g| are needed); the verdict is the secant one's.
    _, labels, measurements = measured
    angle = np.arctan2(labels["g2"], labels["g1"])
    fixed = {**labels, "g1": 0.03 * np.cos(angle), "g2": 0.03 * np.sin(angle)}
    report = validation_report(fixed, measurements, ["REGAUSS"], ["raw"], n_bootstrap=20)
    entry, verdict = report["methods"]["REGAUSS"], report["verdicts"]["REGAUSS"]
    assert "snr_weighting_zero_shear" not in entry and "m_unchanged_when_snr_weighted_zero_shear" not in verdict
    assert "snr_weighting_secant" in entry
    assert verdict["m_unchanged_when_snr_weighted"] is verdict["m_unchanged_when_snr_weighted_secant"]


def test_noise_verdict_is_the_zero_shear_limits_and_the_others_are_kept():
    from lensforge.pipeline.shear.validation import _verdicts

    def shift(dm, dm_err):
        return {c: {"dm": dm, "dm_err": dm_err} for c in ("g1", "g2")}

    base = {"raw": {"meets_requirement": True}}
    methods = {"A": {**base, "snr_weighting": shift(3e-4, 1e-4), "snr_weighting_secant": shift(1e-4, 1e-4)},
               "B": {**base, "snr_weighting": shift(1e-4, 1e-4)},
               "C": {**base, "snr_weighting": shift(1e-4, 1e-4), "snr_weighting_secant": shift(3e-4, 1e-4)},
               "D": {**base, "snr_weighting": shift(3e-4, 1e-4), "snr_weighting_secant": shift(3e-4, 1e-4),
                     "snr_weighting_zero_shear": shift(1e-4, 2e-4)},
               "E": {**base, "snr_weighting": shift(1e-4, 1e-4), "snr_weighting_secant": shift(1e-4, 1e-4),
                     "snr_weighting_zero_shear": shift(5e-4, 2e-4)}}
    verdicts = _verdicts(methods, ["raw"])
    assert verdicts["A"]["m_unchanged_when_snr_weighted"] and not verdicts["A"]["m_unchanged_when_snr_weighted_local"]
    assert verdicts["B"]["m_unchanged_when_snr_weighted"]
    assert "m_unchanged_when_snr_weighted_secant" not in verdicts["B"]
    assert not verdicts["C"]["m_unchanged_when_snr_weighted"] and verdicts["C"]["m_unchanged_when_snr_weighted_local"]
    # With the g -> 0 limit the verdict is its: a shift at the sample's shears alone (D) passes,
    # one at g -> 0 (E) fails.
    assert verdicts["D"]["m_unchanged_when_snr_weighted"] and not verdicts["D"]["m_unchanged_when_snr_weighted_secant"]
    assert not verdicts["E"]["m_unchanged_when_snr_weighted"] and verdicts["E"]["m_unchanged_when_snr_weighted_secant"]
    assert verdicts["E"]["m_unchanged_when_snr_weighted_zero_shear"] is False


def _raw_fit(labels, measurements):
    report = validation_report(labels, measurements, ["REGAUSS"], ["raw"], n_bootstrap=50)
    return report["methods"]["REGAUSS"]["raw"]


def test_images_sheared_by_1_01_g_give_m_of_0_01(measured, tmp_path):
    """A second store whose shears are 1.01 times the first's (same galaxies, same noise), fitted with the
    first store's labels: the images carry 1.01 g while the labels say g, so m rises by 0.01."""
    _, labels, measurements = measured
    scaled = _calibration_store(tmp_path, g_min=0.0101, g_max=0.0505)
    parts = [measure_chunk(scaled, a, a + 48, ("REGAUSS",), ("raw",)) for a in (0, 48)]
    lied = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    np.testing.assert_allclose(read_labels(open_store(scaled))["g1"], 1.01 * labels["g1"], rtol=1e-9)
    honest, biased = _raw_fit(labels, measurements), _raw_fit(labels, lied)
    for component in ("g1", "g2"):
        assert biased[component]["m"] - honest[component]["m"] == pytest.approx(0.01, abs=5e-4)
        assert abs(biased[component]["c"] - honest[component]["c"]) < 5e-5


def test_images_sheared_by_g1_plus_0_01_give_c1_of_0_01(measured):
    """The g1 + dg counterfactuals measured as if they were the stamps: an additive shear of +0.01 on g1."""
    path, labels, measurements = measured
    group = open_store(path)
    shifted = dict(measurements)
    parts = []
    for start in (0, 48):
        images = np.asarray(group["counterfactuals"][start:start + 48, 0])
        sigma = np.asarray(group["noise_sigma"][start:start + 48])
        parts.append(measure_shear_of(images, np.asarray(group["psf"][0]), sigma))
    shifted["REGAUSS/raw/e1"] = np.concatenate([p[0] for p in parts])
    shifted["REGAUSS/raw/e2"] = np.concatenate([p[1] for p in parts])
    honest, biased = _raw_fit(labels, measurements), _raw_fit(labels, shifted)
    assert biased["g1"]["c"] - honest["g1"]["c"] == pytest.approx(0.01, abs=3e-4)
    assert abs(biased["g2"]["c"] - honest["g2"]["c"]) < 3e-4
    assert abs(biased["g1"]["m"] - honest["g1"]["m"]) < 5e-3


def measure_shear_of(images, psf, noise_sigma):
    from lensforge.pipeline.shear.measure import measure_shear

    shapes = measure_shear(images, psf, 0.2, "REGAUSS", noise_sigma=noise_sigma)
    return distortion_to_shear(shapes["e1"], shapes["e2"])


def test_measure_chunk_needs_counterfactuals(tmp_path):
    path = tmp_path / "plain.zarr"
    create_store(path, 4, 32, 4, attrs={"pixel_scale_arcsec": 0.2})
    write_objects(path, 0, simulate_stamps(build_config({"survey": {"stamp_size": 32},
                                                         "simulation": {"n_objects": 4}}), 0, 4).to_arrays())
    with pytest.raises(InputError, match="no counterfactuals"):
        measure_chunk(path, 0, 4)


@pytest.mark.slow
def test_validate_shear_cli_writes_report_and_figures(tiny_config_values, tmp_path):
    from lensforge.flows.cli import app

    runner = CliRunner()
    options = ["--out", tiny_config_values["out_dir"], "--name", "cal", "--set", "survey.stamp_size=32",
               "--set", "simulation.n_objects=32", "--set", "simulation.chunk_size=16",
               "--set", "simulation.counterfactual_delta_g=0.01", "--set", "dask.n_workers=1"]
    result = runner.invoke(app, ["validate-shear", *options])
    assert result.exit_code == 2 and "no such store" in result.output
    assert runner.invoke(app, ["simulate", *options, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["validate-shear", *options, "--methods", "KSB", "--quiet", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    report_dir = tmp_path / "runs" / "cal" / "report"
    report = json.loads((report_dir / "shear_validation_trainset.json").read_text())
    assert set(report["methods"]) == {"KSB"} and set(report["methods"]["KSB"]) >= {"raw", "none", "biharmonic"}
    assert report["provenance"]["store_sha256_in_manifest"] is not None
    group = open_store(tmp_path / "runs" / "cal" / "trainset.zarr")
    flagged = interpolated_centre(np.asarray(group["masks"][:]), psf_fwhm_pixels(np.asarray(group["psf"][:])))
    if 0 < flagged.sum() < flagged.size:  # the paired shifts without the stamps whose centre is in-painted
        centre = report["centre_not_inpainted"]
        assert centre["n_flagged"] == flagged.sum() and set(centre["methods"]["KSB"]) >= {"n_pairs_used", "biharmonic"}
        assert centre["methods"]["KSB"]["n_pairs_used"] < report["methods"]["KSB"]["n_pairs_used"]
    else:
        assert "centre_not_inpainted" not in report
    assert (report_dir / "shear_validation_trainset_summary.png").stat().st_size > 10_000
    assert (report_dir / "shear_validation_trainset_KSB.png").stat().st_size > 10_000
    first = (report_dir / "shear_validation_trainset.json").read_bytes()
    assert runner.invoke(app, ["validate-shear", *options, "--methods", "KSB", "--quiet", "--bootstrap", "20"]
                         ).exit_code == 0
    assert (report_dir / "shear_validation_trainset.json").read_bytes() == first  # same inputs, same bytes
    result = runner.invoke(app, ["validate-shear", *options, "--variants", "raw,model"])
    assert result.exit_code == 2 and "no inpainted array" in result.output


# --- the image in-painter as a stamp in-painting (issue 20 (b), lever: the R2 3/5 in-painter) ----------

def test_image_inpainter_on_stamps_keeps_known_pixels_and_has_no_preferred_axis(measured):
    """D4 mean: a stamp turned or flipped is filled as the turned or flipped fill (to float rounding); the
    network alone is not equivariant (its fills of a turned stamp differ by ~1 sigma), which a shear sees."""
    from lensforge.pipeline.inpaint.stamps import inpaint_with_image_inpainter

    path, _, _ = measured
    group = open_store(path)
    images = np.asarray(group["images"][:48])
    masks = np.asarray(group["masks"][:48]) != 0
    masks[:, 10:14, 12:20] = True  # a patch on every galaxy (stamps are 32x32, galaxies central)
    sigma = np.asarray(group["noise_sigma"][:48])
    filled = inpaint_with_image_inpainter(images, masks, sigma)
    np.testing.assert_array_equal(filled[~masks], images[~masks].astype(np.float32))
    assert np.all(np.isfinite(filled)) and not np.array_equal(filled[masks], images[masks])

    def turned(stack):
        return np.ascontiguousarray(np.rot90(stack, 1, axes=(1, 2)))

    for symmetrise, agrees in ((True, True), (False, False)):
        plain = inpaint_with_image_inpainter(images, masks, sigma, symmetrise=symmetrise)
        rotated = inpaint_with_image_inpainter(turned(images), turned(masks), sigma, symmetrise=symmetrise)
        worst = np.max(np.abs(turned(plain) - rotated) / sigma[:, None, None])
        assert bool(worst < 1e-4) is agrees, worst
    flipped = inpaint_with_image_inpainter(images[:, :, ::-1].copy(), masks[:, :, ::-1].copy(), sigma)
    assert np.max(np.abs(filled[:, :, ::-1] - flipped) / sigma[:, None, None]) < 1e-4


def test_image_model_variant_is_measured_and_judged_against_biharmonic(measured):
    path, labels, _ = measured
    parts = [measure_chunk(path, a, a + 48, ("REGAUSS",), ("raw", "biharmonic", "image_model")) for a in (0, 48)]
    measurements = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    assert np.isfinite(measurements["REGAUSS/image_model/e1"]).mean() > 0.9
    assert np.isfinite(measurements["REGAUSS/image_model/response"]).all(axis=(1, 2)).mean() > 0.9
    report = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic", "image_model"],
                               n_bootstrap=50)
    verdict = report["verdicts"]["REGAUSS"]
    worst = verdict["worst_abs_dm"]
    assert set(worst) == {"image_model", "biharmonic"}
    assert verdict["image_model_shift_below_biharmonic"] is (worst["image_model"] < worst["biharmonic"])
    assert "model_shift_below_biharmonic" not in verdict
    assert set(verdict["worst_abs_dm_self_calibrated"]) == {"image_model", "biharmonic"}


def test_self_calibration_removes_a_multiplicative_loss_that_the_raw_calibration_sees(measured):
    """A variant whose shapes and counterfactual responses are the raw ones times 0.9 (what an in-painting
    that washes out 10 % of every shape would give): calibrated by the raw response, m drops by 0.1;
    calibrated by its own response, as metacalibration does, nothing is left."""
    _, labels, measurements = measured
    scaled = dict(measurements)
    for key in ("e1", "e2", "response"):
        scaled[f"REGAUSS/biharmonic/{key}"] = 0.9 * measurements[f"REGAUSS/raw/{key}"]
    entry = validation_report(labels, scaled, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=50)["methods"]["REGAUSS"]
    own = entry["biharmonic"]["self_calibrated"]
    for component in ("g1", "g2"):
        raw_m = entry["raw"][component]["m"]
        assert entry["biharmonic"]["shift"][component]["dm"] == pytest.approx(-0.1 * (1 + raw_m), abs=1e-9)
        assert abs(own["shift"][component]["dm"]) < 1e-9 and abs(own["shift"][component]["dc"]) < 1e-12
        assert own[component]["m"] == pytest.approx(raw_m, abs=1e-9)
    assert "self_calibrated" not in entry["raw"]


def test_a_failed_none_fit_does_not_drop_the_pair_from_the_in_paintings(measured):
    # 'none' fails where a mask hides the core; those pairs must stay in biharmonic's shift, not vanish from it.
    _, labels, measurements = measured
    measurements = dict(measurements)
    for key in ("e1", "e2"):
        measurements[f"REGAUSS/none/{key}"] = measurements[f"REGAUSS/biharmonic/{key}"].copy()
        measurements[f"REGAUSS/none/{key}"][:10] = np.nan  # pairs 0-4 fail without in-painting
    measurements["REGAUSS/none/response"] = measurements["REGAUSS/biharmonic/response"]
    both = validation_report(labels, measurements, ["REGAUSS"], ["raw", "none", "biharmonic"], n_bootstrap=20)
    alone = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=20)
    entry = both["methods"]["REGAUSS"]
    n_pairs = alone["methods"]["REGAUSS"]["n_pairs_used"]
    assert entry["n_pairs_used"] == entry["biharmonic"]["n_pairs_used"] == n_pairs
    assert entry["none"]["n_pairs_used"] == n_pairs - 5
    assert entry["biharmonic"]["shift"] == alone["methods"]["REGAUSS"]["biharmonic"]["shift"]


def test_symmetric_variants_take_the_mirror_and_are_judged_against_biharmonic(measured):
    """``symmetric`` and ``image_model_symmetric``: the mirror where it is known, their own fill elsewhere."""
    from lensforge.pipeline.inpaint.stamps import inpaint_arrays, inpaint_with_image_inpainter
    from lensforge.pipeline.inpaint.symmetry import point_symmetric_fill

    path, labels, _ = measured
    group = open_store(path)
    images, sigma = np.asarray(group["images"][:48]), np.asarray(group["noise_sigma"][:48])
    masks = np.asarray(group["masks"][:48]) != 0
    masks[:, 10:14, 12:20] = True  # a patch on every galaxy's wing, its mirror known (stamps are 32x32)
    network = inpaint_with_image_inpainter(images, masks, sigma)
    both = inpaint_with_image_inpainter(images, masks, sigma, point_symmetric=True)
    mirror, mirrored = point_symmetric_fill(images, masks, network)
    np.testing.assert_array_equal(both, mirror)
    np.testing.assert_array_equal(both[~mirrored], network[~mirrored])
    assert mirrored[:, 10:14, 12:20].mean() > 0.75 and not mirrored[~masks].any()  # (the stamps own defects too)
    classical, _ = inpaint_arrays("symmetric", images, masks, sigma)
    biharmonic, _ = inpaint_arrays("biharmonic", images, masks, sigma)
    expected, classical_mirrored = point_symmetric_fill(images, masks, biharmonic)
    np.testing.assert_array_equal(classical, expected)
    np.testing.assert_array_equal(classical[~classical_mirrored], biharmonic[~classical_mirrored])

    variants = ["raw", "biharmonic", "symmetric", "image_model_symmetric"]
    parts = [measure_chunk(path, a, a + 48, ("REGAUSS",), variants) for a in (0, 48)]
    measurements = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    report = validation_report(labels, measurements, ["REGAUSS"], variants, n_bootstrap=50)
    verdict = report["verdicts"]["REGAUSS"]
    assert set(verdict["worst_abs_dm"]) == {"image_model_symmetric", "biharmonic"}  # symmetric is classical
    below = verdict["worst_abs_dm"]["image_model_symmetric"] < verdict["worst_abs_dm"]["biharmonic"]
    assert verdict["image_model_symmetric_shift_below_biharmonic"] is below
    assert "shift_minus_biharmonic" in report["methods"]["REGAUSS"]["image_model_symmetric"]
    assert "shift" in report["methods"]["REGAUSS"]["symmetric"]


def test_excluded_objects_leave_every_variant_with_their_ring_partners(measured):
    """exclude= (the interpolated-centre flag) drops an object and its ring partner from raw and every
    in-painting alike, so the shifts stay paired; the kept objects' fit is the one without them."""
    _, labels, measurements = measured
    groups = np.asarray(labels["ring_pair_id"])
    exclude = np.zeros(groups.size, bool)
    exclude[[0, 7]] = True  # one member each of (at most) two ring pairs
    dropped_pairs = np.unique(groups[exclude]).size
    full = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=20)
    cut = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=20, exclude=exclude)
    assert cut["methods"]["REGAUSS"]["n_pairs_used"] == full["methods"]["REGAUSS"]["n_pairs_used"] - dropped_pairs
    # The same as the measurements with those pairs' shapes removed by hand.
    gone = np.isin(groups, groups[exclude])
    by_hand = {key: np.where(gone, np.nan, value) if key.endswith(("/e1", "/e2")) else value
               for key, value in measurements.items()}
    manual = validation_report(labels, by_hand, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=20)
    assert cut["methods"]["REGAUSS"]["biharmonic"]["shift"] == manual["methods"]["REGAUSS"]["biharmonic"]["shift"]
    assert cut["methods"]["REGAUSS"]["raw"]["g1"] == manual["methods"]["REGAUSS"]["raw"]["g1"]
    assert measurements["REGAUSS/raw/e1"][0] == measurements["REGAUSS/raw/e1"][0]  # the input is not altered


def test_the_centre_not_inpainted_block_is_the_report_without_the_flagged_stamps(measured):
    from lensforge.flows.shear_validation import centre_not_inpainted

    _, labels, measurements = measured
    flagged = np.zeros(np.asarray(labels["ring_pair_id"]).size, bool)
    flagged[:6] = True
    block = centre_not_inpainted(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], flagged, 20, 0)
    cut = validation_report(labels, measurements, ["REGAUSS"], ["raw", "biharmonic"], n_bootstrap=20, exclude=flagged)
    assert block["n_flagged"] == 6
    assert block["methods"]["REGAUSS"] == {"n_pairs_used": cut["methods"]["REGAUSS"]["n_pairs_used"],
                                           "biharmonic": {"shift": cut["methods"]["REGAUSS"]["biharmonic"]["shift"]}}
