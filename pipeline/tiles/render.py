"""Survey tiles: large images with a TAN WCS, galaxies (blends included), stars, sky, noise and artefacts.

``plan_tile`` draws everything random about a tile that is not a pixel — its WCS, every
object's position, magnitude, shape, redshift and lensing, and the detector artefacts — from
(run seed, tile id, object index) streams. ``render_region`` then renders any rectangle of the
tile from the plan alone: each object overlapping the region is drawn by GalSim on its own
stamp (same stamp wherever it is drawn) and added in object order; sky and detector noise
come from fixed 128x128 noise blocks with their own streams; artefacts are rasterised from
the tile-level primitives. So any cut into regions, on any number of Dask workers, gives the
same bytes as one process rendering the whole tile.

Photometry: fluxes [ADU] = exposures x exposure time x 10^(-0.4 (m - zero point)) / gain; the
science image is sky-subtracted; the variance plane is the expected variance of each pixel
(object + sky Poisson, read noise) [ADU^2].
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from lensforge.catalogs.schema import TILE_TRUTH_COLUMNS
from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.config import PopulationConfig, RunConfig, SurveyConfig, TileConfig
from lensforge.pipeline.stamps.galaxies import bulge_disk_galaxy
from lensforge.pipeline.stamps.lensing import (
    MAX_POSITION_DRAWS,
    ConstantShear,
    LensingField,
    apply_lensing,
    build_lensing_field,
)
from lensforge.pipeline.stamps.populations import MAX_INTRINSIC_ELLIPTICITY
from lensforge.pipeline.stamps.surveys import (
    build_psf,
    flux_from_magnitude,
    read_noise_adu,
    saturation_adu,
    sky_level_adu,
    sky_noise_sigma_adu,
)
from lensforge.pipeline.tiles.defects import TileDefects, apply_defects, bleed_trails_from_stamp, draw_tile_defects
from lensforge.pipeline.tiles.regions import Region, split_tile
from lensforge.seeding import Stream, numpy_rng, stream_seed

DRAWN_COLUMNS = ("object_id", "is_star", "x", "y", "mag", "half_light_radius", "bulge_fraction", "e1_intrinsic",
                 "e2_intrinsic", "redshift", "cosmos_index", "rotation_deg")  # per-object draws of plan_tile
COUNTS_KEY = 2**63 - 1  # stream key of the tile's object counts (object indices are smaller)
NOISE_BLOCK = 128  # pixels: the unit of the noise streams; regions are multiples of it
MIN_STAMP, MAX_GALAXY_STAMP, MAX_STAR_STAMP = 15, 255, 1023  # odd sides [pixels]
WING_FRACTION_OF_SIGMA = 0.2  # stamps extend until the object is below this fraction of the sky noise...
ENCLOSED_FLUX = 0.995  # ...and at least to the PSF's radius enclosing this share of the flux
REAL_HLR_SCALE_ARCSEC = 0.03  # pixel of the HST/ACS COSMOS images: where a real galaxy's size is measured
# A real galaxy's HST noise, once seen through the survey's PSF and pixels, stays below this fraction of the
# sky noise sigma (its variance below 4% of the sky's): a tile has no room to whiten or flatten it.
TILE_HST_NOISE_FRACTION = 0.2
GALAXY_EXTENT_HLR = 8.0  # half-light radii of the galaxy inside the stamp (de Vaucouleurs bulges have far wings)


@dataclass(frozen=True)
class TilePlan:
    """Everything a region needs to render its pixels: config, WCS header, object table and artefacts."""

    config: RunConfig
    tile_id: int
    header: fits.Header
    objects: dict[str, np.ndarray]
    defects: TileDefects
    psf: galsim.GSObject
    seconds: float = field(default=0.0, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the tile [pixels]."""
        nx, ny = self.config.tile.size_pixels
        return ny, nx

    def __len__(self) -> int:
        return len(self.objects["object_id"])


def tile_header(config: RunConfig) -> fits.Header:
    """FITS header of the tile's gnomonic (TAN) WCS: centre at (ra_deg, dec_deg), north up, east left.

    ``rotation_deg`` turns the pixel grid on the sky. Written with an explicit CD matrix, which
    both astropy and GalSim (``galsim.GSFitsWCS``) read.
    """
    nx, ny = config.tile.size_pixels
    scale_deg = config.survey.pixel_scale_arcsec / 3600.0
    theta = math.radians(config.tile.rotation_deg)
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = config.tile.ra_deg, config.tile.dec_deg
    header["CRPIX1"], header["CRPIX2"] = (nx + 1) / 2.0, (ny + 1) / 2.0  # FITS pixels are 1-based
    header["CD1_1"], header["CD1_2"] = -scale_deg * math.cos(theta), scale_deg * math.sin(theta)
    header["CD2_1"], header["CD2_2"] = scale_deg * math.sin(theta), scale_deg * math.cos(theta)
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    return header


def _magnitudes(rng: np.random.Generator, n: int, low: float, high: float, slope: float) -> np.ndarray:
    """Magnitudes with counts dN/dm ∝ 10^(slope m) between ``low`` and ``high`` (inverse CDF)."""
    u = rng.uniform(size=n)
    if slope == 0:
        return low + u * (high - low)
    a, b = 10.0 ** (slope * low), 10.0 ** (slope * high)
    return np.log10(a + u * (b - a)) / slope


# Parametric-fit columns that drawing a COSMOS galaxy reads (here and in GalSim's makeGalaxy).
COSMOS_COLUMNS = ("mag_auto", "hlr", "zphot", "sersicfit", "bulgefit", "use_bulgefit", "viable_sersic", "flux")


@lru_cache(maxsize=4)
def _cosmos_catalog(directory: str, file_name: str) -> galsim.COSMOSCatalog:
    try:
        catalog = galsim.COSMOSCatalog(file_name=file_name, dir=directory, use_real=False)
    except Exception as err:  # noqa: BLE001 - GalSim / astropy raise KeyError, IndexError ... for a malformed file
        raise InputError(f"tile.cosmos_dir: cannot read the COSMOS catalogue {file_name} in {directory} "
                         f"({type(err).__name__})", directory) from None
    # A malformed or empty catalogue would otherwise fail inside a Dask task with a traceback.
    missing = [name for name in COSMOS_COLUMNS if name not in (catalog.param_cat.dtype.names or ())]
    if missing:
        raise InputError(f"tile.cosmos_dir: the COSMOS catalogue {file_name} in {directory} lacks the columns "
                         f"{missing}", directory)
    if catalog.nobjects == 0:
        raise InputError(f"tile.cosmos_dir: the COSMOS catalogue {file_name} in {directory} has no usable "
                         "galaxies", directory)
    return catalog


def _real_catalog(tile: TileConfig) -> galsim.COSMOSCatalog:
    """The real-galaxy catalogue of ``population=cosmos_real`` (opened once per process)."""
    from lensforge.pipeline.stamps.real_galaxies import cosmos_catalogue

    return cosmos_catalogue(PopulationConfig(kind="cosmos_real", cosmos_dir=tile.cosmos_dir,
                                             cosmos_file_name=tile.cosmos_file_name,
                                             cosmos_exclusion_level=tile.cosmos_exclusion_level))


@lru_cache(maxsize=100_000)
def _real_half_light_radius(tile: TileConfig, index: int) -> float:
    """Half-light radius [arcsec] of real galaxy ``index`` as HST saw it (PSF included): sizes its stamp."""
    catalog = _real_catalog(tile)
    galaxy = catalog.makeGalaxy(index, gal_type="real", noise_pad_size=0)
    return float(galaxy.original_gal.calculateHLR(scale=REAL_HLR_SCALE_ARCSEC))


@lru_cache(maxsize=8)
def _optical_psf(survey: SurveyConfig) -> galsim.GSObject:
    return build_psf(survey)


@lru_cache(maxsize=100_000)
def _real_hst_noise_per_flux(tile: TileConfig, survey: SurveyConfig, index: int) -> float:
    """Sigma of the HST noise real galaxy ``index`` brings into a survey pixel [ADU], per unit of the flux
    [ADU] it is drawn at: GalSim's noise model through the survey's PSF and pixel, rescaled to the survey's
    pixels (:func:`~lensforge.pipeline.stamps.real_galaxies.observed_noise`, GalSim #1071)."""
    from lensforge.pipeline.stamps.real_galaxies import observed_noise

    galaxy = _real_catalog(tile).makeGalaxy(index, gal_type="real", noise_pad_size=0).withFlux(1.0)
    return math.sqrt(observed_noise(galaxy, _optical_psf(survey), survey).getVariance())


def _population_catalog(tile: TileConfig) -> galsim.COSMOSCatalog | None:
    """The tile population's COSMOS catalogue (parametric fits or real galaxies); None when parametric."""
    if tile.population == "cosmos":
        return _cosmos_catalog(str(tile.cosmos_dir), tile.cosmos_file_name)
    if tile.population == "cosmos_real":
        return _real_catalog(tile)
    return None


def check_cosmos_catalog(config: RunConfig) -> None:
    """Load the COSMOS catalogue of ``population=cosmos`` or ``cosmos_real`` now (``InputError`` if it is
    unusable), so a bad one is reported before any run directory or cluster exists; a no-op for the
    parametric population."""
    _population_catalog(config.tile)


def _galaxy_magnitude(rng: np.random.Generator, tile: TileConfig) -> float:
    """A galaxy magnitude from the tile's number counts (one draw)."""
    return float(_magnitudes(rng, 1, tile.magnitude_min, tile.magnitude_max, tile.number_count_slope)[0])


def _smail_redshift(rng: np.random.Generator, tile: TileConfig) -> float:
    """A source redshift from Smail et al.'s n(z) (one draw)."""
    # n(z) ∝ z^2 exp(-(z/z0)^1.5): (z/z0)^1.5 ~ Gamma(2), median z = 1.412 z0.
    return float(tile.median_redshift / 1.412 * rng.gamma(2.0) ** (1.0 / 1.5))


def _draw_galaxy(config: RunConfig, rng: np.random.Generator, cosmos: galsim.COSMOSCatalog | None) -> dict:
    """One galaxy's intrinsic parameters (fixed draw order: append new draws at the end).

    ``population=cosmos_real``: the tile's magnitude and redshift distributions, a real galaxy of the
    catalogue at a random orientation; its half-light radius is the HST image's. The galaxy is drawn
    again (from the same stream) until its HST noise at the drawn flux stays below
    :data:`TILE_HST_NOISE_FRACTION` x the sky noise, as GREAT3 kept galaxies whose HST noise the
    survey's hides: drawn brighter than HST saw it, a faint galaxy would carry its HST noise, correlated
    and anisotropic, far above the sky.
    """
    tile = config.tile
    if tile.population == "cosmos_real":
        mag = _galaxy_magnitude(rng, tile)
        z = _smail_redshift(rng, tile)
        index = _real_galaxy_below_the_sky(config, rng, cosmos, mag)
        return {"mag": mag, "half_light_radius": _real_half_light_radius(tile, index), "bulge_fraction": np.nan,
                "e1_intrinsic": np.nan, "e2_intrinsic": np.nan, "redshift": z, "cosmos_index": index,
                "rotation_deg": float(rng.uniform(0.0, 360.0))}
    if cosmos is None:
        mag = _galaxy_magnitude(rng, tile)
        log_r = (math.log10(tile.half_light_radius_at_24_arcsec) - tile.size_magnitude_slope * (mag - 24.0)
                 + tile.size_scatter_dex * rng.normal())
        hlr = float(np.clip(10.0 ** log_r, 0.05, 3.0))
        bulge_fraction = float(rng.uniform(0.0, 0.5))
        while True:
            e1, e2 = rng.normal(0.0, 0.25, size=2)
            if math.hypot(e1, e2) < MAX_INTRINSIC_ELLIPTICITY:
                break
        z = _smail_redshift(rng, tile)
        return {"mag": mag, "half_light_radius": hlr, "bulge_fraction": bulge_fraction, "e1_intrinsic": float(e1),
                "e2_intrinsic": float(e2), "redshift": z, "cosmos_index": -1, "rotation_deg": 0.0}
    index = int(rng.integers(cosmos.nobjects))
    row = cosmos.orig_index[index]
    return {"mag": float(cosmos.param_cat["mag_auto"][row]),
            "half_light_radius": float(cosmos.param_cat["hlr"][row][0]), "bulge_fraction": np.nan,
            "e1_intrinsic": np.nan, "e2_intrinsic": np.nan, "redshift": float(cosmos.param_cat["zphot"][row]),
            "cosmos_index": index, "rotation_deg": float(rng.uniform(0.0, 360.0))}


def _real_galaxy_below_the_sky(config: RunConfig, rng: np.random.Generator, cosmos: galsim.COSMOSCatalog,
                               mag: float) -> int:
    """A catalogue row whose HST noise at magnitude ``mag`` stays below :data:`TILE_HST_NOISE_FRACTION` x
    the sky noise (the unlensed flux; magnification changes it by a few percent).

    Raises:
        InputError: none of :data:`~lensforge.pipeline.stamps.real_galaxies.MAX_GALAXY_DRAWS` draws does.
    """
    from lensforge.pipeline.stamps.real_galaxies import MAX_GALAXY_DRAWS

    flux = float(flux_from_magnitude(mag, config.survey))
    limit = TILE_HST_NOISE_FRACTION * sky_noise_sigma_adu(config.survey)
    for _ in range(MAX_GALAXY_DRAWS):
        index = int(rng.integers(cosmos.nobjects))
        if flux * _real_hst_noise_per_flux(config.tile, config.survey, index) <= limit:
            return index
    raise InputError(f"tile.magnitude_min={config.tile.magnitude_min:g}: none of {MAX_GALAXY_DRAWS} COSMOS galaxies "
                     f"drawn for a galaxy of magnitude {mag:.2f} has HST noise below {TILE_HST_NOISE_FRACTION:g}x "
                     "this survey's sky noise; raise tile.magnitude_min or use a deeper catalogue "
                     "(galsim_download_cosmos)", config.tile.magnitude_min)


def _psf_radii(psf: galsim.GSObject, config: RunConfig) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """The PSF's 99.5% encircled-flux radius [pixels], and the radius [pixels] beyond which a point source
    of flux F [ADU] stays below a fraction of the sky noise (bright stars need much larger stamps)."""
    scale = config.survey.pixel_scale_arcsec
    image = psf.drawImage(nx=MAX_STAR_STAMP, ny=MAX_STAR_STAMP, scale=scale, method="auto").array
    c = MAX_STAR_STAMP // 2
    yy, xx = np.indices(image.shape)
    radius = np.hypot(yy - c, xx - c).astype(int).ravel()
    ring_max = np.zeros(radius.max() + 1)
    np.maximum.at(ring_max, radius, np.abs(image).ravel())
    outer_max = np.maximum.accumulate(ring_max[::-1])[::-1]  # brightest pixel at this radius or beyond
    enclosed = np.cumsum(np.bincount(radius, weights=image.ravel())) / image.sum()
    radius_995 = float(np.searchsorted(enclosed, ENCLOSED_FLUX))
    threshold = WING_FRACTION_OF_SIGMA * max(sky_noise_sigma_adu(config.survey), 1e-3)

    def wing_radius(flux: np.ndarray) -> np.ndarray:
        # First radius where flux * outer_max drops below the threshold (outer_max decreases).
        return np.searchsorted(-outer_max, -threshold / np.maximum(flux, 1e-30)).astype(float)
    return radius_995, wing_radius


def _odd(n: np.ndarray, low: int, high: int) -> np.ndarray:
    n = np.clip(np.asarray(n, dtype=np.int64), low, high)
    return n + (n % 2 == 0)


def tile_lensing_field(config: RunConfig) -> LensingField:
    """The lensing field over a tile (a constant shear for ``shear.kind=uniform``), optical or radio."""
    if config.shear.kind == "uniform":  # a random shear per object has no meaning on a tile: use the constant one
        return ConstantShear(config.shear.g1, config.shear.g2)
    nx, ny = config.tile.size_pixels
    extent = math.hypot(nx, ny) * config.survey.pixel_scale_arcsec  # covers any rotation
    return build_lensing_field(config.shear, config.seed, extent)


def plan_tile(config: RunConfig, tile_id: int = 0) -> TilePlan:
    """Draw the tile's WCS, objects (positions, photometry, shapes, lensing) and artefacts."""
    began = time.perf_counter()
    tile, survey = config.tile, config.survey
    nx, ny = tile.size_pixels
    header = tile_header(config)
    area_arcmin2 = nx * ny * (survey.pixel_scale_arcsec / 60.0) ** 2
    # A key no object index takes: SeedSequence pads short keys with zeros, so (tile) would equal (tile, 0).
    counts_rng = numpy_rng(config.seed, Stream.TILE_OBJECT, tile_id, COUNTS_KEY)
    n_galaxies = int(counts_rng.poisson(tile.galaxy_density_per_arcmin2 * area_arcmin2))
    n_stars = int(counts_rng.poisson(tile.star_density_per_arcmin2 * area_arcmin2))
    cosmos = _population_catalog(tile)
    rows = []
    for index in range(n_galaxies + n_stars):
        rng = numpy_rng(config.seed, Stream.TILE_OBJECT, tile_id, index)
        x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        if index < n_galaxies:
            row = _draw_galaxy(config, rng, cosmos)
        else:
            mag = float(_magnitudes(rng, 1, tile.star_magnitude_min, tile.star_magnitude_max, 0.1)[0])
            row = {"mag": mag, "half_light_radius": 0.0, "bulge_fraction": np.nan, "e1_intrinsic": 0.0,
                   "e2_intrinsic": 0.0, "redshift": 0.0, "cosmos_index": -1, "rotation_deg": 0.0}
        rows.append({"object_id": index, "is_star": index >= n_galaxies, "x": x, "y": y, **row})
    objects = {name: np.array([r[name] for r in rows], dtype=TILE_TRUTH_COLUMNS[name].dtype
                              if name in TILE_TRUTH_COLUMNS else float) for name in DRAWN_COLUMNS}
    objects["flux"] = np.asarray(flux_from_magnitude(objects["mag"], survey), dtype=float)
    _attach_sky_and_lensing(config, header, objects, tile_id)
    psf = build_psf(survey, config.radio)
    psf_radius, wing = _psf_radii(psf, config)
    extent = GALAXY_EXTENT_HLR * objects["half_light_radius"] * np.sqrt(objects["mu"]) / survey.pixel_scale_arcsec
    radius = np.maximum(wing(objects["flux"] * objects["mu"]), np.hypot(extent, psf_radius))
    objects["stamp_size"] = np.where(objects["is_star"], _odd(2 * np.ceil(radius) + 1, MIN_STAMP, MAX_STAR_STAMP),
                                     _odd(2 * np.ceil(radius) + 1, MIN_STAMP, MAX_GALAXY_STAMP))
    objects["snr"] = np.full(len(objects["x"]), np.nan)
    defects = draw_tile_defects(tile.defects, (ny, nx), numpy_rng(config.seed, Stream.TILE_DEFECTS, tile_id))
    plan = TilePlan(config, tile_id, header, objects, defects, psf)
    defects = defects.with_bleed_trails(_bleed_trails(plan))
    return TilePlan(config, tile_id, header, objects, defects, psf, seconds=time.perf_counter() - began)


def _attach_sky_and_lensing(config: RunConfig, header: fits.Header, objects: dict[str, np.ndarray],
                            tile_id: int) -> None:
    """RA/Dec from the WCS; lensing at each galaxy's tangent-plane position (GalSim world frame).

    lensforge simulates weak lensing: a galaxy that falls in a halo's strong-lensing zone is moved
    to a new uniform position drawn from its own stream (key ``(tile, index, attempt)``).
    """
    wcs = WCS(header)
    centre = galsim.CelestialCoord(config.tile.ra_deg * galsim.degrees, config.tile.dec_deg * galsim.degrees)
    field = tile_lensing_field(config)
    nx, ny = config.tile.size_pixels
    n = len(objects["x"])
    g1, g2, kappa, mu = np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n)
    todo = np.flatnonzero(~objects["is_star"])
    for attempt in range(1, MAX_POSITION_DRAWS + 1):
        ra, dec = wcs.all_pix2world(objects["x"][todo], objects["y"][todo], 0)
        u, v = centre.project_rad(np.radians(ra), np.radians(dec), projection="gnomonic")
        lensing = field.at(np.degrees(u) * 3600.0, np.degrees(v) * 3600.0, objects["redshift"][todo])
        g1[todo], g2[todo], kappa[todo], mu[todo] = lensing.g1, lensing.g2, lensing.kappa, lensing.mu
        todo = todo[~lensing.weak]
        if not len(todo):
            break
        for index in todo:
            rng = numpy_rng(config.seed, Stream.TILE_OBJECT, tile_id, int(index), attempt)
            objects["x"][index], objects["y"][index] = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
    else:
        raise ConfigError("shear: the halo's strong-lensing zone covers the tile; lower shear.halo_mass_msun",
                          config.shear.halo_mass_msun)
    ra, dec = wcs.all_pix2world(objects["x"], objects["y"], 0)
    objects["ra"], objects["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    objects.update(g1=g1, g2=g2, kappa=kappa, mu=mu)


def object_profile(plan: TilePlan, index: int) -> galsim.GSObject:
    """Object ``index`` as GalSim draws it: lensed intrinsic galaxy (or point source) convolved with the PSF."""
    o = {name: values[index] for name, values in plan.objects.items()}
    if o["is_star"]:
        return plan.psf.withFlux(float(o["flux"]))
    if o["cosmos_index"] >= 0 and plan.config.tile.population == "cosmos_real":
        # No noise padding, symmetrizing or whitening: a tile's sky noise is its own, and the galaxy was drawn
        # so that its HST noise stays below TILE_HST_NOISE_FRACTION x the sky's (_real_galaxy_below_the_sky).
        real = _real_catalog(plan.config.tile)
        galaxy = real.makeGalaxy(int(o["cosmos_index"]), gal_type="real", noise_pad_size=0)
        galaxy = galaxy.withFlux(float(o["flux"])).rotate(float(o["rotation_deg"]) * galsim.degrees)
    elif o["cosmos_index"] >= 0:
        cosmos = _cosmos_catalog(str(plan.config.tile.cosmos_dir), plan.config.tile.cosmos_file_name)
        galaxy = cosmos.makeGalaxy(int(o["cosmos_index"]), gal_type="parametric").withFlux(float(o["flux"]))
        galaxy = galaxy.rotate(float(o["rotation_deg"]) * galsim.degrees)
    else:  # exponential disk + de Vaucouleurs bulge
        galaxy = bulge_disk_galaxy(float(o["flux"]), float(o["half_light_radius"]), float(o["bulge_fraction"]),
                                   float(o["e1_intrinsic"]), float(o["e2_intrinsic"]))
    return galsim.Convolve([apply_lensing(galaxy, float(o["g1"]), float(o["g2"]), float(o["mu"])), plan.psf])


def draw_object(plan: TilePlan, index: int, wcs: galsim.BaseWCS) -> tuple[np.ndarray, int, int]:
    """Noiseless stamp [ADU] of object ``index`` and the tile pixel (y0, x0) of its [0, 0] corner.

    The stamp depends only on the object: odd side ``stamp_size`` centred on the pixel nearest
    the object's centroid, the sub-pixel offset and the local WCS at that position.
    """
    x, y = float(plan.objects["x"][index]), float(plan.objects["y"][index])
    size = int(plan.objects["stamp_size"][index])
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    local = wcs.local(galsim.PositionD(x + 1.0, y + 1.0))  # GalSim image positions are 1-based like FITS
    image = object_profile(plan, index).drawImage(nx=size, ny=size, wcs=local, offset=(x - ix, y - iy),
                                                  method="auto")
    return image.array.astype(np.float32), iy - size // 2, ix - size // 2


def _bleed_trails(plan: TilePlan) -> tuple:
    """Bleed trails of every star bright enough to saturate (drawn once, at the plan)."""
    level = saturation_adu(plan.config.survey) - sky_level_adu(plan.config.survey)
    peak_fraction = float(plan.psf.drawImage(nx=3, ny=3, scale=plan.config.survey.pixel_scale_arcsec,
                                             method="auto").array.max())
    wcs = galsim.GSFitsWCS(header=plan.header)
    trails = []
    for index in np.flatnonzero(plan.objects["is_star"] & (plan.objects["flux"] * peak_fraction > level)):
        stamp, y0, x0 = draw_object(plan, int(index), wcs)
        trails.extend(bleed_trails_from_stamp(stamp, y0, x0, level))
    return tuple(trails)


@dataclass
class RegionPixels:
    """A rendered region: science [ADU], bitmask (int32), variance [ADU^2] and the S/N of its home objects."""

    region: Region
    image: np.ndarray
    bitmask: np.ndarray
    variance: np.ndarray
    snr: dict[int, float]
    seconds: float = 0.0


def _objects_overlapping(plan: TilePlan, region: Region) -> np.ndarray:
    x, y, half = plan.objects["x"], plan.objects["y"], plan.objects["stamp_size"] // 2
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    hit = ((iy + half >= region.y0) & (iy - half < region.y1) & (ix + half >= region.x0) & (ix - half < region.x1))
    return np.flatnonzero(hit)


def _render_cost(plan: TilePlan, region: Region) -> float:
    """Rough cost of rendering a region: stamp pixels of the objects overlapping it, plus its own pixels."""
    overlapping = _objects_overlapping(plan, region)
    return float(np.sum(plan.objects["stamp_size"][overlapping].astype(float) ** 2)) + region.shape[0] * region.shape[1]


def render_region(plan: TilePlan, region: Region) -> RegionPixels:
    """Render one region of the tile from the plan (identical to the same pixels of any other cut)."""
    began = time.perf_counter()
    survey, config = plan.config.survey, plan.config
    if region.y0 % NOISE_BLOCK or region.x0 % NOISE_BLOCK:
        raise InputError(f"region {region} does not start on the {NOISE_BLOCK}-pixel noise grid", region)
    wcs = galsim.GSFitsWCS(header=plan.header)
    image = np.zeros(region.shape, dtype=np.float32)
    sigma_sky = sky_noise_sigma_adu(survey)
    snr: dict[int, float] = {}
    for index in _objects_overlapping(plan, region):  # ascending: the same summation order in every cut
        stamp, y0, x0 = draw_object(plan, int(index), wcs)
        overlap = region.intersect(y0, y0 + stamp.shape[0], x0, x0 + stamp.shape[1])
        if overlap is None:
            continue
        image[overlap.y0 - region.y0:overlap.y1 - region.y0, overlap.x0 - region.x0:overlap.x1 - region.x0] += \
            stamp[overlap.y0 - y0:overlap.y1 - y0, overlap.x0 - x0:overlap.x1 - x0]
        cy, cx = math.floor(plan.objects["y"][index] + 0.5), math.floor(plan.objects["x"][index] + 0.5)
        if region.y0 <= cy < region.y1 and region.x0 <= cx < region.x1:  # the object's home region
            snr[int(index)] = float(np.sqrt(np.sum(stamp.astype(np.float64) ** 2)) / max(sigma_sky, 1e-30))
    sky, gain, read_noise = sky_level_adu(survey), survey.gain_e_per_adu, read_noise_adu(survey)
    variance = ((np.maximum(image, 0.0) + sky) / gain + read_noise ** 2).astype(np.float32)
    if config.tile.noise:
        _add_noise(plan, region, image)
    bitmask = np.zeros(region.shape, dtype=np.int32)
    apply_defects(plan.defects, region, plan.shape, image, bitmask, variance, gain,
                  saturation_adu(survey) - sky, config.tile.defects)
    return RegionPixels(region, image, bitmask, variance, snr, time.perf_counter() - began)


def _add_noise(plan: TilePlan, region: Region, image: np.ndarray) -> None:
    """Sky + object Poisson noise and read noise (``galsim.CCDNoise``), one stream per 128x128 block."""
    survey = plan.config.survey
    sky = sky_level_adu(survey)
    blocks_x = math.ceil(plan.shape[1] / NOISE_BLOCK)
    for y0 in range(region.y0, region.y1, NOISE_BLOCK):
        for x0 in range(region.x0, region.x1, NOISE_BLOCK):
            block = image[y0 - region.y0:y0 - region.y0 + NOISE_BLOCK, x0 - region.x0:x0 - region.x0 + NOISE_BLOCK]
            block_index = (y0 // NOISE_BLOCK) * blocks_x + x0 // NOISE_BLOCK
            rng = galsim.BaseDeviate(stream_seed(plan.config.seed, Stream.TILE_NOISE, plan.tile_id, block_index))
            noisy = galsim.ImageF(block + np.float32(sky))
            # CCDNoise takes the read noise in electrons when gain > 0 (and works in ADU itself).
            noisy.addNoise(galsim.CCDNoise(rng, sky_level=0.0, gain=survey.gain_e_per_adu,
                                           read_noise=read_noise_adu(survey) * survey.gain_e_per_adu))
            block[...] = noisy.array - np.float32(sky)


@dataclass
class TilePixels:
    """A whole rendered tile; ``snr`` is each object's optimal S/N (the plan's table has NaN there)."""

    plan: TilePlan
    image: np.ndarray
    bitmask: np.ndarray
    variance: np.ndarray
    snr: np.ndarray
    region_seconds: list[float]

    def truth(self) -> dict[str, np.ndarray]:
        """The plan's object table with the measured ``snr`` column."""
        return {**self.plan.objects, "snr": self.snr}


def assemble(plan: TilePlan, parts) -> TilePixels:
    """Paste rendered regions (any order) into the tile and fill the truth S/N column."""
    ny, nx = plan.shape
    image = np.zeros((ny, nx), np.float32)
    bitmask = np.zeros((ny, nx), np.int32)
    variance = np.zeros((ny, nx), np.float32)
    snr = np.full(len(plan), np.nan)
    seconds = []
    for part in parts:
        sl = part.region.slices
        image[sl], bitmask[sl], variance[sl] = part.image, part.bitmask, part.variance
        for index, value in part.snr.items():
            snr[index] = value
        seconds.append(part.seconds)
    return TilePixels(plan, image, bitmask, variance, snr, seconds)


def render_tile(plan: TilePlan, client=None, region_size: int | None = None, progress: bool = False) -> TilePixels:
    """Render the tile region by region: on a Dask ``client`` when given, else in this process."""
    from tqdm.auto import tqdm

    regions = split_tile(plan.shape, region_size or plan.config.tile.region_size_pixels)
    # Costliest regions first (largest-processing-time order): the workers then finish together
    # instead of one waiting on a crowded region at the end. The bytes do not depend on the order.
    regions.sort(key=lambda region: -_render_cost(plan, region))
    bar = tqdm(total=len(regions), desc=f"tile {plan.tile_id}", unit="region", disable=not progress)
    parts = []
    if client is None:
        for region in regions:
            parts.append(render_region(plan, region))
            bar.update()
    else:
        from distributed import as_completed

        plan_future = client.scatter(plan, broadcast=True)
        futures = [client.submit(render_region, plan_future, region, pure=False) for region in regions]
        for future in as_completed(futures):
            parts.append(future.result())
            bar.update()
            future.release()
    bar.close()
    return assemble(plan, parts)


def run_cards(config: RunConfig, tile_id: int) -> dict[str, object]:
    """Short FITS cards naming the run, seed, survey preset and tile (optical and radio tiles)."""
    return {"RUNNAME": config.name, "RUNSEED": config.seed, "TILEID": tile_id, "SURVEY": config.survey.name,
            "BAND": config.survey.band, "PIXSCALE": config.survey.pixel_scale_arcsec, "ORIGIN": "lensforge"}


def product_paths(paths: dict[str, Path], detected: bool) -> dict[str, str]:
    """The files a tile wrote, by kind (for the manifest and the CLI); ``paths`` from
    :meth:`lensforge.layout.RunLayout.tile`."""
    products = {"fits": paths["fits"], "truth_fits": paths["truth"].with_suffix(".fits"),
                "truth_parquet": paths["truth"].with_suffix(".parquet")}
    if detected:
        products.update(detections_fits=paths["detections"].with_suffix(".fits"),
                        detections_parquet=paths["detections"].with_suffix(".parquet"), figure=paths["figure"],
                        figure_mag=paths["figure"].with_name(paths["figure"].stem + "_mag.png"),
                        summary=paths["summary"])
    return {key: str(value) for key, value in products.items()}
