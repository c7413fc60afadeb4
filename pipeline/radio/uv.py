"""Earth-rotation synthesis: baselines in the equatorial XYZ frame and their (u, v, w) tracks.

Thompson, Moran & Swenson, *Interferometry and Synthesis in Radio Astronomy* (TMS): antenna
east-north-up positions -> baselines in XYZ (TMS eq. 4.15) -> (u, v, w) in wavelengths over the
hour-angle range (TMS eq. 4.1). One sample per baseline per time, no conjugates.
"""

from __future__ import annotations

import numpy as np

from lensforge.errors import ConfigError
from lensforge.pipeline.radio.layouts import AntennaLayout

SPEED_OF_LIGHT_M_S = 299_792_458.0


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
