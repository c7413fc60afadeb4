"""Interferometric imaging: visibilities of a sky, gridding, the dirty image and its synthesized beam.

The chain is the textbook one of Thompson, Moran & Swenson, *Interferometry and Synthesis in
Radio Astronomy* (TMS): antenna east-north-up positions -> baselines in the equatorial XYZ frame
(TMS eq. 4.15) -> (u, v, w) tracks by Earth-rotation synthesis (TMS eq. 4.1) -> visibilities of
the sky -> natural weighting, nearest-cell gridding and an inverse FFT to the dirty image and its
synthesized (dirty) beam.

Conventions (every function here follows them):

* Images are numpy arrays ``image[y, x]`` (0-based rows y, columns x) of ``n x n`` pixels; the
  phase centre (l = m = 0) is pixel ``(n // 2, n // 2)``. Column offsets map to ``l`` and row
  offsets to ``m``: ``(l, m) = ((x - n//2), (y - n//2)) * pixel_scale``. ``l`` points east, so
  shown with ``origin="lower"`` east is to the right (mirrored from the usual sky display);
  nothing here depends on that choice.
* Visibilities follow TMS's sign, ``V(u, v) = sum I(l, m) exp(-2 pi i (u l + v m))`` for a sky
  in Jy/pixel; (u, v, w) are in wavelengths.
* uv arrays hold **one sample per baseline per time** (no conjugates). Gridding adds each
  sample's Hermitian partner ``(-u, -v, V*)`` itself, so dirty images and beams are real and
  callers never duplicate samples.
* The uv cell is ``1 / (n * pixel_scale_rad)`` wavelengths. Samples snap to the nearest cell
  (``numpy.rint``, symmetric under u -> -u); those with ``|k_u|`` or ``|k_v| >= n / 2`` cells lie
  outside the grid and are dropped (symmetric, so the Nyquist row/column of even grids is never
  used and the Hermitian partner of every kept sample is also kept).
* Small-field approximation: no w-term, no primary beam, no bandwidth or time-average smearing
  (monochromatic point samples in time). The fields imaged here (arcminutes) are far smaller than
  a 13.5-25 m dish's ~0.5-1 deg primary beam at 1.4 GHz.

With these conventions the dirty image is *exactly* the circular convolution of the (pixel) sky
with the synthesized beam, in Jy/beam for a sky in Jy/pixel.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lensforge.errors import ConfigError
from lensforge.pipeline.radio.layouts import AntennaLayout
from lensforge.pipeline.radio.uv import baselines_xyz, elevation_rad, hour_angles_rad, uvw_tracks

ARCSEC_RAD = np.pi / (180.0 * 3600.0)


def check_image(n_pixels: int, pixel_scale_arcsec: float) -> None:
    """Raise ConfigError for an image too small or a non-positive pixel scale."""
    if n_pixels < 2:
        raise ConfigError(f"n_pixels must be >= 2, got {n_pixels}", n_pixels)
    if not pixel_scale_arcsec > 0:
        raise ConfigError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}", pixel_scale_arcsec)


def uv_cell_wavelengths(n_pixels: int, pixel_scale_arcsec: float) -> float:
    """uv cell size [wavelengths] of an ``n_pixels`` image: 1 / field of view [rad]."""
    check_image(n_pixels, pixel_scale_arcsec)
    return 1.0 / (n_pixels * pixel_scale_arcsec * ARCSEC_RAD)


def _uv_cells(uv: np.ndarray, n_pixels: int, pixel_scale_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-cell indices (k_u, k_v) of each uv sample and whether it lies on the grid."""
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] not in (2, 3):
        raise ConfigError(f"uv must have shape (n_samples, 2 or 3), got {uv.shape}", uv.shape)
    cell = uv_cell_wavelengths(n_pixels, pixel_scale_arcsec)
    # rint rounds half to even, so k(-u) == -k(u): a sample and its conjugate stay partners.
    k_u = np.rint(uv[:, 0] / cell).astype(np.int64)
    k_v = np.rint(uv[:, 1] / cell).astype(np.int64)
    inside = (2 * np.abs(k_u) < n_pixels) & (2 * np.abs(k_v) < n_pixels)
    return k_u, k_v, inside


def grid_visibilities(visibilities: np.ndarray, uv: np.ndarray, n_pixels: int,
                      pixel_scale_arcsec: float) -> tuple[np.ndarray, int]:
    """Sum visibilities and their Hermitian partners into the nearest uv cells (natural weighting).

    Args:
        visibilities: (n_samples,) complex visibilities [Jy], one per row of ``uv``.
        uv: (n_samples, 2 or 3) sample coordinates [wavelengths] (w is ignored).
        n_pixels: side of the image (and of the grid).
        pixel_scale_arcsec: image pixel scale [arcsec].

    Returns:
        ``(grid, n_dropped)``: the complex (n_pixels, n_pixels) grid in numpy FFT order
        (``grid[k_v % n, k_u % n]``, zero spacing at [0, 0]; ``numpy.fft.fftshift`` to display), which
        holds each kept sample ``V`` at ``(k_u, k_v)`` and ``V*`` at ``(-k_u, -k_v)`` and so is Hermitian;
        and the number of samples dropped for falling outside the grid.
    """
    visibilities = np.asarray(visibilities, dtype=np.complex128).ravel()
    k_u, k_v, inside = _uv_cells(uv, n_pixels, pixel_scale_arcsec)
    if len(visibilities) != len(k_u):
        raise ConfigError(f"visibilities has {len(visibilities)} samples but uv has {len(k_u)}", len(visibilities))
    k_u, k_v, values = k_u[inside], k_v[inside], visibilities[inside]
    n_cells = n_pixels * n_pixels
    cell = (k_v % n_pixels) * n_pixels + k_u % n_pixels
    partner = (-k_v % n_pixels) * n_pixels + (-k_u) % n_pixels
    real = (np.bincount(cell, values.real, n_cells) + np.bincount(partner, values.real, n_cells))
    imag = (np.bincount(cell, values.imag, n_cells) - np.bincount(partner, values.imag, n_cells))
    grid = (real + 1j * imag).reshape(n_pixels, n_pixels)
    return grid, int(np.count_nonzero(~inside))


def sampling_grid(uv: np.ndarray, n_pixels: int, pixel_scale_arcsec: float) -> tuple[np.ndarray, int]:
    """uv coverage: samples per cell (Hermitian partners included) and the number dropped.

    Returns:
        ``(counts, n_dropped)``: float64 (n_pixels, n_pixels) counts in numpy FFT order (zero spacing
        at [0, 0]) summing to twice the number of kept samples, and the samples outside the grid.
    """
    grid, n_dropped = grid_visibilities(np.ones(len(np.asarray(uv))), uv, n_pixels, pixel_scale_arcsec)
    return grid.real.copy(), n_dropped


def _image_from_grid(grid: np.ndarray, n_used: int) -> np.ndarray:
    """Real image [Jy/beam] of a Hermitian grid of ``n_used`` samples, phase centre at (n//2, n//2)."""
    if n_used == 0:
        raise ConfigError("no uv sample falls on the grid: pixel_scale_arcsec too coarse or no visibilities", 0)
    n_pixels = grid.shape[0]
    # ifft2 carries 1/n^2; each sample entered twice (V and V*), so divide by 2 n_used for a beam peak of 1.
    image = np.fft.ifft2(grid) * (n_pixels * n_pixels / (2.0 * n_used))
    return np.fft.fftshift(image.real)


def dirty_image(visibilities: np.ndarray, uv: np.ndarray, n_pixels: int, pixel_scale_arcsec: float) -> np.ndarray:
    """Naturally weighted dirty image [Jy/beam], real, phase centre at pixel (n//2, n//2).

    ``I_D(l, m) = (1 / N) sum_k Re[V_k exp(+2 pi i (u_k l + v_k m))]`` over the N samples on the grid
    (snapped to their cells); samples outside the grid are ignored (``sampling_grid`` counts them).
    For visibilities from ``predict_visibilities`` this is exactly the circular convolution of the sky
    with ``synthesized_beam``.
    """
    grid, n_dropped = grid_visibilities(visibilities, uv, n_pixels, pixel_scale_arcsec)
    return _image_from_grid(grid, len(np.asarray(uv)) - n_dropped)


def synthesized_beam(uv: np.ndarray, n_pixels: int, pixel_scale_arcsec: float) -> np.ndarray:
    """Naturally weighted synthesized (dirty) beam: real, symmetric, peak 1 at pixel (n//2, n//2)."""
    return dirty_image(np.ones(len(np.asarray(uv))), uv, n_pixels, pixel_scale_arcsec)


def predict_visibilities(sky: np.ndarray, uv: np.ndarray, pixel_scale_arcsec: float) -> np.ndarray:
    """Visibilities [Jy] of a square sky [Jy/pixel] at the snapped uv cells (FFT of the sky).

    ``V = sum_pixels sky * exp(-2 pi i (u l + v m))`` evaluated at the nearest cell of each sample,
    which is exact for snapped (u, v) and a sky of point sources at pixel centres (the nearest-cell
    gridding error is the position error of the snap, not of this transform). The pixel-sky
    transform is periodic in the cell index, so samples off the grid get their aliased value; the
    imaging functions drop them anyway.
    """
    sky = np.asarray(sky, dtype=np.float64)
    if sky.ndim != 2 or sky.shape[0] != sky.shape[1]:
        raise ConfigError(f"sky must be a square 2-d image, got shape {sky.shape}", sky.shape)
    n_pixels = sky.shape[0]
    k_u, k_v, _ = _uv_cells(uv, n_pixels, pixel_scale_arcsec)
    # ifftshift puts the phase centre pixel n//2 at index 0, so the transform's phases are relative to it.
    transform = np.fft.fft2(np.fft.ifftshift(sky))
    return transform[k_v % n_pixels, k_u % n_pixels]


def thermal_noise_sigma_jy(sefd_jy: float, bandwidth_hz: float, integration_s: float,
                           efficiency: float = 1.0) -> float:
    """Thermal noise [Jy] of one visibility, per real and per imaginary part (radiometer equation).

    ``sigma = SEFD / (efficiency sqrt(2 bandwidth integration))`` for one polarisation of a baseline of
    two identical dishes (TMS 2nd ed. eq. 6.50; Wrobel & Walker 1999, *Synthesis Imaging in Radio
    Astronomy II*, ASP Conf. Ser. 180, ch. 9). The complex visibility's rms modulus is sqrt(2) sigma.

    Args:
        sefd_jy: system equivalent flux density of one dish [Jy].
        bandwidth_hz: channel bandwidth [Hz].
        integration_s: integration time of one visibility [s].
        efficiency: correlator (quantisation) efficiency, <= 1.
    """
    for name, value in (("sefd_jy", sefd_jy), ("bandwidth_hz", bandwidth_hz), ("integration_s", integration_s)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}", value)
    if not 0 < efficiency <= 1:
        raise ConfigError(f"efficiency must be in (0, 1], got {efficiency}", efficiency)
    return float(sefd_jy / (efficiency * np.sqrt(2.0 * bandwidth_hz * integration_s)))


def beam_fwhm_arcsec(beam: np.ndarray, pixel_scale_arcsec: float, oversample: int = 8) -> float:
    """Equivalent circular FWHM [arcsec] of the beam's half-power main lobe.

    The connected region >= 0.5 around the centre pixel (n//2, n//2) is measured on a grid
    ``oversample`` times finer, interpolated exactly by Fourier series (the beam is band-limited to
    the uv grid), and ``FWHM = 2 sqrt(area / pi)``. NaN if the half-power lobe reaches the image
    edge (e.g. a single baseline's fringe).
    """
    lobe = half_power_lobe(beam, oversample)
    if lobe is None:
        return float("nan")
    area_pixels = np.count_nonzero(lobe[1]) / oversample**2
    return float(2.0 * np.sqrt(area_pixels / np.pi) * pixel_scale_arcsec)


def half_power_lobe(beam: np.ndarray, oversample: int = 8) -> tuple[np.ndarray, np.ndarray] | None:
    """The beam's half-power main lobe on a grid ``oversample`` times finer: (offsets [pixels] from the
    centre pixel (n//2, n//2) along each axis, boolean lobe map ``[y, x]`` on those offsets).

    The connected region >= half the peak around the centre is found on the native pixels, then the
    beam is interpolated exactly by Fourier series around it (it is band-limited to the uv grid).
    None if the lobe reaches the image edge (e.g. a single baseline's fringe).
    """
    beam = np.asarray(beam, dtype=np.float64)
    n_pixels = beam.shape[0]
    centre = n_pixels // 2
    labels, _ = ndimage.label(beam >= 0.5 * beam[centre, centre])
    rows, cols = np.nonzero(labels == labels[centre, centre])
    if rows.min() == 0 or cols.min() == 0 or rows.max() == n_pixels - 1 or cols.max() == n_pixels - 1:
        return None
    # A 2-pixel margin: the fine-grid lobe can exceed its native-pixel footprint by under a pixel.
    low, high = min(rows.min(), cols.min()) - centre - 2, max(rows.max(), cols.max()) - centre + 2
    offsets = np.arange(low * oversample, high * oversample + 1) / oversample  # pixels; includes 0
    frequencies = np.fft.fftfreq(n_pixels) * n_pixels
    phase = np.exp(2j * np.pi * np.outer(offsets, frequencies) / n_pixels)
    coefficients = np.fft.fft2(np.fft.ifftshift(beam))
    fine = (phase @ coefficients @ phase.T).real / n_pixels**2
    origin = int(np.flatnonzero(offsets == 0)[0])
    fine_labels, _ = ndimage.label(fine >= 0.5 * fine[origin, origin])
    return offsets, fine_labels == fine_labels[origin, origin]


def beam_ellipse(beam: np.ndarray, pixel_scale_arcsec: float, oversample: int = 8) -> tuple[float, float, float]:
    """Half-power ellipse of a beam image in the standard orientation (+x west, +y north): (BMAJ, BMIN, BPA) in deg.

    The connected region >= half the peak around the centre pixel (n//2, n//2), on a grid
    ``oversample`` times finer (exact Fourier interpolation: the beam is band-limited to the uv grid,
    as in :func:`beam_fwhm_arcsec`), is a filled ellipse whose second
    moments are a^2/4 and b^2/4 along its axes: FWHM_major = 4 sqrt(largest eigenvalue). BPA is the
    major axis' position angle from north through east, in (-90, 90]. sqrt(BMAJ BMIN) equals the
    equivalent circular FWHM of ``beam_fwhm_arcsec``. NaNs if the half-power lobe reaches the edge.
    """
    lobe = half_power_lobe(beam, oversample)
    if lobe is None:
        return float("nan"), float("nan"), float("nan")
    offsets, inside = lobe
    ys, xs = np.nonzero(inside)
    dy, dx = offsets[ys], offsets[xs]
    dy, dx = dy - dy.mean(), dx - dx.mean()
    values, vectors = np.linalg.eigh(np.cov(np.vstack([dx, dy]), bias=True))
    scale_deg = pixel_scale_arcsec / 3600.0
    major, minor = 4.0 * np.sqrt(values[1]) * scale_deg, 4.0 * np.sqrt(max(values[0], 0.0)) * scale_deg
    vx, vy = vectors[:, 1]
    bpa = float(np.degrees(np.arctan2(-vx, vy)))  # east = -x, north = +y
    bpa = (bpa + 90.0) % 180.0 - 90.0
    return float(major), float(minor), 90.0 if bpa == -90.0 else bpa


@dataclass(frozen=True, eq=False)
class RadioObservation:
    """One synthesis observation of a sky.

    Attributes:
        dirty: (n, n) dirty image [Jy/beam], phase centre at (n//2, n//2).
        beam: (n, n) synthesized beam (peak 1 at (n//2, n//2)).
        uv: (n_visibilities, 3) (u, v, w) [wavelengths] of the samples imaged (above the elevation
            limit and on the grid; one per baseline and time, conjugates implicit).
        visibilities: (n_visibilities,) complex visibilities [Jy] including thermal noise.
        hour_angles_rad: hour angles observed [rad] (those with the source above the elevation limit).
        n_visibilities: number of samples imaged.
        n_dropped: samples lost off the uv grid (baselines longer than the pixel scale can represent).
        noise_sigma_jy_per_beam: expected rms of the dirty image's thermal noise [Jy/beam].
        beam_fwhm_arcsec: equivalent circular FWHM of the beam's main lobe [arcsec] (``beam_fwhm_arcsec``).
    """

    dirty: np.ndarray
    beam: np.ndarray
    uv: np.ndarray
    visibilities: np.ndarray
    hour_angles_rad: np.ndarray
    n_visibilities: int
    n_dropped: int
    noise_sigma_jy_per_beam: float
    beam_fwhm_arcsec: float


def observe(sky: np.ndarray, layout: AntennaLayout, declination_deg: float, hour_angle_range_h: tuple[float, float],
            n_times: int, frequency_hz: float, pixel_scale_arcsec: float, noise_sigma_jy: float = 0.0,
            rng: np.random.Generator | None = None, min_elevation_deg: float = 0.0) -> RadioObservation:
    """Observe ``sky`` [Jy/pixel] with ``layout`` by Earth-rotation synthesis and image it.

    Args:
        sky: square (n, n) sky [Jy/pixel], phase centre at pixel (n//2, n//2).
        layout: the antennas.
        declination_deg: declination of the phase centre [deg].
        hour_angle_range_h: (start, stop) hour angles of the track [h]; ``n_times`` integrations of
            equal length, sampled at their centres.
        n_times: number of time samples.
        frequency_hz: observing frequency [Hz] (monochromatic).
        pixel_scale_arcsec: pixel scale of ``sky`` and of the images [arcsec].
        noise_sigma_jy: thermal noise per visibility per real/imaginary part [Jy]
            (``thermal_noise_sigma_jy``); 0 for a noiseless observation.
        rng: draws the noise; required when ``noise_sigma_jy > 0``.
        min_elevation_deg: times when the source is lower are not observed [deg].

    Returns:
        The dirty image, beam, samples and noise level. With natural weighting every pixel of the
        dirty image has thermal rms ``noise_sigma_jy / sqrt(n_visibilities)``: each sample and its
        conjugate carry the same (conjugated) noise, so they count once.

    Warns:
        UserWarning: when samples fall off the uv grid (``pixel_scale_arcsec`` too coarse for the
        longest baselines); they are dropped and counted in ``n_dropped``.
    """
    sky = np.asarray(sky, dtype=np.float64)
    if not -90.0 <= declination_deg <= 90.0:
        raise ConfigError(f"declination_deg must be within [-90, 90], got {declination_deg}", declination_deg)
    if not noise_sigma_jy >= 0:
        raise ConfigError(f"noise_sigma_jy must be >= 0, got {noise_sigma_jy}", noise_sigma_jy)
    if noise_sigma_jy > 0 and rng is None:
        raise ConfigError("rng is required when noise_sigma_jy > 0 (no global RNG)", rng)
    declination_rad = np.deg2rad(declination_deg)
    hour_angle = hour_angles_rad(hour_angle_range_h, n_times)
    hour_angle = hour_angle[elevation_rad(hour_angle, declination_rad, layout.latitude_deg)
                            >= np.deg2rad(min_elevation_deg)]
    if len(hour_angle) == 0:
        raise ConfigError(f"hour_angle_range_h {tuple(hour_angle_range_h)} never has declination {declination_deg} "
                          f"deg above {min_elevation_deg} deg elevation at latitude {layout.latitude_deg} deg",
                          hour_angle_range_h)
    uvw = uvw_tracks(baselines_xyz(layout), hour_angle, declination_rad, frequency_hz)
    n_pixels = sky.shape[0]
    *_, inside = _uv_cells(uvw, n_pixels, pixel_scale_arcsec)
    n_dropped = int(np.count_nonzero(~inside))
    if n_dropped:
        warnings.warn(f"{n_dropped} of {len(uvw)} uv samples fall off the uv grid and are dropped: "
                      f"pixel_scale_arcsec {pixel_scale_arcsec} is too coarse for the longest baselines", stacklevel=2)
    uvw = uvw[inside]
    visibilities = predict_visibilities(sky, uvw, pixel_scale_arcsec)
    if noise_sigma_jy > 0:
        visibilities = visibilities + noise_sigma_jy * (rng.standard_normal(len(uvw))
                                                        + 1j * rng.standard_normal(len(uvw)))
    beam = synthesized_beam(uvw, n_pixels, pixel_scale_arcsec)
    return RadioObservation(
        dirty=dirty_image(visibilities, uvw, n_pixels, pixel_scale_arcsec), beam=beam, uv=uvw,
        visibilities=visibilities, hour_angles_rad=hour_angle, n_visibilities=len(uvw), n_dropped=n_dropped,
        noise_sigma_jy_per_beam=float(noise_sigma_jy / np.sqrt(len(uvw))),
        beam_fwhm_arcsec=beam_fwhm_arcsec(beam, pixel_scale_arcsec))
