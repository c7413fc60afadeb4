"""Radio-interferometer stage: a GalSim radio sky observed through an antenna layout.

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

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import galsim
import numpy as np
from scipy import ndimage

from lensforge.errors import ConfigError

SPEED_OF_LIGHT_M_S = 299_792_458.0
ARCSEC_RAD = np.pi / (180.0 * 3600.0)
GOLDEN_ANGLE_RAD = np.pi * (3.0 - np.sqrt(5.0))  # Fibonacci / sunflower placement

SKA_SITE_LATITUDE_DEG = -30.71  # Karoo (SKA-MID and MeerKAT)
VLA_SITE_LATITUDE_DEG = 34.08  # Plains of San Agustin
VLA_POWER_LAW_INDEX = 1.716  # VLA pad n along an arm lies at r ~ n**1.716
COMPACT_FWHM_PIXELS = 0.05  # compact sources: unresolved, all flux in 1-4 pixels


# --------------------------------------------------------------------------------------------
# Antenna layouts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AntennaLayout:
    """An interferometer: antenna positions, site latitude and dish sizes.

    Attributes:
        name: registry name of the layout.
        enu_m: (n_antennas, 3) east, north, up positions [m] relative to the array centre.
        latitude_deg: geodetic latitude of the site [deg].
        dish_diameter_m: (n_antennas,) dish diameters [m] (arrays may mix dish types).
        description: what the layout approximates, one line.
    """

    name: str
    enu_m: np.ndarray
    latitude_deg: float
    dish_diameter_m: np.ndarray
    description: str

    def __post_init__(self) -> None:
        enu = np.array(self.enu_m, dtype=np.float64)
        dishes = np.broadcast_to(np.asarray(self.dish_diameter_m, dtype=np.float64), (len(enu),)).copy()
        if enu.ndim != 2 or enu.shape[1] != 3 or len(enu) < 2:
            raise ConfigError(f"enu_m must have shape (n_antennas >= 2, 3), got {enu.shape}", enu.shape)
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise ConfigError(f"latitude_deg must be within [-90, 90], got {self.latitude_deg}", self.latitude_deg)
        enu.setflags(write=False)  # shared by every observation of the layout: keep it immutable
        dishes.setflags(write=False)
        object.__setattr__(self, "enu_m", enu)
        object.__setattr__(self, "dish_diameter_m", dishes)

    @property
    def n_antennas(self) -> int:
        """Number of antennas."""
        return len(self.enu_m)

    @property
    def n_baselines(self) -> int:
        """Number of distinct antenna pairs, n (n - 1) / 2."""
        return self.n_antennas * (self.n_antennas - 1) // 2

    def baseline_lengths_m(self) -> np.ndarray:
        """(n_baselines,) baseline lengths [m], pairs ordered as ``numpy.triu_indices(n, 1)``."""
        first, second = np.triu_indices(self.n_antennas, 1)
        return np.linalg.norm(self.enu_m[second] - self.enu_m[first], axis=1)

    def max_baseline_m(self) -> float:
        """Longest baseline [m]."""
        return float(self.baseline_lengths_m().max())

    def min_separation_m(self) -> float:
        """Shortest antenna separation [m] (must exceed the dish diameter for a buildable array)."""
        return float(self.baseline_lengths_m().min())


def _sunflower_en(n: int, radius_m: float, concentration: float) -> np.ndarray:
    """(n, 2) east, north [m] of a golden-angle (Fibonacci) spiral filling a disk of ``radius_m``.

    ``r_k = radius_m ((k + 1/2) / n) ** concentration``; 0.5 gives uniform density, larger values
    concentrate antennas towards the centre as real array cores do.
    """
    k = np.arange(n)
    radius = radius_m * ((k + 0.5) / n) ** concentration
    azimuth = k * GOLDEN_ANGLE_RAD  # from north through east
    return np.column_stack([radius * np.sin(azimuth), radius * np.cos(azimuth)])


def _with_up(east_north_m: np.ndarray) -> np.ndarray:
    """Append up = 0: the built-in sites are treated as flat."""
    return np.column_stack([east_north_m, np.zeros(len(east_north_m))])


def _check_buildable(layout: AntennaLayout, argument: str) -> AntennaLayout:
    """Raise if two dishes would overlap (a sign that ``argument`` shrank the array too far)."""
    separation_m = layout.min_separation_m()
    if separation_m <= layout.dish_diameter_m.max():
        raise ConfigError(f"{argument} too small for layout {layout.name!r}: dishes {separation_m:.1f} m apart "
                          f"overlap ({layout.dish_diameter_m.max():g} m dishes)", separation_m)
    return layout


def ska_mid_like(max_radius_m: float = 10_000.0, core_radius_m: float = 1_000.0) -> AntennaLayout:
    """SKA-MID-like: 197 dishes, a dense core plus three logarithmic spiral arms (synthetic).

    Approximates SKA-MID (133 x 15 m SKA dishes + 64 x 13.5 m MeerKAT dishes at -30.71 deg) but is
    *not* its real configuration: 98 dishes (about half) fill a core of ``core_radius_m`` on a
    centrally concentrated golden-angle spiral, and 3 x 33 dishes follow logarithmic spiral arms
    (pitch angle ~65 deg, 120 deg apart) with geometrically growing radii out to ``max_radius_m``.
    The real array reaches ~80 km; the default 10 km (baselines up to ~17 km, ~2.5 arcsec at
    1.4 GHz) suits the ~0.5-1 arcsec pixels of small fields. The 64 13.5 m dishes are interleaved
    evenly in radius (on the real array they sit at MeerKAT's own pads).

    Args:
        max_radius_m: radius of the outermost arm dish [m]; must exceed ``core_radius_m``.
        core_radius_m: radius of the core [m].
    """
    if not max_radius_m > core_radius_m > 0:
        raise ConfigError(f"max_radius_m ({max_radius_m}) must exceed core_radius_m ({core_radius_m}) > 0",
                          max_radius_m)
    n_core, n_arms, n_per_arm = 98, 3, 33
    core = _sunflower_en(n_core, core_radius_m, concentration=0.75)
    # Geometric radii: equal logarithmic steps give the ~uniform coverage in log(uv) that arms are for.
    radius_m = core_radius_m * (max_radius_m / core_radius_m) ** (np.arange(1, n_per_arm + 1) / n_per_arm)
    winding_rad = np.log(radius_m / core_radius_m) / np.tan(np.deg2rad(65.0))  # log spiral, pitch 65 deg
    arms = []
    for arm in range(n_arms):
        azimuth = np.deg2rad(90.0 + 120.0 * arm) + winding_rad
        arms.append(np.column_stack([radius_m * np.sin(azimuth), radius_m * np.cos(azimuth)]))
    enu_m = _with_up(np.vstack([core, *arms]))
    dish_diameter_m = np.full(len(enu_m), 15.0)
    by_radius = np.argsort(np.hypot(enu_m[:, 0], enu_m[:, 1]), kind="stable")
    dish_diameter_m[by_radius[np.round(np.linspace(0, len(enu_m) - 1, 64)).astype(int)]] = 13.5
    layout = AntennaLayout("ska-mid-like", enu_m, SKA_SITE_LATITUDE_DEG, dish_diameter_m,
                           f"SKA-MID-like synthetic: 197 dishes, 1 km core + 3 log-spiral arms to "
                           f"{max_radius_m / 1e3:g} km")
    return _check_buildable(layout, "core_radius_m")


def meerkat_like(max_radius_m: float = 4_400.0) -> AntennaLayout:
    """MeerKAT-like: 64 x 13.5 m dishes, 70% within 1 km, the rest out to ``max_radius_m`` (synthetic).

    Approximates MeerKAT (-30.71 deg; longest baseline ~8 km) but is not its real configuration:
    45 dishes fill a centrally concentrated golden-angle core of 1 km radius and 19 outer dishes
    continue the golden-angle sequence at geometrically growing radii from 1 km to ``max_radius_m``
    (the default 4.4 km gives a longest baseline of ~7.9 km).

    Args:
        max_radius_m: radius of the outermost dish [m]; must exceed the 1 km core.
    """
    core_radius_m, n_core, n_outer = 1_000.0, 45, 19
    if not max_radius_m > core_radius_m:
        raise ConfigError(f"max_radius_m ({max_radius_m}) must exceed the 1000 m core of meerkat-like",
                          max_radius_m)
    core = _sunflower_en(n_core, core_radius_m, concentration=0.7)
    k = np.arange(n_outer)
    radius_m = core_radius_m * (max_radius_m / core_radius_m) ** ((k + 1) / n_outer)
    azimuth = (n_core + k) * GOLDEN_ANGLE_RAD
    outer = np.column_stack([radius_m * np.sin(azimuth), radius_m * np.cos(azimuth)])
    layout = AntennaLayout("meerkat-like", _with_up(np.vstack([core, outer])), SKA_SITE_LATITUDE_DEG, 13.5,
                           f"MeerKAT-like synthetic: 64 x 13.5 m dishes, 45 within 1 km, out to "
                           f"{max_radius_m / 1e3:g} km")
    return _check_buildable(layout, "max_radius_m")


def vla_d_like(max_radius_m: float = 600.0) -> AntennaLayout:
    """VLA-like D configuration: 27 x 25 m dishes on a Y, pads at r ~ n**1.716 (synthetic).

    Three arms at azimuths 5, 125 and 245 deg (north through east) carry 9 dishes each at
    ``r_n = max_radius_m (n / 9) ** 1.716`` (n = 1..9; the VLA's power law), site latitude
    +34.08 deg. D configuration has ~0.6 km arms (longest baseline ~1 km); 1.95, 6.4 and 21 km
    give C-, B- and A-like arrays. The pure law would put the innermost dishes 24 m apart (less
    than a dish), so n = 1 is moved out to ``0.0337 max_radius_m`` (20 m in D): the three innermost
    dishes are then 35 m apart, the real D configuration's shortest baseline (the shortest here is
    25.2 m, n = 1 to n = 2 along an arm).

    Args:
        max_radius_m: arm length, distance of the outermost pad from the centre [m].
    """
    if not max_radius_m > 0:
        raise ConfigError(f"max_radius_m must be positive, got {max_radius_m}", max_radius_m)
    n = np.arange(1, 10)
    radius_m = max_radius_m * np.maximum((n / 9.0) ** VLA_POWER_LAW_INDEX, 35.0 / np.sqrt(3.0) / 600.0)
    arms = []
    for azimuth_deg in (5.0, 125.0, 245.0):
        azimuth = np.deg2rad(azimuth_deg)
        arms.append(np.column_stack([radius_m * np.sin(azimuth), radius_m * np.cos(azimuth)]))
    layout = AntennaLayout("vla-d-like", _with_up(np.vstack(arms)), VLA_SITE_LATITUDE_DEG, 25.0,
                           f"VLA-like synthetic Y: 27 x 25 m dishes, r ~ n^1.716, {max_radius_m / 1e3:g} km arms")
    return _check_buildable(layout, "max_radius_m")


def two_element(baseline_m: float = 100.0, latitude_deg: float = SKA_SITE_LATITUDE_DEG,
                dish_diameter_m: float = 13.5) -> AntennaLayout:
    """Two dishes on an east-west baseline of ``baseline_m`` [m] (tests and teaching).

    Over 24 h its uv track is an ellipse with semi-axes ``b / lambda`` (u) and ``b |sin dec| / lambda``
    (v) (TMS sec. 4.2).
    """
    if not baseline_m > dish_diameter_m > 0:
        raise ConfigError(f"baseline_m ({baseline_m}) must exceed dish_diameter_m ({dish_diameter_m}) > 0",
                          baseline_m)
    enu_m = np.array([[-baseline_m / 2, 0.0, 0.0], [baseline_m / 2, 0.0, 0.0]])
    return AntennaLayout("two-element", enu_m, latitude_deg, dish_diameter_m,
                         f"two dishes {baseline_m:g} m apart east-west")


ANTENNA_LAYOUTS: dict[str, Callable[..., AntennaLayout]] = {
    "ska-mid-like": ska_mid_like,
    "meerkat-like": meerkat_like,
    "vla-d-like": vla_d_like,
    "two-element": two_element,
}


def get_layout(name: str, **kwargs: float) -> AntennaLayout:
    """Build the registered layout ``name`` with its keyword arguments (see each builder).

    Raises:
        ConfigError: unknown name (lists the valid ones) or an argument the builder does not take.
    """
    if name not in ANTENNA_LAYOUTS:
        raise ConfigError(f"unknown antenna layout {name!r}; valid layouts: {', '.join(sorted(ANTENNA_LAYOUTS))}",
                          name)
    builder = ANTENNA_LAYOUTS[name]
    accepted = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"layout {name!r} takes no argument(s) {unknown}; it accepts {accepted}", unknown)
    return builder(**kwargs)


# --------------------------------------------------------------------------------------------
# Geometry: baselines and uv tracks
# --------------------------------------------------------------------------------------------


def enu_to_xyz(enu_m: np.ndarray, latitude_deg: float) -> np.ndarray:
    """East-north-up vectors [m] -> local equatorial XYZ [m] (TMS eq. 4.15).

    X points to (H = 0, dec = 0), Y to (H = -6 h, dec = 0) i.e. east, Z to the north celestial pole.
    """
    east, north, up = np.moveaxis(np.asarray(enu_m, dtype=np.float64), -1, 0)
    sin_lat, cos_lat = np.sin(np.deg2rad(latitude_deg)), np.cos(np.deg2rad(latitude_deg))
    return np.stack([-sin_lat * north + cos_lat * up, east, cos_lat * north + sin_lat * up], axis=-1)


def baselines_xyz(layout: AntennaLayout) -> np.ndarray:
    """(n_baselines, 3) baseline vectors ``antenna_j - antenna_i`` (i < j) in equatorial XYZ [m].

    Pairs are ordered as ``numpy.triu_indices(n_antennas, 1)``; each pair appears once (its
    conjugate is the imaging step's business, see the module docstring).
    """
    first, second = np.triu_indices(layout.n_antennas, 1)
    return enu_to_xyz(layout.enu_m[second] - layout.enu_m[first], layout.latitude_deg)


def hour_angles_rad(hour_angle_range_h: tuple[float, float], n_times: int) -> np.ndarray:
    """(n_times,) hour angles [rad] at the centres of ``n_times`` equal integrations over the range [h].

    The hour angle is sidereal time, so 1 h of hour angle is 2 pi / 24 rad.
    """
    start_h, stop_h = (float(value) for value in hour_angle_range_h)
    if n_times < 1:
        raise ConfigError(f"n_times must be >= 1, got {n_times}", n_times)
    if stop_h < start_h:
        raise ConfigError(f"hour_angle_range_h must be (start, stop) with start <= stop, got {hour_angle_range_h}",
                          hour_angle_range_h)
    centres_h = start_h + (np.arange(n_times) + 0.5) * (stop_h - start_h) / n_times
    return centres_h * (2.0 * np.pi / 24.0)


def elevation_rad(hour_angle_rad: np.ndarray, declination_rad: float, latitude_deg: float) -> np.ndarray:
    """Elevation [rad] of a source at ``declination_rad`` seen from ``latitude_deg`` at each hour angle."""
    latitude = np.deg2rad(latitude_deg)
    sin_el = np.sin(latitude) * np.sin(declination_rad) + np.cos(latitude) * np.cos(declination_rad) * np.cos(
        hour_angle_rad)
    return np.arcsin(np.clip(sin_el, -1.0, 1.0))


def wavelength_m(frequency_hz: float) -> float:
    """Wavelength [m] of ``frequency_hz`` [Hz]."""
    if not frequency_hz > 0:
        raise ConfigError(f"frequency_hz must be positive, got {frequency_hz}", frequency_hz)
    return SPEED_OF_LIGHT_M_S / frequency_hz


def uvw_tracks(baselines_xyz_m: np.ndarray, hour_angles_rad: np.ndarray, declination_rad: float,
               frequency_hz: float) -> np.ndarray:
    """(u, v, w) [wavelengths] of every baseline at every hour angle (TMS eq. 4.1).

    Args:
        baselines_xyz_m: (n_baselines, 3) baselines in equatorial XYZ [m] (``baselines_xyz``).
        hour_angles_rad: (n_times,) hour angles of the phase centre [rad].
        declination_rad: declination of the phase centre [rad].
        frequency_hz: observing frequency [Hz].

    Returns:
        (n_times * n_baselines, 3) array, time-major (row ``t * n_baselines + b``). One sample per
        baseline and time: the Hermitian partners (-u, -v, -w) are *not* included; the gridding
        functions add them.
    """
    xyz = np.asarray(baselines_xyz_m, dtype=np.float64).reshape(-1, 3) / wavelength_m(frequency_hz)
    hour_angle = np.atleast_1d(np.asarray(hour_angles_rad, dtype=np.float64))[:, None]
    x, y, z = xyz[:, 0][None, :], xyz[:, 1][None, :], xyz[:, 2][None, :]
    sin_h, cos_h = np.sin(hour_angle), np.cos(hour_angle)
    sin_d, cos_d = np.sin(declination_rad), np.cos(declination_rad)
    u = sin_h * x + cos_h * y
    v = -sin_d * cos_h * x + sin_d * sin_h * y + cos_d * z
    w = cos_d * cos_h * x - cos_d * sin_h * y + sin_d * z
    return np.stack([u.ravel(), v.ravel(), w.ravel()], axis=-1)


# --------------------------------------------------------------------------------------------
# Gridding and imaging (natural weighting, nearest cell, no w-term)
# --------------------------------------------------------------------------------------------


def _check_image(n_pixels: int, pixel_scale_arcsec: float) -> None:
    """Raise ConfigError for an image too small or a non-positive pixel scale."""
    if n_pixels < 2:
        raise ConfigError(f"n_pixels must be >= 2, got {n_pixels}", n_pixels)
    if not pixel_scale_arcsec > 0:
        raise ConfigError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}", pixel_scale_arcsec)


def uv_cell_wavelengths(n_pixels: int, pixel_scale_arcsec: float) -> float:
    """uv cell size [wavelengths] of an ``n_pixels`` image: 1 / field of view [rad]."""
    _check_image(n_pixels, pixel_scale_arcsec)
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
    beam = np.asarray(beam, dtype=np.float64)
    n_pixels = beam.shape[0]
    centre = n_pixels // 2
    labels, _ = ndimage.label(beam >= 0.5 * beam[centre, centre])
    rows, cols = np.nonzero(labels == labels[centre, centre])
    if rows.min() == 0 or cols.min() == 0 or rows.max() == n_pixels - 1 or cols.max() == n_pixels - 1:
        return float("nan")
    # A 2-pixel margin: the fine-grid lobe can exceed its native-pixel footprint by under a pixel.
    low, high = min(rows.min(), cols.min()) - centre - 2, max(rows.max(), cols.max()) - centre + 2
    offsets = np.arange(low * oversample, high * oversample + 1) / oversample  # pixels; includes 0
    frequencies = np.fft.fftfreq(n_pixels) * n_pixels
    phase = np.exp(2j * np.pi * np.outer(offsets, frequencies) / n_pixels)
    coefficients = np.fft.fft2(np.fft.ifftshift(beam))
    fine = (phase @ coefficients @ phase.T).real / n_pixels**2
    origin = int(np.flatnonzero(offsets == 0)[0])
    fine_labels, _ = ndimage.label(fine >= 0.5 * fine[origin, origin])
    area_pixels = np.count_nonzero(fine_labels == fine_labels[origin, origin]) / oversample**2
    return float(2.0 * np.sqrt(area_pixels / np.pi) * pixel_scale_arcsec)


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


# --------------------------------------------------------------------------------------------
# Radio sky and flags
# --------------------------------------------------------------------------------------------


def power_law_fluxes(rng: np.random.Generator, n: int, flux_min_jy: float, flux_max_jy: float,
                     slope: float) -> np.ndarray:
    """``n`` fluxes [Jy] from dN/dS ~ S**-slope on [flux_min_jy, flux_max_jy] by inverse-CDF sampling."""
    if not 0 < flux_min_jy <= flux_max_jy:
        raise ConfigError(f"need 0 < flux_min_jy <= flux_max_jy, got {flux_min_jy}, {flux_max_jy}", flux_min_jy)
    uniform = rng.uniform(size=n)
    if np.isclose(slope, 1.0):
        return flux_min_jy * (flux_max_jy / flux_min_jy) ** uniform
    exponent = 1.0 - slope
    low, high = flux_min_jy**exponent, flux_max_jy**exponent
    return (low + uniform * (high - low)) ** (1.0 / exponent)


def radio_sky(n_pixels: int, pixel_scale_arcsec: float, rng: np.random.Generator, n_extended: int = 20,
              n_compact: int = 50, flux_min_jy: float = 1e-4, flux_max_jy: float = 1e-1, flux_slope: float = 1.6,
              half_light_radius_min_arcsec: float = 1.0, half_light_radius_max_arcsec: float = 6.0,
              ellipticity_max: float = 0.6, sersic_n: float = 1.0,
              margin_pixels: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A radio sky [Jy/pixel] of extended and compact sources drawn with GalSim.

    Extended sources (star-forming discs, resolved AGN) are Sersic profiles (exponential for
    ``sersic_n = 1``) with log-uniform half-light radii and a shear of uniform modulus up to
    ``ellipticity_max`` and uniform position angle; compact sources are GalSim Gaussians of FWHM
    ``0.05`` pixel (unresolved). Fluxes follow dN/dS ~ S**-flux_slope between the bounds; 1.6 is a
    sub-Euclidean slope (Euclidean is 2.5) typical of 1.4 GHz counts below a few mJy. Positions
    are uniform in ``[margin_pixels, n_pixels - 1 - margin_pixels]``. Each source is drawn with the
    pixel response (``method="auto"``; ``"real_space"`` for compact ones), so pixels hold the flux
    falling in them, on a stamp of GalSim's good size around it, added into the image; light beyond
    the image edge is lost.

    Args:
        n_pixels: side of the square image.
        pixel_scale_arcsec: pixel scale [arcsec].
        rng: the only source of randomness.
        n_extended, n_compact: numbers of sources of each kind.
        flux_min_jy, flux_max_jy: flux bounds [Jy].
        flux_slope: power-law index of the differential counts.
        half_light_radius_min_arcsec, half_light_radius_max_arcsec: extended-source size bounds [arcsec].
        ellipticity_max: largest reduced shear |g| of extended sources.
        sersic_n: Sersic index of extended sources.
        margin_pixels: keep centroids this far from the image edges [pixels].

    Returns:
        ``(sky, sources)``: the float64 (n_pixels, n_pixels) sky [Jy/pixel] and a dict of equal-length
        arrays: ``x``, ``y`` (0-based pixel centroids, ``sky[y, x]``), ``flux_jy``, ``kind``
        ('extended' / 'compact'), ``half_light_radius_arcsec``, ``e1``, ``e2`` (reduced shear g1, g2),
        extended sources first.
    """
    _check_image(n_pixels, pixel_scale_arcsec)
    if n_extended < 0 or n_compact < 0:
        raise ConfigError(f"n_extended and n_compact must be >= 0, got {n_extended}, {n_compact}", n_extended)
    if not 0 < half_light_radius_min_arcsec <= half_light_radius_max_arcsec:
        raise ConfigError("need 0 < half_light_radius_min_arcsec <= half_light_radius_max_arcsec, got "
                          f"{half_light_radius_min_arcsec}, {half_light_radius_max_arcsec}",
                          half_light_radius_min_arcsec)
    if not 0 <= ellipticity_max < 1:
        raise ConfigError(f"ellipticity_max must be in [0, 1), got {ellipticity_max}", ellipticity_max)
    if not 0 <= 2 * margin_pixels <= n_pixels - 1:
        raise ConfigError(f"margin_pixels must be in [0, (n_pixels - 1) / 2], got {margin_pixels}", margin_pixels)
    n_sources = n_extended + n_compact
    # Fixed draw order (all positions, then fluxes, then shapes) keeps a seed's sky reproducible.
    x = rng.uniform(margin_pixels, n_pixels - 1 - margin_pixels, size=n_sources)
    y = rng.uniform(margin_pixels, n_pixels - 1 - margin_pixels, size=n_sources)
    flux_jy = power_law_fluxes(rng, n_sources, flux_min_jy, flux_max_jy, flux_slope)
    log_radius = rng.uniform(np.log(half_light_radius_min_arcsec), np.log(half_light_radius_max_arcsec),
                             size=n_extended)
    shear_modulus = rng.uniform(0.0, ellipticity_max, size=n_extended)
    position_angle = rng.uniform(0.0, np.pi, size=n_extended)
    compact_fwhm_arcsec = COMPACT_FWHM_PIXELS * pixel_scale_arcsec
    half_light_radius_arcsec = np.concatenate([np.exp(log_radius), np.full(n_compact, compact_fwhm_arcsec / 2)])
    e1 = np.concatenate([shear_modulus * np.cos(2 * position_angle), np.zeros(n_compact)])
    e2 = np.concatenate([shear_modulus * np.sin(2 * position_angle), np.zeros(n_compact)])

    image = galsim.ImageD(n_pixels, n_pixels, scale=pixel_scale_arcsec)
    for index in range(n_sources):
        if index < n_extended:
            profile = galsim.Sersic(n=sersic_n, half_light_radius=half_light_radius_arcsec[index],
                                    flux=flux_jy[index]).shear(g1=e1[index], g2=e2[index])
            method = "auto"
        else:
            profile = galsim.Gaussian(fwhm=compact_fwhm_arcsec, flux=flux_jy[index])
            # Pixel integration in real space: by FFT a sub-pixel Gaussian would need a ~1e5-cell k grid.
            method = "real_space"
        half = max(profile.getGoodImageSize(pixel_scale_arcsec) // 2 + 1, 4)
        # GalSim bounds are 1-based: numpy pixel x sits at GalSim x + 1.
        column, row = int(np.rint(x[index])) + 1, int(np.rint(y[index])) + 1
        bounds = galsim.BoundsI(column - half, column + half, row - half, row + half) & image.bounds
        profile.drawImage(image=image[bounds], add_to_image=True, method=method,
                          center=galsim.PositionD(x[index] + 1.0, y[index] + 1.0))
    sources = {
        "x": x, "y": y, "flux_jy": flux_jy,
        "kind": np.array(["extended"] * n_extended + ["compact"] * n_compact, dtype="<U8"),
        "half_light_radius_arcsec": half_light_radius_arcsec, "e1": e1, "e2": e2,
    }
    return image.array.astype(np.float64), sources


def blank_patches(shape: tuple[int, int], rng: np.random.Generator, n_patches: int, size_min_pixels: int,
                  size_max_pixels: int) -> np.ndarray:
    """Boolean mask of ``n_patches`` flagged rectangles (RFI-flagged or lost data), True = blank.

    Each side is uniform in ``[size_min_pixels, size_max_pixels]`` (clipped to the image) and the
    rectangle lies wholly inside the image; patches may overlap. The caller ORs the mask into
    ``lensforge.catalogs.schema.MASK_BITS["BLANK"]``.
    """
    if n_patches < 0:
        raise ConfigError(f"n_patches must be >= 0, got {n_patches}", n_patches)
    if not 1 <= size_min_pixels <= size_max_pixels:
        raise ConfigError(f"need 1 <= size_min_pixels <= size_max_pixels, got {size_min_pixels}, {size_max_pixels}",
                          size_min_pixels)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_patches):
        height, width = rng.integers(size_min_pixels, size_max_pixels + 1, size=2)
        height, width = min(height, shape[0]), min(width, shape[1])
        y0 = rng.integers(0, shape[0] - height + 1)
        x0 = rng.integers(0, shape[1] - width + 1)
        mask[y0:y0 + height, x0:x0 + width] = True
    return mask
