from __future__ import annotations

import numpy as np
import pytest

from lensforge.errors import ConfigError
from lensforge.pipeline.radio.imaging import (
    ARCSEC_RAD,
    beam_fwhm_arcsec,
    dirty_image,
    grid_visibilities,
    observe,
    predict_visibilities,
    sampling_grid,
    synthesized_beam,
    thermal_noise_sigma_jy,
    uv_cell_wavelengths,
)
from lensforge.pipeline.radio.layouts import ANTENNA_LAYOUTS, get_layout
from lensforge.pipeline.radio.sky import blank_patches, radio_sky
from lensforge.pipeline.radio.uv import SPEED_OF_LIGHT_M_S, baselines_xyz, enu_to_xyz, hour_angles_rad, uvw_tracks


def _uv(layout_name: str, declination_deg: float, hour_angle_range_h: tuple[float, float], n_times: int,
        frequency_hz: float = 1.4e9, **layout_kwargs: float) -> np.ndarray:
    layout = get_layout(layout_name, **layout_kwargs)
    return uvw_tracks(baselines_xyz(layout), hour_angles_rad(hour_angle_range_h, n_times), np.deg2rad(declination_deg),
                      frequency_hz)


@pytest.mark.parametrize("n_pixels", [48, 47])
def test_dirty_image_is_sky_circularly_convolved_with_beam(n_pixels):
    """Dirty image == sum over sky pixels of the beam shifted there (direct space, wrap-around)."""
    pixel_scale_arcsec = 10.0
    uv = _uv("vla-d-like", 20.0, (-3.0, 3.0), 12)
    assert sampling_grid(uv, n_pixels, pixel_scale_arcsec)[1] == 0
    sky = np.random.default_rng(5).exponential(size=(n_pixels, n_pixels))
    dirty = dirty_image(predict_visibilities(sky, uv, pixel_scale_arcsec), uv, n_pixels, pixel_scale_arcsec)
    beam = synthesized_beam(uv, n_pixels, pixel_scale_arcsec)
    centre = n_pixels // 2
    expected = np.zeros_like(sky)
    for y in range(n_pixels):
        for x in range(n_pixels):
            expected += sky[y, x] * np.roll(beam, (y - centre, x - centre), axis=(0, 1))
    assert np.abs(dirty - expected).max() < 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("n_pixels", [64, 63])
def test_point_source_images_to_the_beam_shifted_to_it(n_pixels):
    pixel_scale_arcsec = 8.0
    uv = _uv("vla-d-like", 50.0, (-2.0, 2.0), 8)
    beam = synthesized_beam(uv, n_pixels, pixel_scale_arcsec)
    centre = n_pixels // 2
    assert beam[centre, centre] == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(beam), beam.shape) == (centre, centre)

    sky = np.zeros((n_pixels, n_pixels))
    sky[centre, centre] = 1.0
    dirty = dirty_image(predict_visibilities(sky, uv, pixel_scale_arcsec), uv, n_pixels, pixel_scale_arcsec)
    np.testing.assert_allclose(dirty, beam, atol=1e-12)

    sky[:] = 0.0
    sky[centre + 5, centre - 7] = 2.5  # Jy in one pixel -> 2.5 Jy/beam at that pixel
    dirty = dirty_image(predict_visibilities(sky, uv, pixel_scale_arcsec), uv, n_pixels, pixel_scale_arcsec)
    np.testing.assert_allclose(dirty, 2.5 * np.roll(beam, (5, -7), axis=(0, 1)), atol=1e-12)
    assert np.unravel_index(np.argmax(dirty), dirty.shape) == (centre + 5, centre - 7)


def test_predicted_visibilities_match_direct_fourier_sum_at_snapped_cells():
    """Sign and centring: V = sum I exp(-2 pi i (u l + v m)), l = (x - n//2) pixel, at the snapped (u, v)."""
    n_pixels, pixel_scale_arcsec = 33, 6.0
    uv = _uv("vla-d-like", -10.0, (0.0, 1.0), 2)
    sky = np.zeros((n_pixels, n_pixels))
    sky[3, 20], sky[30, 2], sky[16, 16] = 1.0, -0.5, 2.0
    cell = uv_cell_wavelengths(n_pixels, pixel_scale_arcsec)
    snapped = np.rint(uv[:, :2] / cell) * cell
    y, x = np.nonzero(sky)
    l_rad = (x - n_pixels // 2) * pixel_scale_arcsec * ARCSEC_RAD
    m_rad = (y - n_pixels // 2) * pixel_scale_arcsec * ARCSEC_RAD
    expected = (sky[y, x] * np.exp(-2j * np.pi * (np.outer(snapped[:, 0], l_rad) + np.outer(snapped[:, 1], m_rad))))
    np.testing.assert_allclose(predict_visibilities(sky, uv, pixel_scale_arcsec), expected.sum(axis=1), atol=1e-9)


def test_east_west_baseline_traces_an_ellipse_over_a_day():
    """TMS sec. 4.2: u^2 / (b/lambda)^2 + v^2 / (b sin(dec)/lambda)^2 = 1 for an east-west baseline."""
    baseline_m, declination_deg, frequency_hz = 200.0, -50.0, 1.4e9
    layout = get_layout("two-element", baseline_m=baseline_m)
    xyz = baselines_xyz(layout)
    np.testing.assert_allclose(xyz, [[0.0, baseline_m, 0.0]], atol=1e-12)  # east-west: along Y only
    uvw = uvw_tracks(xyz, hour_angles_rad((-12.0, 12.0), 360), np.deg2rad(declination_deg), frequency_hz)
    semi_u = baseline_m * frequency_hz / SPEED_OF_LIGHT_M_S
    semi_v = semi_u * abs(np.sin(np.deg2rad(declination_deg)))
    np.testing.assert_allclose((uvw[:, 0] / semi_u) ** 2 + (uvw[:, 1] / semi_v) ** 2, 1.0, rtol=1e-12)
    assert np.abs(uvw[:, 0]).max() == pytest.approx(semi_u, rel=1e-4)
    assert np.abs(uvw[:, 1]).max() == pytest.approx(semi_v, rel=1e-4)
    np.testing.assert_allclose(np.linalg.norm(uvw, axis=1), semi_u, rtol=1e-12)  # |uvw| = |b| / lambda
    # TMS eq. 4.1 pointwise: at H = 0 the baseline is all u; 6 h later (source in the west) v = b sin(dec).
    dec = np.deg2rad(declination_deg)
    np.testing.assert_allclose(uvw_tracks(xyz, [0.0, np.pi / 2], dec, frequency_hz),
                               [[semi_u, 0.0, 0.0], [0.0, semi_u * np.sin(dec), -semi_u * np.cos(dec)]], atol=1e-9)
    # A general baseline at H = 0, dec = 0: (u, v, w) = (Y, Z, X) / lambda.
    np.testing.assert_allclose(uvw_tracks([[1.0, 2.0, 3.0]], [0.0], 0.0, SPEED_OF_LIGHT_M_S), [[2.0, 3.0, 1.0]],
                               atol=1e-12)


def test_enu_to_xyz_geometry():
    """A north baseline at latitude phi has X = -b sin(phi), Z = b cos(phi); up at the pole is Z."""
    latitude_deg = -30.71
    phi = np.deg2rad(latitude_deg)
    np.testing.assert_allclose(enu_to_xyz([0.0, 100.0, 0.0], latitude_deg),
                               [-100.0 * np.sin(phi), 0.0, 100.0 * np.cos(phi)], atol=1e-12)
    np.testing.assert_allclose(enu_to_xyz([0.0, 0.0, 7.0], 90.0), [0.0, 0.0, 7.0], atol=1e-12)


def test_beam_fwhm_scales_with_wavelength_over_longest_baseline():
    layout = get_layout("meerkat-like")
    fwhm = {}
    for frequency_hz in (1.4e9, 0.7e9):
        sky = np.zeros((128, 128))
        observation = observe(sky, layout, -40.0, (-4.0, 4.0), 24, frequency_hz, 1.5)
        assert observation.n_dropped == 0
        fwhm[frequency_hz] = observation.beam_fwhm_arcsec
        resolution_arcsec = SPEED_OF_LIGHT_M_S / frequency_hz / layout.max_baseline_m() / ARCSEC_RAD
        assert resolution_arcsec < fwhm[frequency_hz] < 4.0 * resolution_arcsec
    assert fwhm[0.7e9] / fwhm[1.4e9] == pytest.approx(2.0, rel=0.15)


def test_beam_fwhm_of_a_gaussian():
    """Fourier-interpolated half-power area of a sampled Gaussian gives its FWHM."""
    n_pixels, sigma_pixels = 64, 2.0
    offsets = np.arange(n_pixels) - n_pixels // 2
    beam = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma_pixels**2))
    assert beam_fwhm_arcsec(beam, 0.5) == pytest.approx(2.3548 * sigma_pixels * 0.5, rel=0.01)
    assert np.isnan(beam_fwhm_arcsec(np.ones((16, 16)), 0.5))


def test_thermal_noise_of_dirty_image_matches_natural_weighting_prediction():
    sigma_jy = thermal_noise_sigma_jy(sefd_jy=400.0, bandwidth_hz=1e7, integration_s=60.0)
    assert sigma_jy == pytest.approx(400.0 / np.sqrt(2 * 1e7 * 60.0))
    # 256^2 pixels: the image rms of one realisation scatters by ~3% around its expectation.
    observation = observe(np.zeros((256, 256)), get_layout("meerkat-like"), -40.0, (-3.0, 3.0), 16, 1.4e9, 1.0,
                          noise_sigma_jy=sigma_jy, rng=np.random.default_rng(11))
    assert observation.n_visibilities == 16 * 64 * 63 // 2 and observation.n_dropped == 0
    assert observation.noise_sigma_jy_per_beam == pytest.approx(sigma_jy / np.sqrt(observation.n_visibilities))
    assert observation.dirty.std() == pytest.approx(observation.noise_sigma_jy_per_beam, rel=0.1)


def test_gridded_visibilities_are_hermitian_so_images_are_real():
    n_pixels, pixel_scale_arcsec = 64, 1.5
    uv = _uv("meerkat-like", -40.0, (-1.0, 1.0), 4)
    rng = np.random.default_rng(2)
    noisy = rng.standard_normal(len(uv)) + 1j * rng.standard_normal(len(uv))
    for visibilities in (noisy, np.ones(len(uv))):
        grid, n_dropped = grid_visibilities(visibilities, uv, n_pixels, pixel_scale_arcsec)
        assert n_dropped == 0
        image = np.fft.ifft2(grid)
        assert np.abs(image.imag).max() < 1e-12 * np.abs(image.real).max()
    counts, _ = sampling_grid(uv, n_pixels, pixel_scale_arcsec)
    assert counts.sum() == 2 * len(uv)
    np.testing.assert_array_equal(counts, np.roll(counts[::-1, ::-1], 1, axis=(0, 1)))  # counts(k) == counts(-k)
    beam = synthesized_beam(uv, n_pixels, pixel_scale_arcsec)
    assert beam.dtype == np.float64
    np.testing.assert_allclose(beam[1:, 1:], beam[1:, 1:][::-1, ::-1], atol=1e-12)  # beam[c+k] == beam[c-k]


def test_samples_off_the_grid_are_dropped_counted_and_warned():
    layout = get_layout("vla-d-like")
    with pytest.warns(UserWarning, match="fall off the uv grid"):
        observation = observe(np.zeros((32, 32)), layout, 34.0, (-1.0, 1.0), 4, 1.4e9, 30.0)
    assert observation.n_dropped > 0
    assert observation.n_visibilities + observation.n_dropped == 4 * layout.n_baselines
    uv = _uv("vla-d-like", 34.0, (-1.0, 1.0), 4)
    assert sampling_grid(uv, 32, 30.0)[1] == observation.n_dropped


def test_observe_validates_noise_rng_and_elevation():
    layout = get_layout("meerkat-like")
    with pytest.raises(ConfigError, match="rng is required"):
        observe(np.zeros((32, 32)), layout, -40.0, (-1.0, 1.0), 4, 1.4e9, 2.0, noise_sigma_jy=1.0)
    # From latitude -30.71 deg a source at +60 deg never rises.
    with pytest.raises(ConfigError, match="hour_angle_range_h"):
        observe(np.zeros((32, 32)), layout, 60.0, (-1.0, 1.0), 4, 1.4e9, 2.0)


def test_radio_sky_flux_table_and_reproducibility():
    kwargs = dict(n_pixels=128, pixel_scale_arcsec=0.5, n_extended=8, n_compact=20, flux_min_jy=1e-4,
                  flux_max_jy=1e-2, half_light_radius_min_arcsec=0.5, half_light_radius_max_arcsec=1.5,
                  margin_pixels=30.0)
    sky, sources = radio_sky(rng=np.random.default_rng(7), **kwargs)
    assert sky.shape == (128, 128) and sky.dtype == np.float64
    assert sky.sum() == pytest.approx(sources["flux_jy"].sum(), rel=1e-3)
    assert list(sources["kind"]).count("extended") == 8 and list(sources["kind"]).count("compact") == 20
    assert np.all((sources["flux_jy"] >= 1e-4) & (sources["flux_jy"] <= 1e-2))
    assert np.all((sources["x"] >= 30) & (sources["x"] <= 97) & (sources["y"] >= 30) & (sources["y"] <= 97))
    compact = sources["kind"] == "compact"
    # Unresolved sources put their flux in the pixel holding their 0-based centroid (or its neighbour
    # when the centroid is within a few hundredths of a pixel of an edge).
    for x, y, flux_jy in zip(sources["x"][compact], sources["y"][compact], sources["flux_jy"][compact], strict=True):
        row, col = int(np.rint(y)), int(np.rint(x))
        assert sky[row - 1:row + 2, col - 1:col + 2].sum() >= flux_jy * (1 - 1e-6)
        if max(abs(x - col), abs(y - row)) < 0.4:
            assert sky[row, col] >= 0.99 * flux_jy
    again, sources_again = radio_sky(rng=np.random.default_rng(7), **kwargs)
    np.testing.assert_array_equal(sky, again)
    np.testing.assert_array_equal(sources["flux_jy"], sources_again["flux_jy"])
    other, _ = radio_sky(rng=np.random.default_rng(8), **kwargs)
    assert not np.array_equal(sky, other)


def test_blank_patches_are_reproducible_rectangles():
    mask = blank_patches((64, 80), np.random.default_rng(3), n_patches=1, size_min_pixels=5, size_max_pixels=9)
    rows, cols = np.nonzero(mask)
    assert 5 <= rows.max() - rows.min() + 1 <= 9 and 5 <= cols.max() - cols.min() + 1 <= 9
    assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    many = blank_patches((64, 80), np.random.default_rng(3), n_patches=4, size_min_pixels=3, size_max_pixels=200)
    np.testing.assert_array_equal(many, blank_patches((64, 80), np.random.default_rng(3), 4, 3, 200))
    assert many.dtype == bool and many.shape == (64, 80) and many.any()
    with pytest.raises(ConfigError, match="size_min_pixels"):
        blank_patches((8, 8), np.random.default_rng(0), 1, 5, 4)


@pytest.mark.parametrize("name, n_antennas, max_baseline_km",
                         [("ska-mid-like", 197, (15.0, 20.0)), ("meerkat-like", 64, (7.0, 8.5)),
                          ("vla-d-like", 27, (0.9, 1.1)), ("two-element", 2, (0.09, 0.11))])
def test_builtin_layouts(name, n_antennas, max_baseline_km):
    layout = get_layout(name)
    assert layout.n_antennas == n_antennas and layout.enu_m.shape == (n_antennas, 3)
    assert max_baseline_km[0] < layout.max_baseline_m() / 1e3 < max_baseline_km[1]
    assert layout.min_separation_m() > layout.dish_diameter_m.max()  # no overlapping dishes
    np.testing.assert_array_equal(layout.enu_m, get_layout(name).enu_m)  # deterministic
    assert baselines_xyz(layout).shape == (layout.n_baselines, 3)


def test_layout_details_and_scaling():
    ska = get_layout("ska-mid-like")
    assert np.count_nonzero(np.hypot(ska.enu_m[:, 0], ska.enu_m[:, 1]) <= 1000.0) >= 90
    assert np.count_nonzero(ska.dish_diameter_m == 13.5) == 64 and ska.latitude_deg == pytest.approx(-30.71)
    meerkat = get_layout("meerkat-like")
    assert np.count_nonzero(np.hypot(meerkat.enu_m[:, 0], meerkat.enu_m[:, 1]) <= 1000.0) == 45
    assert get_layout("vla-d-like").latitude_deg == pytest.approx(34.08)
    wide = get_layout("ska-mid-like", max_radius_m=40_000.0)
    assert wide.max_baseline_m() == pytest.approx(4 * ska.max_baseline_m(), rel=0.01)
    with pytest.raises(ConfigError, match="max_radius_m"):
        get_layout("ska-mid-like", max_radius_m=500.0)


def test_unknown_layout_or_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown antenna layout 'lofar'.*valid layouts: meerkat-like, ska-mid-like, "
                                          "two-element, vla-d-like"):
        get_layout("lofar")
    assert set(ANTENNA_LAYOUTS) == {"ska-mid-like", "meerkat-like", "vla-d-like", "two-element"}
    with pytest.raises(ConfigError, match="'two-element' takes no argument"):
        get_layout("two-element", max_radius_m=100.0)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        get_layout("")
