"""How long to train the stamp VAE-GAN: the evidence behind the default ``train.steps``, on calibration samples only.

    python benchmarks/optical_training_length.py [--run benchmarks/runs/realism/optical] [--steps 1500,3000,6000]

Trains the generator of a finished default parametric run (its store's training split, its settings)
into a work directory, to each number of steps in turn (each continues the previous one; ``train``'s
resume), and scores every stage on samples that no run holds out for testing:

* realism ratios W(C, generated at B_k) / W(C, B_k) per statistic, for ``--draws`` independent samples
  B_k of the population (``independent_config`` offsets) against another sample C (offset
  ``--reference``); generated galaxies take B_k's draws, as in ``benchmarks/realism.py``;
* the ellipticity of posterior-mean reconstructions: median over B's first stamps of HSM |g| of the
  noiseless reconstruction over that of the noiseless truth (1 = shapes kept);
* the share of the reconstruction's flux in radial annuli over the truth's (the radial profile);
* in-painting RMSE of the posterior mean against the noiseless truth, in noise sigma, over the masked
  pixels (and those where the galaxy is above the noise) of objects ``--inpaint-objects`` of the run's
  own simulation, past its stamps and its uncertainty-calibration objects.

Writes ``docs/results/optical_training_length.json`` with its provenance (~35 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results" / "optical_training_length.json"
DEFAULT_RUN = ROOT / "benchmarks" / "runs" / "realism" / "optical"
DEFAULT_WORK = ROOT / "benchmarks" / "runs" / "realism" / "optical_training_length"
ANNULI_PIXELS = (0, 4, 8, 12, 16, 24, 32)


def train_to(config, steps: int, out_dir: Path) -> None:
    """The run's generator trained (or continued) to ``steps`` in ``out_dir``; the run's data and settings."""
    from lensforge.pipeline.generative.training import train_on_store

    longer = config.model_copy(update={"train": config.train.model_copy(update={"steps": steps})})
    train_on_store(longer, out_dir, progress=False)


def reconstructions(model, batch) -> np.ndarray:
    """Noiseless posterior-mean reconstructions [ADU] of ``batch``'s stamps, given their flux and size."""
    import torch

    from lensforge.models.normalize import from_model_space, to_model_space

    sigma = batch.labels["noise_sigma"]
    x = torch.from_numpy(to_model_space(batch.images.astype(np.float32), sigma))[:, None]
    known = np.stack([batch.labels["flux"], batch.labels["half_light_radius"]], axis=1)
    with torch.inference_mode():
        conditions = model.prepare_conditions(torch.from_numpy(known), len(known))
        mu, _ = model.encode(x, torch.from_numpy(batch.masks != 0)[:, None], conditions)
        return from_model_space(model.decode(mu, conditions)[:, 0].numpy(), sigma)


def hsm_shear_modulus(images: np.ndarray, pixel_scale_arcsec: float) -> np.ndarray:
    """|g| of GalSim's adaptive moments per image (:func:`~lensforge.pipeline.evaluation.metrics.hsm_shapes`;
    NaN where HSM fails)."""
    from lensforge.pipeline.evaluation.metrics import hsm_shapes

    shapes = hsm_shapes(np.asarray(images, dtype=np.float64), pixel_scale_arcsec)
    return np.hypot(shapes["e1"], shapes["e2"])


def radial_share_ratio(reconstructed: np.ndarray, truth: np.ndarray) -> dict:
    """Mean share of total flux per annulus (stamp pixels from the centre), reconstruction over truth."""
    side = truth.shape[-1]
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    radius = np.hypot(xx, yy)
    rec = reconstructed / reconstructed.sum(axis=(1, 2), keepdims=True)
    true = truth / truth.sum(axis=(1, 2), keepdims=True)
    out = {}
    for lo, hi in zip(ANNULI_PIXELS[:-1], ANNULI_PIXELS[1:], strict=True):
        ring = (radius >= lo) & (radius < hi)
        out[f"{lo}-{hi}"] = float(rec[:, ring].sum(axis=1).mean() / true[:, ring].sum(axis=1).mean())
    return out


def inpainting_rmse(model, batch, seed: int, first_index: int, n_samples: int) -> dict:
    """Posterior-mean in-painting error against the noiseless truth, in noise sigma, over masked pixels."""
    from lensforge.models.inpaint import inpaint_with_model

    sigma = batch.labels["noise_sigma"]
    mean, _ = inpaint_with_model(model, batch.images, batch.masks, sigma, n_samples=n_samples, seed=seed,
                                 first_index=first_index)
    error = (mean - batch.noiseless) / sigma[:, None, None]
    masked = batch.masks != 0
    galaxy = masked & (batch.noiseless > sigma[:, None, None])
    return {"masked_pixels": int(masked.sum()), "rmse": float(np.sqrt(np.mean(error[masked] ** 2))),
            "galaxy_pixels": int(galaxy.sum()), "rmse_galaxy": float(np.sqrt(np.mean(error[galaxy] ** 2)))}


def score(model, config, real: dict, draws: list[int], reference: int, recon_batch, inpaint_batch,
          inpaint_first: int, workers: int, n: int) -> dict:
    """Every calibration-side measurement of one trained stage (see the module docstring)."""
    from benchmarks.realism_replicates import ratio_summary
    from lensforge.pipeline.evaluation.generation import independent_config
    from lensforge.pipeline.evaluation.realism import REALISM_KEYS, realism_statistics, realism_table
    from lensforge.pipeline.generative.generate import generate_stamps

    scale = config.survey.pixel_scale_arcsec
    rows = []
    for offset in draws:
        generated = generate_stamps(model, independent_config(config, offset), 0, n, temperature=1.0)
        stats = realism_statistics(generated.images, generated.labels["noise_sigma"], scale, workers)
        table = realism_table(real[reference], real[offset], {"generator": stats})
        rows.append({"seed_offset": offset, "ratio": table["candidates"]["generator"]["ratio"],
                     "truth_vs_truth": table["truth_vs_truth"]})
    rec = reconstructions(model, recon_batch)
    g_rec, g_true = hsm_shear_modulus(rec, scale), hsm_shear_modulus(recon_batch.noiseless, scale)
    ok = np.isfinite(g_rec) & np.isfinite(g_true) & (g_true > 0)
    return {"realism": {"draws": rows, "summary": ratio_summary(rows, REALISM_KEYS)},
            "reconstruction": {"n": int(ok.sum()), "median_shear_ratio": float(np.median(g_rec[ok] / g_true[ok])),
                               "radial_share_ratio": radial_share_ratio(rec, recon_batch.noiseless)},
            "inpainting": inpainting_rmse(model, inpaint_batch, config.seed, inpaint_first, config.inpaint.n_samples)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="finished default parametric `lensforge run`")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the trainings go (replaced)")
    parser.add_argument("--steps", default="1500,3000,6000", help="increasing training lengths")
    parser.add_argument("--draws", default="3,4,5,6", help="independent_config offsets of the samples B")
    parser.add_argument("--reference", type=int, default=20, help="independent_config offset of the sample C")
    parser.add_argument("--inpaint-objects", default="6000,8500", help="object range of the in-painting set")
    parser.add_argument("--n", type=int, default=None, help="stamps per sample (default: evaluate.n_generate)")
    parser.add_argument("--workers", type=int, default=2, help="processes for statmorph")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")]
        draws = [int(s) for s in args.draws.split(",")]
        first, stop = (int(s) for s in args.inpaint_objects.split(","))
    except ValueError:
        raise SystemExit("error: --steps, --draws and --inpaint-objects take comma-separated integers") from None
    if steps != sorted(set(steps)) or steps[0] < 1 or args.reference in draws or args.reference < 1 or min(draws) < 1:
        raise SystemExit("error: --steps must increase from >= 1; --draws and --reference: distinct offsets >= 1")
    if not (args.run / "config.yaml").is_file():
        raise SystemExit(f"error: {args.run}: no finished run (run benchmarks/realism.py --sections optical first)")

    import shutil

    from benchmarks.provenance import provenance
    from lensforge.models.checkpoint import load_checkpoint
    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.evaluation.generation import independent_config
    from lensforge.pipeline.evaluation.realism import realism_statistics
    from lensforge.pipeline.generative.training import calibration_objects
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    config = load_config(args.run / "config.yaml")
    calibration = calibration_objects(config)
    if first < calibration.stop:
        raise SystemExit(f"error: --inpaint-objects must start at or past {calibration.stop} (the run's own objects "
                         "and its uncertainty-calibration objects come before)")
    info = provenance(None if argv is None else [__file__, *argv])
    began = time.perf_counter()
    n, scale = args.n or config.evaluate.n_generate, config.survey.pixel_scale_arcsec
    real = {}
    for offset in [args.reference, *draws]:
        batch = simulate_stamps(independent_config(config, offset), 0, n)
        real[offset] = realism_statistics(batch.images, batch.labels["noise_sigma"], scale, args.workers)
    recon_batch = simulate_stamps(independent_config(config, draws[0]), 0, n)
    inpaint_batch = simulate_stamps(config, first, stop)
    if args.work.exists():
        shutil.rmtree(args.work)
    stages = []
    for n_steps in steps:
        t0 = time.perf_counter()
        train_to(config, n_steps, args.work)
        trained = time.perf_counter() - t0
        model = load_checkpoint(args.work)[0].eval()
        stage = {"steps": n_steps, "train_seconds": trained,
                 **score(model, config, real, draws, args.reference, recon_batch, inpaint_batch, first,
                         args.workers, n)}
        stages.append(stage)
        summary = stage["realism"]["summary"]
        print(f"{n_steps} steps: " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in summary.items())
              + f"; reconstruction |g| ratio {stage['reconstruction']['median_shear_ratio']:.3f}"
              + f"; in-painting RMSE {stage['inpainting']['rmse']:.3f}"
              + f" (galaxy {stage['inpainting']['rmse_galaxy']:.3f})",
              flush=True)
    payload = {"run": {"dir": str(args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run),
                       "population": config.population.kind, "seed": config.seed},
               "draws": draws, "reference": args.reference, "n": n, "inpaint_objects": [first, stop],
               "annuli_pixels": list(ANNULI_PIXELS), "stages": stages, "provenance": info,
               "seconds": time.perf_counter() - began}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
