"""Galaxy populations: each object's intrinsic parameters and applied shear.

Parameters of object ``index`` come from the GALAXY stream of its ring pair
(``index // 2`` when ring pairs are on), so both members share flux, size, shape,
S/N and shear, and the second is rotated by 90 degrees (intrinsic e → -e).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from lensforge.errors import ConfigError
from lensforge.pipeline.config import PopulationConfig, ShearConfig
from lensforge.pipeline.stamps.lensing import MAX_POSITION_DRAWS, LensingField
from lensforge.seeding import Stream, numpy_rng

MAX_INTRINSIC_ELLIPTICITY = 0.8  # |e| above this is redrawn: such thin discs are rare and hard to render


@dataclass(frozen=True)
class GalaxyParameters:
    """Truth of one object (units as in ``lensforge.catalogs.schema.LABEL_ARRAYS``)."""

    object_id: int
    ring_pair_id: int
    ring_rotation: float  # deg
    g1: float
    g2: float
    kappa: float
    mu: float
    field_x: float  # arcsec
    field_y: float  # arcsec
    redshift: float
    e1_intrinsic: float
    e2_intrinsic: float
    flux: float  # adu
    half_light_radius: float  # arcsec (disk)
    bulge_fraction: float
    bulge_sersic_n: float
    disk_sersic_n: float
    snr: float

    def as_dict(self) -> dict[str, float]:
        """Field name → value (shallow: every field is a number)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _draw_ellipticity(rng: np.random.Generator, sigma: float) -> tuple[float, float]:
    while True:
        e1, e2 = rng.normal(0.0, sigma, size=2) if sigma > 0 else (0.0, 0.0)
        if np.hypot(e1, e2) < MAX_INTRINSIC_ELLIPTICITY:
            return float(e1), float(e2)


def _draw_shear(rng: np.random.Generator, shear: ShearConfig) -> tuple[float, float]:
    if shear.kind == "constant":
        return shear.g1, shear.g2
    # Uniform in the ring g_min <= |g| <= g_max: radius^2 uniform for uniform areal density.
    radius = np.sqrt(shear.g_min**2 + (shear.g_max**2 - shear.g_min**2) * rng.uniform())
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return float(radius * np.cos(angle)), float(radius * np.sin(angle))


def draw_parameters(population: PopulationConfig, shear: ShearConfig, run_seed: int, index: int,
                    ring_pairs: bool, field: LensingField | None = None) -> GalaxyParameters:
    """Draw object ``index``'s parameters from its (run seed, pair index) stream.

    ``field`` (from ``lensforge.pipeline.stamps.lensing.build_lensing_field``) is needed for the position-dependent
    shear kinds: the object's shear, convergence and magnification are the field's at its position.
    """
    pair_id = index // 2 if ring_pairs else index
    rotated = ring_pairs and index % 2 == 1
    rng = numpy_rng(run_seed, Stream.GALAXY, pair_id)
    # Fixed draw order: changing it changes every simulated set, so append new draws at the end.
    flux = float(np.exp(rng.uniform(np.log(population.flux_min), np.log(population.flux_max))))
    half_light_radius = float(rng.uniform(population.half_light_radius_min_arcsec,
                                          population.half_light_radius_max_arcsec))
    bulge_fraction = float(rng.uniform(population.bulge_fraction_min, population.bulge_fraction_max))
    snr = float(rng.uniform(population.snr_min, population.snr_max))
    e1, e2 = _draw_ellipticity(rng, population.ellipticity_sigma)
    g1, g2 = _draw_shear(rng, shear) if shear.kind in ("constant", "uniform") else (0.0, 0.0)
    half_field = 30.0 * shear.field_size_arcmin  # arcsec
    field_x, field_y = (float(v) for v in rng.uniform(-half_field, half_field, size=2))
    kappa, mu = 0.0, 1.0
    if shear.kind not in ("constant", "uniform"):
        if field is None:
            raise ValueError(f"shear.kind={shear.kind!r} needs a lensing field")
        for _ in range(MAX_POSITION_DRAWS):  # weak lensing only: redraw positions in a strong-lensing zone
            lensing = field.at(np.array([field_x]), np.array([field_y]), np.array([shear.source_redshift]))
            if lensing.weak[0]:
                break
            field_x, field_y = (float(v) for v in rng.uniform(-half_field, half_field, size=2))
        else:
            raise ConfigError(f"shear: no weakly lensed position found in the {shear.field_size_arcmin}' field "
                              "(the halo's strong-lensing zone covers it); lower shear.halo_mass_msun or enlarge "
                              "shear.field_size_arcmin", shear.halo_mass_msun)
        g1, g2, kappa, mu = (float(v[0]) for v in (lensing.g1, lensing.g2, lensing.kappa, lensing.mu))
    if rotated:  # a 90-degree rotation multiplies the complex ellipticity by exp(2i * 90°) = -1
        e1, e2 = -e1, -e2
    return GalaxyParameters(
        object_id=index, ring_pair_id=pair_id, ring_rotation=90.0 if rotated else 0.0, g1=g1, g2=g2,
        kappa=kappa, mu=mu, field_x=field_x, field_y=field_y, redshift=shear.source_redshift,
        e1_intrinsic=e1, e2_intrinsic=e2, flux=flux, half_light_radius=half_light_radius,
        bulge_fraction=bulge_fraction, bulge_sersic_n=population.bulge_sersic_n,
        disk_sersic_n=population.disk_sersic_n, snr=snr,
    )
