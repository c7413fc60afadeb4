"""Simulation stage: GalSim postage stamps of lensed bulge+disk galaxies, chunk by chunk.

Physics is GalSim's: Sersic profiles, ``shear`` for intrinsic shape and lensing,
convolution with the survey PSF, the pixel response (``method="auto"``) and Gaussian
noise at a target S/N (``Image.addNoiseSNR``). Object ``i`` is drawn from its own
(run seed, i) streams, so any split of the work gives identical pixels.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import galsim
import numpy as np

from lensforge.catalogs.schema import COUNTERFACTUAL_SHIFTS, LABEL_ARRAYS
from lensforge.limits import check_memory, keep_freed_memory
from lensforge.pipeline.config import COSMOS_KINDS, RunConfig, SurveyConfig
from lensforge.pipeline.stamps.batch import StampBatch
from lensforge.pipeline.stamps.galaxies import intrinsic_galaxy, lensed_galaxy
from lensforge.pipeline.stamps.lensing import (
    LensingField,
    apply_lensing,
    build_lensing_field,
    counterfactual_shears,
    is_position_dependent,
)
from lensforge.pipeline.stamps.pairing import PairDraws, snr_noise_sigma, unit_noise
from lensforge.pipeline.stamps.populations import GalaxyParameters, draw_parameters
from lensforge.pipeline.stamps.splits import split_codes
from lensforge.pipeline.stamps.surveys import build_psf, draw_psf_image
from lensforge.seeding import Stream


def observe(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig, noise_sigma: float,
            unit_noise_field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convolve a lensed galaxy with ``psf``, draw it with the pixel response and add noise of ``noise_sigma`` [ADU].

    ``unit_noise_field`` is the stamp's standard-normal field (``lensforge.pipeline.stamps.pairing.unit_noise``).
    Returns (noisy image, noiseless image) as float32 [adu]. Shared by parametric and generated galaxies,
    so both are observed the same way; the noise level comes from :func:`unlensed_noise_sigma`.
    """
    noiseless = draw_observed(galaxy, psf, survey)
    return (noiseless + noise_sigma * unit_noise_field).astype(np.float32), noiseless


def unlensed_noise_sigma(unlensed_galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig,
                         snr: float) -> float:
    """The pixel noise sigma [ADU] at which ``unlensed_galaxy``, observed, has S/N ``snr`` (``addNoiseSNR``'s).

    The galaxy is the unlensed, unrotated one (a ring pair's first member): the noise of a stamp, its
    ring partner and its counterfactuals is then one number that no shear or rotation changes. Set
    from the lensed stamp instead, it would follow the galaxy's alignment with the shear, and any
    estimator weighting by S/N would see a multiplicative bias of order 1e-3 even as g -> 0.
    """
    return snr_noise_sigma(draw_observed(unlensed_galaxy, psf, survey), snr)


def draw_observed(galaxy: galsim.GSObject, psf: galsim.GSObject, survey: SurveyConfig) -> np.ndarray:
    """The noiseless stamp [ADU, float32]: ``galaxy`` convolved with ``psf`` and the pixel (``method="auto"``)."""
    image = galsim.Convolve([galaxy, psf]).drawImage(nx=survey.stamp_size, ny=survey.stamp_size,
                                                      scale=survey.pixel_scale_arcsec, method="auto")
    return image.array.astype(np.float32)


def render_stamp(params: GalaxyParameters, psf: galsim.GSObject, survey: SurveyConfig, run_seed: int,
                 pair_noise: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one stamp: returns (noisy image, noiseless image) as float32 [adu] and the noise sigma [adu]."""
    field = unit_noise(run_seed, Stream.NOISE, params.object_id, params.ring_rotation, pair_noise,
                       (survey.stamp_size, survey.stamp_size))
    sigma = unlensed_noise_sigma(intrinsic_galaxy(unrotated(params)), psf, survey, params.snr)
    return (*observe(lensed_galaxy(params), psf, survey, sigma, field), sigma)


def unrotated(params: GalaxyParameters) -> GalaxyParameters:
    """The parameters of a ring pair's first member (the same galaxy before the partner's 90-degree turn)."""
    if not params.ring_rotation:
        return params
    # The turn negated the complex ellipticity (populations.draw_parameters); negating back is exact.
    return replace(params, ring_rotation=0.0, e1_intrinsic=-params.e1_intrinsic, e2_intrinsic=-params.e2_intrinsic)


def ring_partner(first: GalaxyParameters) -> GalaxyParameters:
    """The parameters of ring pair member ``first``'s partner (object ``first.object_id + 1``): the same galaxy
    turned by 90 degrees, as :func:`~lensforge.pipeline.stamps.populations.draw_parameters` draws it."""
    if first.ring_rotation:
        raise ValueError(f"object {first.object_id} is itself a ring partner")
    return replace(first, object_id=first.object_id + 1, ring_rotation=90.0, e1_intrinsic=-first.e1_intrinsic,
                   e2_intrinsic=-first.e2_intrinsic)


def stamp_lensing_field(config: RunConfig) -> LensingField | None:
    """The run's lensing field over the stamps' field (``None`` for constant / uniform shear)."""
    if not is_position_dependent(config.shear):
        return None
    return build_lensing_field(config.shear, config.seed, 60.0 * config.shear.field_size_arcmin)




def render_counterfactuals(intrinsic: galsim.GSObject, g1: float, g2: float, mu: float, psf: galsim.GSObject,
                           survey: SurveyConfig, unit_noise_field: np.ndarray, noise_sigma: float,
                           delta_g: float) -> np.ndarray:
    """The same galaxy and noise drawn at g1 ± delta_g and g2 ± delta_g (metacalibration-style).

    ``intrinsic`` is the unlensed, pre-PSF galaxy (already rotated for a ring partner), lensed
    here by ``(g1 ± delta_g, g2)`` and ``(g1, g2 ± delta_g)`` with magnification ``mu``. The noise
    is the stamp's own field at its ``noise_sigma`` [ADU], so ``image - noiseless`` is identical to
    the stamp's and differences between counterfactuals are pure shear response:
    R = (e(+dg) - e(-dg)) / (2 dg) needs no noise-bias correction.

    Returns (4, ny, nx) float32 [ADU] in the order of ``COUNTERFACTUAL_SHIFTS``.
    """
    out = np.empty((len(COUNTERFACTUAL_SHIFTS), survey.stamp_size, survey.stamp_size), np.float32)
    noise = noise_sigma * unit_noise_field
    for row, (shifted_g1, shifted_g2) in enumerate(counterfactual_shears(g1, g2, delta_g)):
        out[row] = draw_observed(apply_lensing(intrinsic, shifted_g1, shifted_g2, mu), psf, survey) + noise
    return out


class StampAccumulator:
    """Fills the arrays of objects ``start .. stop-1`` one object at a time, then hands over a ``StampBatch``.

    Shared by parametric (:func:`simulate_stamps`) and generated (``lensforge.pipeline.generative.generate``) galaxies,
    so both are observed, masked, noise-paired and given counterfactuals the same way.
    """

    def __init__(self, config: RunConfig, start: int, stop: int, psf: galsim.GSObject, noise_stream: Stream):
        self.config, self.start, self.psf, self.noise_stream = config, start, psf, noise_stream
        self.began = time.perf_counter()
        n, size = stop - start, config.survey.stamp_size
        self.images = np.empty((n, size, size), dtype=np.float32)
        self.noiseless = np.empty_like(self.images)
        self.masks = np.empty((n, size, size), dtype=np.uint8)
        self.labels = {name: np.full(n, np.nan, dtype=spec.dtype) if spec.dtype.startswith("float")
                       else np.zeros(n, dtype=spec.dtype) for name, spec in LABEL_ARRAYS.items()}
        self.delta_g = config.simulation.counterfactual_delta_g
        shifts = len(COUNTERFACTUAL_SHIFTS)
        self.counterfactuals = None if self.delta_g is None else np.empty((n, shifts, size, size), np.float32)
        pair_noise = config.simulation.ring_pairs and config.simulation.pair_noise
        self.draws = PairDraws(config.masks, config.seed, noise_stream, pair_noise, (size, size))
        # Radio stamps with visibilities: the interferometer observes the sky, the stamp is its dirty image.
        self.interferometer = None
        self.visibilities = self.visibility_weights = None
        if config.radio.stamp_visibilities:
            from lensforge.pipeline.radio.stamp_visibilities import stamp_visibilities

            self.interferometer = stamp_visibilities(config.survey, config.radio)
            self.visibilities = np.empty((n, self.interferometer.n_cells), np.complex64)
            self.visibility_weights = np.empty((n, self.interferometer.n_cells), np.float32)
        self._pair_sigma: tuple[tuple[int, float], float] | None = None  # ((ring pair, S/N), noise sigma)

    def add(self, params: GalaxyParameters, intrinsic: galsim.GSObject, known_labels: Iterable[str],
            unrotated_intrinsic: galsim.GSObject | None = None) -> None:
        """Observe ``intrinsic`` (unlensed, pre-PSF, already rotated for a ring partner) as object ``params``.

        ``known_labels`` are the fields of ``params`` written as labels (others stay NaN).
        ``unrotated_intrinsic`` is the ring pair's first member (``intrinsic`` before the partner's
        turn; needed when ``params.ring_rotation`` is not 0): its observed S/N sets the noise of
        both members (:func:`unlensed_noise_sigma`).
        """
        sigma = self._noise_sigma(params, intrinsic if not params.ring_rotation else unrotated_intrinsic)
        lensed = apply_lensing(intrinsic, params.g1, params.g2, params.mu)
        if self.interferometer is not None:
            self._add_observed_by_interferometer(params, intrinsic, lensed, sigma, known_labels)
            return
        noiseless = draw_observed(lensed, self.psf, self.config.survey)
        shifted = None
        if self.counterfactuals is not None:
            shifted = np.stack([draw_observed(apply_lensing(intrinsic, g1, g2, params.mu), self.psf, self.config.survey)
                                for g1, g2 in counterfactual_shears(params.g1, params.g2, self.delta_g)])
        self.record(params, noiseless, sigma, shifted, known_labels)

    def _add_observed_by_interferometer(self, params: GalaxyParameters, intrinsic: galsim.GSObject,
                                        lensed: galsim.GSObject, sigma: float, known_labels: Iterable[str]) -> None:
        """Observe ``lensed`` in the visibility domain: store its cells' visibilities (noise included) and
        weights, and record their dirty image (the counterfactuals: the same noise, the sky at g ± dg)."""
        interferometer, row = self.interferometer, params.object_id - self.start
        model = interferometer.model(lensed)
        noise = interferometer.noise(sigma, self.config.seed, params.object_id)
        self.visibilities[row] = model + noise
        self.visibility_weights[row] = interferometer.weights(sigma)
        shifted = None
        if self.counterfactuals is not None:
            shifted = np.stack([interferometer.dirty(interferometer.model(apply_lensing(intrinsic, g1, g2, params.mu)))
                                for g1, g2 in counterfactual_shears(params.g1, params.g2, self.delta_g)])
        self.record(params, interferometer.dirty(model), sigma, shifted, known_labels,
                    noise_image=interferometer.dirty(noise))

    def record(self, params: GalaxyParameters, noiseless: np.ndarray, noise_sigma: float,
               counterfactual_noiseless: np.ndarray | None, known_labels: Iterable[str],
               label_noise_sigma: float | None = None, noise_image: np.ndarray | None = None) -> None:
        """Store object ``params`` from its noiseless stamp [ADU, float32] (and, with counterfactuals, the
        (4, H, W) noiseless stamps at ``counterfactual_shears``), drawn by any renderer: adds the pair's noise
        field at ``noise_sigma`` [ADU], the mask and the labels.

        ``label_noise_sigma`` [ADU] is the stamp's total noise when ``noiseless`` already holds some (a real
        galaxy's symmetrized or whitened HST noise); None: ``noise_sigma``. ``noise_image`` [ADU] replaces the
        pixel noise field at ``noise_sigma`` (a radio stamp's: the dirty image of its visibilities' noise)."""
        row = params.object_id - self.start
        field, self.masks[row] = self.draws.noise_and_mask(params.object_id, params.ring_rotation)
        noise = noise_sigma * field if noise_image is None else noise_image
        self.noiseless[row] = noiseless
        # Summed in float64 (float32 + float64), rounded once into the float32 row: no temporaries.
        np.add(self.noiseless[row], noise, out=self.images[row], casting="same_kind")
        if self.counterfactuals is not None:
            self.counterfactuals[row] = counterfactual_noiseless.astype(np.float32) + noise
        values = params.as_dict()
        for name in known_labels:
            self.labels[name][row] = values[name]
        self.labels["noise_sigma"][row] = noise_sigma if label_noise_sigma is None else label_noise_sigma
        self.labels["masked_fraction"][row] = np.count_nonzero(self.masks[row]) / self.masks[row].size
        self.labels["counterfactual_id"][row] = params.object_id if self.counterfactuals is not None else -1

    def _noise_sigma(self, params: GalaxyParameters, unrotated_galaxy: galsim.GSObject | None) -> float:
        """The ring pair's noise sigma, drawn once per pair (a partner in another chunk redraws the same bytes)."""
        key = (params.ring_pair_id, params.snr)
        if self._pair_sigma is not None and self._pair_sigma[0] == key:
            return self._pair_sigma[1]
        if unrotated_galaxy is None:
            raise ValueError(f"object {params.object_id} is a ring partner: its pair's unrotated galaxy is needed")
        if self.interferometer is None:
            sigma = unlensed_noise_sigma(unrotated_galaxy, self.psf, self.config.survey, params.snr)
        else:  # the S/N of the galaxy's noiseless dirty image
            sigma = snr_noise_sigma(self.interferometer.dirty(self.interferometer.model(unrotated_galaxy)), params.snr)
        self._pair_sigma = (key, sigma)
        return sigma

    def batch(self) -> StampBatch:
        """The filled arrays as a self-checking ``StampBatch`` (with the PSF image of every stamp)."""
        config = self.config
        if self.interferometer is None:
            psf = draw_psf_image(config.survey, config.radio)
        else:  # the dirty image of a point source at the stamp's centre: the PSF of these stamps
            psf = self.interferometer.dirty(self.interferometer.model(galsim.DeltaFunction())).astype(np.float32)
        psf_stack = np.broadcast_to(psf, self.images.shape).copy()
        # The split depends on the object index alone: set for the whole range at once.
        self.labels["split"][:] = split_codes(np.arange(self.start, self.start + len(self.images)),
                                              config.simulation.n_objects, config.train.validation_fraction)
        return StampBatch(start=self.start, images=self.images, masks=self.masks, psf=psf_stack, labels=self.labels,
                          noiseless=self.noiseless if config.simulation.store_noiseless else None,
                          counterfactuals=self.counterfactuals, visibilities=self.visibilities,
                          visibility_weights=self.visibility_weights, seconds=time.perf_counter() - self.began)


def simulate_stamps(config: RunConfig, start: int, stop: int) -> StampBatch:
    """Simulate objects ``start .. stop-1`` (stamps, masks, PSF, labels, counterfactuals) as a ``StampBatch``.

    ``population.kind=cosmos_real`` draws real COSMOS galaxies, ``cosmos`` their parametric fits
    (:mod:`lensforge.pipeline.stamps.real_galaxies`).
    """
    # Blocks above the workers' 1 MB mmap threshold (flows.cluster.WORKER_ENVIRON: a chunk's arrays, GalSim's
    # larger FFT buffers) would each be a fresh mmap, page-faulted anew; served from the heap they reuse its
    # pages (lensforge.limits). map_on_cluster still trims the heap after each chunk, so a worker's memory
    # stays flat. Measured, 8,192 stamps on 2 workers: the chunks' work took 17.1 s with it, 18.4 s without.
    keep_freed_memory()
    field = stamp_lensing_field(config)
    stamps = StampAccumulator(config, start, stop, build_psf(config.survey, config.radio), Stream.NOISE)
    if config.population.kind in COSMOS_KINDS:
        from lensforge.pipeline.stamps.real_galaxies import simulate_real_stamps

        return simulate_real_stamps(config, start, stop, stamps, field).batch()
    first = None  # the current ring pair's first member, once drawn in this chunk
    for index in range(start, stop):
        if first is not None and index == first.object_id + 1:
            params = ring_partner(first)  # what draw_parameters draws for it, without the pair's stream again
        else:
            params = draw_parameters(config.population, config.shear, config.seed, index,
                                     config.simulation.ring_pairs, field)
        first = params if config.simulation.ring_pairs and not params.ring_rotation else None
        # A partner's noise comes from its pair's unrotated galaxy, which the accumulator has already seen
        # unless the pair straddles the chunk's start.
        straddles = params.ring_rotation and index == start
        stamps.add(params, intrinsic_galaxy(params), known_labels=params.as_dict(),
                   unrotated_intrinsic=intrinsic_galaxy(unrotated(params)) if straddles else None)
    return stamps.batch()


def chunk_ranges(n_objects: int, chunk_size: int) -> list[tuple[int, int]]:
    """Object ranges ``[(start, stop), ...]`` aligned to the store's chunks."""
    return [(start, min(start + chunk_size, n_objects)) for start in range(0, n_objects, chunk_size)]


# What one Dask task costs the flow process and the scheduler while a stage runs (its call, future,
# state and summary): an upper estimate, so that a chunk count in the billions fails before it is built.
TASK_OVERHEAD_BYTES = 20_000


def object_bytes(config: RunConfig) -> int:
    """Bytes one object's arrays take while its chunk is simulated and written (images, noiseless, PSF,
    weights, masks, counterfactuals, labels), with a copy for the write's dtype conversion."""
    pixels = config.survey.stamp_size ** 2
    planes = 4 + (len(COUNTERFACTUAL_SHIFTS) if config.simulation.counterfactual_delta_g is not None else 0)
    return 2 * (pixels * (4 * planes + 1) + 8 * len(LABEL_ARRAYS))


def check_simulation(config: RunConfig, setting: str = "simulation.n_objects") -> None:
    """Check a simulation before the store or any task exists: its population's inputs and its memory.

    Raises:
        InputError: ``population.kind=cosmos_real`` or ``cosmos`` and GalSim cannot open the COSMOS catalogue
            (one line).
        MemoryBudgetError: one line naming ``setting`` and ``limits.memory_budget_gb``, when a simulation
            of ``config`` would hold more than the budget at once (a chunk per local worker, plus every
            chunk's task in the flow; the store on disk may be any size).
    """
    if config.population.kind in COSMOS_KINDS:
        from lensforge.pipeline.stamps.real_galaxies import cosmos_catalogue

        cosmos_catalogue(config.population)
    simulation = config.simulation
    n_objects, chunk = simulation.n_objects, min(simulation.chunk_size, simulation.n_objects)
    n_chunks = -(-n_objects // chunk)
    local = config.dask.address is None and config.dask.jobqueue is None
    in_flight = config.dask.n_workers * config.dask.threads_per_worker if local else 1
    held = min(in_flight, n_chunks) * chunk * object_bytes(config) + n_chunks * TASK_OVERHEAD_BYTES
    check_memory(held, f"{setting}={n_objects} (simulation.chunk_size={simulation.chunk_size}, "
                       f"{config.survey.stamp_size}x{config.survey.stamp_size} px stamps)",
                 config.limits.memory_budget_gb)
