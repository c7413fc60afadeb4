"""COSMOS populations of stamps, lensed exactly by GalSim: real HST galaxies (``population.kind: cosmos_real``)
and GalSim's parametric fits of them (``population.kind: cosmos``).

Each ring pair takes one galaxy of a GalSim COSMOS real-galaxy catalogue (``COSMOSCatalog(use_real=True)``,
i.e. ``RealGalaxy``: the HST image with the HST PSF deconvolved, Mandelbaum et al. 2012), at a
random orientation and rescaled to the pair's drawn flux. The second member is the same galaxy
turned by 90 degrees. The galaxy is then lensed by ``GSObject.shear`` / ``lens`` and convolved with the
survey PSF and pixel, exactly as the parametric population is, so the shear labels are exact.

Noise. A real galaxy carries HST's own noise, which the PSF and shear make correlated and
anisotropic; left alone, it would add a shape signal of its own. So noise is added to it, as
GalSim's config does for real galaxies (``noise: symmetrize: 4`` or ``whiten: True``), chosen by
``population.hst_noise``:

- ``whiten`` (default): ``whitenImage`` adds noise until the total is white. Under the default survey
  (0.7" PSF, 0.2" pixels) that costs many times the HST noise's own variance, so few of the 100 shared
  stamps can be shown at S/N 20;
- ``symmetrize``: ``BaseCorrelatedNoise.symmetrizeImage`` at order 4 makes the noise's correlation
  function 4-fold symmetric, which GalSim gives as the least order at which the noise's anisotropy
  leaves shear statistics alone. It adds a small fraction of the HST noise's own variance, so far
  more galaxies reach a given S/N; but the total stays correlated at the galaxy's scale, so a galaxy
  near its ceiling is measured much worse than its per-pixel S/N label says. On the shared stamps
  such a set, holding many more faint and small galaxies, measured m with several times the errors
  of the whitened one (docs/shear_calibration.md); the benchmark whitens.

GalSim keeps the noise model in the values of the HST pixels it came from (flux per 0.03" pixel),
while ``drawImage`` returns flux per survey pixel, so :func:`observed_noise` rescales it to the
survey's pixels (GalSim issue #1071): without that, a 0.2" stamp's HST noise is 44x (its variance
2,000x) what the model says, and the added noise is almost nothing. The padding noise covers the
whole stamp at any orientation (:func:`noise_pad_arcsec`), so the HST noise is the same everywhere
in it.

Survey noise then brings the variance to the pair's level: the S/N target's (from the unlensed,
unrotated galaxy, as for parametric galaxies; its signal power is the stamp's minus the HST noise's),
raised where needed to :data:`HST_NOISE_MARGIN` times the treated HST noise. A galaxy's HST noise
caps the S/N it can be shown at (:func:`snr_ceiling`: smoothing by a wider PSF adds no information),
so a pair draws its galaxy again, from its own stream, until the galaxy's ceiling reaches the pair's
S/N target, as GREAT3 kept only galaxies whose HST noise the survey noise hides. This selection
depends on the unlensed galaxy alone, never on the shear. The ``snr`` label is the S/N reached and
``noise_sigma`` the total noise per pixel (with ``symmetrize`` part of it is the correlated HST
noise); the ``noiseless`` plane holds the galaxy with its treated HST noise (everything but the
survey noise).

The added field is computed once per ring pair, from the unlensed reference galaxy, and shared
by both members (turned by 90 degrees for the partner, like the survey noise of
:mod:`lensforge.pipeline.stamps.pairing`) and by their counterfactuals; so ring pairs cancel it as
they cancel the survey noise, and no stamp's noise depends on its shear. For a lensed stamp it
holds to O(g): the HST-noise correlations it was computed for are the unlensed ones.

``kind: cosmos`` draws the same way from ``COSMOSCatalog(use_real=False)``: each galaxy's Sersic or
bulge+disk fit (``gal_type="parametric"``), noiseless, so nothing is whitened and the survey noise is
all the noise. It is the "parametric fits" baseline a generator trained on real galaxies must beat.

Randomness: the galaxy, its orientation and its noise padding come from the pair's
``Stream.REAL_GALAXY`` stream; the added (symmetrizing or whitening) noise from the (pair, 1) keys of
the same stream (the object's when ``simulation.pair_noise`` is off).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import galsim
import numpy as np

from lensforge.errors import InputError
from lensforge.pipeline.config import PopulationConfig, RunConfig, SurveyConfig
from lensforge.pipeline.stamps.lensing import apply_lensing, counterfactual_shears
from lensforge.pipeline.stamps.pairing import GALSIM_QUARTER_TURN
from lensforge.pipeline.stamps.populations import GalaxyParameters, draw_parameters
from lensforge.seeding import Stream, name_unit, numpy_rng, stream_seed

HST_NOISE_MARGIN = 1.1  # total noise sigma >= this x the treated HST noise sigma of the unlensed galaxy
HST_NOISE_SYMMETRY_ORDER = 4  # symmetrizeImage's order: GalSim's least for shear statistics
NOISE_PAD_SHEAR_MARGIN = 1.1  # padding beyond the stamp's diagonal, for the stretch of the shear
MAX_GALAXY_DRAWS = 1000  # draws of a pair's galaxy before no galaxy is found that reaches its S/N
SNR_CEILING_FLUX = 1000.0  # [ADU] the flux a galaxy's S/N ceiling is measured at (it does not depend on it)
# Parameters a real galaxy has no value for: their labels are NaN.
REAL_UNKNOWN_LABELS = ("e1_intrinsic", "e2_intrinsic", "half_light_radius", "bulge_fraction", "bulge_sersic_n",
                       "disk_sersic_n")

_CATALOGUES: dict[tuple, galsim.COSMOSCatalog] = {}
_LOCK = threading.Lock()


def cosmos_catalogue(population: PopulationConfig) -> galsim.COSMOSCatalog:
    """The population's COSMOS catalogue, opened once per process: real galaxies, or their parametric
    fits for ``kind=cosmos`` (which needs the catalogue's ``_fits`` file).

    Raises:
        InputError: one line naming the directory and file when GalSim cannot open them.
    """
    use_real = population.kind != "cosmos"
    key = (None if population.cosmos_dir is None else str(population.cosmos_dir), population.cosmos_file_name,
           population.cosmos_exclusion_level, use_real)
    with _LOCK:
        if key not in _CATALOGUES:
            where = f"population.cosmos_dir={key[0] or 'GalSim default'}, cosmos_file_name={key[1] or 'default'}"
            if key[0] is not None and not Path(key[0]).is_dir():
                raise InputError(f"population.cosmos_dir={key[0]}: no such directory (GalSim's COSMOS sample: "
                                 "galsim_download_cosmos)", key[0])
            try:
                catalogue = galsim.COSMOSCatalog(file_name=key[1], dir=key[0], use_real=use_real,
                                                 exclusion_level=population.cosmos_exclusion_level)
            except Exception as err:  # noqa: BLE001 - GalSim raises OSError, GalSimError, KeyError, ...
                what = "real-galaxy catalogue" if use_real else "catalogue with parametric fits"
                raise InputError(f"{where}: not a COSMOS {what} GalSim can open "
                                 f"({type(err).__name__}: {' '.join(str(err).split())[:160]})", key[0]) from None
            if not use_real and not {"sersicfit", "bulgefit"} <= set(catalogue.param_cat.dtype.names or ()):
                raise InputError(f"{where}: not a COSMOS catalogue with parametric fits GalSim can open (its _fits "
                                 "file has no sersicfit/bulgefit columns)", key[0])
            if catalogue.nobjects < 1:
                raise InputError(f"{where}: the catalogue keeps no galaxy at exclusion_level="
                                 f"{population.cosmos_exclusion_level}", key[0])
            _CATALOGUES[key] = catalogue
        return _CATALOGUES[key]


COSMOS_TEST_FRACTION = 0.2  # share of COSMOS galaxies in the test split (population.cosmos_split)


def cosmos_split_of(ident: str) -> str:
    """``"test"`` for 20% of COSMOS galaxies, ``"train"`` for the rest, by a hash of the IDENT alone."""
    return "test" if name_unit(f"cosmos:{ident.strip()}") < COSMOS_TEST_FRACTION else "train"


def galaxy_indices(catalogue: galsim.COSMOSCatalog, split: str) -> np.ndarray:
    """Catalogue rows a population draws from: all of them, or those of the ``train`` / ``test`` split.

    Raises:
        InputError: the split holds no galaxy of the catalogue.
    """
    if split == "all":
        return np.arange(catalogue.nobjects)
    idents = [str(catalogue.real_cat.ident[i]) if catalogue.use_real else str(catalogue.param_cat["IDENT"][i])
              for i in catalogue.orig_index]
    rows = np.array([i for i, ident in enumerate(idents) if cosmos_split_of(ident) == split], dtype=np.int64)
    if not len(rows):
        raise InputError(f"population.cosmos_split={split}: none of the catalogue's {catalogue.nobjects} galaxies "
                         "is in that split", split)
    return rows


@dataclass(frozen=True)
class RealGalaxyDraw:
    """Which real galaxy a ring pair shows, and how: catalogue row, orientation [deg], noise-padding seed."""

    cosmos_index: int
    orientation_deg: float
    padding_seed: int


def draw_real_galaxy(run_seed: int, pair_id: int, n_galaxies: int,
                     accept: Callable[[int], bool] | None = None) -> RealGalaxyDraw | None:
    """Ring pair ``pair_id``'s real galaxy, from its (run seed, REAL_GALAXY, pair) stream.

    ``accept(index)`` (an index into the ``n_galaxies``) rejects a galaxy: the pair then draws again,
    further along its own stream, so the first draw is the same with or without it. None when
    :data:`MAX_GALAXY_DRAWS` draws found no galaxy that ``accept`` keeps.
    """
    rng = numpy_rng(run_seed, Stream.REAL_GALAXY, pair_id)
    for _ in range(MAX_GALAXY_DRAWS):
        index = int(rng.integers(n_galaxies))
        orientation = float(rng.uniform(0.0, 180.0))
        draw = RealGalaxyDraw(index, orientation, int(rng.integers(1, 2**31)))
        if accept is None or accept(index):
            return draw
    return None


def draw_reaching_snr(catalogue: galsim.COSMOSCatalog, rows: np.ndarray, psf: galsim.GSObject, survey: SurveyConfig,
                      population: PopulationConfig, run_seed: int, pair_id: int, snr: float) -> RealGalaxyDraw:
    """The pair's galaxy among catalogue ``rows``: the first of its draws whose S/N ceiling reaches ``snr``
    or, where none of :data:`MAX_GALAXY_DRAWS` does (a small catalogue), the first that reaches
    ``population.snr_min`` (the pair is then shown at its ceiling). ``cosmos_index`` is the catalogue row.

    Raises:
        InputError: no galaxy drawn reaches ``population.snr_min`` under this PSF.
    """
    for target in (snr, population.snr_min):
        draw = draw_real_galaxy(run_seed, pair_id, len(rows),
                                accept=lambda i, t=target: snr_ceiling(catalogue, rows[i], psf, survey,
                                                                population.hst_noise) >= t)
        if draw is not None:
            return replace(draw, cosmos_index=int(rows[draw.cosmos_index]))
    raise InputError(f"population.snr_min={population.snr_min:g}: none of {MAX_GALAXY_DRAWS} COSMOS galaxies drawn "
                     "for a ring pair reaches it under this survey's PSF (its HST noise caps each galaxy's "
                     f"S/N, population.hst_noise={population.hst_noise}); lower population.snr_min or use a deeper "
                     "catalogue", population.snr_min)


def noise_pad_arcsec(survey: SurveyConfig) -> float:
    """Noise padding of a real galaxy [arcsec]: the stamp's diagonal, with room for the shear's stretch, so
    that HST noise covers the whole stamp at any orientation (GalSim's advice for ``noise_pad_size``)."""
    return math.sqrt(2.0) * survey.stamp_size * survey.pixel_scale_arcsec * NOISE_PAD_SHEAR_MARGIN


def real_intrinsic_galaxy(catalogue: galsim.COSMOSCatalog, draw: RealGalaxyDraw, flux: float, survey: SurveyConfig,
                          ring_rotation_deg: float = 0.0) -> galsim.GSObject:
    """The unlensed, pre-PSF galaxy [flux: ADU], turned by its orientation plus ``ring_rotation_deg``.

    A real galaxy keeps its noise (``.noise``: the HST noise, deconvolved and transformed with it) for
    :func:`hst_noise_field`; a parametric fit (a catalogue opened with ``use_real=False``) has none.
    """
    if catalogue.use_real:
        galaxy = catalogue.makeGalaxy(draw.cosmos_index, gal_type="real", noise_pad_size=noise_pad_arcsec(survey),
                                      rng=galsim.BaseDeviate(draw.padding_seed))
    else:
        galaxy = catalogue.makeGalaxy(draw.cosmos_index, gal_type="parametric")
    return galaxy.withFlux(flux).rotate((draw.orientation_deg + ring_rotation_deg) * galsim.degrees)


def _observed_profile(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig) -> galsim.GSObject:
    """``galaxy`` through ``psf`` and an explicit ``galsim.Pixel``, drawn with ``method="no_pixel"`` (which
    equals ``"auto"``): so that the noise model it carries (``.noise``) has been through the pixel too."""
    return galsim.Convolve([galaxy, psf, galsim.Pixel(survey.pixel_scale_arcsec)])


def draw_real_observed(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig) -> np.ndarray:
    """``galaxy`` (with its HST noise) through ``psf`` and the pixel [ADU, float32], no survey noise."""
    return _observed_profile(galaxy, psf, survey).drawImage(
        nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec,
        method="no_pixel").array.astype(np.float32)


def observed_noise(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig
                   ) -> galsim.BaseCorrelatedNoise | None:
    """The HST noise ``galaxy`` carries once observed, in the values of the survey's pixels [ADU^2]; None
    for a galaxy without a noise model (a parametric fit).

    GalSim's noise model stays in the values of the pixels it was measured on (flux per HST pixel),
    while ``drawImage`` returns flux per survey pixel, which is the area ratio larger: so the noise's
    variance is the model's times the area ratio squared (GalSim issue #1071).
    """
    noise = _observed_profile(galaxy, psf, survey).noise
    if noise is None:
        return None
    area_ratio = survey.pixel_scale_arcsec**2 / noise.wcs.pixelArea()
    return noise.withScaledVariance(area_ratio**2)


def hst_noise_field(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig, seed: int,
                    treatment: str) -> tuple[np.ndarray, float]:
    """The noise that, added to ``galaxy``'s HST noise once observed, leaves no shape in it: (field [ADU],
    variance per pixel of HST noise plus field [ADU^2]).

    ``treatment``: ``"symmetrize"`` (``symmetrizeImage``, order :data:`HST_NOISE_SYMMETRY_ORDER`: a 4-fold
    symmetric total) or ``"whiten"`` (``whitenImage``: a white total). Either runs on a blank image, so
    the field depends on the noise model and the seed only, and one field serves a whole ring pair
    (turned for the partner) and its counterfactuals. A galaxy without a noise model (a parametric fit)
    needs none: a zero field of variance 0.
    """
    noise = observed_noise(galaxy, psf, survey)
    if noise is None:
        return np.zeros((survey.stamp_size, survey.stamp_size)), 0.0
    blank = galsim.ImageD(survey.stamp_size, survey.stamp_size, scale=survey.pixel_scale_arcsec)
    noise = noise.copy(rng=galsim.BaseDeviate(seed))
    if treatment == "symmetrize":
        variance = noise.symmetrizeImage(blank, order=HST_NOISE_SYMMETRY_ORDER)
    elif treatment == "whiten":
        variance = noise.whitenImage(blank)
    else:
        raise InputError(f"population.hst_noise={treatment}: not symmetrize or whiten", treatment)
    return blank.array.copy(), float(variance)


def signal_power(image: np.ndarray, galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig) -> float:
    """sum(I^2) of the galaxy alone [ADU^2], from ``image`` (its observed stamp, HST noise included): the
    expected HST-noise power (pixels x its variance) is taken off, floored at 0."""
    total = float(np.sum(np.square(image, dtype=np.float64)))
    noise = observed_noise(galaxy, psf, survey)
    return total if noise is None else max(total - image.size * float(noise.getVariance()), 0.0)


_CEILINGS: dict[tuple, float] = {}


def snr_ceiling(catalogue: galsim.COSMOSCatalog, row: int, psf: galsim.GSObject, survey: SurveyConfig,
                treatment: str) -> float:
    """The highest S/N catalogue row ``row`` can be shown at through ``psf``: its signal over
    :data:`HST_NOISE_MARGIN` x its HST noise after ``treatment`` (:func:`hst_noise_field`; inf without HST
    noise). Flux-independent; measured once per process at the catalogue's orientation and padding seed 1.
    """
    if not catalogue.use_real:
        return math.inf  # parametric fits carry no HST noise
    key = (id(catalogue), int(row), repr(psf), survey.model_dump_json(), treatment)
    with _LOCK:
        if key in _CEILINGS:
            return _CEILINGS[key]
    galaxy = real_intrinsic_galaxy(catalogue, RealGalaxyDraw(int(row), 0.0, 1), SNR_CEILING_FLUX, survey)
    _, variance = hst_noise_field(galaxy, psf, survey, seed=1, treatment=treatment)
    power = signal_power(draw_real_observed(galaxy, psf, survey), galaxy, psf, survey)
    ceiling = math.inf if variance <= 0 else math.sqrt(power) / (HST_NOISE_MARGIN * math.sqrt(variance))
    with _LOCK:
        _CEILINGS[key] = ceiling
    return ceiling


def hst_noise_seed(run_seed: int, source_id: int) -> int:
    """The seed of the noise added to a ring pair's (or, when pair noise is off, an object's) HST noise."""
    return stream_seed(run_seed, Stream.REAL_GALAXY, source_id, 1)


@dataclass(frozen=True)
class PairNoise:
    """A ring pair's (or lone object's) noise: total sigma per pixel [ADU], S/N reached, the field added to
    the HST noise [ADU], the variance of HST noise plus field [ADU^2], and the unlensed galaxy it was set
    from (the first member's intrinsic profile)."""

    sigma: float
    snr: float
    field: np.ndarray
    hst_variance: float
    galaxy: galsim.GSObject


def reference_noise(catalogue: galsim.COSMOSCatalog, draw: RealGalaxyDraw, params: GalaxyParameters,
                    psf: galsim.GSObject, survey: SurveyConfig, seed: int, treatment: str,
                    ring_rotation_deg: float = 0.0) -> PairNoise:
    """The noise of the stamps that share the unlensed galaxy ``draw`` turned by ``ring_rotation_deg``.

    The sigma is the S/N target's for that unlensed galaxy (its signal power, :func:`signal_power`),
    raised to :data:`HST_NOISE_MARGIN` x the HST noise after ``treatment`` (:func:`hst_noise_field`) where
    needed; shear never enters, so it is the same for every shear.
    """
    unlensed = real_intrinsic_galaxy(catalogue, draw, params.flux, survey, ring_rotation_deg)
    power = signal_power(draw_real_observed(unlensed, psf, survey), unlensed, psf, survey)
    field, variance = hst_noise_field(unlensed, psf, survey, seed, treatment)
    sigma = max(math.sqrt(power) / params.snr, HST_NOISE_MARGIN * math.sqrt(max(variance, 0.0)))
    if not sigma > 0:
        raise InputError(f"COSMOS galaxy {draw.cosmos_index}: no signal above its HST noise", draw.cosmos_index)
    return PairNoise(sigma, math.sqrt(power) / sigma, field, variance, unlensed)


def simulate_real_stamps(config: RunConfig, start: int, stop: int, accumulator, field=None):
    """Fill ``accumulator`` (a :class:`~lensforge.pipeline.stamps.simulate.StampAccumulator`) with objects
    ``start .. stop-1`` of the real-galaxy population; returns it.

    With ring pairs and pair noise, the partner's added HST-noise field is the first member's turned by 90
    degrees, like its survey noise (:mod:`lensforge.pipeline.stamps.pairing`): the pair cancels both.
    """
    catalogue = cosmos_catalogue(config.population)
    rows = galaxy_indices(catalogue, config.population.cosmos_split)
    survey, psf, treatment = config.survey, accumulator.psf, config.population.hst_noise
    paired = config.simulation.ring_pairs and config.simulation.pair_noise
    known = [name for name in GalaxyParameters.__dataclass_fields__ if name not in REAL_UNKNOWN_LABELS]
    cached: tuple[int, PairNoise] | None = None
    for index in range(start, stop):
        params = draw_parameters(config.population, config.shear, config.seed, index, config.simulation.ring_pairs,
                                 field)
        draw = draw_reaching_snr(catalogue, rows, psf, survey, config.population, config.seed, params.ring_pair_id,
                                 params.snr)
        if paired:
            if cached is None or cached[0] != params.ring_pair_id:
                cached = (params.ring_pair_id, reference_noise(catalogue, draw, params, psf, survey,
                                                               hst_noise_seed(config.seed, params.ring_pair_id),
                                                               treatment))
            noise = cached[1]
            added = np.rot90(noise.field, GALSIM_QUARTER_TURN) if params.ring_rotation else noise.field
        else:
            noise = reference_noise(catalogue, draw, params, psf, survey, hst_noise_seed(config.seed, index),
                                    treatment, params.ring_rotation)
            added = noise.field
        params = replace(params, snr=noise.snr, **{name: math.nan for name in REAL_UNKNOWN_LABELS})
        # The reference galaxy is this stamp's own intrinsic profile unless the stamp is a turned partner.
        intrinsic = (real_intrinsic_galaxy(catalogue, draw, params.flux, survey, params.ring_rotation)
                     if paired and params.ring_rotation else noise.galaxy)

        shears = [(params.g1, params.g2)]
        if accumulator.counterfactuals is not None:
            shears += counterfactual_shears(params.g1, params.g2, accumulator.delta_g)
        observed = [(draw_real_observed(apply_lensing(intrinsic, g1, g2, params.mu), psf, survey) + added
                     ).astype(np.float32) for g1, g2 in shears]
        survey_sigma = math.sqrt(max(noise.sigma**2 - noise.hst_variance, 0.0))
        accumulator.record(params, observed[0], survey_sigma, np.stack(observed[1:]) if len(observed) > 1 else None,
                           known, label_noise_sigma=noise.sigma)
    return accumulator
