"""Shear-calibration benchmark: the three validation runs of issue 4/6, end to end from the CLI.

(a) a simulated training set with counterfactuals (``lensforge run``: simulate, train the
VAE-GAN, in-paint, report), validated raw; (b) the same set masked and in-painted by the
stamp VAE-GAN, the shipped image in-painter (``image_model``), the point mirror with the image
in-painter elsewhere (``image_model_symmetric``), the biharmonic baseline and not at all
(``lensforge validate-shear``; every shift also without the stamps whose centre is in-painted,
``centre_not_inpainted``); (c) a set of
galaxies drawn by the generator and lensed by GalSim (``lensforge generate trainset``, then
``validate-shear --store``); (d) where ``../shared/data/cosmos_real_stamps`` exists, a set of real
COSMOS HST galaxies (``population.kind=cosmos_real``, GalSim ``RealGalaxy``) simulated the same way
and validated raw. Writes ``docs/results/shear_calibration.json`` with m, c,
their bootstrap errors, the shifts, timings and the peak memory of each step, and its provenance
(commit, dirty flag, this command, packages); copies the validation figures to ``docs/figures/``.
README's "Shear calibration" paragraph and ``docs/shear_calibration.md`` are rendered from that
file (``benchmarks/publish.py``). Each run writes the file afresh: nothing of an earlier run is kept,
except with ``--update``, which keeps the sets this run skipped from the existing file, each under the
provenance it was measured with (``section_provenance``).

    python benchmarks/shear_calibration.py --n 8192            # about an hour on 2 free cores
    python benchmarks/shear_calibration.py --n 512 --steps 400  # a quick look
    python benchmarks/shear_calibration.py --skip run,validate,generate --update  # (d) again, keep (a)-(c)
    python benchmarks/shear_calibration.py --n-real 49152 --skip run,validate,generate --update  # (d), 6x the stamps
    python benchmarks/shear_calibration.py --n-real 49152 --skip run --reuse-real-store  # revalidate every set's store
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "shear_calibration.json"
FIGURES = ROOT / "docs" / "figures"
COSMOS_REAL = ROOT.parent / "shared" / "data" / "cosmos_real_stamps"
COSMOS_REAL_FILE = "real_galaxy_catalog_26_extension_example.fits"
SETS = {"simulated": ("run", "validate_simulated"), "generated": ("generate", "validate_generated"),
        "cosmos_real": ("simulate_cosmos_real", "validate_cosmos_real")}  # result key -> its steps
FIGURE_SETS = {"shear_validation_simulated_summary.png": "simulated",  # figure -> the set it shows
               "shear_validation_simulated_REGAUSS.png": "simulated",
               "shear_validation_generated_summary.png": "generated"}


def _lensforge(args: list[str], common: list[str]) -> dict:
    """Run one CLI command; return its wall time, the children's peak RSS so far and its last lines."""
    began = time.perf_counter()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", *args, *common, "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lensforge {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(done.stdout.strip(), flush=True)
    return {"seconds": round(time.perf_counter() - began, 1), "peak_rss_gb_any_child": round(peak_gb, 2),
            "stdout_tail": done.stdout.strip().splitlines()[-8:]}


def _summary(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    keep = ("m", "m_err", "c", "c_err", "n", "n_groups")
    out = {"n_objects": report["n_objects"], "verdicts": report["verdicts"], "methods": {}}
    if report.get("inpainting_uncertainty"):
        out["inpainting_uncertainty"] = report["inpainting_uncertainty"]
    if report.get("centre_not_inpainted"):  # every shift again without the stamps whose centre is in-painted
        out["centre_not_inpainted"] = report["centre_not_inpainted"]
    for method, entry in report["methods"].items():
        out["methods"][method] = {"n_pairs_used": entry["n_pairs_used"], "plain_raw": {
            c: {k: entry["raw_without_control_variate"][c][k] for k in keep} for c in ("g1", "g2")}}
        for key in ("snr_weighting", "snr_weighting_secant", "snr_weighting_zero_shear"):
            if key in entry:
                out["methods"][method][key] = entry[key]
        for variant, table in entry.items():
            if isinstance(table, dict) and "g1" in table and "m" in table["g1"] \
                    and variant != "raw_without_control_variate":
                out["methods"][method][variant] = {c: {k: table[c][k] for k in keep} for c in ("g1", "g2")}
                for key in ("response_suspect", "n_failed", "n_objects"):
                    if key in table:
                        out["methods"][method][variant][key] = table[key]
                for key in ("shift", "shift_minus_biharmonic", "n_pairs_used"):
                    if key in table:
                        out["methods"][method][variant][key] = table[key]
                if "self_calibrated" in table:
                    own = table["self_calibrated"]
                    out["methods"][method][variant]["self_calibrated"] = {
                        **{c: {k: own[c][k] for k in keep} for c in ("g1", "g2")}, "shift": own["shift"],
                        "response_suspect": own["response_suspect"]}
    return out


def _real_catalogue_facts(run_dir: Path) -> dict:
    """Size of the real-galaxy sample: its count, median flux radius (SExtractor, HST pixels of 0.03"), and
    how many galaxies the run's survey can show at its S/N range (their treated HST noise caps the S/N)."""
    import numpy as np
    from astropy.io import fits

    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.stamps.real_galaxies import cosmos_catalogue, snr_ceiling
    from lensforge.pipeline.stamps.surveys import build_psf

    radius = fits.getdata(COSMOS_REAL / COSMOS_REAL_FILE.replace(".fits", "_fits.fits"))["flux_radius"]
    config = load_config(run_dir / "config.yaml")
    catalogue, psf = cosmos_catalogue(config.population), build_psf(config.survey)
    low, high = config.population.snr_min, config.population.snr_max
    ceilings = {treatment: np.array([snr_ceiling(catalogue, row, psf, config.survey, treatment)
                                     for row in range(catalogue.nobjects)]) for treatment in ("symmetrize", "whiten")}
    used = ceilings[config.population.hst_noise]
    shown = (ceilings["symmetrize"] > 0) & np.isfinite(ceilings["symmetrize"])
    return {"file": COSMOS_REAL_FILE, "n_galaxies": int(len(radius)),
            "flux_radius_median_arcsec": round(float(np.median(radius)) * 0.03, 3),
            "n_galaxies_reaching_snr_min": int(np.sum(used >= low)),
            "n_galaxies_reaching_snr_max": int(np.sum(used >= high)),
            "snr_range": [low, high],
            "hst_noise": config.population.hst_noise,
            # both treatments, for the docs' comparison; the ceiling ratio squared is the ratio of their variances
            "n_galaxies_reaching_snr_range_by_hst_noise": {
                treatment: [int(np.sum(values >= low)), int(np.sum(values >= high))]
                for treatment, values in ceilings.items()},
            "hst_noise_variance_ratio_whiten_to_symmetrize_median": round(float(np.median(
                (ceilings["symmetrize"][shown] / ceilings["whiten"][shown]) ** 2)), 1),
            "what": f"the {len(radius)} shared COSMOS HST stamps"}


def _reused_store(run_dir: Path, option: str) -> dict:
    """What a reused run is: its path, the commit and date that simulated it, its store's manifest checksum."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{option}: no run at {run_dir} (no manifest.json); simulate it first")
    manifest = json.loads(manifest_path.read_text())
    return {"reused_run": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
            "simulated_by_commit": manifest["code_revision"], "simulated_utc": manifest["created_utc"],
            "store_sha256_in_manifest": manifest["products"].get("trainset.zarr"),
            "seconds": manifest["timings"].get("simulate_seconds")}


def keep_unmeasured_sets(results: dict, previous: dict) -> dict:
    """``results`` with the sets of ``previous`` (an earlier results file) that this run did not measure, and
    their steps, each under the provenance it was measured with (``section_provenance``), so that no set is
    shown under another run's commit."""
    merged = dict(results)
    merged["section_provenance"] = {key: results["provenance"] for key in SETS if key in results}
    merged["steps"] = dict(results["steps"])
    for key, steps in SETS.items():
        if key in previous and key not in results:
            merged[key] = previous[key]
            merged["section_provenance"][key] = (previous.get("section_provenance") or {}).get(
                key, previous["provenance"])
            merged["steps"].update({step: previous["steps"][step] for step in steps
                                    if step in previous.get("steps", {})})
    kept = {name for name in previous.get("figures", []) if FIGURE_SETS.get(name) not in results}
    merged["figures"] = [name for name in FIGURE_SETS if name in results["figures"] or name in kept]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192, help="stamps per set (half as many ring pairs)")
    parser.add_argument("--n-real", type=int, default=None,
                        help="stamps of the cosmos_real set (default: --n)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "runs"), help="run directory root")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: run,validate,generate,real")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file to write")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the validation figures are copied")
    parser.add_argument("--reuse-real-store", action="store_true",
                        help="validate the cosmos_real store an earlier run simulated instead of simulating it again "
                             "(recorded: its path, the commit that wrote it, its checksum in the run manifest)")
    parser.add_argument("--update", action="store_true",
                        help="keep the sets this run skips from the existing results file, under their own provenance")
    args = parser.parse_args()
    from benchmarks.provenance import provenance

    began = time.perf_counter()
    skip = set(filter(None, args.skip.split(",")))
    shared = ["--set", "simulation.counterfactual_delta_g=0.01", "--set", "shear.g_min=0.01"]
    if args.steps:
        shared += ["--set", f"train.steps={args.steps}"]
    common = ["--out", args.out, "--name", f"shearcal-{args.n}", "--set", f"simulation.n_objects={args.n}", *shared]
    run_dir = Path(args.out) / f"shearcal-{args.n}"
    results: dict = {"provenance": provenance(), "n_objects": args.n, "cpu_count": os.cpu_count(),
                     "settings": {"counterfactual_delta_g": 0.01, "g_min": 0.01,
                                  "train_steps": args.steps or "config default"}, "steps": {}}
    if "run" not in skip:
        # --overwrite: a run left by an earlier measurement (other code, other data) is replaced, not resumed.
        results["steps"]["run"] = _lensforge(["run", "--overwrite"], common)
    elif "validate" not in skip:  # validating the store and model of an earlier run: say which
        results["steps"]["run"] = _reused_store(run_dir, "--skip run")
    if "validate" not in skip:
        results["steps"]["validate_simulated"] = _lensforge(
            ["validate-shear", "--label", "simulated", "--variants",
             "raw,none,biharmonic,model,image_model,image_model_symmetric"], common)
        results["simulated"] = _summary(run_dir / "report" / "shear_validation_simulated.json")
    if "generate" not in skip:
        # --overwrite: this benchmark's own generated set from an earlier measurement (other code, other config).
        results["steps"]["generate"] = _lensforge(["generate", "trainset", "--n", str(args.n), "--overwrite"], common)
        results["steps"]["validate_generated"] = _lensforge(
            ["validate-shear", "--store", str(run_dir / "generated" / "calibration.zarr"), "--variants", "raw",
             "--label", "generated"], common)
        results["generated"] = _summary(run_dir / "report" / "shear_validation_generated.json")
    if "real" not in skip and (COSMOS_REAL / COSMOS_REAL_FILE).is_file():
        n_real = args.n_real or args.n
        real_dir = Path(args.out) / f"shearcal-{n_real}-cosmos_real"
        real = ["--out", args.out, "--name", real_dir.name, "--set", f"simulation.n_objects={n_real}", *shared,
                "--set", "population.kind=cosmos_real", "--set", f"population.cosmos_dir={COSMOS_REAL}",
                "--set", f"population.cosmos_file_name={COSMOS_REAL_FILE}",
                "--set", "population.cosmos_exclusion_level=none"]
        if args.reuse_real_store:
            results["steps"]["simulate_cosmos_real"] = _reused_store(real_dir, "--reuse-real-store")
        else:
            results["steps"]["simulate_cosmos_real"] = _lensforge(["simulate", "--overwrite"], real)
        results["steps"]["validate_cosmos_real"] = _lensforge(
            ["validate-shear", "--variants", "raw", "--label", "cosmos_real"], real)
        results["cosmos_real"] = _summary(real_dir / "report" / "shear_validation_cosmos_real.json")
        results["cosmos_real"]["catalogue"] = _real_catalogue_facts(real_dir)
    if (run_dir / "config.yaml").is_file():  # the run's effective settings, not what was asked for
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        results["settings"]["train_steps"] = config["train"]["steps"]
    results["seconds"] = round(time.perf_counter() - began, 1)
    figures = []
    args.figures.mkdir(parents=True, exist_ok=True)
    for name, shown in FIGURE_SETS.items():
        if shown in results and (run_dir / "report" / name).is_file():
            shutil.copyfile(run_dir / "report" / name, args.figures / name)
            figures.append(name)
    results["figures"] = figures
    if args.update and args.results.is_file():
        results = keep_unmeasured_sets(results, json.loads(args.results.read_text()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
