"""Generation and training throughput of the VAE-GAN next to GalSim's own galaxy paths.

All rates are measured in one run on this machine, single process (``--threads`` torch
threads; GalSim is single-threaded here), for the default 64x64 stamps at 0.2"/pixel:

* ``decoder_observed``: batched sampling of observed noiseless stamps (network only);
* ``generator_plus_galsim``: decoder -> intrinsic profile -> GalSim InterpolatedImage,
  shear, PSF, pixel, noise (what a generated training set costs per stamp);
* ``galsim_interpolated_image``: the same GalSim path from profiles already in memory
  (the GalSim share of the line above);
* ``galsim_parametric``: lensforge's parametric bulge+disk stamp (lensforge.pipeline.stamps.simulate);
* ``galsim_real_galaxy``: ``galsim.RealGalaxy`` from the COSMOS stamps, if present, doing the same work per
  stamp as the GalSim path above (lensed stamp, unlensed stamp for the S/N, noise);
* ``train_step``: training images per second of the hybrid objective (batch 64).

A CUDA column is added when a GPU is visible.

    python benchmarks/generation_throughput.py [--run runs/demo] [--n 512] [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import galsim
import numpy as np
import torch

from lensforge.models.checkpoint import load_checkpoint
from lensforge.models.inpaint import sample_galaxies
from lensforge.models.objectives import Batch, HybridObjective, LossWeights
from lensforge.models.vaegan import VAEGAN, ModelSettings
from lensforge.pipeline.config import RunConfig, build_config
from lensforge.pipeline.generative.generate import decode_pairs, intrinsic_from_profile, render_generated_stamp
from lensforge.pipeline.stamps.pairing import _quarter_turn, pair_source, unit_noise
from lensforge.pipeline.stamps.populations import draw_parameters
from lensforge.pipeline.stamps.simulate import render_stamp
from lensforge.pipeline.stamps.surveys import build_psf
from lensforge.seeding import Stream

COSMOS_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmos_real_stamps"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def noise_fields(params, shape: tuple[int, int]):
    """Each stamp's unit noise field (``unit_noise``, stream GENERATED_NOISE) as ``StampAccumulator`` draws them
    (``PairDraws``): a ring pair's field once, turned by 90 degrees for the partner."""
    last = None
    for p in params:
        source, rotated = pair_source(p.object_id, p.ring_rotation, True)
        if last is None or last[0] != source:
            last = (source, unit_noise(1, Stream.GENERATED_NOISE, source, 0.0, True, shape))
        yield _quarter_turn(last[1]) if rotated else last[1]


def decoder_rate(model: VAEGAN, n: int, device: str) -> float:
    sample_galaxies(model, 64, device=device)  # warm-up (allocations, cuDNN autotune)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    sample_galaxies(model, n, device=device, batch_size=256)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return _rate(n, time.perf_counter() - began)


def train_rate(model: VAEGAN, steps: int, device: str) -> float:
    model = model.to(device).train()
    objective = HybridObjective(n_pixels=model.settings.stamp_size**2, weights=LossWeights())
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)
    size = model.settings.stamp_size
    batch = Batch(torch.randn(64, 1, size, size, device=device), torch.zeros(64, 1, size, size, dtype=torch.bool,
                  device=device), model.prepare_conditions(None, 64))
    noise = torch.Generator(device).manual_seed(0)
    use_bf16 = device.startswith("cuda")
    began = 0.0
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps
            if use_bf16:
                torch.cuda.synchronize()
            began = time.perf_counter()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            terms = objective(model, batch, noise)
        optimizer.zero_grad()
        (terms["total"] + terms["discriminator"]).backward()
        optimizer.step()
    if use_bf16:
        torch.cuda.synchronize()
    model.eval()
    return _rate(64 * steps, time.perf_counter() - began)


def galsim_path_rates(model: VAEGAN, n: int, config: RunConfig | None = None) -> dict[str, float]:
    """Stamps/s of generator + GalSim, of that GalSim path alone (InterpolatedImage), and of the parametric path."""
    config = config or RunConfig()
    survey = config.survey
    psf = build_psf(survey)
    params = [draw_parameters(config.population, config.shear, config.seed, i, True) for i in range(n)]
    began = time.perf_counter()
    profiles = sample_galaxies(model, n, intrinsic=True, conditions=np.array(
        [[p.flux, p.half_light_radius] for p in params]))
    decode_seconds = time.perf_counter() - began
    began = time.perf_counter()
    fields = noise_fields(params, (survey.stamp_size, survey.stamp_size))
    for p, profile, field in zip(params, profiles, fields, strict=True):
        intrinsic = intrinsic_from_profile(profile, model.settings.fine_pixel_scale_arcsec, p.flux)
        render_generated_stamp(intrinsic, p.g1, p.g2, p.ring_rotation, psf, survey, p.snr, field)
    galsim_seconds = time.perf_counter() - began
    rates = {"galsim_interpolated_image": _rate(n, galsim_seconds),
             "generator_plus_galsim": _rate(n, decode_seconds + galsim_seconds)}
    began = time.perf_counter()
    for p in params:
        render_stamp(p, psf, survey, config.seed)
    rates["galsim_parametric"] = _rate(n, time.perf_counter() - began)
    return rates


def torch_path_rates(model: VAEGAN, n: int, config: RunConfig | None = None, precision: str = "float32",
                     threads: int | None = None, batch_size: int = 64, device: str = "cpu") -> dict[str, float]:
    """Stamps/s of the batched torch renderer doing what ``galsim_path_rates``' GalSim path does per stamp
    (the lensed stamp, the unlensed one that sets the noise at the stamp's S/N, the noise), from profiles in
    memory and with the decoder in front; on ``threads`` torch threads (default: as set)."""
    from lensforge.pipeline.generative.generate import render_with_torch, torch_renderer
    from lensforge.pipeline.stamps.pairing import snr_noise_sigma

    config = config or RunConfig()
    values = config.to_dict()
    values["render"].update(backend="torch", precision=precision)
    config = build_config(values)
    survey = config.survey
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        params = [draw_parameters(config.population, config.shear, config.seed, i, True) for i in range(n)]
        conditions = np.array([[p.flux, p.half_light_radius] for p in params])
        fine = model.settings.fine_pixel_scale_arcsec
        renderer = torch_renderer(config, model.settings.fine_size, fine, device)
        flux = np.array([p.flux for p in params])
        shears = (np.array([p.g1 for p in params]), np.array([p.g2 for p in params]))
        rotation = np.array([p.ring_rotation for p in params])

        def render(profiles):
            noiseless = render_with_torch(renderer, profiles, flux, *shears, 1.0, rotation, batch_size)
            unlensed = render_with_torch(renderer, profiles, flux, 0.0, 0.0, 1.0, 0.0, batch_size)
            noisy, shape = np.empty_like(noiseless), (survey.stamp_size, survey.stamp_size)
            fields = noise_fields(params, shape)
            for row, (p, field) in enumerate(zip(params, fields, strict=True)):  # as StampAccumulator.record does
                noisy[row] = noiseless[row] + snr_noise_sigma(unlensed[row], p.snr) * field
            return noisy

        # Decoded as `lensforge generate` decodes ring pairs (decode_pairs: passes of DECODE_BLOCK_PAIRS, side by
        # side on the threads), here one galaxy per stamp.
        stack = np.empty((n, model.settings.fine_size, model.settings.fine_size))  # reused, as a worker's heap is

        def decode(count: int) -> np.ndarray:
            drawn = decode_pairs(model, list(range(count)), lambda i: conditions[min(i, n - 1)], 0, device=device)
            for i in range(count):
                stack[i] = drawn[i]
            return stack[:count]

        # One untimed pass of the whole path first, as a long run has had: oneDNN compiles its convolution
        # kernels for each new batch shape (~1 s), the renderer builds its grids and phase tables, and memory
        # the process has not touched before costs page faults, which on this machine's VM take ~1 s per
        # 100 MB the first time.
        timings = []
        for _ in range(2):
            began = time.perf_counter()
            profiles = decode(n)
            decoded = time.perf_counter()
            render(profiles)  # the numpy result: a CUDA run waits for the device here
            timings.append((decoded - began, time.perf_counter() - decoded))
        decode_seconds, render_seconds = timings[-1]
    finally:
        torch.set_num_threads(previous)
    return {"torch_rendering": _rate(n, render_seconds),
            "generator_plus_torch": _rate(n, decode_seconds + render_seconds)}


def real_galaxy_rate(n: int, psf, survey, config: RunConfig | None = None, bare: bool = False) -> float | None:
    """Stamps/s of ``galsim.RealGalaxy`` (COSMOS HST stamps, HST PSF deconvolved) doing what the generator
    paths do per stamp: a new galaxy at the object's flux, rotated and lensed by its parameters, convolved
    with the PSF and drawn, with noise whose sigma gives the unlensed galaxy the object's S/N
    (``render_generated_stamp``, as for the InterpolatedImage path). ``bare``: only a sheared, PSF-convolved
    draw per stamp (no S/N stamp, no noise), this row's reference before 2026-12-05. None without the data."""
    if not (COSMOS_REAL / "real_galaxy_catalog_26_extension_example.fits").is_file():
        return None
    catalog = galsim.RealGalaxyCatalog("real_galaxy_catalog_26_extension_example.fits", dir=str(COSMOS_REAL))
    config = config or RunConfig()
    params = [draw_parameters(config.population, config.shear, config.seed, i, True) for i in range(n)]
    fields = list(noise_fields(params, (survey.stamp_size, survey.stamp_size)))

    def draw_all() -> float:
        began = time.perf_counter()
        for i, (p, field) in enumerate(zip(params, fields, strict=True)):
            galaxy = galsim.RealGalaxy(catalog, index=i % catalog.nobjects, flux=p.flux)
            if bare:
                galsim.Convolve(galaxy.shear(g1=p.g1, g2=p.g2), psf).drawImage(
                    nx=survey.stamp_size, ny=survey.stamp_size, scale=survey.pixel_scale_arcsec)
            else:
                render_generated_stamp(galaxy, p.g1, p.g2, p.ring_rotation, psf, survey, p.snr, field)
        return time.perf_counter() - began

    draw_all()  # untimed, as the torch path's first pass: the catalogue's files read, memory touched
    return _rate(n, draw_all())


def _provenance() -> dict:
    """Commit, dirty flag and this command (benchmarks/provenance.py), importable when run as a script."""
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.provenance import provenance

    return provenance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="run directory whose models/v001 to load (default: untrained)")
    parser.add_argument("--n", type=int, default=512, help="stamps per GalSim measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RunConfig()
    survey = config.survey
    if args.run is not None:
        model, _ = load_checkpoint(args.run / "models" / "v001")
    else:
        torch.manual_seed(0)
        model = VAEGAN(ModelSettings())
    results: dict[str, dict[str, float]] = {"cpu": {}}
    results["cpu"]["decoder_observed"] = decoder_rate(model, 4 * args.n, "cpu")
    results["cpu"].update(galsim_path_rates(model, args.n, config))
    psf = build_psf(survey)

    real = real_galaxy_rate(min(args.n, 200), psf, survey)
    if real is not None:
        results["cpu"]["galsim_real_galaxy"] = real

    results["cpu"]["train_step_images"] = train_rate(model, args.train_steps, "cpu")
    if torch.cuda.is_available():
        results["cuda"] = {"decoder_observed": decoder_rate(model, 16 * args.n, "cuda"),
                           "train_step_images": train_rate(model, 10 * args.train_steps, "cuda"),
                           "device_name": torch.cuda.get_device_name(0)}

    print(f"{'path':<28}{'CPU stamps/s':>14}{'CUDA stamps/s':>15}")
    for name, rate in results["cpu"].items():
        cuda = results.get("cuda", {}).get(name)
        print(f"{name:<28}{rate:>14.1f}{(f'{cuda:>15.1f}' if isinstance(cuda, float) else ''):>15}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": _provenance(), "torch_threads": args.threads, "n": args.n,
                                    **results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
