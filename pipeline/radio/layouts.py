"""Antenna layouts of radio interferometers: SKA-MID-, MeerKAT- and VLA-D-like arrays, by name.

Positions are east-north-up metres about the array centre; ``get_layout(name)`` builds one from
``ANTENNA_LAYOUTS`` (an unknown name lists the valid ones).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lensforge.errors import ConfigError

GOLDEN_ANGLE_RAD = np.pi * (3.0 - np.sqrt(5.0))  # Fibonacci / sunflower placement

SKA_SITE_LATITUDE_DEG = -30.71  # Karoo (SKA-MID and MeerKAT)
VLA_SITE_LATITUDE_DEG = 34.08  # Plains of San Agustin
VLA_POWER_LAW_INDEX = 1.716  # VLA pad n along an arm lies at r ~ n**1.716


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
