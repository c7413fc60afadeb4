"""Shear calibration harness: HSM conventions, response, m/c fit and bootstrap, on GalSim ring tests."""

from __future__ import annotations

import json
import math

import galsim
import numpy as np
import pytest

from lensforge.errors import InputError
from lensforge.pipeline.shear import calibration as shear
from lensforge.pipeline.shear import figures, measure

SCALE = 0.2  # arcsec / pixel
SIZE = 48  # pixels
PSF = galsim.Moffat(beta=3.5, fwhm=0.7)  # arcsec
# (half-light radius [arcsec], intrinsic |g|): from barely to well resolved, nearly round to elliptical.
GALAXIES = ((0.3, 0.2), (0.4, 0.05), (0.5, 0.35), (0.65, 0.5), (0.8, 0.25), (1.2, 0.4))
N_ORIENTATIONS = 8  # ring of position angles k * 180 / 8 degrees: each has its 90-degree partner
SHEARS = (-0.04, -0.02, 0.01, 0.03, 0.05)
DELTA_G = 0.01
METHODS = ("REGAUSS", "KSB", "FOURIER_QUAD")
# |m| allowed on the noiseless rings. REGAUSS meets the requirement, |m| < 1e-3 (measured, GalSim 2.8:
# m1, m2 = -6.2e-4, -7.6e-4 +- 1.5e-4). KSB does not: its own m is +1.21e-3 +- 4e-5 on these rings,
# so its bound is that figure, not the requirement.
M_BOUND = {"REGAUSS": 1e-3, "KSB": 1.3e-3, "FOURIER_QUAD": 1e-3}


def _psf_image() -> np.ndarray:
    return PSF.drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array


def _ring(g1: float, g2: float) -> np.ndarray:
    """Every galaxy at every ring orientation, sheared by (g1, g2), PSF-convolved: (n_gal * 8, SIZE, SIZE)."""
    stamps = []
    for half_light_radius, g_intrinsic in GALAXIES:
        for k in range(N_ORIENTATIONS):
            angle = 2.0 * math.pi * k / N_ORIENTATIONS  # spin 2: the position angle is half of this
            galaxy = galsim.Exponential(half_light_radius=half_light_radius, flux=1000.0).shear(
                g1=g_intrinsic * math.cos(angle), g2=g_intrinsic * math.sin(angle)).shear(g1=g1, g2=g2)
            stamps.append(galsim.Convolve(galaxy, PSF).drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array)
    return np.array(stamps)


def _ring_set(applied) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rings at each shear of SHEARS on g1, then on g2; ``applied(g1, g2)`` gives the shear actually drawn.

    Returns the stamps and labels: the nominal g1, g2, a ring id shared by each ring's 8 stamps, and
    the galaxy id shared by a galaxy's rings at every shear.
    """
    images, g1, g2 = [], [], []
    for component in (0, 1):
        for g in SHEARS:
            nominal = (g, 0.0) if component == 0 else (0.0, g)
            images.append(_ring(*applied(*nominal)))
            g1.append(np.full(len(images[-1]), nominal[0]))
            g2.append(np.full(len(images[-1]), nominal[1]))
    n = sum(len(stack) for stack in images)
    ring = np.arange(n) // N_ORIENTATIONS
    labels = {"g1": np.concatenate(g1), "g2": np.concatenate(g2), "ring_pair_id": ring,
              "galaxy_id": ring % len(GALAXIES)}
    return np.concatenate(images), labels


@pytest.fixture(scope="module")
def rings() -> dict:
    """All stamps of the ring tests, rendered once: nominal, 1.01 g, g1 + 0.002, and the counterfactuals."""
    images, labels = _ring_set(lambda g1, g2: (g1, g2))
    counterfactual = [_ring(DELTA_G, 0.0), _ring(-DELTA_G, 0.0), _ring(0.0, DELTA_G), _ring(0.0, -DELTA_G)]
    return {
        "labels": labels,
        "nominal": images,
        "scaled": _ring_set(lambda g1, g2: (1.01 * g1, 1.01 * g2))[0],
        "offset": _ring_set(lambda g1, g2: (g1 + 0.002, g2))[0],
        "counterfactual": counterfactual,
    }


def _responses(rings: dict, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean 2x2 response and per-object (N, 2, 2) responses of the ring sets (each galaxy's own, tiled)."""
    shapes = [measure.measure_shear(stack, _psf_image(), SCALE, method=method) for stack in rings["counterfactual"]]
    pairs = shear.stack_counterfactuals(*shapes)
    per_galaxy = shear.shear_response(*pairs, DELTA_G, per_object=True)
    n_rings = len(rings["nominal"]) // len(per_galaxy)
    return shear.shear_response(*pairs, DELTA_G), np.tile(per_galaxy, (n_rings, 1, 1))


def _table(rings: dict, key: str, method: str, response: np.ndarray) -> dict:
    shapes = measure.measure_shear(rings[key], _psf_image(), SCALE, method=method)
    assert shapes["flag"].all()
    # The same galaxies are drawn at every shear, so the independent unit is the galaxy (all its
    # rings), not the ring: resampling rings would mix galaxies differently at each shear.
    return shear.shear_bias_table(rings["labels"], shapes["e1"], shapes["e2"], response, group_key="galaxy_id",
                                  n_bootstrap=100, rng=np.random.default_rng(1))


# --- measure_shear ------------------------------------------------------------------------

def test_regauss_returns_distortion_and_ksb_shear():
    psf = galsim.Gaussian(fwhm=0.7)
    image = galsim.Convolve(galsim.Gaussian(sigma=0.6).shear(g1=0.2, g2=-0.1), psf).drawImage(
        nx=SIZE, ny=SIZE, scale=SCALE).array
    applied = galsim.Shear(g1=0.2, g2=-0.1)
    regauss = measure.measure_shear(image[None], psf.drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array, SCALE)
    ksb = measure.measure_shear(image[None], psf.drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array, SCALE, method="KSB")
    assert (regauss["convention"], ksb["convention"]) == ("distortion", "shear")
    # Gaussian galaxy and PSF: re-Gaussianization is exact, e = 2g / (1 + |g|^2) = (0.381, -0.190).
    np.testing.assert_allclose([regauss["e1"][0], regauss["e2"][0]], [applied.e1, applied.e2], atol=1e-4)
    # KSB estimates g itself (here 5% high): nowhere near the distortion.
    np.testing.assert_allclose([ksb["e1"][0], ksb["e2"][0]], [0.2, -0.1], rtol=0.1)


def test_hsm_failures_are_nan_and_flagged_not_exceptions():
    good = _ring(0.0, 0.0)[0]
    images = np.stack([np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), np.nan), good])
    for method in METHODS:
        shapes = measure.measure_shear(images, _psf_image(), SCALE, method=method, noise_sigma=1.0)
        assert shapes["flag"].tolist() == [False, False, True]
        # Fourier_Quad has no per-stamp error or resolution factor: those stay NaN.
        for key in ("e1", "e2") if method == "FOURIER_QUAD" else ("e1", "e2", "e_err", "resolution"):
            assert np.isnan(shapes[key][:2]).all() and np.isfinite(shapes[key][2])


def test_a_diverging_hsm_correction_is_a_failure_not_a_shape():
    # A galaxy far smaller than the PSF, at S/N 15: KSB's PSF correction diverges (|g| = 27 for this
    # noise), as it did on real COSMOS galaxies. A shape that large is a failed measurement.
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    galaxy = galsim.Convolve(galsim.Exponential(half_light_radius=0.1).shear(g1=0.3), psf).drawImage(
        nx=SIZE, ny=SIZE, scale=SCALE).array
    sigma = float(np.sqrt(np.sum(galaxy**2)) / 15)
    psf_image = psf.drawImage(nx=SIZE, ny=SIZE, scale=SCALE)
    stamps = []
    for seed, (low, high) in ((60, (10, 30)), (19, (2, 2.5))):  # HSC's bound also drops the milder divergences
        stamp = galaxy + np.random.default_rng(seed).normal(0.0, sigma, galaxy.shape)
        raw = galsim.hsm.EstimateShear(galsim.Image(stamp, scale=SCALE), psf_image, shear_est="KSB",
                                       guess_sig_gal=3.0, strict=False)
        assert not raw.error_message and low < math.hypot(raw.corrected_g1, raw.corrected_g2) < high
        stamps.append(stamp)
    shapes = measure.measure_shear(np.stack([*stamps, galaxy]), psf_image.array, SCALE, method="KSB",
                                   noise_sigma=sigma)
    assert shapes["flag"].tolist() == [False, False, True] and np.isnan(shapes["e1"][:2]).all()


def test_weights_mask_pixels():
    # A spot 7 pixels from the galaxy's centre pulls its moments; with zero weight there,
    # HSM ignores whatever those pixels hold.
    clean = _ring(0.0, 0.0)[:1]
    spotted = clean.copy()
    spotted[0, 23:25, 31:33] += 5.0
    weights = np.ones((1, SIZE, SIZE))
    weights[0, 22:26, 30:34] = 0.0
    masked_clean = measure.measure_shear(clean, _psf_image(), SCALE, weights=weights)
    masked_spotted = measure.measure_shear(spotted, _psf_image(), SCALE, weights=weights)
    unmasked_clean = measure.measure_shear(clean, _psf_image(), SCALE)
    unmasked_spotted = measure.measure_shear(spotted, _psf_image(), SCALE)
    assert masked_spotted["e1"][0] == pytest.approx(masked_clean["e1"][0], abs=1e-7)
    assert abs(unmasked_spotted["e1"][0] - unmasked_clean["e1"][0]) > 5e-3


def test_fourier_quad_measures_the_shear_of_round_galaxies_of_any_profile():
    """G / N = g for an intrinsically round galaxy, whatever its profile (Zhang 2008), through PSF and pixel."""
    from lensforge.pipeline.shear.fourier_quad import fourier_quad_moments

    for g1, g2 in [(0.03, -0.02), (0.0, 0.05)]:
        stamps = np.array([galsim.Convolve(profile.shear(g1=g1, g2=g2), PSF).drawImage(
            nx=SIZE, ny=SIZE, scale=SCALE).array for profile in (
                galsim.Exponential(half_light_radius=0.5, flux=1000.0), galsim.Sersic(n=4, half_light_radius=0.4),
                galsim.Gaussian(sigma=0.3))])
        moments = fourier_quad_moments(stamps, _psf_image(), np.zeros(3))
        # Measured: within 5e-5 of g (the O(g^2) of a single stamp).
        np.testing.assert_allclose(moments.g1 / moments.n, g1, atol=1e-4)
        np.testing.assert_allclose(moments.g2 / moments.n, g2, atol=1e-4)
        shapes = measure.measure_shear(stamps, _psf_image(), SCALE, method="FOURIER_QUAD")
        assert shapes["convention"] == "shear" and shapes["flag"].all()
        # The per-stamp ellipticity is G / D = (G / N)(N / D): a response N / D below 1, calibrated by R.
        assert np.all(moments.d > moments.n)
        np.testing.assert_allclose(shapes["e1"], g1 * moments.n / moments.d, atol=1e-4)
        np.testing.assert_allclose(shapes["e2"], g2 * moments.n / moments.d, atol=1e-4)


def test_fourier_quad_subtracts_the_noise_power():
    """On pure white noise, G1, G2 and N average to 0 once sigma^2 n_pixels is subtracted from |I(k)|^2."""
    from lensforge.pipeline.shear.fourier_quad import fourier_quad_moments

    noise = np.random.default_rng(3).normal(0.0, 2.0, (400, SIZE, SIZE))
    moments = fourier_quad_moments(noise, _psf_image(), np.full(400, 2.0))
    for values in (moments.g1, moments.g2, moments.n, moments.excess):
        assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values))
    unsubtracted = fourier_quad_moments(noise, _psf_image(), np.zeros(400)).n
    assert abs(unsubtracted.mean()) > 10 * unsubtracted.std() / np.sqrt(400)
    # No source: not measured.
    assert not measure.measure_shear(noise[:50], _psf_image(), SCALE, "FOURIER_QUAD", noise_sigma=2.0)["flag"].all()


# --- ring test: response, m and c ---------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_ring_test_is_unbiased_after_response_calibration(rings, method):
    response, per_object = _responses(rings, method)
    # A round PSF does not mix the components.
    assert abs(response[0, 1]) < 1e-5 and abs(response[1, 0]) < 1e-5
    if method == "REGAUSS":
        # Distortion: d<e>/dg = 2 (1 - <e^2> / 2) for perfect PSF correction (<e^2>: intrinsic |e|^2).
        e_squared = np.mean([galsim.Shear(g=g_intrinsic, beta=0 * galsim.degrees).e ** 2
                             for _, g_intrinsic in GALAXIES])
        np.testing.assert_allclose(np.diag(response), 2.0 * (1.0 - e_squared / 2.0), rtol=0.02)
    elif method == "KSB":
        np.testing.assert_allclose(np.diag(response), 1.0, atol=0.15)  # KSB: a shear, ~10% responsivity error
    else:  # Fourier_Quad's G / D: the mean N / D (measured 0.50 on these rings), the same for both components
        assert 0.2 < response[0, 0] < 1.0 and response[1, 1] == pytest.approx(response[0, 0], rel=1e-3)
    table = _table(rings, "nominal", method, per_object)
    fixed = _table(rings, "nominal", method, response)
    # Measured (GalSim 2.8): REGAUSS m1, m2 = -6.2e-4, -7.6e-4 (+- 1.5e-4), c = -1.8e-6, -1.3e-6;
    # KSB m1 = m2 = +1.21e-3 (+- 4e-5), c = 2.0e-6. R: REGAUSS 1.684, KSB 1.144.
    for name in ("g1", "g2"):
        assert abs(table[name]["m"]) < M_BOUND[method]
        assert abs(table[name]["c"]) < 1e-5
        # The full sample's mean response is the same either way ...
        assert table[name]["m"] == pytest.approx(fixed[name]["m"], abs=1e-12)
        # ... but only recalibrating each resample keeps the error at the galaxies' spread in m: a
        # fixed response turns the resampled mix of more and less responsive galaxies into "m noise".
        assert table[name]["m_err"] < 5e-4 and table[name]["c_err"] < 1e-5
        assert fixed[name]["m_err"] > 20 * table[name]["m_err"]


@pytest.mark.parametrize("method", METHODS)
def test_injected_biases_are_recovered(rings, method):
    response = _responses(rings, method)[1]
    nominal = _table(rings, "nominal", method, response)
    scaled = _table(rings, "scaled", method, response)
    offset = _table(rings, "offset", method, response)
    # Measured: m = 0.0094 / 0.0092 (REGAUSS), 0.0113 (KSB); c1 = 0.001997 / 0.002005. The absolute m
    # carries the method's own bias on top of the injected 0.01, hence the method's M_BOUND.
    for name in ("g1", "g2"):
        assert scaled[name]["m"] == pytest.approx(0.01, abs=M_BOUND[method])
        # Relative to the method's own bias the injected 1% is exact to a few 1e-5.
        assert (1.0 + scaled[name]["m"]) / (1.0 + nominal[name]["m"]) - 1.0 == pytest.approx(0.01, abs=1e-4)
    assert offset["g1"]["c"] == pytest.approx(0.002, abs=2e-5)
    assert offset["g2"]["c"] == pytest.approx(nominal["g2"]["c"], abs=2e-5)
    assert offset["g1"]["m"] == pytest.approx(nominal["g1"]["m"], abs=5e-4)


def test_shear_bias_table_is_json_ready_and_counts_failures(rings):
    response = _responses(rings, "REGAUSS")[0]
    shapes = measure.measure_shear(rings["nominal"], _psf_image(), SCALE)
    e1 = shapes["e1"].copy()
    e1[0] = np.nan
    table = shear.shear_bias_table(rings["labels"], e1, shapes["e2"], response, rng=np.random.default_rng(2))
    json.dumps(table, allow_nan=False)
    n = len(e1)
    assert (table["n_objects"], table["n_failed"], table["g1"]["n"], table["g2"]["n"]) == (n, 1, n - 1, n - 1)
    assert table["g1"]["n_groups"] == n // N_ORIENTATIONS  # ring_pair_id: the default group_key
    assert table["requirement"] == {"m": 1e-3, "c": 1e-4}
    assert isinstance(table["meets_requirement"], bool)
    np.testing.assert_allclose(table["response"], response)


def test_plot_shear_bias_writes_png(rings, tmp_path):
    response = _responses(rings, "KSB")[0]
    shapes = measure.measure_shear(rings["nominal"], _psf_image(), SCALE, method="KSB")
    table = shear.shear_bias_table(rings["labels"], shapes["e1"], shapes["e2"], response,
                                   rng=np.random.default_rng(3))
    g_est = np.stack(shear.calibrate_shear(shapes["e1"], shapes["e2"], response), axis=1)
    g_true = np.stack([rings["labels"]["g1"], rings["labels"]["g2"]], axis=1)
    path = figures.plot_shear_bias(g_true, g_est, table, tmp_path / "figs" / "shear_bias.png",
                                 group=rings["labels"]["ring_pair_id"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = figures.plot_shear_bias(g_true[:, 0], g_est[:, 0], table["g1"], tmp_path / "g1.png")
    assert single.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["g1.png", "shear_bias.png"]
    with pytest.raises(InputError, match="'g1' and 'g2'"):
        figures.plot_shear_bias(g_true, g_est, table["g1"], tmp_path / "bad.png")


# --- fit_m_c on synthetic numbers ---------------------------------------------------------

def _synthetic(n: int, m: float, c: float, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g_true = rng.choice(SHEARS, size=n)
    return g_true, (1.0 + m) * g_true + c + rng.normal(0.0, sigma, n)


def test_fit_recovers_m_c_with_correct_errors():
    m, c, sigma, n = 0.03, -0.002, 0.02, 4000
    g_true, g_est = _synthetic(n, m, c, sigma, seed=10)
    fit = shear.fit_m_c(g_true, g_est, n_bootstrap=400, rng=np.random.default_rng(11))
    assert fit["n"] == n
    assert abs(fit["m"] - m) < 3 * fit["m_err"] and abs(fit["c"] - c) < 3 * fit["c_err"]
    # Ordinary least squares: sigma(slope) = sigma / (sqrt(n) std(x)); sigma(c) = sigma sqrt(1 + mean^2/var) / sqrt(n).
    slope_err = sigma / (math.sqrt(n) * g_true.std())
    intercept_err = sigma * math.sqrt(1 + g_true.mean() ** 2 / g_true.var()) / math.sqrt(n)
    assert fit["m_err"] == pytest.approx(slope_err, rel=0.15)
    assert fit["c_err"] == pytest.approx(intercept_err, rel=0.15)
    # The same Generator state gives the same errors; the global numpy state is untouched.
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    again = shear.fit_m_c(g_true, g_est, n_bootstrap=400, rng=np.random.default_rng(11))
    shear.fit_m_c(g_true, g_est)
    assert again == fit
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_fit_with_per_object_response_calibrates_by_the_sample_mean():
    rng = np.random.default_rng(40)
    g_true = rng.choice(SHEARS, size=5000)
    response = rng.uniform(0.5, 2.5, g_true.size)  # galaxies of very different responsivity
    e = response * (1.02 * g_true - 0.001) + rng.normal(0.0, 0.01, g_true.size)
    fit = shear.fit_m_c(g_true, e, response=response, rng=rng)
    assert fit["m"] == pytest.approx(shear.fit_m_c(g_true, e / response.mean(), rng=rng)["m"], abs=1e-12)
    assert abs(fit["m"] - 0.02) < 3 * fit["m_err"] and abs(fit["c"] + 0.001) < 3 * fit["c_err"]
    singular = shear.fit_m_c(g_true, e, response=np.zeros(g_true.size), rng=rng)
    assert math.isnan(singular["m"]) and math.isnan(singular["m_err"])
    with pytest.raises(InputError, match="response has length 3"):
        shear.fit_m_c(g_true, e, response=response[:3])


def test_secant_response_removes_the_g2_term_of_the_local_calibration():
    # e(g) = R0 g + a g^2 + b g^3 per component: ring pairs (g, -g) cancel a; the local response
    # leaves m = -2 b <g^2> / R0, the secant estimate none.
    rng = np.random.default_rng(60)
    n, r0, a, b, dg = 4000, 1.7, 0.8, -6.0, 0.01
    radius, angle = np.sqrt(rng.uniform(0.01**2, 0.05**2, n // 2)), rng.uniform(0, 2 * np.pi, n // 2)
    g = np.repeat(np.stack([radius * np.cos(angle), radius * np.sin(angle)]), 2, axis=1)
    g[:, 1::2] *= -1  # the ring partner: the same galaxy at -g, as a 90-degree turn makes it

    def shape(shear):
        return r0 * shear + a * shear**2 + b * shear**3

    e = shape(g)
    plus = np.array([[shape(g[0] + dg), e[0]], [e[1], shape(g[1] + dg)]])  # [i, j, n]: e_i sheared on j
    minus = np.array([[shape(g[0] - dg), e[0]], [e[1], shape(g[1] - dg)]])
    local = shear.shear_response(plus, minus, dg, per_object=True)
    secant = shear.secant_response(local, plus, minus, e[0], e[1], g[0], g[1], dg)
    labels = {"g1": g[0], "g2": g[1], "ring_pair_id": np.arange(n) // 2}
    calibrated = []
    for response in (local, secant):
        # As validate-shear fits: e - (R_i - <R>) g (response control variate), calibrated by <R>.
        mean = response.mean(axis=0)
        adjusted = e - np.einsum("nij,jn->in", response - mean, g)
        calibrated.append(shear.shear_bias_table(labels, adjusted[0], adjusted[1], mean, n_bootstrap=20,
                                                 rng=np.random.default_rng(0)))
    # Local: e - R_i g = -2 b g^3 per object, so the least-squares m is -2 b <g^4> / (<g^2> R0).
    expected_local_m = -2.0 * b * np.mean(g[0] ** 4) / np.mean(g[0] ** 2) / (r0 + 3 * b * np.mean(g[0] ** 2))
    assert calibrated[0]["g1"]["m"] == pytest.approx(expected_local_m, rel=0.1)
    for table in (calibrated[1]["g1"], calibrated[1]["g2"]):
        assert abs(table["m"]) < 0.05 * abs(expected_local_m)
    assert secant[:, 0, 1] == pytest.approx(local[:, 0, 1])  # no curvature across components here


def test_weighting_shift_detects_an_snr_dependent_m_and_not_an_independent_one():
    # The noise test of validate-shear: m weighted by S/N against m unweighted, paired over the same objects.
    rng = np.random.default_rng(50)
    n = 20_000
    g1, g2 = rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n)
    snr = rng.uniform(10.0, 100.0, n)
    labels = {"g1": g1, "g2": g2, "ring_pair_id": np.arange(n)}
    noise = rng.normal(0.0, 0.002, (2, n))
    flat = shear.weighting_shift(labels, 1.01 * g1 + noise[0], 1.01 * g2 + noise[1], 1.0, snr,
                                 rng=np.random.default_rng(1))
    for c in ("g1", "g2"):
        assert abs(flat[c]["dm"]) < 3 * flat[c]["dm_err"] and flat[c]["dm_err"] < 1e-3
    # m = -0.3 / snr (noise bias, worse at low S/N): S/N weighting moves m towards 0.
    m = -0.3 / snr
    biased = shear.weighting_shift(labels, (1 + m) * g1 + noise[0], (1 + m) * g2 + noise[1], 1.0, snr,
                                   rng=np.random.default_rng(1))
    expected = np.average(m, weights=snr) - m.mean()  # +2.2e-3 for this S/N range
    for c in ("g1", "g2"):
        assert biased[c]["dm"] == pytest.approx(expected, abs=3 * biased[c]["dm_err"])
        assert biased[c]["dm"] > 5 * biased[c]["dm_err"]
    # Paired: the difference's error is far below either fit's own error.
    alone = shear.fit_m_c(g1, 1.01 * g1 + noise[0], rng=np.random.default_rng(1))
    assert flat["g1"]["dm_err"] < 0.5 * alone["m_err"]
    with pytest.raises(InputError, match="weight has length"):
        shear.weighting_shift(labels, g1, g2, 1.0, snr[:5])


def test_zero_shear_weighting_shift_ignores_a_g_squared_term_and_keeps_a_constant_one():
    # The noise test's g -> 0 limit: a per-galaxy O(g^2) term of m that correlates with S/N (what a
    # calibration at the object's own shear leaves) moves the plain weighting shift but not m0; an
    # S/N-dependent m that stays as g -> 0 (noise that knows the shear) moves both.
    rng = np.random.default_rng(53)  # over 20 seeds m0's shift scattered as its bootstrap error said
    n = 20_000
    modulus, angle = rng.uniform(0.01, 0.05, n), rng.uniform(0.0, np.pi, n)
    g1, g2 = modulus * np.cos(angle), modulus * np.sin(angle)
    snr = rng.uniform(10.0, 100.0, n)
    labels = {"g1": g1, "g2": g2, "ring_pair_id": np.arange(n)}
    noise = rng.normal(0.0, 0.0005, (2, n))
    curvature = -4.0 * snr / 100.0  # m_i = curvature_i |g|^2: -4e-3 .. -4e-4 at |g| = 0.05 here
    m = curvature * modulus**2
    plain = shear.weighting_shift(labels, (1 + m) * g1 + noise[0], (1 + m) * g2 + noise[1], 1.0, snr,
                                  rng=np.random.default_rng(2))
    zero = shear.zero_shear_weighting_shift(labels, (1 + m) * g1 + noise[0], (1 + m) * g2 + noise[1], 1.0, snr,
                                            rng=np.random.default_rng(2))
    for c in ("g1", "g2"):
        assert plain[c]["dm"] < -5 * plain[c]["dm_err"]  # the sample's own shears: weighting moves m
        # Within its error, and that error small enough to see the +2.2e-3 below at 4 sigma or more.
        assert abs(zero[c]["dm"]) < 3 * zero[c]["dm_err"] and zero[c]["dm_err"] < 5e-4
    # The same plus m = -0.3 / snr at every g: m0 moves by its S/N-weighted mean minus its mean (+2.2e-3).
    constant = -0.3 / snr
    total = m + constant
    biased = shear.zero_shear_weighting_shift(labels, (1 + total) * g1 + noise[0], (1 + total) * g2 + noise[1],
                                              np.eye(2), snr, rng=np.random.default_rng(2))
    expected = np.average(constant, weights=snr) - constant.mean()
    for c in ("g1", "g2"):
        assert biased[c]["dm"] == pytest.approx(expected, abs=3 * biased[c]["dm_err"])
        assert biased[c]["dm"] > 5 * biased[c]["dm_err"]
    # A fixed response calibrates both fits: R = 2 halves e, and the shift is unchanged.
    halved = shear.zero_shear_weighting_shift(labels, 2 * (1 + total) * g1 + 2 * noise[0],
                                              2 * (1 + total) * g2 + 2 * noise[1], 2.0, snr,
                                              rng=np.random.default_rng(2))
    assert halved["g1"]["dm"] == pytest.approx(biased["g1"]["dm"], rel=1e-9, abs=1e-12)
    with pytest.raises(InputError, match="three distinct"):
        shear.zero_shear_weighting_shift({**labels, "g1": np.full(n, 0.02), "g2": np.zeros(n)}, g1, g2, 1.0, snr)


def test_bootstrap_errors_shrink_as_one_over_sqrt_n():
    small = shear.fit_m_c(*_synthetic(500, 0.0, 0.0, 0.05, seed=20), rng=np.random.default_rng(21))
    large = shear.fit_m_c(*_synthetic(8000, 0.0, 0.0, 0.05, seed=22), rng=np.random.default_rng(23))
    assert 3.2 < small["m_err"] / large["m_err"] < 5.0  # sqrt(16) = 4
    assert 3.2 < small["c_err"] / large["c_err"] < 5.0


def test_group_bootstrap_keeps_ring_pair_cancellation():
    n_pairs, shape_noise, measurement_noise = 1000, 0.26, 0.005

    def pairs(rng):
        g_true = np.repeat(rng.uniform(-0.05, 0.05, n_pairs), 2)
        intrinsic = rng.normal(0.0, shape_noise, n_pairs)
        # The 90-degree partner has the opposite intrinsic ellipticity: the pair mean is shape-noise free.
        e = np.stack([intrinsic, -intrinsic], axis=1).ravel()
        return g_true, g_true + e + rng.normal(0.0, measurement_noise, 2 * n_pairs)

    rng = np.random.default_rng(30)
    ids = np.repeat(np.arange(n_pairs), 2)
    g_true, g_est = pairs(rng)
    grouped = shear.fit_m_c(g_true, g_est, group=ids, rng=rng)
    naive = shear.fit_m_c(g_true, g_est, rng=rng)
    assert grouped["m"] == pytest.approx(naive["m"], abs=1e-12) and grouped["n_groups"] == n_pairs
    assert grouped["m_err"] < 0.1 * naive["m_err"] and grouped["c_err"] < 0.1 * naive["c_err"]
    # The grouped error is the actual scatter of m between independent simulations.
    scatter = np.std([shear.fit_m_c(*pairs(rng), n_bootstrap=2, rng=rng)["m"] for _ in range(200)], ddof=1)
    assert grouped["m_err"] == pytest.approx(scatter, rel=0.25)


# --- bad inputs ---------------------------------------------------------------------------

def test_bad_inputs_raise_input_error():
    g = np.array(SHEARS)
    with pytest.raises(InputError, match="g_est has length 4, expected 5"):
        shear.fit_m_c(g, g[:4])
    with pytest.raises(InputError, match="group has length 3"):
        shear.fit_m_c(g, g, group=[0, 0, 1])
    with pytest.raises(InputError, match="n_bootstrap must be an integer >= 2"):
        shear.fit_m_c(g, g, n_bootstrap=1)
    with pytest.raises(InputError, match="two distinct"):
        shear.fit_m_c(np.full(5, 0.01), g)
    with pytest.raises(InputError, match="numpy.random.Generator"):
        shear.fit_m_c(g, g, rng=np.random.RandomState(0))
    with pytest.raises(InputError, match="e_plus has shape"):
        shear.shear_response(np.zeros(3), np.zeros(4), DELTA_G)
    with pytest.raises(InputError, match=r"\(N,\) or \(2, 2, N\)"):
        shear.shear_response(np.zeros((2, 3)), np.zeros((2, 3)), DELTA_G)
    with pytest.raises(InputError, match="delta_g"):
        shear.shear_response(np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(InputError, match="singular"):
        shear.calibrate_shear(g, g, np.ones((2, 2)))
    with pytest.raises(InputError, match="e2 has length"):
        shear.calibrate_shear(g, g[:2], 1.0)
    images = np.zeros((2, SIZE, SIZE))
    with pytest.raises(InputError, match="method must be one of"):
        measure.measure_shear(images, _psf_image(), SCALE, method="LINEAR")
    with pytest.raises(InputError, match="psf_images must be"):
        measure.measure_shear(images, np.zeros((3, SIZE, SIZE)), SCALE)
    with pytest.raises(InputError, match="weights has shape"):
        measure.measure_shear(images, _psf_image(), SCALE, weights=np.ones((1, SIZE, SIZE)))
    with pytest.raises(InputError, match="labels lack 'g2'"):
        shear.shear_bias_table({"g1": g}, g, g, 1.0)
