"""Lensing fields: reduced shear (g1, g2), convergence kappa and magnification mu at sky positions.

GalSim does the physics: ``galsim.NFWHalo`` (redshift-dependent shear and magnification of
an NFW halo in flat LCDM) and ``galsim.PowerSpectrum`` (a Gaussian shear field realised on a
grid across the field and interpolated to each object). Positions are tangent-plane offsets
from the field centre in arcsec in GalSim's world frame: +u west (+x of an unrotated tile), +v north.

Each field registers by name (``LENSING_FIELDS``); ``build_lensing_field`` turns the ``shear``
section of the configuration into one. ``uniform`` (a random shear per object, for
calibration sets) is not a field of position and stays in ``lensforge.pipeline.stamps.populations``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import galsim
import numpy as np

from lensforge.catalogs.schema import COUNTERFACTUAL_SHIFTS
from lensforge.errors import ConfigError
from lensforge.pipeline.config import ShearConfig
from lensforge.seeding import Stream, stream_seed

MAX_WEAK_SHEAR = 0.95
MAX_WEAK_MAGNIFICATION = 25.0
MAX_POSITION_DRAWS = 1000  # redraws of a position that fell in the strong-lensing zone


@dataclass(frozen=True)
class LensingValues:
    """Lensing at n positions: reduced shear g1, g2, convergence kappa, magnification mu (arrays of n)."""

    g1: np.ndarray
    g2: np.ndarray
    kappa: np.ndarray
    mu: np.ndarray

    @property
    def weak(self) -> np.ndarray:
        """Where GalSim can lens a source: |g| < 0.95 and 0 < mu < 25 (outside a halo's strong-lensing zone).

        Inside it (|g| >= 1 and negative mu near the Einstein radius) ``GSObject.lens`` fails;
        lensforge simulates weak lensing, so sources placed there are moved (see the callers).
        """
        return (np.hypot(self.g1, self.g2) < MAX_WEAK_SHEAR) & (self.mu > 0) & (self.mu < MAX_WEAK_MAGNIFICATION)


def apply_lensing(profile: galsim.GSObject, g1: float, g2: float, mu: float = 1.0) -> galsim.GSObject:
    """Lens an intrinsic profile by reduced shear (g1, g2) and magnification ``mu``.

    ``mu == 1`` applies the shear alone (``GSObject.shear``), exactly as the shear-only sets always
    did; otherwise ``GSObject.lens`` shears and magnifies (flux and area scale by ``mu``).
    """
    if mu != 1.0:
        return profile.lens(g1=g1, g2=g2, mu=mu)
    return profile.shear(g1=g1, g2=g2)


def counterfactual_shears(g1: float, g2: float, delta_g: float) -> list[tuple[float, float]]:
    """The (g1, g2) of the counterfactual stamps, in the order of ``COUNTERFACTUAL_SHIFTS``."""
    if not 0 < delta_g < 0.1:
        raise ValueError(f"delta_g must be in (0, 0.1), got {delta_g}")
    return [(g1 + sign * delta_g if component == "g1" else g1, g2 + sign * delta_g if component == "g2" else g2)
            for component, sign in COUNTERFACTUAL_SHIFTS]


class LensingField(ABC):
    """A lensing field: ``at(x, y, z)`` gives the lensing of sources at those positions and redshifts."""

    @abstractmethod
    def at(self, x_arcsec: np.ndarray, y_arcsec: np.ndarray, source_redshift: np.ndarray) -> LensingValues:
        """Lensing of sources at tangent-plane offsets (x, y) [arcsec] from the field centre."""


class ConstantShear(LensingField):
    """The same reduced shear everywhere, no convergence: kappa = 0 and mu = 1 (shear-only calibration sims)."""

    def __init__(self, g1: float, g2: float):
        self.g1, self.g2 = float(g1), float(g2)

    def at(self, x_arcsec, y_arcsec, source_redshift) -> LensingValues:
        n = np.shape(x_arcsec)[0] if np.ndim(x_arcsec) else 1
        return LensingValues(np.full(n, self.g1), np.full(n, self.g2), np.zeros(n), np.ones(n))


class NFWLensing(LensingField):
    """An NFW halo (``galsim.NFWHalo``); sources in front of or at the halo are not lensed."""

    def __init__(self, mass_msun: float, concentration: float, redshift: float, x_arcsec: float, y_arcsec: float,
                 omega_m: float):
        self.halo = galsim.NFWHalo(mass=mass_msun, conc=concentration, redshift=redshift,
                                   halo_pos=galsim.PositionD(x_arcsec, y_arcsec), omega_m=omega_m,
                                   omega_lam=1.0 - omega_m)
        self.redshift = redshift

    def at(self, x_arcsec, y_arcsec, source_redshift) -> LensingValues:
        x = np.atleast_1d(np.asarray(x_arcsec, dtype=float))
        y = np.atleast_1d(np.asarray(y_arcsec, dtype=float))
        z = np.broadcast_to(np.asarray(source_redshift, dtype=float), x.shape)
        g1, g2, kappa, mu = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x), np.ones_like(x)
        behind = z > self.redshift  # GalSim refuses z_s <= z_halo; such sources see no lensing
        if behind.any():
            pos = (x[behind], y[behind])
            with warnings.catch_warnings():  # GalSim 2.8 trips numpy's 'where without out' warning internally
                warnings.simplefilter("ignore", UserWarning)
                g1[behind], g2[behind], mu[behind] = self.halo.getLensing(pos, z[behind])
                kappa[behind] = self.halo.getConvergence(pos, z[behind])
        return LensingValues(g1, g2, kappa, mu)


class PowerLawSpectrum:
    """P_E(k) = A (k / 1 arcmin^-1)^-slope with A in arcmin^2, for GalSim's k in arcsec^-1 (picklable)."""

    def __init__(self, amplitude_arcmin2: float, slope: float):
        self.amplitude_arcmin2, self.slope = amplitude_arcmin2, slope

    def __call__(self, k_per_arcsec):
        k_per_arcmin = np.maximum(np.asarray(k_per_arcsec, dtype=float), 1e-12) * 60.0
        return self.amplitude_arcmin2 * 3600.0 * k_per_arcmin ** (-self.slope)  # arcmin^2 -> arcsec^2


class PowerSpectrumLensing(LensingField):
    """A Gaussian E-mode shear field from ``galsim.PowerSpectrum`` realised on a grid covering the field.

    The realisation is seeded by (run seed, LENSING_FIELD stream), so every object of a run sees
    the same field wherever it is rendered; the source redshift is not used (one source plane).
    """

    def __init__(self, amplitude_arcmin2: float, slope: float, grid_spacing_arcsec: float, extent_arcsec: float,
                 run_seed: int):
        self.power_spectrum = galsim.PowerSpectrum(e_power_function=PowerLawSpectrum(amplitude_arcmin2, slope),
                                                   units=galsim.arcsec)
        # Two spare grid points each side keep every position of the field inside the interpolation grid.
        self.n_grid = int(np.ceil(extent_arcsec / grid_spacing_arcsec)) + 4
        self.power_spectrum.buildGrid(grid_spacing=grid_spacing_arcsec, ngrid=self.n_grid,
                                      rng=galsim.BaseDeviate(stream_seed(run_seed, Stream.LENSING_FIELD, 0)),
                                      units=galsim.arcsec, get_convergence=True)

    def at(self, x_arcsec, y_arcsec, source_redshift) -> LensingValues:
        pos = (np.atleast_1d(np.asarray(x_arcsec, dtype=float)), np.atleast_1d(np.asarray(y_arcsec, dtype=float)))
        g1, g2, mu = self.power_spectrum.getLensing(pos)
        kappa = self.power_spectrum.getConvergence(pos)
        return LensingValues(np.asarray(g1, float), np.asarray(g2, float), np.asarray(kappa, float),
                             np.asarray(mu, float))


LENSING_FIELDS: dict[str, Callable[[ShearConfig, int, float], LensingField]] = {
    "constant": lambda shear, seed, extent: ConstantShear(shear.g1, shear.g2),
    "nfw": lambda shear, seed, extent: NFWLensing(shear.halo_mass_msun, shear.halo_concentration,
                                                  shear.halo_redshift, shear.halo_x_arcsec, shear.halo_y_arcsec,
                                                  shear.omega_m),
    "power_spectrum": lambda shear, seed, extent: PowerSpectrumLensing(
        shear.power_spectrum_amplitude, shear.power_spectrum_slope, shear.grid_spacing_arcsec, extent, seed),
}


def is_position_dependent(shear: ShearConfig) -> bool:
    """Whether the shear kind needs object positions (NFW, power spectrum)."""
    return shear.kind in ("nfw", "power_spectrum")


def build_lensing_field(shear: ShearConfig, run_seed: int, extent_arcsec: float) -> LensingField:
    """The lensing field of ``shear.kind`` over a square of side ``extent_arcsec`` centred on the origin."""
    try:
        builder = LENSING_FIELDS[shear.kind]
    except KeyError:
        raise ConfigError(f"shear.kind={shear.kind!r} is not a field of position; fields: {sorted(LENSING_FIELDS)}",
                          shear.kind) from None
    return builder(shear, run_seed, extent_arcsec)
