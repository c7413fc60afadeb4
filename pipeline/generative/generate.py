"""Physics-aware generation: the VAE-GAN draws intrinsic galaxies, GalSim lenses and observes them.

The decoder returns a unit-flux, pre-PSF, unsheared profile on its fine grid
(``pixel_scale / oversampling``). GalSim turns it into an ``InterpolatedImage`` with the
requested flux, rotates it (ring pairs), applies the shear (g1, g2), convolves with the
survey PSF, integrates over pixels and adds noise, exactly as :mod:`lensforge.pipeline.stamps.simulate`
does for parametric galaxies. The network never sees the shear, so the shear label of a
generated galaxy is exact: it is what GalSim applied.

Randomness: the latent of ring pair p comes from (run seed, LATENT stream, p), the pixel
noise of object i from (run seed, GENERATED_NOISE stream, i); so both members of a pair
are the same galaxy rotated by 90 degrees, and any split of the work gives the same pixels.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import galsim
import numpy as np
import torch

from lensforge.errors import InputError
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB, check_memory, keep_freed_memory
from lensforge.models.device import resolve_device
from lensforge.models.inpaint import sample_galaxies
from lensforge.models.vaegan import VAEGAN
from lensforge.pipeline.config import COSMOS_KINDS, RunConfig, SurveyConfig
from lensforge.pipeline.generative import check_generated_config
from lensforge.pipeline.stamps.batch import StampBatch
from lensforge.pipeline.stamps.lensing import apply_lensing
from lensforge.pipeline.stamps.pairing import snr_noise_sigma, unit_noise
from lensforge.pipeline.stamps.populations import draw_parameters
from lensforge.pipeline.stamps.simulate import (
    StampAccumulator,
    counterfactual_shears,
    observe,
    stamp_lensing_field,
    unlensed_noise_sigma,
)
from lensforge.pipeline.stamps.surveys import build_psf
from lensforge.pipeline.stamps.torch_render import TorchStampRenderer
from lensforge.seeding import Stream, stream_root

_UNKNOWN_LABELS = ("e1_intrinsic", "e2_intrinsic", "bulge_fraction", "bulge_sersic_n", "disk_sersic_n")


def intrinsic_from_profile(profile: np.ndarray, fine_pixel_scale_arcsec: float, flux: float) -> galsim.GSObject:
    """A generated profile (F, F, unit flux) as a GalSim object of total ``flux`` [ADU]; pre-PSF, unsheared."""
    profile = np.asarray(profile, dtype=np.float64)
    if profile.ndim != 2 or profile.shape[0] != profile.shape[1] or not np.isfinite(profile).all():
        raise InputError(f"a generated profile must be a finite square image, got shape {profile.shape}")
    return galsim.InterpolatedImage(galsim.Image(profile, scale=fine_pixel_scale_arcsec), flux=flux)


def render_generated_stamp(intrinsic: galsim.GSObject, g1: float, g2: float, rotation_deg: float,
                           psf: galsim.GSObject, survey: SurveyConfig, snr: float,
                           unit_noise_field: np.ndarray, mu: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotate, lens (g1, g2, mu), then observe as :func:`lensforge.pipeline.stamps.simulate.observe` does for
    parametric galaxies.

    ``unit_noise_field`` is the stamp's standard-normal noise (``lensforge.pipeline.stamps.pairing.unit_noise``).
    Returns (noisy, noiseless) float32 [ADU] and the noise sigma [ADU], which gives ``intrinsic``
    unlensed and unrotated the S/N ``snr`` (:func:`~lensforge.pipeline.stamps.simulate.unlensed_noise_sigma`).
    """
    sigma = unlensed_noise_sigma(intrinsic, psf, survey, snr)
    galaxy = intrinsic.rotate(rotation_deg * galsim.degrees) if rotation_deg else intrinsic
    return (*observe(apply_lensing(galaxy, g1, g2, mu), psf, survey, sigma, unit_noise_field), sigma)


def generate_stamps(model: VAEGAN, config: RunConfig, start: int, stop: int, temperature: float = 1.0,
                    truncation: float | None = None, conditioned: bool = True,
                    device: str = "cpu") -> StampBatch:
    """Objects ``start .. stop-1`` of a generated training set, as a :class:`StampBatch`.

    Flux, half-light radius, S/N and shear of object i are drawn from the run's population
    and shear configuration (the same per-object streams as the parametric simulation);
    the decoder is conditioned on flux and half-light radius (unless ``conditioned`` is
    False), GalSim applies the rest. Labels of the intrinsic shape and profile are NaN
    (the generator has no such parameters); ``half_light_radius`` is the requested one (NaN for a
    ``cosmos_real`` population, which has none).
    """
    if start < 0 or stop <= start:
        raise InputError(f"object range {start}..{stop} is empty or negative")
    check_generated_config(config)
    began = time.perf_counter()
    survey = config.survey
    settings = model.settings
    if (settings.stamp_size, settings.pixel_scale_arcsec) != (survey.stamp_size, survey.pixel_scale_arcsec):
        raise InputError(f"the model draws {settings.stamp_size}px stamps at {settings.pixel_scale_arcsec}\"/px, "
                         f"the survey wants {survey.stamp_size}px at {survey.pixel_scale_arcsec}\"/px")
    field = stamp_lensing_field(config)
    ring_pairs = config.simulation.ring_pairs
    params = [draw_parameters(config.population, config.shear, config.seed, i, ring_pairs, field)
              for i in range(start, stop)]
    # A COSMOS population has no half-light radius (its label is NaN): the generator, trained on such
    # stores, was never given one either.
    unknown_size = config.population.kind in COSMOS_KINDS
    first = {}
    for p in params:
        first.setdefault(p.ring_pair_id, p)

    def pair_conditions(pair_id: int) -> list[float]:
        p = first.get(pair_id) or draw_parameters(config.population, config.shear, config.seed,
                                                  2 * pair_id if ring_pairs else pair_id, ring_pairs, field)
        return [p.flux, np.nan if unknown_size else p.half_light_radius]

    profiles = decode_pairs(model, sorted(first), pair_conditions if conditioned else None,
                            stream_root(config.seed, Stream.LATENT), temperature, truncation, device)

    stamps = StampAccumulator(config, start, stop, build_psf(survey, config.radio), Stream.GENERATED_NOISE)
    unknown = _UNKNOWN_LABELS + (("half_light_radius",) if unknown_size else ())
    known = [name for name in params[0].as_dict() if name not in unknown]
    if config.render.backend == "torch":
        _observe_with_torch(stamps, params, profiles, model.settings.fine_pixel_scale_arcsec, known, device)
    else:
        for p in params:
            unrotated = intrinsic_from_profile(profiles[p.ring_pair_id], settings.fine_pixel_scale_arcsec, p.flux)
            intrinsic = unrotated.rotate(p.ring_rotation * galsim.degrees) if p.ring_rotation else unrotated
            stamps.add(p, intrinsic, known_labels=known, unrotated_intrinsic=unrotated)
    batch = stamps.batch()
    batch.seconds = time.perf_counter() - began
    return batch


def torch_renderer(config: RunConfig, fine_size: int, fine_pixel_scale_arcsec: float,
                   device: str = "cpu") -> TorchStampRenderer:
    """The batched renderer of ``config``'s survey PSF and stamps (``render.precision``), built once per process."""
    survey = config.survey
    key = (survey.model_dump_json(), config.radio.model_dump_json(), fine_size, fine_pixel_scale_arcsec,
           config.render.precision, device)
    if key not in _RENDERERS:
        dtype = torch.float64 if config.render.precision == "float64" else torch.float32
        _RENDERERS[key] = TorchStampRenderer(build_psf(survey, config.radio), survey.stamp_size,
                                             survey.pixel_scale_arcsec, fine_size, fine_pixel_scale_arcsec,
                                             dtype=dtype, device=device)
    return _RENDERERS[key]


_RENDERERS: dict[tuple, TorchStampRenderer] = {}


def render_with_torch(renderer: TorchStampRenderer, profiles: np.ndarray, flux, g1, g2, mu=1.0, rotation_deg=0.0,
                      batch_size: int = 64, flux_radius: np.ndarray | None = None,
                      threads: int | None = None) -> np.ndarray:
    """Noiseless stamps (n, H, W) float32 [ADU] of profiles (n, F, F) through ``renderer``, ``batch_size`` at a
    time (per-object values broadcast to n); the bytes of a stamp do not depend on the batching.
    ``flux_radius``: ``renderer.flux_radii(profiles)`` when the caller has them (None: the renderer sizes each batch).

    On a CPU, batches are rendered side by side on ``threads`` threads, each on one (:func:`run_side_by_side`),
    so a stamp's bytes do not depend on ``threads`` either."""
    n = len(profiles)
    values = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (flux, g1, g2, mu, rotation_deg)]
    out = np.empty((n, renderer.stamp_size, renderer.stamp_size), np.float32)

    def render_batch(first: int) -> None:
        part = slice(first, min(first + batch_size, n))
        rendered = renderer.render(profiles[part], *(torch.from_numpy(np.array(v[part])) for v in values),
                                   flux_radius=None if flux_radius is None else flux_radius[part])
        out[part] = rendered.cpu().numpy()

    run_side_by_side(render_batch, range(0, n, batch_size), renderer.device, threads)
    return out


def run_side_by_side(work, items, device: torch.device | str, threads: int | None = None) -> None:
    """``work(item)`` for every item: on a CPU side by side on ``threads`` threads (default: torch's intra-op
    thread count), each call on one torch thread; elsewhere (CUDA) one after another.

    Small batched calls (a batch of stamps, a decoder pass) are too small for torch's own threading: two
    cores gave 1.46x on rendering, and on a VM whose idle core must be woken for each of the decoder's many
    small parallel regions, sometimes less than one. Whole calls in parallel scale almost 2x, and since each
    runs on one thread, its bytes depend neither on ``threads`` nor on the machine's core count."""
    items = list(items)
    if torch.device(device).type != "cpu":
        for item in items:
            work(item)
        return
    keep_freed_memory()  # a batch's or pass's intermediates are tens of MB: no page faults per call (lensforge.limits)
    threads = torch.get_num_threads() if threads is None else threads
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads <= 1 or len(items) == 1:
            for item in items:
                work(item)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="lensforge-torch") as pool:
                for done in [pool.submit(work, item) for item in items]:
                    done.result()  # raises a call's error here
    finally:
        torch.set_num_threads(previous)


# Pairs per decoder pass, aligned on pair id (pass b decodes pairs b N .. b N + N - 1). A pair is always
# decoded in the same pass at the same position, so its profile's float32 bytes do not depend on how the
# run is chunked (CPU kernels block by batch size, so decoding a chunk's pairs in one pass would), while
# the decoder runs ~6x faster per galaxy than one at a time (0.16 vs 1-2 ms on 2 CPU cores).
DECODE_BLOCK_PAIRS = {"cpu": 32, "cuda": 512}


def decode_pairs(model: VAEGAN, pair_ids: list[int], conditions_of, seed: int, temperature: float = 1.0,
                 truncation: float | None = None, device: str = "cpu", threads: int | None = None
                 ) -> dict[int, np.ndarray]:
    """Unit-flux intrinsic profiles (F, F) of ring pairs ``pair_ids``, by pair id: pair p's latent comes from
    (``seed``, p) and its decoder conditions from ``conditions_of(p)`` (flux [ADU], half-light radius
    [arcsec], NaN = unknown; None: all unknown). Decoded in passes of :data:`DECODE_BLOCK_PAIRS` aligned on
    pair id, so a pass may decode pairs outside ``pair_ids`` (drawn, then dropped); on a CPU the passes run
    side by side on ``threads`` threads, each on one (:func:`run_side_by_side`)."""
    torch_device = resolve_device(device)
    block = DECODE_BLOCK_PAIRS.get(torch_device.type, DECODE_BLOCK_PAIRS["cuda"])
    wanted = set(pair_ids)
    profiles: dict[int, np.ndarray] = {}
    model = model.to(torch_device).eval()  # once, not in each thread

    def decode(first: int) -> None:
        ids = range(first, first + block)
        conditions = None if conditions_of is None else np.array([conditions_of(i) for i in ids], dtype=np.float64)
        drawn = sample_galaxies(model, block, temperature, seed, torch_device, conditions=conditions,
                                truncation=truncation, first_index=first, intrinsic=True, batch_size=block)
        profiles.update((i, profile) for i, profile in zip(ids, drawn, strict=True) if i in wanted)

    run_side_by_side(decode, sorted({pair_id // block * block for pair_id in wanted}), torch_device, threads)
    return profiles


def _observe_with_torch(stamps: StampAccumulator, params: list, profiles: dict[int, np.ndarray],
                        fine_pixel_scale_arcsec: float, known: list[str], device: str) -> None:
    """Render a chunk's stamps, its pairs' unlensed first members (their S/N sets the noise) and the
    counterfactuals in torch batches, then record them as the GalSim path would."""
    config = stamps.config
    stack = np.stack([profiles[p.ring_pair_id] for p in params])
    renderer = torch_renderer(config, stack.shape[-1], fine_pixel_scale_arcsec, device)
    batch_size = config.render.batch_size
    flux = np.array([p.flux for p in params])
    mu = np.array([p.mu for p in params])
    rotation = np.array([p.ring_rotation for p in params])
    noiseless = render_with_torch(renderer, stack, flux, [p.g1 for p in params], [p.g2 for p in params], mu,
                                  rotation, batch_size)
    # The noise of a ring pair: its unrotated, unlensed galaxy observed at the pair's S/N.
    first_of_pair = {}
    for row, p in enumerate(params):
        first_of_pair.setdefault((p.ring_pair_id, p.snr), row)
    rows = list(first_of_pair.values())
    unlensed = render_with_torch(renderer, stack[rows], flux[rows], 0.0, 0.0, 1.0, 0.0, batch_size)
    sigma = {key: snr_noise_sigma(image, key[1]) for key, image in zip(first_of_pair, unlensed, strict=True)}
    shifted = None
    if stamps.delta_g is not None:
        shears = np.array([counterfactual_shears(p.g1, p.g2, stamps.delta_g) for p in params])  # (n, 4, 2)
        repeat = shears.shape[1]
        shifted = render_with_torch(renderer, np.repeat(stack, repeat, axis=0), np.repeat(flux, repeat),
                                    shears[:, :, 0].reshape(-1), shears[:, :, 1].reshape(-1), np.repeat(mu, repeat),
                                    np.repeat(rotation, repeat), batch_size
                                    ).reshape(len(params), repeat, *noiseless.shape[1:])
    for row, p in enumerate(params):
        stamps.record(p, noiseless[row], sigma[(p.ring_pair_id, p.snr)],
                      None if shifted is None else shifted[row], known)


# -- the API behind `lensforge generate` ------------------------------------------------


def sample_bytes(n: int, stamp_size: int, fine_size: int) -> int:
    """Bytes :func:`sample_conditioned` and the FITS writer hold for ``n`` galaxies at once: the intrinsic
    profiles (float64, the decoder's float32 output and the file's float32 copy), the noiseless and noisy
    stamps and their float32 copies."""
    return n * (fine_size ** 2 * (8 + 4 + 4 + 4) + stamp_size ** 2 * 4 * 4)


def check_sample_memory(n: int, stamp_size: int, fine_size: int, budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                        what: str | None = None) -> None:
    """``MemoryBudgetError`` naming ``what`` (default ``n=<n>``) when ``n`` samples would not fit the budget."""
    check_memory(sample_bytes(n, stamp_size, fine_size), what or f"n={n} galaxies", budget_gb)


def sample_conditioned(model: VAEGAN, survey: SurveyConfig, n: int, flux: float, half_light_radius: float | None,
                       g1: float = 0.0, g2: float = 0.0, snr: float | None = None, temperature: float = 1.0,
                       truncation: float | None = None, seed: int = 0, device: str = "cpu",
                       memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> dict[str, np.ndarray]:
    """``n`` galaxies of ``flux`` [ADU] and (optionally) ``half_light_radius`` [arcsec], lensed by (g1, g2).

    All ``n`` are held in memory at once: more than ``memory_budget_gb`` is refused before any is drawn.

    Returns ``profiles`` (n, F, F) unit-flux intrinsic, ``noiseless`` (n, H, W) [ADU] and, when
    ``snr`` is given, ``images`` with GalSim noise at that S/N and ``noise_sigma`` (n,).
    """
    if not flux > 0:
        raise InputError(f"flux must be > 0 ADU, got {flux}", flux)
    if half_light_radius is not None and not half_light_radius > 0:
        raise InputError(f"half_light_radius must be > 0 arcsec, got {half_light_radius}", half_light_radius)
    if not g1**2 + g2**2 < 1:
        raise InputError(f"reduced shear |g| must be < 1, got g1={g1}, g2={g2}", (g1, g2))
    if snr is not None and not snr > 0:
        raise InputError(f"snr must be > 0, got {snr}", snr)
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}", seed)
    check_sample_memory(n, survey.stamp_size, model.settings.fine_size, memory_budget_gb)
    conditions = np.tile([flux, np.nan if half_light_radius is None else half_light_radius], (n, 1))
    profiles = sample_galaxies(model, n, temperature, seed, device, conditions=conditions, truncation=truncation,
                               intrinsic=True)
    return render_profiles(model, profiles, survey, flux, g1, g2, snr, seed)


def render_profiles(model: VAEGAN, profiles: np.ndarray, survey: SurveyConfig, flux: float, g1: float = 0.0,
                    g2: float = 0.0, snr: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Lens and observe intrinsic ``profiles`` (n, F, F) with GalSim; see :func:`sample_conditioned` for the output."""
    psf = build_psf(survey)
    n, size = len(profiles), survey.stamp_size
    out = {"profiles": profiles, "noiseless": np.empty((n, size, size), np.float32)}
    if snr is not None:
        out["images"] = np.empty_like(out["noiseless"])
        out["noise_sigma"] = np.empty(n)
    for i, profile in enumerate(profiles):
        intrinsic = intrinsic_from_profile(profile, model.settings.fine_pixel_scale_arcsec, flux)
        field = unit_noise(seed, Stream.GENERATED_NOISE, i, 0.0, False, (size, size))
        noisy, out["noiseless"][i], sigma = render_generated_stamp(intrinsic, g1, g2, 0.0, psf, survey,
                                                                   snr if snr is not None else 1.0, field)
        if snr is not None:
            out["images"][i], out["noise_sigma"][i] = noisy, sigma
    return out


def encode_objects(model: VAEGAN, store_path, indices: list[int]) -> np.ndarray:
    """Posterior means z (k, L) of store objects ``indices`` (their masked pixels hidden, conditions unknown)."""
    import torch

    from lensforge.catalogs.store import open_store
    from lensforge.models.normalize import to_model_space

    group = open_store(store_path)
    n_objects = group["images"].shape[0]
    bad = [i for i in indices if not 0 <= i < n_objects]
    if bad:
        raise InputError(f"object indices {bad} are outside the store (0 .. {n_objects - 1})", bad)
    images = np.asarray(group["images"].get_orthogonal_selection((indices,)))
    masks = np.asarray(group["masks"].get_orthogonal_selection((indices,))) != 0
    sigma = np.asarray(group["noise_sigma"].get_orthogonal_selection((indices,)))
    x = torch.from_numpy(to_model_space(np.where(masks, 0, images).astype(np.float32), sigma))[:, None]
    model = model.eval()
    with torch.inference_mode():
        mu, _ = model.encode(x.to(model.device), torch.from_numpy(masks)[:, None].to(model.device))
    return mu.cpu().numpy()


def decode_latents(model: VAEGAN, z: np.ndarray) -> np.ndarray:
    """Unit-flux intrinsic profiles (k, F, F) float64 for latents ``z`` (k, L), conditions unknown."""
    import torch

    model = model.eval()
    with torch.inference_mode():
        profile, _ = model.decode_intrinsic(torch.as_tensor(np.asarray(z, dtype=np.float32)).to(model.device))
    return profile[:, 0].double().cpu().numpy()
