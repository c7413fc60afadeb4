"""Realism report: generated galaxies against held-out real ones (radio FIRST, optical parametric and COSMOS).

    python benchmarks/realism.py                                   # all sections, training what they need
                                                                   # (radio: 9000 steps, ~31 min on 2 cores)
    python benchmarks/realism.py --sections radio --radio-model DIR   # an already trained radio generator
    python benchmarks/realism.py --sections radio --steps 200 --out /tmp/realism.json   # a quick look

Each section compares a candidate sample with a held-out real sample A, statistic by statistic (HSM
size and ellipticity, Gini, M20, concentration, asymmetry, power-spectrum slope;
:mod:`lensforge.pipeline.evaluation.realism`), divided by the distance from A to an independent real
sample B:

* ``radio``: the radio generator (:mod:`lensforge.pipeline.datasets.radio_generator`), trained here
  on the FIRST train split (913 sources, eight orientations each); A = the test split (218), B = the
  calibration split (124), generated = one galaxy per calibration source, conditioned on its flux,
  size and FR class, observed through the FIRST beam with FIRST's own noise: GalSim draws it from
  the correlation function of the train split's source-free corners
  (:mod:`lensforge.pipeline.datasets.radio_noise`). A second row gives the same galaxies with the
  Gaussian-beam noise model, which lacks FIRST's sidelobes and CLEAN residuals. Also
  writes ``docs/figures/realism_radio.png``. Cite Becker, White & Helfand 1995 and Porter & Scaife
  2023 with any result from these images.
* ``optical``: a default ``lensforge run`` (parametric population); A = its held-out stamps, B =
  another seed of the population, generated = B's draws through the run's generator.
* ``cosmos_real``: a ``cosmos_real`` run on the train COSMOS galaxies (``population.cosmos_split=train``);
  A = stamps of the 21 test galaxies, B = stamps of the train galaxies. A smoke test with the 100
  shared stamps. A second candidate there: GalSim's parametric fits of COSMOS galaxies
  (``population.kind=cosmos``, the 23.5 example sample) at B's draws.

Writes ``docs/results/realism.json`` with its provenance.
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
RESULTS = ROOT / "docs" / "results" / "realism.json"
FIGURE = ROOT / "docs" / "figures" / "realism_radio.png"
DEFAULT_MODEL_DIR = ROOT / "benchmarks" / "runs" / "realism" / "radio_generator"
# Radio training steps. Decided on the calibration side (W(calibration, generated) / W(calibration, train),
# never the test split): 3000 steps left generated and reconstructed sources too symmetric and too
# evenly spread (largest ratio 4.4, asymmetry); 6000 gave 3.2, 9000 2.7, 12000 2.8 (a plateau).
# A run resumed to more steps (train(..., resume=True)) gives the same bytes as one run of that many.
# Training noise: fakes with FIRST's measured noise (stamp_noise_correlation) rather than the beam model's,
# also decided on the calibration side, over generation seeds 0-8 with FIRST noise rendered for both: 7 of 7
# statistics within the bar in 5 of 9 draws (beam-noise training: 4), mean largest ratio 1.99 (2.35),
# mean asymmetry ratio 1.87 (2.10), |e| 1.41 (1.67); P(k) slope worse, 1.63 (1.29).
DEFAULT_STEPS = 9000
BEAM_NOISE_CANDIDATE = "radio generator, beam-model noise"  # the realism row of the old noise model
FITS_CATALOGUE = "real_galaxy_catalog_23.5_example.fits"  # GalSim's example sample, with parametric fits


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    return float(np.corrcoef(np.log(a[ok]), np.log(b[ok]))[0, 1]) if ok.sum() > 2 else float("nan")


def radio_figure(real: tuple[np.ndarray, np.ndarray], generated: tuple[np.ndarray, np.ndarray], stats: dict,
                 path: Path, n_show: int = 8) -> None:
    """Real test stamps above generated ones, each given as (images, noise sigmas), in an arcsinh stretch of
    their noise; then each statistic's histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lensforge.pipeline.evaluation.realism import REALISM_KEYS

    keys = REALISM_KEYS
    fig = plt.figure(figsize=(2.0 * n_show, 4.4 + 2.4 * ((len(keys) + n_show - 1) // n_show)))
    grid = fig.add_gridspec(2 + (len(keys) + n_show - 1) // n_show, n_show)
    for row, (label, stack) in enumerate((("real (test)", real), ("generated", generated))):
        for j in range(n_show):
            ax = fig.add_subplot(grid[row, j])
            image, sigma = stack[0][j], stack[1][j]
            ax.imshow(np.arcsinh(image / (3 * sigma)), origin="lower", cmap="magma", vmin=-1, vmax=6)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
    for k, key in enumerate(keys):
        ax = fig.add_subplot(grid[2 + k // n_show, k % n_show])
        values = [stats[name][key][np.isfinite(stats[name][key])] for name in ("real A", "real B", "generated")]
        bins = np.histogram_bin_edges(np.concatenate(values), bins=20)
        for name, v in zip(("real A (test)", "real B (calibration)", "generated"), values, strict=True):
            ax.hist(v, bins=bins, histtype="step", density=True, label=name)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.axes[-1].legend(fontsize=7)
    fig.suptitle("VLA FIRST radio galaxies (Becker et al. 1995; MiraBest, Porter & Scaife 2023): real vs generated")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def radio_section(model_dir: Path, steps: int, train_if_missing: bool, seed: int, workers: int,
                  figure: Path | None, max_sources: int | None = None, stats_out: dict | None = None) -> dict:
    """Train (if needed) and measure the radio generator against the FIRST test split.

    ``max_sources`` keeps the first N sources of each split (a quick look; the report's figures use all).
    ``stats_out`` (a dict) receives the per-source statistics of each sample (``real A``, ``real B``,
    ``generated``, ``beam noise``).
    """
    from lensforge.models.checkpoint import load_checkpoint
    from lensforge.models.train import TrainSettings
    from lensforge.pipeline.datasets.corpus import load_first
    from lensforge.pipeline.datasets.radio_generator import (
        ORIENTATIONS,
        observe_radio_profiles,
        radio_stamps,
        render_radio_galaxies,
        stamp_noise_correlation,
        train_radio_generator,
    )
    from lensforge.pipeline.datasets.radio_noise import NOISE_PATCH_PIXELS, measure_noise_correlation
    from lensforge.pipeline.evaluation.realism import realism_statistics, realism_table

    began = time.perf_counter()
    training = None
    if not (model_dir / "meta.json").exists() and not train_if_missing:
        raise SystemExit(f"error: no radio generator in {model_dir}")
    train_real = load_first("train")  # for training, and for FIRST's noise: never the splits scored here
    if not (model_dir / "meta.json").exists():
        train_stamps = radio_stamps(train_real).first(max_sources)
        # The discriminator's fakes carry FIRST's own noise (the train split's), as generated galaxies do.
        result = train_radio_generator(train_stamps, model_dir, TrainSettings(steps=steps, seed=seed),
                                       noise_correlation=stamp_noise_correlation(train_real))
        training = {"seconds": result.seconds, "steps": result.steps, "trained_here": True,
                    "n_sources": len(train_stamps), "n_stamps_with_orientations": ORIENTATIONS * len(train_stamps)}
    model, meta = load_checkpoint(model_dir)
    if training is None:  # trained before this run (e.g. resumed to more steps): what its directory records
        settings_file = model_dir / "settings.json"
        n_stamps = json.loads(settings_file.read_text()).get("n_stamps") if settings_file.is_file() else None
        training = {"seconds": None, "steps": meta.get("step"), "trained_here": False,
                    "n_sources": None if n_stamps is None else n_stamps // ORIENTATIONS,
                    "n_stamps_with_orientations": n_stamps}
    real_a = radio_stamps(load_first("test")).first(max_sources)
    real_b = radio_stamps(load_first("calibration")).first(max_sources)
    correlation, n_patches = measure_noise_correlation(train_real.images[:max_sources],
                                                       train_real.noise_sigma[:max_sources],
                                                       train_real.pixel_scale_arcsec)
    generated = render_radio_galaxies(model, real_b.conditions, real_b.native_noise_sigma, real_b.beam_fwhm_arcsec,
                                      seed=seed, noise_correlation=correlation)
    # The same profiles and noise seeds observed with the Gaussian-beam noise model: what the noise alone changes.
    beam_noise = observe_radio_profiles(generated["profiles"], real_b.conditions[:, 0], real_b.native_noise_sigma,
                                        real_b.beam_fwhm_arcsec, model.settings.fine_pixel_scale_arcsec,
                                        model.settings.oversampling, seed)
    scale = real_a.pixel_scale_arcsec
    stats = {"real A": realism_statistics(real_a.images, real_a.noise_sigma, scale, workers),
             "real B": realism_statistics(real_b.images, real_b.noise_sigma, scale, workers),
             "generated": realism_statistics(generated["images"], generated["noise_sigma"], scale, workers),
             "beam noise": realism_statistics(beam_noise["images"], beam_noise["noise_sigma"], scale, workers)}
    if stats_out is not None:
        stats_out.update(stats)
    table = realism_table(stats["real A"], stats["real B"], {"radio generator": stats["generated"],
                                                             BEAM_NOISE_CANDIDATE: stats["beam noise"]})
    # Conditioning: the generated HSM size should follow the requested size as the real one does.
    table["size_condition_correlation"] = {
        "generated": _correlation(real_b.conditions[:, 1], stats["generated"]["sigma_arcsec"]),
        "real B": _correlation(real_b.conditions[:, 1], stats["real B"]["sigma_arcsec"])}
    if figure is not None:
        radio_figure((real_a.images, real_a.noise_sigma), (generated["images"], generated["noise_sigma"]), stats,
                     figure)
    centre = correlation.shape[0] // 2
    return {"n": {"real A (FIRST test)": len(real_a), "real B (FIRST calibration)": len(real_b),
                  "generated": len(generated["images"])},
            "stamp": {"pixels": int(real_a.images.shape[1]), "pixel_scale_arcsec": scale,
                      "beam_fwhm_arcsec": real_a.beam_fwhm_arcsec},
            "model": {"directory": str(model_dir.relative_to(ROOT)) if model_dir.is_relative_to(ROOT)
                      else str(model_dir), "weights_sha256": meta.get("weights_sha256"),
                      "settings": meta.get("model_settings"), "step": meta.get("step"),
                      "train_settings": meta.get("train_settings")},
            "noise": {"model": "correlation function of the FIRST train split's source-free corners",
                      "n_patches": n_patches, "patch_pixels": NOISE_PATCH_PIXELS,
                      "correlation_at_lags_1_to_5": {"x": correlation[centre, centre + 1:centre + 6].tolist(),
                                                     "y": correlation[centre + 1:centre + 6, centre].tolist()}},
            "training": training, "seed": seed, "max_sources": max_sources, "table": table,
            "seconds": time.perf_counter() - began}


def _lensforge_run(name: str, overrides: list[str]) -> tuple[Path, str]:
    """A fresh ``lensforge run`` into benchmarks/runs/realism/<name>; returns (run directory, command)."""
    import shlex
    import shutil
    import subprocess

    out = ROOT / "benchmarks" / "runs" / "realism"
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: an older one's model would not match this commit
    arguments = ["run", "--out", str(out.relative_to(ROOT)), "--name", name, "-q"]
    for override in overrides:
        arguments += ["--set", override]
    executable = Path(sys.executable).with_name("lensforge")
    subprocess.run([str(executable) if executable.exists() else "lensforge", *arguments], check=True, cwd=ROOT)
    return run_dir, shlex.join(["lensforge", *arguments])


def cosmos_real_section(run_dir: Path | None, cosmos_dir: Path, workers: int, fits_dir: Path | None = None) -> dict:
    """The stamp generator of a ``cosmos_real`` run on the train COSMOS galaxies, against the test galaxies.

    Real A: stamps of the held-out test galaxies (``population.cosmos_split=test``), never trained on.
    Real B: stamps of the train galaxies (another seed): the yardstick W(A, B) is what a generator
    that reproduced its training galaxies exactly would score. Generated: B's draws through the
    generator. With the 100 shared stamps (79 train, 21 test galaxies: the note says so) this is a smoke test.

    Parametric fits (with ``fits_dir``, a folder holding GalSim's 23.5 example catalogue and its fits):
    B's draws (flux, S/N, shear, orientation) with GalSim's Sersic / bulge+disk fits of COSMOS galaxies
    (``population.kind=cosmos``) in place of the real ones. The shared 26-mag stamps have no fits, so
    these are fits of other, brighter (I < 23.5) COSMOS galaxies, rescaled to the same fluxes: the
    comparison says how far parametric profiles are from real ones, with the sample difference in it.
    """
    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.evaluation.generation import independent_config
    from lensforge.pipeline.evaluation.realism import generation_realism, realism_statistics, realism_table
    from lensforge.pipeline.generative.training import load_models
    from lensforge.pipeline.stamps.real_galaxies import cosmos_catalogue, galaxy_indices
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    began = time.perf_counter()
    command = None
    if run_dir is None:
        run_dir, command = _lensforge_run("cosmos_real", [
            "population.kind=cosmos_real", f"population.cosmos_dir={cosmos_dir}",
            "population.cosmos_file_name=real_galaxy_catalog_26_extension_example.fits",
            "population.cosmos_exclusion_level=none", "population.cosmos_split=train"])
    config = load_config(run_dir / "config.yaml")
    model = load_models(config)["vaegan"]
    n = config.evaluate.n_generate
    test_config = independent_config(config, offset=2)
    test_config = test_config.model_copy(update={"population": test_config.population.model_copy(
        update={"cosmos_split": "test"})})
    batch_a = simulate_stamps(test_config, 0, n)
    catalogue = cosmos_catalogue(config.population)
    n_train, n_test = (len(galaxy_indices(catalogue, split)) for split in ("train", "test"))
    truth = {"images": batch_a.images, "noise_sigma": batch_a.labels["noise_sigma"]}
    config_b = independent_config(config)
    table, stats = generation_realism(config_b, truth, model, n, workers)
    fits = None
    if fits_dir is not None and (fits_dir / FITS_CATALOGUE).is_file():
        fits_config = config_b.model_copy(update={"population": config_b.population.model_copy(update={
            "kind": "cosmos", "cosmos_dir": fits_dir, "cosmos_file_name": FITS_CATALOGUE,
            "cosmos_exclusion_level": "marginal", "cosmos_split": "all"})})
        fitted = simulate_stamps(fits_config, 0, n)
        candidates = {"generator": stats["generated"],
                      "parametric fits": realism_statistics(fitted.images, fitted.labels["noise_sigma"],
                                                            config.survey.pixel_scale_arcsec, workers)}
        table = realism_table(stats["real A"], stats["real B"], candidates)
        fits = {"catalogue": FITS_CATALOGUE, "n_galaxies": cosmos_catalogue(fits_config.population).nobjects,
                "note": "GalSim's fits of 23.5-mag COSMOS galaxies (the 26-mag test stamps have none), at B's "
                        "fluxes, S/N, shears and orientations"}
    return {"run": {"command": command, "population": "cosmos_real (train galaxies)", "survey": config.survey.name,
                    "train_steps": config.train.steps},
            "n": n, "table": table, "note": f"smoke test: {n_train} train and {n_test} test COSMOS galaxies",
            "parametric_fits": fits, "shear_recovery": shear_recovery(model, config, catalogue),
            "seconds": time.perf_counter() - began}


RECOVERY_SHEARS = ((0.05, 0.0), (0.0, -0.03))
RECOVERY_GALAXIES = 200


def shear_recovery(model, config, catalogue) -> dict:
    """HSM KSB on noiseless 8-orientation rings (:func:`~lensforge.pipeline.shear.recovery.ring_shear_recovery`)
    of generated real-morphology galaxies (the cosmos_real-trained generator, at the population's
    geometric-mean flux) and of every real COSMOS galaxy, lensed by each of :data:`RECOVERY_SHEARS`."""
    from lensforge.pipeline.generative.generate import intrinsic_from_profile, sample_conditioned
    from lensforge.pipeline.shear.recovery import ring_shear_recovery
    from lensforge.pipeline.stamps.surveys import build_psf

    survey, psf = config.survey, build_psf(config.survey)
    flux = float(np.sqrt(config.population.flux_min * config.population.flux_max))
    drawn = sample_conditioned(model, survey, RECOVERY_GALAXIES, flux=flux, half_light_radius=None, seed=3)
    fine_scale = survey.pixel_scale_arcsec / model.settings.oversampling
    samples = {"generated": [intrinsic_from_profile(p, fine_scale, flux) for p in drawn["profiles"]],
               "real": [catalogue.makeGalaxy(i, gal_type="real", noise_pad_size=0).withFlux(flux)
                        for i in range(catalogue.nobjects)]}
    out: dict = {"method": "KSB", "n_rotations": 8, "delta_g": 0.01, "flux": flux}
    for name, galaxies in samples.items():
        out[name] = [ring_shear_recovery(galaxies, g1, g2, psf, survey) for g1, g2 in RECOVERY_SHEARS]
    return out


def load_optical_run(run_dir: Path):
    """A finished default ``lensforge run``'s config, trained stamp generator and held-out stamps (sample A:
    ``evaluate.n_generate`` validation stamps, masked or not)."""
    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.evaluation.inpainting import validation_stamps
    from lensforge.pipeline.generative.training import load_models
    from lensforge.pipeline.rundir import require_store
    from lensforge.pipeline.stamps.splits import split_index

    config = load_config(run_dir / "config.yaml")
    model = load_models(config)["vaegan"]
    first = split_index(config.simulation.n_objects, config.train.validation_fraction)
    truth = validation_stamps(require_store(config), first, config.evaluate.n_generate, masked_only=False)
    return config, model, truth


def optical_section(run_dir: Path | None, workers: int) -> dict:
    """The stamp generator of a default ``lensforge run`` (parametric population) against its held-out stamps.

    Without ``run_dir`` the default demo is run first (``lensforge run --out benchmarks/runs/realism
    --name optical -q``, ~9 min on 2 cores).
    """
    from lensforge.pipeline.evaluation.generation import independent_config
    from lensforge.pipeline.evaluation.realism import generation_realism

    began = time.perf_counter()
    command = None
    if run_dir is None:
        run_dir, command = _lensforge_run("optical", [])
    config, model, truth = load_optical_run(run_dir)
    table, _ = generation_realism(independent_config(config), truth, model, config.evaluate.n_generate, workers)
    return {"run": {"command": command, "population": config.population.kind,
                    "survey": config.survey.name, "train_steps": config.train.steps},
            "n": len(truth["images"]), "table": table, "seconds": time.perf_counter() - began}


SECTIONS = ("radio", "optical", "cosmos_real")
PAYLOAD_KEYS = {"radio": "radio", "optical": "optical_parametric", "cosmos_real": "optical_cosmos_real"}


def keep_unmeasured_sections(payload: dict, previous: dict) -> dict:
    """``payload`` with the sections of ``previous`` (an earlier results file) that this run did not measure,
    each under the provenance it was measured with (``section_provenance``), so that no section is shown
    under another run's commit."""
    measured = {PAYLOAD_KEYS[name] for name in payload["sections"]}
    merged = dict(payload)
    merged["section_provenance"] = {key: payload["provenance"] for key in measured}
    for name, key in PAYLOAD_KEYS.items():
        if key in previous and key not in measured:
            merged[key] = previous[key]
            merged["section_provenance"][key] = (previous.get("section_provenance") or {}).get(
                key, previous["provenance"])
            if name == "radio" and "radio" in previous.get("figures", {}):
                merged["figures"] = {**merged["figures"], "radio": previous["figures"]["radio"]}
    merged["sections"] = [name for name, key in PAYLOAD_KEYS.items() if key in merged]
    return merged


def _print_table(name: str, table: dict) -> None:
    floor = table["truth_vs_truth"]
    for candidate_name, candidate in table["candidates"].items():
        ratios = ", ".join(f"{key} {candidate['ratio'][key]:.2f}" for key in table["statistics"])
        print(f"{name} / {candidate_name}: W(real A, candidate) / W(real A, real B): {ratios}; "
              f"{candidate['n_passed']} of {len(floor)} <= {table['bar']:g}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--radio-model", type=Path, default=None,
                        help=f"trained radio generator (default: train one into {DEFAULT_MODEL_DIR.relative_to(ROOT)})")
    parser.add_argument("--optical-run", type=Path, default=None,
                        help="finished default `lensforge run` directory (default: run one)")
    parser.add_argument("--cosmos-real-run", type=Path, default=None,
                        help="finished cosmos_real `lensforge run` directory on the train galaxies (default: run one)")
    parser.add_argument("--cosmos-dir", type=Path, default=None,
                        help="folder of the COSMOS real stamps (default: ../shared/data/cosmos_real_stamps)")
    parser.add_argument("--cosmos-fits-dir", type=Path, default=None,
                        help=f"folder of GalSim's {FITS_CATALOGUE} and its fits, the parametric-fits candidate "
                             "(default: ../shared/data/cosmos_example)")
    parser.add_argument("--train-into", type=Path, default=DEFAULT_MODEL_DIR,
                        help="where a radio generator is trained when --radio-model is not given (replaced)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="radio training steps when training")
    parser.add_argument("--max-sources", type=int, default=None,
                        help="radio: only the first N sources of each FIRST split (a quick look)")
    parser.add_argument("--seed", type=int, default=0, help="radio training and generation seed")
    parser.add_argument("--workers", type=int, default=2, help="processes for statmorph")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--update", action="store_true",
                        help="keep the sections of the existing --out that --sections does not measure (each under "
                             "its own provenance)")
    parser.add_argument("--figure", type=Path, default=None,
                        help="radio figure (default: docs/figures/realism_radio.png, or beside a non-default --out)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"error: unknown sections {unknown}; valid: {', '.join(SECTIONS)}")

    from benchmarks.provenance import provenance
    from lensforge.pipeline.datasets.corpus import COSMOS_DIR, shared_data_dir

    info = provenance(None if argv is None else [__file__, *argv])
    began = time.perf_counter()
    payload: dict = {"sections": sections, "figures": {}}
    if "radio" in sections:
        model_dir = args.radio_model or args.train_into
        if args.radio_model is None and (model_dir / "meta.json").exists():
            # A fresh measurement trains afresh: an older run's weights would not match this commit.
            import shutil

            shutil.rmtree(model_dir)
        figure = args.figure or (FIGURE if args.out.resolve() == RESULTS else args.out.with_name(FIGURE.name))
        payload["radio"] = radio_section(model_dir, args.steps, args.radio_model is None, args.seed, args.workers,
                                         figure, args.max_sources)
        payload["figures"]["radio"] = str(figure.relative_to(ROOT)) if figure.is_relative_to(ROOT) else str(figure)
    if "optical" in sections:
        payload["optical_parametric"] = optical_section(args.optical_run, args.workers)
    if "cosmos_real" in sections:
        payload["optical_cosmos_real"] = cosmos_real_section(args.cosmos_real_run,
                                                             args.cosmos_dir or shared_data_dir() / COSMOS_DIR,
                                                             args.workers, args.cosmos_fits_dir or
                                                             shared_data_dir() / "cosmos_example")
    payload["provenance"] = {**info, "wall_seconds": time.perf_counter() - began}
    from lensforge.pipeline.evaluation.report import jsonable

    payload = jsonable(payload)
    if args.update and args.out.is_file():
        payload = keep_unmeasured_sections(payload, json.loads(args.out.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for key, name in (("radio", "radio"), ("optical_parametric", "optical (parametric-trained)"),
                      ("optical_cosmos_real", "optical (cosmos_real-trained)")):
        if key in payload:
            _print_table(name, payload[key]["table"])
    if "radio" in payload:
        correlation = payload["radio"]["table"]["size_condition_correlation"]
        print(f"radio size-condition correlation: generated {correlation['generated']:.2f}, "
              f"real {correlation['real B']:.2f}")
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
