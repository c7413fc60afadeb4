"""Galaxy models: the unlensed, pre-PSF profiles that stamps and tiles both draw.

A galaxy is built intrinsic (its own shape, no shear applied) and lensed afterwards by
:func:`lensforge.pipeline.stamps.lensing.apply_lensing`, so a label's shear is exactly what
GalSim applied. Units: flux in ADU, radii in arcsec.
"""

from __future__ import annotations

import galsim

from lensforge.pipeline.stamps.lensing import apply_lensing
from lensforge.pipeline.stamps.populations import GalaxyParameters

BULGE_SIZE_RATIO = 0.5  # bulge half-light radius / disk half-light radius


def bulge_disk_galaxy(flux: float, half_light_radius: float, bulge_fraction: float, e1: float, e2: float,
                      bulge_sersic_n: float = 4.0, disk_sersic_n: float = 1.0) -> galsim.GSObject:
    """An unlensed, pre-PSF bulge + disk galaxy: Sersic profiles [flux: ADU; radius: arcsec] sheared by (e1, e2).

    The bulge's half-light radius is ``BULGE_SIZE_RATIO`` times the disk's (``half_light_radius``).
    """
    disk = galsim.Sersic(n=disk_sersic_n, half_light_radius=half_light_radius, flux=flux * (1.0 - bulge_fraction))
    profile = disk
    if bulge_fraction > 0:
        bulge = galsim.Sersic(n=bulge_sersic_n, half_light_radius=BULGE_SIZE_RATIO * half_light_radius,
                              flux=flux * bulge_fraction)
        profile = galsim.Add([bulge, disk])
    return profile.shear(g1=e1, g2=e2)


def intrinsic_galaxy(params: GalaxyParameters) -> galsim.GSObject:
    """The unlensed, pre-PSF galaxy of a stamp: bulge + disk Sersic profiles with the intrinsic shape."""
    return bulge_disk_galaxy(params.flux, params.half_light_radius, params.bulge_fraction, params.e1_intrinsic,
                             params.e2_intrinsic, params.bulge_sersic_n, params.disk_sersic_n)


def lensed_galaxy(params: GalaxyParameters) -> galsim.GSObject:
    """The intrinsic galaxy lensed by its (g1, g2, mu): exactly the shear and magnification its labels state."""
    return apply_lensing(intrinsic_galaxy(params), params.g1, params.g2, params.mu)
