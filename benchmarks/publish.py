"""Render README.md's and docs/*.md's measured numbers from the results files under docs/results/.

Every published measurement sits between two HTML comments in the Markdown,

    <!-- results:NAME -->
    ...text rendered from docs/results/<file>.json...
    <!-- /results:NAME -->

and is rewritten here from the results file, which the script named in its ``provenance`` wrote
(commit, dirty flag, the exact command). Nothing between the markers is typed by hand.

    python benchmarks/publish.py          # rewrite the marked sections
    python benchmarks/publish.py --check  # exit 1 and name the sections that differ

``tests/test_published_numbers.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# results file -> the script that writes it (tests check the script exists and the file names it).
WRITERS = {
    "bench.json": "benchmarks/run.py",
    "demo_evaluation.json": "benchmarks/demo_results.py",
    "shear_calibration.json": "benchmarks/shear_calibration.py",
    "tile_scaling.json": "benchmarks/tile_scaling.py",
    "reprocess_overhead.json": "benchmarks/reprocess_overhead.py",
    "orchestration_tax.json": "benchmarks/orchestration_tax.py",
    "inpainting_error_budget.json": "benchmarks/inpainting_error_budget.py",
    "realism.json": "benchmarks/realism.py",
    "realism_replicates.json": "benchmarks/realism_replicates.py",
    "realism_radio_seeds.json": "benchmarks/realism_radio_seeds.py",
    "optical_training_length.json": "benchmarks/optical_training_length.py",
    "shear_inpainting_levers.json": "benchmarks/shear_inpainting_levers.py",
    "shear_inpainting_levers_cosmos_real.json": "benchmarks/shear_inpainting_levers.py",
}
# Results files not committed yet: each joins WRITERS, and its sections are rendered, once it exists.
PENDING_WRITERS = {
    "real_inpainting.json": "benchmarks/real_inpainting.py",
}
WRITERS.update({name: script for name, script in PENDING_WRITERS.items() if (RESULTS / name).is_file()})
# Sections whose markers the Markdown may still lack: skipped (not an error) while they are absent.
OPTIONAL_MARKERS = {("README.md", "real_inpainting")}


def load(name: str, results: Path = RESULTS) -> dict[str, Any]:
    return json.loads((results / name).read_text())


# --- number formatting --------------------------------------------------------------------------------

def rate(value: float) -> str:
    """1,368 / 173 / 6.4 / 0.29: thousands separators from 100 on, two significant digits below."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def seconds(value: float) -> str:
    """67.2 s, or 5 min 20 s from a minute on."""
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


def exponent_of(value: float) -> int:
    return math.floor(math.log10(abs(value))) if value else 0


def with_error(value: float, error: float, exponent: int | None = None) -> str:
    """-1.5e-3 ± 0.53e-3: value and error in the same power of ten, the error to two significant digits."""
    exponent = exponent if exponent is not None else exponent_of(max(abs(value), error))
    scale = 10.0**exponent
    digits = max(1, 1 - math.floor(math.log10(error / scale))) if error > 0 else 1
    shown = f"{value / scale:+.{digits}f}"
    if float(shown) == 0:  # no sign on a zero
        shown = shown[1:]
    return f"{shown}e{exponent} ± {error / scale:.{digits}f}e{exponent}"


def sci(value: float) -> str:
    """1.1e-5: one decimal, no zero-padded exponent."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def span(low: float, high: float, digits: int) -> str:
    """0.28-0.30, or one number when both ends agree at that precision."""
    a, b = f"{low:.{digits}f}", f"{high:.{digits}f}"
    return a if a == b else f"{a}-{b}"


def commit_note(provenance: dict[str, Any]) -> str:
    commit = provenance.get("commit") or "unknown"
    return f"commit `{commit[:10]}`" + (" with uncommitted changes" if provenance.get("dirty") else "")


# --- the demo's evaluation (benchmarks/demo_results.py) ---------------------------------------------

INPAINT_COLUMNS = (("vaegan", "VAE-GAN"), ("vae", "VAE-only"), ("biharmonic", "biharmonic"),
                   ("interpolate", "astropy interpolate"))
GENERATION_ROWS = (("vaegan", "VAE-GAN"), ("vae", "VAE-only"), ("gan", "GAN-only"))
GENERATION_KEYS = (("sigma_arcsec", "size"), ("e1", "e1"), ("e2", "e2"), ("abs_e", "\\|e\\|"), ("gini", "Gini"),
                   ("m20", "M20"), ("concentration", "C"), ("asymmetry", "A"))


def _demo_source(demo: dict[str, Any]) -> str:
    p = demo["provenance"]
    return (f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]}; collected by "
            f"`{p['collected_by']['command']}` into `docs/results/demo_evaluation.json`")


def render_demo_summary(demo: dict[str, Any]) -> str:
    """README, "The two commands": the demo's timings and headline in-painting numbers."""
    timings = demo["provenance"]["timings"]
    configuration = demo["configuration"]
    methods = demo["evaluation"]["inpainting"]["methods"]
    model, biharmonic = methods["vaegan"], methods["biharmonic"]
    wall = timings.get("command_wall_seconds")
    took = (f"{seconds(wall)} for the whole command, of which " if wall else "")
    return (
        f"`make demo` simulates {configuration['n_objects']:,} {configuration['stamp_size']}x"
        f"{configuration['stamp_size']} stamps, trains the VAE-GAN for {configuration['train_steps']:,} steps on "
        f"the CPU and in-paints every stamp; it leaves `runs/demo/` (measured on "
        f"{demo['provenance']['collected_by']['machine']['cpu_count']} shared cores: {took}simulation "
        f"{seconds(timings['simulate_seconds'])} and training {seconds(timings['train_seconds'])}, "
        f"from the run's manifest).\n\n"
        f"On that demo the model's masked-pixel RMSE against the noiseless truth is "
        f"{model['rmse_noise_units']:.3f} noise sigma against {biharmonic['rmse_noise_units']:.3f} for biharmonic "
        f"in-painting ({model['rmse_noise_units'] / biharmonic['rmse_noise_units']:.2f}x); on masked pixels over "
        f"the galaxy, {model['on_galaxy_rmse_noise_units']:.3f} against {biharmonic['on_galaxy_rmse_noise_units']:.3f} "
        f"({model['on_galaxy_rmse_noise_units'] / biharmonic['on_galaxy_rmse_noise_units']:.2f}x). Source: "
        f"`docs/results/demo_evaluation.json` (`{demo['provenance']['command']}` at "
        f"{commit_note(demo['provenance'])}, {demo['provenance']['date_utc'][:10]}).")


def render_demo_evaluation(demo: dict[str, Any], bench: dict[str, Any]) -> str:
    """README, "Measured (default configuration ...)": in-painting, generation, sweep, throughput."""
    evaluation, configuration = demo["evaluation"], demo["configuration"]
    timings = demo["provenance"]["timings"]
    inpainting = evaluation["inpainting"]
    methods = inpainting["methods"]
    columns = [(key, label) for key, label in INPAINT_COLUMNS if key in methods]

    def cells(value_of, digits: int) -> list[str]:
        values = {key: value_of(methods[key]) for key, _ in columns}
        finite = [v for v in values.values() if v is not None]
        low = min(finite) if finite else None
        return [("–" if values[key] is None else
                 (f"**{values[key]:.{digits}f}**" if values[key] == low else f"{values[key]:.{digits}f}"))
                for key, _ in columns]

    flux_n = methods["vaegan"]["aperture_flux"]["n_stamps"]
    e_n = methods["vaegan"]["ellipticity"]["n_stamps"]
    lines = [
        f"Held-out stamps of a default run ({configuration['n_objects']:,} stamps, "
        f"{configuration['train_steps']:,} training steps in {seconds(timings['train_seconds'])}; "
        f"{_demo_source(demo)}; figures from that run in `docs/figures/`):",
        "",
        f"| in-painting, {inpainting['n_stamps']} masked stamps | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
        "| masked-pixel RMSE [noise σ] | " + " | ".join(cells(lambda e: e["rmse_noise_units"], 3)) + " |",
        "| on-galaxy RMSE [noise σ] | " + " | ".join(cells(lambda e: e["on_galaxy_rmse_noise_units"], 3)) + " |",
        f"| aperture-flux rms rel. error ({flux_n} stamps) | "
        + " | ".join(cells(lambda e: e["aperture_flux"]["rms_relative_error"], 3)) + " |",
        f"| HSM mean \\|Δe\\| ({e_n} galaxies touched) | "
        + " | ".join(cells(lambda e: e["ellipticity"]["mean_abs_delta_e"], 4)) + " |",
    ]
    coverage = []
    for key, _ in columns:
        entry = methods[key]
        if "uncertainty_predictive_vs_noisy" in entry:
            predictive = entry["uncertainty_predictive_vs_noisy"]
            coverage.append(f"{predictive['coverage_1sigma']:.3f} "
                            f"(on galaxy {predictive['on_galaxy_coverage_1sigma']:.2f})")
        else:
            coverage.append("–")
    lines.append("| 1σ coverage of the predictive std | " + " | ".join(coverage) + " |")
    ratios = inpainting["ratios"]

    def ratio(metric: str) -> str:
        entry = ratios[f"vaegan_{metric}_over_best_classical"]
        return f"{entry['ratio']:.2f} (vs {entry['best_classical']})"

    lines += ["", f"Ratios of the VAE-GAN to the better classical method: masked-pixel RMSE {ratio('rmse')}, "
                  f"on-galaxy RMSE {ratio('on_galaxy_rmse')}, |Δe| {ratio('mean_abs_delta_e')}, aperture flux "
                  f"{ratio('aperture_flux_rms')}."]
    generation = evaluation.get("generation") or {}
    models = generation.get("models") or {}
    if models:
        lines += ["", f"Generation at T = 1 ({generation['n_objects']} stamps per sample; morphology on "
                      f"{generation['n_morphology']}): Wasserstein distance to the held-out truth divided by the "
                      "distance between two independent truth samples (≤ 1 means as close as another truth "
                      "sample):", "",
                  "| | " + " | ".join(label for _, label in GENERATION_KEYS) + " | coverage | HF power vs truth |",
                  "|---|" + "---|" * (len(GENERATION_KEYS) + 2)]
        for key, label in GENERATION_ROWS:
            if key not in models:
                continue
            entry = models[key]
            ratios_w = entry["wasserstein_ratio"]
            lines.append(f"| {label} | " + " | ".join(
                "–" if ratios_w.get(k) is None else f"{ratios_w[k]:.2f}" for k, _ in GENERATION_KEYS)
                + f" | {entry['coverage']:.2f} | {entry['high_frequency_power_ratio_to_truth']:.2f} |")
        first = next(iter(models.values()))
        lines += ["", f"(Truth vs truth coverage: {first['coverage_truth_vs_truth']:.3f}.)"]
        sweep = generation.get("temperature_sweep") or {}
        if sweep:
            temperatures = list(sweep)

            def across(value_of) -> str:
                return " / ".join(f"{value_of(sweep[t]):.2f}" for t in temperatures)

            lines.append(
                f"Temperature sweep of the VAE-GAN (HSM size and shape only), T = {' / '.join(temperatures)}: "
                f"|e| ratio "
                f"{across(lambda s: s['wasserstein_ratio']['abs_e'])}, size "
                f"{across(lambda s: s['wasserstein_ratio']['sigma_arcsec'])}, coverage "
                f"{across(lambda s: s['coverage'])}.")
        if "vaegan" in models:
            hybrid = models["vaegan"]
            lines.append(f"The generated size follows the requested half-light radius with correlation "
                         f"{hybrid['size_condition_correlation']:.2f} (truth: "
                         f"{hybrid['size_condition_correlation_truth']:.2f}).")
    rows = {row["name"]: row for row in bench["rows"]}
    if "generator_vs_interpolated" in rows:
        generator = rows["generator_vs_interpolated"]
        parts = [f"generator + GalSim lensing {rate(generator['measured'])} stamps/s",
                 f"GalSim's `InterpolatedImage` path alone {rate(generator['reference'])}/s"]
        if "generator_vs_parametric" in rows:
            parts.append(f"GalSim parametric bulge+disk {rate(rows['generator_vs_parametric']['reference'])}/s")
        if "generator_vs_real_galaxy" in rows:
            real = rows["generator_vs_real_galaxy"]
            same_work = " with the unlensed stamp for the S/N and noise, as the others" if "bare_ratio" in rows.get(
                "generator_torch_vs_real_galaxy", {}) else ""
            parts.append(f"GalSim `RealGalaxy` (COSMOS{same_work}) {rate(real['reference'])}/s")
        network = "an untrained network: speed only" if "untrained" in generator["what"] else "a trained network"
        lines += ["", f"Throughput (`docs/results/bench.json`, `{bench['provenance']['command']}` at "
                      f"{commit_note(bench['provenance'])}, one process, {network}): " + "; ".join(parts) + "."]
    return "\n".join(lines)


# --- the benchmark table (benchmarks/run.py) ---------------------------------------------------------

def _bench_label(row: dict[str, Any], sizes: dict[str, Any]) -> str:
    labels = {
        "simulate_vs_bare": f"simulate stage, 2 Dask workers, {sizes['simulate']:,} stamps vs bare GalSim loop, "
                            "2 processes",
        "workers_2_vs_1": "simulate stage, 2 workers vs 1",
        "generator_vs_interpolated": "generator + GalSim vs GalSim InterpolatedImage path",
        "generator_vs_parametric": "generator + GalSim vs GalSim parametric bulge+disk",
        "generator_vs_real_galaxy": "generator + GalSim vs GalSim RealGalaxy (COSMOS)",
        "torch_vs_interpolated": "torch rendering (float32, 2 threads) vs GalSim InterpolatedImage, same profiles",
        "generator_torch_vs_real_galaxy": "generator + torch rendering vs GalSim RealGalaxy (COSMOS)",
        "tile_inpaint_vs_biharmonic": f"model tile in-painting vs biharmonic, {sizes['tile']}x{sizes['tile']}",
        "tile_inpaint_network_thin_vs_biharmonic": "the same, `--thin-holes network`",
        "startup_bad_tile": "`lensforge reprocess` of a bad FITS file, until it fails (s) vs 3 s",
        "startup_simulate_256": "`lensforge simulate` of 256 stamps, start to finish (s) vs 10 s",
        "zarr_vs_raw": f"Zarr store write (lz4) vs raw bytes, {sizes['zarr']:,} stamps, both + fsync",
    }
    if row["name"] == "memory_large_vs_small":
        small, large = sizes["memory"]
        return f"peak RSS of `lensforge simulate`, {large:,} vs {small:,} stamps"
    return labels.get(row["name"], row["name"])


def _value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:.3f} {unit}" if unit == "GB" else f"{rate(value)} {unit}"


def _load(provenance: dict[str, Any], machine: dict[str, Any]) -> str:
    """", load average 8.8 at the start and 3.1 at the end" (1-minute averages), when recorded."""
    start = provenance.get("machine", {}).get("load_average")
    end = machine.get("load_average_at_end")
    if not start:
        return ""
    return f", 1-minute load average {start[0]:.1f} at the start" + (f" and {end[0]:.1f} at the end" if end else "")


def render_bench(bench: dict[str, Any]) -> str:
    """README, "Benchmarks": the table and the figures of its notes."""
    provenance = bench["provenance"]
    rows = {row["name"]: row for row in bench["rows"]}
    cuda = any("cuda" in row for row in bench["rows"])
    gpu = bench["machine"].get("cuda")
    lines = [f"`{provenance['command']}` produced this table ({bench['size']} sizes); every ratio in it comes "
             f"from the same run. Measured on {bench['machine']['cpu_count']} cores shared with other jobs, "
             f"{'GPU ' + gpu if gpu else 'no GPU'}, in {bench['seconds']:.0f} s, at {commit_note(provenance)}, "
             f"{provenance['date_utc'][:10]}{_load(provenance, bench['machine'])}; results in "
             "`docs/results/bench.json`.", "",
             "| benchmark | measured | reference | ratio | target |" + (" CUDA |" if cuda else ""),
             "| --- | --- | --- | --- | --- |" + (" --- |" if cuda else "")]
    for row in bench["rows"]:
        target = "" if not row["target"] else f"{row['target']} ({'met' if row['met'] else 'not met'})"
        line = (f"| {_bench_label(row, bench['sizes'])} | {_value(row['measured'], row['unit'])} | "
                f"{_value(row['reference'], row['unit'])} | {row['ratio']:.{2 if row['ratio'] >= 0.1 else 3}f} | "
                f"{target} |")
        if cuda:
            line += f" {rate(row['cuda'])} |" if "cuda" in row else " |"
        lines.append(line)
    notes = []
    if "simulate_vs_bare" in rows:
        row = rows["simulate_vs_bare"]
        notes.append(f"In this run the chunks' own work (GalSim plus masks, labels and weights) ran at "
                     f"{rate(row['chunk_work_per_second'])} stamps/s, and the whole flow call, Prefect server "
                     f"and cluster start included, made {rate(row['flow_call_per_second'])} stamps/s.")
    simulate = {"stage / bare loop": "simulate_vs_bare", "2 workers / 1": "workers_2_vs_1"}
    spreads = {label: rows[name]["ratios"] for label, name in simulate.items() if "ratios" in rows.get(name, {})}
    if spreads:
        notes.append("The simulate rows are the medians of three interleaved rounds, whose own ratios were: "
                     + "; ".join(f"{label} {', '.join(f'{x:.2f}' for x in ratios)}"
                                 for label, ratios in spreads.items()) + ".")
    if "workers_2_vs_1" in rows:
        bare = rows["workers_2_vs_1"]["bare_loop_2_vs_1"]
        notes.append(f"The bare GalSim drawing itself scaled {bare:.2f}x from one process to two in the same run "
                     "(`bare_loop_2_vs_1`): the ceiling of the 2-vs-1 row on this machine.")
        if bare < 1.3:
            notes.append("That ceiling is far below 2: other jobs held the cores during this run, so its simulate "
                         "rows say more about the machine's load than about lensforge; rerun `make bench` on "
                         "free cores before reading them as lensforge's overhead.")
    if "torch_vs_interpolated" in rows:
        row = rows["torch_vs_interpolated"]
        spread = ", ".join(f"{r:.2f}" for r in row.get("ratios", []))
        text = (f"Torch rendering ({row['what']}): ratios {spread} in three rounds (the table: their median); on one "
                f"thread {rate(row['one_thread_stamps_per_s'])} stamps/s ({row['one_thread_ratio']:.2f}x GalSim's "
                f"one core), in float64 on two threads {rate(row['float64_stamps_per_s'])} stamps/s")
        if "generator_torch_vs_real_galaxy" in rows:
            real = rows["generator_torch_vs_real_galaxy"]
            spread = ", ".join(f"{r:.2f}" for r in real.get("ratios", []))
            text += (f"; generator + torch vs RealGalaxy {spread} in the same rounds, "
                     f"{real['one_thread_ratio']:.2f}x on one thread")
            if "bare_ratio" in real:
                text += (f". RealGalaxy does the generator's work per stamp there (lensed stamp, unlensed stamp "
                         f"for the S/N, noise: {rate(real['reference'])} stamps/s); drawing only a sheared stamp, "
                         f"as this row's reference did before, it makes {rate(real['bare_real_galaxy_stamps_per_s'])}"
                         f" stamps/s and the ratio is {real['bare_ratio']:.2f}")
        notes.append(text + ".")
    startup = [rows[name] for name in ("startup_bad_tile", "startup_simulate_256") if name in rows]
    if startup:
        notes.append("Start-up, three fresh processes each, no Prefect server or cluster configured: " + "; ".join(
            f"{_bench_label(r, bench['sizes']).split(' (s)')[0]} " + ", ".join(f"{t:.1f}" for t in r["runs"]) + " s"
            for r in startup) + ".")
    if "tile_inpaint_vs_biharmonic" in rows:
        row = rows["tile_inpaint_vs_biharmonic"]
        notes.append(f"Tile in-painting: {row['what']}; {row['versus']}.")
        if "tile_inpaint_network_thin_vs_biharmonic" in rows:
            other = rows["tile_inpaint_network_thin_vs_biharmonic"]
            notes.append(f"{other['what'][0].upper()}{other['what'][1:]}; ratios "
                         + ", ".join(f"{r:.2f}" for r in other["ratios"]) + " in the same rounds.")
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


# --- shear calibration (benchmarks/shear_calibration.py) ---------------------------------------------

def _m(table: dict[str, Any], component: str, exponent: int = -3) -> str:
    return with_error(table[component]["m"], table[component]["m_err"], exponent)


def _c(table: dict[str, Any], component: str, exponent: int = -5) -> str:
    return with_error(table[component]["c"], table[component]["c_err"], exponent)


def _dm(table: dict[str, Any], component: str) -> str:
    shift = table["shift"][component]
    return with_error(shift["dm"], shift["dm_err"], -3)


def _dc(table: dict[str, Any], component: str) -> str:
    shift = table["shift"][component]
    return with_error(shift["dc"], shift["dc_err"], -5)


SHEAR_SET_NAMES = {"simulated": "(a), (b)", "generated": "(c)", "cosmos_real": "(d)"}


def _shear_source(shear: dict[str, Any]) -> str:
    """The run (or, after ``--update``, the runs, each with the sets it measured) behind the results file."""
    by_set = shear.get("section_provenance") or {}
    runs: dict[tuple, list[str]] = {}  # (command, commit, date) -> the sets it measured
    for key, names in SHEAR_SET_NAMES.items():
        if key in shear:
            q = by_set.get(key, shear["provenance"])
            runs.setdefault((q["command"], commit_note(q), q["date_utc"][:10]), []).append(names)
    if not runs:
        p = shear["provenance"]
        runs[(p["command"], commit_note(p), p["date_utc"][:10])] = []
    parts = []
    for (command, commit, date), names in runs.items():
        listed = ", ".join(names)
        which = f" ({'sets' if listed.count('(') > 1 else 'set'} {listed})" if len(runs) > 1 else ""
        parts.append(f"`{command}` at {commit}, {date}{which}")
    # Stores an earlier run simulated and this one validated again (--skip run, --reuse-real-store).
    for step, key in (("run", "simulated"), ("simulate_cosmos_real", "cosmos_real")):
        reused, names = shear.get("steps", {}).get(step, {}), SHEAR_SET_NAMES[key]
        if "reused_run" in reused and key in shear:
            parts.append(f"the store of {names} simulated at commit `{reused['simulated_by_commit']['commit'][:10]}` "
                         f"({reused['simulated_utc'][:10]}) and validated again")
    return "; ".join(parts) + "; `docs/results/shear_calibration.json`"


def render_shear_summary(shear: dict[str, Any]) -> str:
    """README, "Shear calibration": the headline numbers."""
    regauss = shear["simulated"]["methods"]["REGAUSS"]
    raw = regauss["raw"]
    worst_c = max(abs(raw[c]["c"]) for c in ("g1", "g2"))
    parts = [f"{shear['n_objects']:,} stamps, VAE-GAN trained {shear['settings']['train_steps']:,} steps, "
             f"{_shear_source(shear)}: REGAUSS raw m1 = {_m(raw, 'g1')}, "
             f"m2 = {_m(raw, 'g2')}, |c| ≤ {sci(worst_c)}"]
    if "raw_secant" in regauss:
        secant = regauss["raw_secant"]
        parts.append(f"with the secant response (the O(g^2) term removed) m1 = {_m(secant, 'g1')}, "
                     f"m2 = {_m(secant, 'g2')}")
    if "generated" in shear:
        generated = shear["generated"]["methods"]["REGAUSS"]["raw"]
        parts.append(f"generated set m1 = {_m(generated, 'g1')}, m2 = {_m(generated, 'g2')}")
    if "biharmonic" in regauss and "model" in regauss:
        parts.append(f"in-painting shifts m by {_dm(regauss['biharmonic'], 'g1')} / "
                     f"{_dm(regauss['biharmonic'], 'g2')} (biharmonic) and {_dm(regauss['model'], 'g1')} / "
                     f"{_dm(regauss['model'], 'g2')} (model)"
                     + (f", {_dm(regauss['image_model'], 'g1')} / {_dm(regauss['image_model'], 'g2')} (image "
                        "in-painter, D4 mean)" if "image_model" in regauss else ""))
    return ("Method, figures and the measured numbers (" + "; ".join(parts) + ") are in "
            "[docs/shear_calibration.md](docs/shear_calibration.md).")


VARIANT_LABELS = {"none": "none (masked pixels weight 0)", "biharmonic": "biharmonic",
                  "model": "model (VAE-GAN posterior mean)",
                  "image_model": "image in-painter (biharmonic + correction, D4 mean)",
                  "symmetric": "point mirror, else biharmonic (classical)",
                  "image_model_symmetric": "point mirror, else image in-painter"}


# The in-painters' labels are the shift table's; the diagnostics are the levers script's own.
LEVER_LABELS = {**{v: VARIANT_LABELS[v] for v in ("biharmonic", "image_model", "symmetric", "image_model_symmetric")},
                "mirror_only": "diagnostic: mirror only, centroid estimated from the masked stamp",
                "mirror_only_exact_centre": "diagnostic: mirror only, about the exact centre",
                "mirror_only_unmasked_centroid": "diagnostic: mirror only, centroid of the unmasked stamp"}


def render_shear_levers(*sets: dict[str, Any]) -> str:
    """docs/shear_calibration.md, "The point-symmetry lever": each variant's paired shift of m, per store,
    on all stamps and on those whose centre is not in-painted."""
    lines = []
    for levers in sets:
        p = levers["provenance"]
        methods = levers["methods"]
        kept = levers.get("centre_not_inpainted")
        header = "| method | variant | pairs | dm1 | dm2 |"
        if kept:
            header += " pairs, centre not in-painted | dm1 | dm2 | dc1 | dc2 |"
        lines += [f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]}: the {levers['n_objects']:,} stamps "
                  f"of `{levers['store']}`, {levers['n_bootstrap']} bootstrap resamples over ring pairs, errors "
                  "1 sigma.", ""]
        if kept:
            lines += [f"The last five columns keep only the stamps with no masked pixel within one PSF FWHM of the "
                      f"stamp centre, and their ring partners ({kept['n_flagged']:,} stamps flagged).", ""]
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for method, entry in methods.items():
            for v in (v for v in LEVER_LABELS if v in entry):
                row = f"| {method} | {LEVER_LABELS[v]} | {entry['n_pairs_used']:,} | {_dm(entry[v], 'g1')} | " \
                      f"{_dm(entry[v], 'g2')} |"
                if kept:
                    sub = kept["methods"][method]
                    row += (f" {sub['n_pairs_used']:,} | {_dm(sub[v], 'g1')} | {_dm(sub[v], 'g2')} | "
                            f"{_dc(sub[v], 'g1')} | {_dc(sub[v], 'g2')} |")
                lines.append(row)
        lines += ["", "What this says:", ""]
        for method, entry in methods.items():
            worst = _worst_dm(entry)
            best = min(("image_model", "image_model_symmetric"), key=lambda v: worst[v])
            lines.append(
                f"- {method}: largest |dm| biharmonic {sci(worst['biharmonic'])}, image in-painter "
                f"{sci(worst['image_model'])}, point mirror + image in-painter {sci(worst['image_model_symmetric'])}, "
                f"point mirror + biharmonic {sci(worst['symmetric'])}; the smaller learned shift is the "
                f"{LEVER_LABELS[best]}'s; below 1e-3: {'yes' if worst[best] < 1e-3 else '**no**'}. The mirror alone "
                f"(other masked pixels true) shifts m by up to {sci(worst['mirror_only'])} with the estimated "
                f"centroid, {sci(worst['mirror_only_exact_centre'])} about the exact centre and "
                f"{sci(worst['mirror_only_unmasked_centroid'])} about the unmasked stamp's centroid.")
            if kept:
                sub = kept["methods"][method]
                worst = _worst_dm(sub)
                best = min(("image_model", "image_model_symmetric"), key=lambda v: worst[v])
                within = {v: all(abs(sub[v]["shift"][c]["dm"]) < 1e-3 + 2 * sub[v]["shift"][c]["dm_err"]
                                 for c in ("g1", "g2")) for v in worst}
                largest_dc = max(abs(sub[best]["shift"][c]["dc"]) for c in ("g1", "g2"))
                lines.append(
                    f"  - centre not in-painted ({sub['n_pairs_used']:,} pairs): largest |dm| biharmonic "
                    f"{sci(worst['biharmonic'])}, image in-painter {sci(worst['image_model'])}, point mirror + image "
                    f"in-painter {sci(worst['image_model_symmetric'])}, point mirror + biharmonic "
                    f"{sci(worst['symmetric'])}. The smaller learned shift is the {LEVER_LABELS[best]}'s: below 1e-3 "
                    f"{'yes' if worst[best] < 1e-3 else '**no**'} ({'within' if within[best] else '**not** within'} "
                    f"1e-3 at 2 sigma), smaller than biharmonic's "
                    f"{'yes' if worst[best] < worst['biharmonic'] else '**no**'}, largest |dc| {sci(largest_dc)}.")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _worst_dm(entry: dict[str, Any]) -> dict[str, float]:
    """Largest |dm| over the two components, per variant of a levers table."""
    return {v: max(abs(entry[v]["shift"][c]["dm"]) for c in ("g1", "g2")) for v in LEVER_LABELS if v in entry}


def _real_m_verdict(fit: dict[str, Any]) -> str:
    """Whether a fit with errors can test |m| < 1e-3 (2-sigma errors below it) and, if so, passes at 2 sigma."""
    testable = all(2 * fit[c]["m_err"] < 1e-3 for c in ("g1", "g2"))
    within = all(abs(fit[c]["m"]) < 1e-3 + 2 * fit[c]["m_err"] for c in ("g1", "g2"))
    if not testable:
        return "the 2-sigma errors exceed 1e-3, so this set **cannot test** |m| < 1e-3"
    return ("consistent" if within else "**not** consistent") + " with |m| < 1e-3 at 2 sigma"


# The noise test's shifts, the verdict's first: m's g -> 0 limit, the secant calibration's, the local one's.
_NOISE_TEST_KEYS = ("snr_weighting_zero_shear", "snr_weighting_secant", "snr_weighting")


def render_shear_measured(shear: dict[str, Any]) -> str:
    """docs/shear_calibration.md, "Measured": the tables and what they say."""
    settings = shear["settings"]
    n = shear["n_objects"]
    lines = [
        f"{_shear_source(shear)}: {n:,} default stamps (64x64, 0.2\"/px, Moffat 0.7\", S/N 20-100, bulge+disk, "
        f"{settings['g_min']} <= |g| <= 0.05, default defect rates), {n // 2:,} noise-cancelling ring pairs, "
        f"dg = {settings['counterfactual_delta_g']}, 200 bootstrap resamples over pairs, the VAE-GAN trained "
        f"{settings['train_steps']:,} steps on the same set's training split; one run on "
        f"{shear['cpu_count']} CPU cores shared with other jobs. Errors are 1 sigma.", "",
        "| set | method | variant | m1 | m2 | c1 | c2 |", "|---|---|---|---|---|---|---|"]
    for label, key in (("(a) simulated", "simulated"), ("(c) generated", "generated"),
                       ("(d) cosmos_real", "cosmos_real")):
        if key not in shear:
            continue
        if shear[key].get("n_objects", n) != n:
            label += f" ({shear[key]['n_objects']:,} stamps)"
        for method, entry in shear[key]["methods"].items():
            raw = entry["raw"]
            for variant, name in (("raw", "raw"), ("raw_secant", "raw, secant response")):
                if variant not in entry:
                    continue
                fit = entry[variant]
                flag = " (response suspect: no calibration)" if fit.get("response_suspect") else ""
                lines.append(f"| {label} | {method} | {name}{flag} | {_m(fit, 'g1')} | {_m(fit, 'g2')} | "
                             f"{_c(fit, 'g1')} | {_c(fit, 'g2')} |")
    methods = shear.get("simulated", {}).get("methods", {})
    regauss = methods.get("REGAUSS", {})
    shifts = [(method, v) for method, entry in methods.items() for v in VARIANT_LABELS if v in entry]
    if shifts:
        lines += ["", "Shift of m caused by masking + in-painting (paired, per method on the same pairs):", "",
                  "| method | variant | pairs | dm1 | dm2 |", "|---|---|---|---|---|"]
        lines += [f"| {method} | {VARIANT_LABELS[v]} | {methods[method]['n_pairs_used']:,} | "
                  f"{_dm(methods[method][v], 'g1')} | {_dm(methods[method][v], 'g2')} |" for method, v in shifts]
        own = [(method, v) for method, v in shifts if "self_calibrated" in methods[method][v]]
        if own:
            lines += ["", "The same shift with each variant calibrated by its *own* mean counterfactual response, as "
                      "metacalibration users apply it (paired against the raw shapes under the raw response):", "",
                      "| method | variant | dm1 | dm2 | dc1 | dc2 |", "|---|---|---|---|---|---|"]
            lines += [f"| {method} | {VARIANT_LABELS[v]} | {_dm(methods[method][v]['self_calibrated'], 'g1')} | "
                      f"{_dm(methods[method][v]['self_calibrated'], 'g2')} | "
                      f"{_dc(methods[method][v]['self_calibrated'], 'g1')} | "
                      f"{_dc(methods[method][v]['self_calibrated'], 'g2')} |" for method, v in own]
    centre = shear.get("simulated", {}).get("centre_not_inpainted")
    if centre:
        lines += ["", f"The same shift without the {centre['n_flagged']:,} stamps whose centre is in-painted (a masked "
                  "pixel within one PSF FWHM of the centre, the cut survey shear catalogues make) and their ring "
                  "partners:", "", "| method | variant | pairs | dm1 | dm2 | dc1 | dc2 |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {method} | {VARIANT_LABELS[v]} | {entry['n_pairs_used']:,} | {_dm(entry[v], 'g1')} | "
                  f"{_dm(entry[v], 'g2')} | {_dc(entry[v], 'g1')} | {_dc(entry[v], 'g2')} |"
                  for method, entry in centre["methods"].items() for v in VARIANT_LABELS if v in entry]
    lines += ["", "What this says:", ""]
    if regauss:
        raw = regauss["raw"]
        resolved = [abs(raw[c]["m"]) > 2 * raw[c]["m_err"] for c in ("g1", "g2")]
        meets_m = all(abs(raw[c]["m"]) < 1e-3 for c in ("g1", "g2"))
        meets_c = all(abs(raw[c]["c"]) < 1e-4 for c in ("g1", "g2"))
        lines.append(
            f"- (a) REGAUSS on the default parametric set: m1 = {_m(raw, 'g1')}, m2 = {_m(raw, 'g2')} "
            f"({'resolved from zero' if all(resolved) else 'not resolved from zero in every component'}); "
            f"|m| < 1e-3 is {'met' if meets_m else '**not** met'}, |c| < 1e-4 is {'met' if meets_c else 'not met'}.")
        secant = regauss.get("raw_secant")
        if secant:
            meets_secant = shear["simulated"]["verdicts"]["REGAUSS"]["raw_secant_meets_lsst"]
            lines.append(
                f"- (a) corrected: calibrated by the secant response (the O(g^2) term of the local response removed, "
                f"docs above), REGAUSS m1 = {_m(secant, 'g1')}, m2 = {_m(secant, 'g2')}; |m| < 1e-3 and |c| < 1e-4 "
                f"{'met' if meets_secant else '**not** met'}.")
        ksb = shear["simulated"]["methods"].get("KSB")
        if ksb:
            worst = max(abs(ksb["raw"][c]["m"]) for c in ("g1", "g2"))
            line = f"- KSB raw: the larger |m| is {sci(worst)} after the response calibration"
            secant = ksb.get("raw_secant")
            if secant:
                met = shear["simulated"].get("verdicts", {}).get("KSB", {}).get("raw_secant_meets_lsst")
                line += (f"; with the secant response m1 = {_m(secant, 'g1')}, m2 = {_m(secant, 'g2')}: "
                         f"|m| < 1e-3 and |c| < 1e-4 {'met' if met else '**not** met'}")
            lines.append(line + ".")
        for method in methods:
            verdicts = shear["simulated"].get("verdicts", {}).get(method, {})
            worst = verdicts.get("worst_abs_dm", {})
            for variant, name in (("model", "the stamp VAE-GAN's"), ("image_model", "the image in-painter's"),
                                  ("image_model_symmetric", "the mirror + image in-painter's")):
                if variant not in worst:
                    continue
                below = verdicts.get(f"{variant}_shift_below_biharmonic")
                lines.append(
                    f"- (b) {method}, largest |dm| from masking + in-painting: {VARIANT_LABELS[variant]} "
                    f"{sci(worst[variant])}, biharmonic {sci(worst.get('biharmonic', float('nan')))}; "
                    f"{name} shift is {'below' if below else '**not** below'} the biharmonic one and "
                    f"{'below' if verdicts.get(f'{variant}_shift_below_1e-3') else '**not** below'} 1e-3"
                    + (f"; self-calibrated, {sci(verdicts['worst_abs_dm_self_calibrated'][variant])} against "
                       f"biharmonic's {sci(verdicts['worst_abs_dm_self_calibrated'].get('biharmonic', float('nan')))}"
                       if variant in verdicts.get("worst_abs_dm_self_calibrated", {}) else "")
                    + ("; its shift minus biharmonic's (paired, same bootstrap draws): "
                       + ", ".join(f"dm{k + 1} = {with_error(d['ddm'], d['ddm_err'], -3)}" for k, d in enumerate(
                           methods[method][variant]["shift_minus_biharmonic"].values()))
                       if "shift_minus_biharmonic" in methods[method].get(variant, {}) else "") + ".")
        plain = regauss.get("plain_raw")
        if plain:
            shrink = [plain[c]["m_err"] / raw[c]["m_err"] for c in ("g1", "g2")]
            lines.append(f"- The control variate: the plain fit of the same raw shapes gives m1 = {_m(plain, 'g1')}, "
                         f"m2 = {_m(plain, 'g2')} ({min(shrink):.0f}-{max(shrink):.0f}x larger errors).")
    coverage = shear.get("simulated", {}).get("inpainting_uncertainty")
    if coverage:
        low, high = coverage["target"]
        lines.append(
            f"- (6) The model's in-painting std (brightness-calibrated on stamps past the run's own, "
            f"`models/uncertainty.py`): 1σ coverage of the hidden observed pixels {coverage['coverage_1sigma']:.3f} "
            f"over {coverage['n_pixels']:,} masked pixels and {coverage['on_galaxy_coverage_1sigma']:.3f} over the "
            f"{coverage['on_galaxy_n_pixels']:,} on the galaxy (noiseless > σ); 2σ {coverage['coverage_2sigma']:.3f} "
            f"and {coverage['on_galaxy_coverage_2sigma']:.3f}. The on-galaxy target {low}-{high} is "
            f"{'met' if coverage['on_galaxy_coverage_in_range'] else '**not** met'}.")
    def shown(method: str, shift: dict[str, Any]) -> str:
        return f"{method} dm1 = {_dm({'shift': shift}, 'g1')}, dm2 = {_dm({'shift': shift}, 'g2')}"

    def shifts(key: str) -> tuple[str, bool] | None:
        weighted = [(method, entry[key]) for method, entry in methods.items() if key in entry]
        if not weighted:
            return None
        return "; ".join(shown(method, shift) for method, shift in weighted), all(
            abs(shift[c]["dm"]) < 2 * shift[c]["dm_err"] for _, shift in weighted for c in ("g1", "g2"))

    local, secant = shifts("snr_weighting"), shifts("snr_weighting_secant")
    zero = shifts("snr_weighting_zero_shear")
    if local:
        line = ("- The noise test (weights = the `snr` label, paired errors): under the local calibration, "
                f"weighting by S/N shifts m by {local[0]} (within 2 sigma for every method: "
                f"{'yes' if local[1] else 'no'})")
        if secant:
            line += (f"; under the secant calibration by {secant[0]} (within 2 sigma for every method: "
                     f"{'yes' if secant[1] else 'no'})")
        judged = next(found for found in (zero, secant, local) if found)  # _NOISE_TEST_KEYS' order
        if zero:
            line += (f"; in the limit g -> 0 (m0 of `e = (1 + m0) g + q |g|^2 g`, the verdict) by {zero[0]}")
        line += f"; m {'is' if judged[1] else 'is **not**'} unchanged within 2 sigma for every method."
        others = []
        for name, title in (("generated", "the generated set"), ("cosmos_real", "the cosmos_real set")):
            verdicts = shear.get(name, {}).get("verdicts", {})
            if not verdicts:
                continue
            entries = shear[name]["methods"]
            unusable = [method for method, verdict in verdicts.items() if verdict.get("response_ok") is False]
            failing = [method for method, verdict in verdicts.items()
                       if verdict.get("m_unchanged_when_snr_weighted") is False and method not in unusable]
            held = [method for method in verdicts if method not in failing and method not in unusable]

            def judged_shift(method: str, entries: dict = entries, verdicts: dict = verdicts) -> str:
                """The shift the verdict was taken on (m0's, else the secant's, else the local one's); where m0
                holds but the secant shift at the sample's own shears does not, that one too."""
                entry = entries[method]
                text = shown(method, next(entry[key] for key in _NOISE_TEST_KEYS if key in entry))
                if "snr_weighting_zero_shear" in entry and "snr_weighting_secant" in entry and \
                        verdicts[method].get("m_unchanged_when_snr_weighted_secant") is False:
                    text += f" (at the sample's shears, secant: {shown(method, entry['snr_weighting_secant'])})"
                return text

            failed = [judged_shift(method) for method in failing]
            held = [judged_shift(method) if "snr_weighting_zero_shear" in entries[method] else method
                    for method in held]
            limit = any("snr_weighting_zero_shear" in entries[method] for method in verdicts)
            others.append(f"on {title}{' (shifts of m0, g -> 0)' if limit else ''} it holds for "
                          f"{', '.join(held) or 'no method'}"
                          + (f", does **not** hold for {', '.join(failed)}" if failing else "")
                          + (f", and {', '.join(unusable)} have no usable response there" if unusable else ""))
        if others:
            line += " The same test: " + "; ".join(others) + "."
        lines.append(line)
    if "generated" in shear:
        generated = shear["generated"]["methods"]["REGAUSS"]["raw"]
        met = all(abs(generated[c]["m"]) < 1e-3 for c in ("g1", "g2"))
        lines.append(f"- (c) Generated galaxies lensed by GalSim, REGAUSS: m1 = {_m(generated, 'g1')}, "
                     f"m2 = {_m(generated, 'g2')}; |m| < 1e-3 {'met' if met else '**not** met'}.")
    if "cosmos_real" in shear:
        real = shear["cosmos_real"]
        regauss_real = real["methods"]["REGAUSS"]["raw"]
        failed = regauss_real.get("n_failed")
        failed_text = (f"; HSM failed on {failed:,} of {regauss_real['n_objects']:,} stamps"
                       if failed is not None and "n_objects" in regauss_real else "")
        catalogue = real["catalogue"]
        shown = ""
        if "n_galaxies_reaching_snr_min" in catalogue:
            low, high = catalogue["snr_range"]
            named = {"symmetrize": "symmetrized", "whiten": "whitened"}
            # Files written before population.hst_noise existed whitened the HST noise.
            treated = named[catalogue.get("hst_noise", "whiten")]
            shown = (f"; under this survey's PSF {catalogue['n_galaxies_reaching_snr_min']} of them can be shown at "
                     f"S/N ≥ {low:g} and {catalogue['n_galaxies_reaching_snr_max']} at S/N ≥ {high:g} (their "
                     f"{treated} HST noise caps the rest), and only those appear")
            both = catalogue.get("n_galaxies_reaching_snr_range_by_hst_noise")
            if both:
                other = "whiten" if catalogue["hst_noise"] == "symmetrize" else "symmetrize"
                shown += (f"; {named[other]} instead of {treated}, {both[other][0]} and {both[other][1]}"
                          ", as whitening adds a median "
                          f"{catalogue['hst_noise_variance_ratio_whiten_to_symmetrize_median']:g}x the variance")
        lines.append(
            f"- (d) Real COSMOS galaxies ({real['n_objects']:,} stamps, `population.kind: cosmos_real`, GalSim "
            f"`RealGalaxy`, {catalogue['what']}{shown}), REGAUSS: m1 = {_m(regauss_real, 'g1')}, "
            f"m2 = {_m(regauss_real, 'g2')}; "
            f"{_real_m_verdict(regauss_real)}{failed_text}. These galaxies are small (median "
            f"flux radius {catalogue['flux_radius_median_arcsec']}\" in HST images) next to the 0.7\" "
            "PSF, and irregular: the per-galaxy responses scatter widely, and few distinct galaxies make the set, "
            "so the errors are larger than the parametric set's.")
        secant = real["methods"]["REGAUSS"].get("raw_secant")
        if secant and not secant.get("response_suspect"):
            lines.append(f"- (d) REGAUSS on the same set, secant-calibrated (the O(g^2) term removed): "
                         f"m1 = {_m(secant, 'g1')}, m2 = {_m(secant, 'g2')}, c1 = {_c(secant, 'g1')}, "
                         f"c2 = {_c(secant, 'g2')}; {_real_m_verdict(secant)}.")
        for method, what in (("KSB", "HSM's other estimator"),
                             ("FOURIER_QUAD", "no real-space moments, so no stamp fails")):
            fit_entry = real["methods"].get(method, {})
            fit = fit_entry.get("raw_secant") or fit_entry.get("raw")
            if fit and not fit.get("response_suspect"):
                name = "secant-calibrated" if "raw_secant" in fit_entry else "raw"
                lines.append(
                    f"- (d) The same set under {method.replace('FOURIER_QUAD', 'Fourier_Quad')} ({what}: "
                    f"{fit.get('n_failed', 0):,} failed), {name}: m1 = {_m(fit, 'g1')}, "
                    f"m2 = {_m(fit, 'g2')}, c1 = {_c(fit, 'g1')}, c2 = {_c(fit, 'g2')}; "
                    f"{_real_m_verdict(fit)}.")
    steps = shear.get("steps", {})
    if steps:
        lines.append("- Wall time of each step (2 shared cores): " + ", ".join(
            f"{name} {seconds(step['seconds'])}" for name, step in steps.items()) + ".")
    return "\n".join(lines)


# --- survey tiles (benchmarks/tile_scaling.py) -----------------------------------------------------

def fifty_percent_magnitude(by_mag: dict[str, list]) -> float | None:
    """Where the completeness of isolated galaxies first falls through 0.5 (linear between bin centres)."""
    centres = [(lo + hi) / 2 for lo, hi in zip(by_mag["bin_lo"], by_mag["bin_hi"], strict=True)]
    points = [(c, v) for c, v, n in zip(centres, by_mag["completeness"], by_mag["n_truth"], strict=True)
              if v is not None and n]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if y0 >= 0.5 > y1:
            return x0 + (y0 - 0.5) / (y0 - y1) * (x1 - x0)
    return None


def render_tiles(tiles: dict[str, Any]) -> str:
    """README, "Survey tiles": render speed-up, memory and detection of one run."""
    p = tiles["provenance"]
    size = tiles["tile_pixels"]
    region = tiles["region_pixels"]
    detection = tiles["detection"]
    by_snr = detection["by_snr"]
    bins = [f"{lo:g}–{hi:g}: {c:.2f} ({n:.0f})" for lo, hi, c, n in
            zip(by_snr["bin_lo"], by_snr["bin_hi"], by_snr["completeness"], by_snr["n_truth"], strict=True)
            if c is not None and n and 5 <= lo < 30]
    peaks = tiles["worker_peak_rss_mb"]
    text = (
        f"Measured (`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]}, "
        f"{tiles['preset'].upper()}-like {size[0]}x{size[1]} single visit, {tiles['n_objects']:,} objects, "
        f"{p['machine']['cpu_count']} shared cores, one run, `docs/results/tile_scaling.json`): "
        f"{tiles['one_worker_seconds']:.1f} s on one Dask worker, {tiles['two_worker_seconds']:.1f} s on two "
        f"(**{tiles['speedup']:.2f}x**; regions are submitted costliest first), "
        f"{'byte-identical tiles' if tiles['identical_bytes'] else 'the two tiles DIFFER'}; planning took "
        f"{tiles['plan_seconds']:.1f} s. A worker holds the plan, one region's planes (12 bytes/pixel: "
        f"{12 * region * region / 2**20:.0f} MB at {region}²) and one object's GalSim FFT at a time: its peak RSS "
        f"was {peaks['one_worker'] / 1024:.2f} GB on one worker and {peaks['two_workers'] / 1024:.2f} GB for "
        f"the larger of two; only the process that writes the FITS holds the whole tile ({tiles['tile_mb']:.0f} MB). "
        f"photutils detection (PSF-matched Gaussian filter, threshold {detection['threshold_nsigma']:g} x the "
        f"per-pixel rms, deblending) on that tile, completeness of isolated galaxies by optimal S/N (galaxies per "
        f"bin): **{bins[0]}**" + ("" if len(bins) < 2 else ", " + ", ".join(bins[1:]))
        + f"; purity {detection['purity']:.2f} overall")
    magnitude = fifty_percent_magnitude(detection["by_mag"]) if "by_mag" in detection else None
    if magnitude is not None:
        text += f"; 50% completeness near mag {magnitude:.1f}"
        if tiles.get("depth_5sigma_mag"):
            text += f" (the preset's single-visit 5σ point-source depth, an input, is {tiles['depth_5sigma_mag']:g})"
    return text + "."


def render_tiles_plan(tiles: dict[str, Any]) -> str:
    """docs/tiles.md: the plan time of the measured tile."""
    return f"{tiles['plan_seconds']:.1f} s for {tiles['n_objects']:,} objects in `docs/results/tile_scaling.json`"


# --- reprocessing overhead (benchmarks/reprocess_overhead.py) -----------------------------------------

def render_reprocess(reprocess: dict[str, Any]) -> str:
    """docs/operations.md, "Granularity": Prefect + Dask overhead of a reprocessing batch."""
    runs = reprocess["runs"]
    largest = max(runs, key=int)
    row = runs[largest]
    p = row["provenance"]
    local, existing = row.get("local"), row.get("existing")
    size = reprocess["tile_pixels"]
    text = (f"Measured on {p['machine']['cpu_count']} shared cores with {int(largest):,} tiles of {size}x{size} "
            f"(`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]}; `docs/results/reprocess_overhead.json`):")
    parts = []
    if local:
        parts.append(f"Prefect + Dask take {local['first']['overhead_ratio']:.3f} of the summed tile work on the "
                     "command's LocalCluster")
    if existing:
        higher = local and existing["first"]["overhead_ratio"] > local["first"]["overhead_ratio"]
        parts.append(f"{existing['first']['overhead_ratio']:.3f} on an existing `dask scheduler` + `dask worker` "
                     "cluster on the same cores" + (" (there the scheduler and the nanny process take CPU from the "
                                                     "tiles)" if higher else ""))
    text += " " + " and ".join(parts) + ";" if parts else ""
    reruns = [r["rerun"]["flow_wall_seconds"] for r in (local, existing) if r]
    if reruns:
        text += (f" rerunning the finished batch skips every tile in {span(min(reruns), max(reruns), 2)} s of "
                 "flow time;")
    peaks = [kind[stage]["peak_rss_gb_largest_process"] for n in runs for kind in
             (runs[n].get("local"), runs[n].get("existing")) if kind for stage in ("first", "rerun")]
    counts = " and ".join(f"{int(n):,}" for n in sorted(runs, key=int))
    text += f" peak RSS {span(min(peaks), max(peaks), 2)} GB at {counts} tiles."
    return text


# --- the simulate stage's CPU by role (benchmarks/orchestration_tax.py) -----------------------------

TAX_ROLES = {"chunk_work": "the chunks' own work (GalSim, masks, labels)",
             "workers_other": "the workers' other CPU (Zarr writes, task handling)",
             "flow_scheduler_nannies": "the flow process with the Dask scheduler and nannies",
             "prefect_server": "Prefect's server", "steal": "taken by the hypervisor (steal)", "idle": "idle"}


def render_orchestration_tax(tax: dict[str, Any]) -> str:
    """docs/operations.md, "Where the cores go": the simulate stage's CPU by role, medians over the rounds."""
    import statistics

    rounds = tax["rounds"]
    p = tax["provenance"]

    def median(pick) -> float:
        return statistics.median(pick(r) for r in rounds)

    first = rounds[0]
    shares = ", ".join(f"{TAX_ROLES[role]} {median(lambda r, role=role: r['fractions'][role]):.1%}"
                       for role in TAX_ROLES if role in first["fractions"])
    timeline = {key: median(lambda r, key=key: r["timeline_seconds"][key]) for key in first["timeline_seconds"]}
    return (f"Measured on {tax['cpu_count']} shared cores, the stage of {first['n_objects']:,} stamps on 2 workers "
            f"(chunks of {first['chunk_size']}; medians of {len(rounds)} rounds, `{p['command']}` at "
            f"{commit_note(p)}, {p['date_utc'][:10]}; `docs/results/orchestration_tax.json`): of the cores' "
            f"time, {shares}. The stage took {seconds(median(lambda r: r['stage_seconds']))}; of its wall time, "
            f"the truth catalogue (one worker, the other idle) took {timeline['catalogue_seconds']:.2f} s, "
            f"the tail in which one worker had no chunk left {timeline['chunk_tail_seconds']:.2f} s, the wait for "
            f"the first chunk {timeline['chunk_ramp_seconds']:.2f} s and the gaps between a worker's chunks "
            f"{timeline['chunk_gap_seconds']:.2f} s in all"
            + (f"; creating the store took {timeline['store_seconds']:.2f} s" if "store_seconds" in timeline else "")
            + ".")


# --- the image in-painter on real and simulated test images (benchmarks/real_inpainting.py) ----------

REAL_INPAINTING_LABELS = {"first_test": "FIRST test split (real VLA)", "lsst": "LSST (simulated)",
                          "hsc": "HSC (simulated)", "euclid_vis": "Euclid VIS (simulated)",
                          "roman": "Roman (simulated)", "ska_mid": "SKA-mid (simulated)",
                          "cosmos_mosaic": "COSMOS mosaic (real HST)", "cosmos_stamps": "COSMOS stamps (real HST)"}
REAL_INPAINTING_METHODS = ("model", "biharmonic", "interpolate")


def _triple(methods: dict[str, Any], key: str) -> str:
    """"1.23 / 2.34 / 3.45": model / biharmonic / interpolate, "–" where a method or value is missing."""
    return " / ".join("–" if methods.get(m, {}).get(key) is None else f"{methods[m][key]:.2f}"
                      for m in REAL_INPAINTING_METHODS)


def _maybe(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    """"0.954 (0.90-1.01)": a ratio and its 68% bootstrap interval over the images, where there is one."""
    return _maybe(value) + ("" if value is None or not interval else f" ({interval[0]:.2f}-{interval[1]:.2f})")


def _seed_list(seeds: list[int]) -> str:
    """"301-308" for a run of consecutive seeds, else "301, 305 and 307"."""
    seeds = [int(seed) for seed in seeds]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    if len(seeds) > 1:
        return ", ".join(str(seed) for seed in seeds[:-1]) + f" and {seeds[-1]}"
    return str(seeds[0]) if seeds else "–"


def _worst_image_sky(real: dict[str, Any]) -> str:
    """"; the sky ratio also on each test set's worst image (≤ 1.05: FIRST ... 8 of 218 images above)"."""
    done = real["done_when"]
    target = done["targets"].get("sky_rmse_ratio_worst_image")
    if target is None:
        return ""
    above = [f"{REAL_INPAINTING_LABELS.get(group, group)} {len(check['sky_worse_than_bar'])} of "
             f"{real['groups'][group]['n_images']} images above"
             for group, check in done["groups"].items() if check.get("sky_worse_than_bar")]
    return (f"; the sky ratio also on each test set's worst image (≤ {target['max']:g}: "
            f"{', '.join(above) if above else 'no image above'})")


def render_real_inpainting(real: dict[str, Any]) -> str:
    """README: the image in-painter against biharmonic and astropy on test images it never saw."""
    p = real["provenance"]
    model = real["model"]
    sets = real["test_sets"]
    done = real["done_when"]
    first = sets["first_test"]
    simulated = sets["simulated"]
    cosmos = sets["cosmos"]
    stamps = cosmos["cosmos_stamps"]
    trained = model.get("training_seconds")
    total = model.get("training_total_seconds")
    training = ("training time not recorded" if trained is None else
                f"trained in {seconds(trained)}" + (f" ({seconds(total)} with data preparation and calibration)"
                                                    if total else "")
                + (f", {model['training_steps']:,} steps" if model.get("training_steps") else "")
                + (f" on {model['training_device']}" if model.get("training_device") else ""))
    lines = [
        f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]}, on {p['machine']['cpu_count']} shared cores "
        f"in {seconds(real['timings']['wall_seconds'])}; `docs/results/real_inpainting.json`. Model: weights sha256 "
        f"`{model['weights_sha256'][:12]}`, {training}.",
        "",
        f"Test images never trained on: {first['n_images']} of the {first['n_in_split']} FIRST test-split radio "
        f"galaxies ({first['shape'][0]}x{first['shape'][1]}), {simulated['size_pixels']}x{simulated['size_pixels']} "
        f"simulated tiles of seeds {_seed_list(simulated['seeds'])} per preset, the "
        f"{cosmos['n_stamps']} real COSMOS HST stamps as one {cosmos['cosmos_mosaic']['shape'][0]}x"
        f"{cosmos['cosmos_mosaic']['shape'][1]} mosaic and {stamps['n_images']} of them on their own (skipped: "
        f"{stamps['n_skipped_smaller_than_min']} smaller than {stamps['min_side_pixels']} pixels). Holes from "
        f"`evaluation_mask` (seed {sets['mask']['seed']}), aimed at the sources; masked-pixel RMSE in units of each "
        "image's noise σ over source pixels (> 3σ above the background) and sky pixels; ratios are model / "
        "biharmonic, in brackets the central 68% of each ratio over bootstrap resamples of the test set's images "
        "(a few bright sources under holes hold most of the squared error); coverage: share of masked pixels "
        "within the model's 1σ, over all of them, over those of "
        "source segments (photutils, on the smoothed truth: the target) and over those above 3σ."
        + ("" if sets.get("complete") else " **A partial run (subsets of the test sets).**"),
        "",
        "| test set | images | source RMSE [σ] model / biharmonic / interpolate | sky RMSE [σ] model / biharmonic / "
        "interpolate | source ratio | sky ratio | aperture-flux ratio | model 1σ coverage all / source segments / "
        "> 3σ | "
        "targets met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, block in real["groups"].items():
        methods = block["methods"]
        ratios = block.get("ratios_vs_biharmonic", {}).get("model", {})
        intervals = block.get("ratio_intervals_vs_biharmonic", {}).get("model", {})
        model_metrics = methods.get("model", {})
        check = done["groups"].get(group, {})
        checks = check.get("checks", {})
        met = f"{sum(c['pass'] for c in checks.values())} of {len(checks)}" if checks else "–"
        if check and not check.get("required"):
            met += " (reported only)"
        lines.append(
            f"| {REAL_INPAINTING_LABELS.get(group, group)} | {block['n_images']} | {_triple(methods, 'rmse_source')} | "
            f"{_triple(methods, 'rmse_sky')} "
            f"| {_with_interval(ratios.get('rmse_source'), intervals.get('rmse_source'))} "
            f"| {_with_interval(ratios.get('rmse_sky'), intervals.get('rmse_sky'))} "
            f"| {_with_interval(ratios.get('aperture_flux_error_rms'), intervals.get('aperture_flux_error_rms'))} "
            f"| {_maybe(model_metrics.get('coverage_1sigma'))} / "
            f"{_maybe(model_metrics.get('coverage_1sigma_source_segment'))} / "
            f"{_maybe(model_metrics.get('coverage_1sigma_source'))} | {met} |")
    targets = done["targets"]
    coverage = targets["coverage_1sigma"]["range"]
    lines += ["", f"Targets: source ratio ≤ {targets['source_rmse_ratio']['max']:g}, sky ratio ≤ "
                  f"{targets['sky_rmse_ratio']['max']:g}, aperture-flux ratio ≤ "
                  f"{targets['aperture_flux_error_ratio']['max']:g}, 1σ coverage in "
                  f"{coverage[0]:.2f}-{coverage[1]:.2f} on all and on source masked pixels"
                  + _worst_image_sky(real)
                  + "; required of FIRST and "
                  f"every simulated preset, reported for COSMOS. {done['n_required_groups_passing']} of "
                  f"{len(done['required_groups'])} required test sets meet every target."]
    floors = {group: check.get("coverage_floor") for group, check in done["groups"].items()}
    if any(floors.values()):
        lines += ["", "Why source coverage is judged on segments: a pixel picked because its own noisy value is above "
                      "3σ was picked for its noise going up, away from any prediction. A predictor that knows the "
                      "noiseless sky (each test image smoothed by a 1-pixel Gaussian stands in for it, new noise "
                      "added; `coverage_floor`) is within its 1σ on 68.3% of the pixels of any set chosen without "
                      "looking at the noise, and reaches:", "",
                  "| test set | perfect predictor's 1σ coverage: source segments | pixels > 3σ |", "|---|---|---|"]
        lines += [f"| {REAL_INPAINTING_LABELS.get(group, group)} | {_maybe(floor.get('source_segment'))} | "
                  f"{_maybe(floor.get('source'))} |" for group, floor in floors.items() if floor]
    lines += ["", "A source the holes hide whole (or all but a few pixels of) cannot be known to be there, by any "
                  "in-painter; such pixels weigh heavily above (a hidden 300σ core). Over the sources that show "
                  "outside the holes (their photutils segment keeps ≥ 5 unhidden source pixels; the rest are sources "
                  "hidden whole or nearly and source pixels outside any segment), not a target:", "",
              "| test set | masked sources: all / visible | source pixels on visible sources | source ratio | "
              "aperture-flux ratio | model 1σ coverage |", "|---|---|---|---|---|---|"]
    for group, block in real["groups"].items():
        model_metrics = block["methods"].get("model", {})
        ratios = block.get("ratios_vs_biharmonic", {}).get("model", {})
        n_source, n_visible = model_metrics.get("n_source_pixels"), model_metrics.get("n_visible_source_pixels")
        share = f"{n_visible / n_source:.0%}" if n_source and n_visible is not None else "–"
        lines.append(
            f"| {REAL_INPAINTING_LABELS.get(group, group)} | {model_metrics.get('n_sources', '–')} / "
            f"{model_metrics.get('n_visible_sources', '–')} | {share} | {_maybe(ratios.get('rmse_visible_source'))} | "
            f"{_maybe(ratios.get('aperture_flux_error_rms_visible'))} | "
            f"{_maybe(model_metrics.get('coverage_1sigma_visible_source'))} |")
    figures = real.get("figures") or {}
    if figures:
        lines += ["", "Examples (the test image with the most masked source light): "
                  + ", ".join(f"[{key}]({path})" for key, path in figures.items()) + "."]
    return "\n".join(lines)


# --- realism of generated galaxies (benchmarks/realism.py) -------------------------------------------

REALISM_LABELS = {"sigma_arcsec": "size", "abs_e": "\\|e\\|", "gini": "Gini", "m20": "M20", "concentration": "C",
                  "asymmetry": "A", "power_spectrum_slope": "P(k) slope"}
REALISM_SECTIONS = (("radio", "radio generator vs held-out FIRST (real)"),
                    ("optical_parametric", "optical generator, parametric-trained, vs held-out parametric stamps"),
                    ("optical_cosmos_real", "optical generator, cosmos_real-trained, vs held-out COSMOS galaxies"))
REALISM_SHORT_NAMES = {"radio": "radio", "optical_parametric": "parametric-trained optical",
                       "optical_cosmos_real": "cosmos_real-trained optical"}


def render_realism(realism: dict[str, Any]) -> str:
    """README, "Realism": Wasserstein ratios of every generator to held-out truth."""
    p = realism["provenance"]
    present = [(key, label) for key, label in REALISM_SECTIONS if key in realism]
    if not present:
        return "No realism section has been measured yet."
    keys = realism[present[0][0]]["table"]["statistics"]
    by_section = realism.get("section_provenance") or {}
    runs: dict[tuple, list[str]] = {}  # (command, commit, date) -> the sections it measured
    for key, _label in present:
        q = by_section.get(key, p)
        runs.setdefault((q["command"], commit_note(q), q["date_utc"][:10]), []).append(REALISM_SHORT_NAMES[key])
    source = "; ".join(f"`{command}` at {commit}, {date}" + (f" ({', '.join(names)})" if len(runs) > 1 else "")
                       for (command, commit, date), names in runs.items())
    lines = [f"{source} (`docs/results/realism.json`). Each cell "
             "is W(held-out real A, candidate) / W(real A, independent real B): 1 is as close as more real data "
             f"would be; the bar is ≤ {realism[present[0][0]]['table']['bar']:g}.", "",
             "| candidate | n | " + " | ".join(REALISM_LABELS.get(k, k) for k in keys) + " | ≤ bar |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for key, label in present:
        section = realism[key]
        n = section["n"] if isinstance(section["n"], int) else section["n"].get("generated")
        for name, candidate in section["table"]["candidates"].items():
            ratios = " | ".join(f"{candidate['ratio'][k]:.2f}" if candidate["ratio"][k] is not None else "–"
                                for k in keys)
            # The section's own generator takes its label; another candidate takes the generator's place in it.
            row = (label if name in ("generator", "radio generator")
                   else label.replace("radio generator" if key == "radio" else "optical generator, cosmos_real-trained",
                                      name))
            lines.append(f"| {row} | {n} | {ratios} | {candidate['n_passed']} of {len(keys)} |")
    fits = (realism.get("optical_cosmos_real") or {}).get("parametric_fits")
    if fits:
        generator, parametric = (realism["optical_cosmos_real"]["table"]["candidates"][name]["ratio"]
                                 for name in ("generator", "parametric fits"))
        better = sum(1 for k in keys if generator[k] is not None and parametric[k] is not None
                     and generator[k] < parametric[k])
        lines += ["", f"Parametric fits: GalSim's Sersic / bulge+disk fits of the {fits['n_galaxies']} COSMOS "
                      f"galaxies of `{fits['catalogue']}` (`population.kind: cosmos`), drawn at the same fluxes, "
                      "S/N, shears and orientations as real B. The shared 26-mag stamps have no fits, so these are "
                      "fits of other, brighter (I < 23.5) galaxies: the row mixes the profile difference with the "
                      f"sample difference. The cosmos_real-trained generator is closer to held-out real galaxies "
                      f"than the parametric fits on {better} of {len(keys)} statistics."]
    recovery = (realism.get("optical_cosmos_real") or {}).get("shear_recovery")
    if recovery:
        def offsets(result: dict, kind: str) -> str:
            return ", ".join(f"{1e3 * (value - g):+.1f} ± {1e3 * error:.1f}" for value, g, error
                             in zip(result[kind], result["g"], result[f"{kind}_error"], strict=True))

        lines += ["", f"Shear labels of generated real-morphology galaxies: HSM {recovery['method']} on noiseless "
                      f"{recovery['n_rotations']}-orientation rings lensed by g (`pipeline/shear/recovery.py`), "
                      "estimate minus label (g1, g2) in units of 1e-3; calibrated divides by the response measured "
                      f"on counterfactuals at g ± {recovery['delta_g']:g}, which removes KSB's own bias; the bar is "
                      "± 2e-3.", "",
                  "| galaxies | g | n | raw | calibrated |", "|---|---|---|---|---|"]
        for name, label in (("generated", "generated (cosmos_real-trained)"), ("real", "real COSMOS (RealGalaxy)")):
            for result in recovery[name]:
                lines.append(f"| {label} | ({result['g'][0]:g}, {result['g'][1]:g}) | {result['n_measured']} of "
                             f"{result['n_galaxies']} | {offsets(result, 'raw')} | {offsets(result, 'calibrated')} |")
    radio = realism.get("radio")
    if radio:
        training = radio.get("training") or {}
        correlation = radio["table"]["size_condition_correlation"]
        lines += ["", f"Radio: {radio['n']['real A (FIRST test)']} test and {radio['n']['real B (FIRST calibration)']} "
                      f"calibration FIRST sources as {radio['stamp']['pixels']}² stamps of "
                      f"{radio['stamp']['pixel_scale_arcsec']:g}\" (beam {radio['stamp']['beam_fwhm_arcsec']:g}\"); "
                      f"the generator trained {training.get('steps', '?')} steps"
                      + (f" in {seconds(training['seconds'])}" if training.get("seconds") else "")
                      + f" on {training.get('n_sources', '?')} train sources"
                      + (f" (before this run, in `{radio['model']['directory']}`)"
                         if training.get("trained_here") is False else "")
                      + ". HSM sizes measure the brightest "
                      "component: their (log) correlation with the catalogue's largest angular size is "
                      f"{correlation['generated']:.2f} for generated and {correlation['real B']:.2f} for real "
                      "galaxies, so they do not test the size conditioning."]
        noise = radio.get("noise")
        if noise:
            lines[-1] += (f" Generated galaxies carry FIRST's own noise: GalSim draws it from the correlation function "
                          f"of {noise['n_patches']} source-free {noise['patch_pixels']}² corner patches of the train "
                          "split (sidelobes and CLEAN residuals included); the row with beam-model noise gives the "
                          "same galaxies with white noise convolved by the beam.")
    return "\n".join(lines)


def render_realism_replicates(replicates: dict[str, Any]) -> str:
    """README, after "Realism": the parametric-trained generator's ratios over independent replicates of B."""
    p = replicates["provenance"]
    summary = replicates["summary"]
    count = len(replicates["replicates"])
    keys = list(summary)
    lines = [f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]} (`docs/results/realism_replicates.json`): "
             f"the parametric-trained generator of the run above (`{replicates['run']['dir']}`), held-out sample A "
             f"and generator fixed, with {count} independent draws of real B and of the generated sample (the "
             "table's row is the first). Mean ± standard error of the ratio, then the spread (sd) and range of "
             "single draws"]
    pooled = all("pooled" in summary[key] for key in keys)
    if pooled:
        lines[-1] += (", and the pooled ratio: the sum over draws of W(A, generated) over the sum of W(A, B), "
                      "± its jackknife error over draws")
    lines[-1] += ":"
    lines += ["", "| statistic | mean ± s.e. | sd | range |" + (" pooled |" if pooled else ""),
              "|---|---|---|---|" + ("---|" if pooled else "")]
    for key in keys:
        s = summary[key]
        lines.append(f"| {REALISM_LABELS.get(key, key)} | {s['mean']:.2f} ± {s['standard_error']:.2f} | "
                     f"{s['sd']:.2f} | {s['min']:.2f}-{s['max']:.2f} |"
                     + (f" {s['pooled']:.2f} ± {s['pooled_standard_error']:.2f} |" if pooled else ""))
    bar = replicates["bar"]
    within = [REALISM_LABELS.get(k, k) for k in keys if summary[k]["mean"] <= bar]
    lines += ["", f"Mean ratio ≤ {bar:g} on {len(within)} of {len(keys)} statistics"]
    if pooled:
        pooled_within = [k for k in keys if summary[k]["pooled"] <= bar]
        lines[-1] += (f"; pooled ratio ≤ {bar:g} on {len(pooled_within)} of {len(keys)}. A mean of ratios leans "
                      "high: a draw of B whose W(A, B) is small inflates its ratio more than a large one deflates "
                      "another's; the pooled ratio divides the mean distances and does not, to first order")
    lines[-1] += (". One draw of B moves a ratio by the sd above: near the bar, a single realism table is decided "
                  "by that draw.")
    return "\n".join(lines)

def render_realism_radio_seeds(seeds: dict[str, Any]) -> str:
    """README, after "Realism": the radio generator's ratios over generation seeds."""
    p = seeds["provenance"]
    summary = seeds["summary"]
    count = len(seeds["replicates"])
    passes = seeds["statistics_within_bar"]
    lines = [f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]} (`docs/results/realism_radio_seeds.json`): "
             f"the radio generator of the run above (`{seeds['model']['directory']}`), both FIRST splits fixed, "
             f"with {count} generation seeds (seed 0 is the table's row). Mean ± standard error of the ratio, then "
             "the spread (sd) and range of single draws:", "",
             "| statistic | mean ± s.e. | sd | range |", "|---|---|---|---|"]
    for key, s in summary.items():
        lines.append(f"| {REALISM_LABELS.get(key, key)} | {s['mean']:.2f} ± {s['standard_error']:.2f} | "
                     f"{s['sd']:.2f} | {s['min']:.2f}-{s['max']:.2f} |")
    within = [key for key in summary if summary[key]["mean"] <= seeds["bar"]]
    lines += ["", f"Mean ratio ≤ {seeds['bar']:g} on {len(within)} of {len(summary)} statistics; single draws meet "
                  f"the bar on {min(passes)} to {max(passes)} of {len(summary)}."]
    spread = seeds.get("yardstick_spread")
    if spread:
        n = seeds["n"]
        lines += ["", f"The yardstick is one split of the held-out FIRST sources: the same "
                      f"{n['real A (FIRST test)'] + n['real B (FIRST calibration)']} sources split again at random "
                      f"into samples of {n['real A (FIRST test)']} and {n['real B (FIRST calibration)']} give W(A, B) "
                      "as below (median and 16-84 % of the re-splits, and the share of them below this split's "
                      "W); the last column is the mean ratio above with the median re-split W as its yardstick "
                      "(not the issue's definition, which takes the split's own W):", "",
                  "| statistic | this split's W(A, B) | re-splits: median (16-84 %) | below this split | "
                  "mean ratio, median yardstick |", "|---|---|---|---|---|"]
        for key, s in summary.items():
            y = spread[key]
            lines.append(f"| {REALISM_LABELS.get(key, key)} | {y['split']:.3g} | {y['median']:.3g} "
                         f"({y['p16']:.3g}-{y['p84']:.3g}) | {y['share_below_split']:.0%} | "
                         f"{s['mean_over_median_yardstick']:.2f} |")
        median_within = [REALISM_LABELS.get(k, k) for k in summary
                         if summary[k]["mean_over_median_yardstick"] <= seeds["bar"]]
        over = [REALISM_LABELS.get(k, k) for k in summary if summary[k]["mean_over_median_yardstick"] > seeds["bar"]]
        lines += ["", f"Against the median yardstick the mean ratio is ≤ {seeds['bar']:g} on {len(median_within)} of "
                      f"{len(summary)} statistics" + (f" (above: {', '.join(over)})" if over else "") + "."]
    return "\n".join(lines)


def render_optical_training_length(lengths: dict[str, Any]) -> str:
    """README, after "Realism": the calibration-side evidence behind the default ``train.steps``."""
    p = lengths["provenance"]
    keys = ("sigma_arcsec", "abs_e", "gini", "m20", "concentration")
    n_inpaint = lengths["inpaint_objects"][1] - lengths["inpaint_objects"][0]
    lines = [f"`{p['command']}` at {commit_note(p)}, {p['date_utc'][:10]} "
             "(`docs/results/optical_training_length.json`): the first five columns are mean ratios "
             f"W(C, generated at B) / W(C, B) over {len(lengths['draws'])} draws of B against a further sample C "
             f"({lengths['n']} stamps each); then the median over B's stamps of HSM |g| of the noiseless "
             "posterior-mean reconstruction over the truth's, the reconstruction's share of flux 16-24 pixels "
             "from the centre over the truth's, and the posterior mean's RMSE against the noiseless truth on the "
             f"masked pixels of {n_inpaint:,} further stamps:", "",
             "| steps | " + " | ".join(REALISM_LABELS.get(k, k) for k in keys)
             + " | reconstructed \\|g\\| / true | flux share 16-24 px | in-painting RMSE [σ] |",
             "|---" * (len(keys) + 4) + "|"]
    for stage in lengths["stages"]:
        summary = stage["realism"]["summary"]
        lines.append(f"| {stage['steps']} | " + " | ".join(f"{summary[k]['mean']:.2f}" for k in keys)
                     + f" | {stage['reconstruction']['median_shear_ratio']:.2f}"
                     + f" | {stage['reconstruction']['radial_share_ratio']['16-24']:.2f}"
                     + f" | {stage['inpainting']['rmse']:.3f} |")
    return "\n".join(lines)


# --- the sections -----------------------------------------------------------------------------------

def sections(results: Path = RESULTS) -> dict[tuple[str, str], Callable[[], str]]:
    """(Markdown file relative to the root, section name) -> its renderer."""
    def need(*names: str) -> list[dict[str, Any]]:
        return [load(name, results) for name in names]

    return {
        ("README.md", "demo-summary"): lambda: render_demo_summary(*need("demo_evaluation.json")),
        ("README.md", "demo-evaluation"): lambda: render_demo_evaluation(*need("demo_evaluation.json", "bench.json")),
        ("README.md", "shear-summary"): lambda: render_shear_summary(*need("shear_calibration.json")),
        ("README.md", "tiles"): lambda: render_tiles(*need("tile_scaling.json")),
        ("README.md", "bench"): lambda: render_bench(*need("bench.json")),
        ("docs/shear_calibration.md", "shear-measured"): lambda: render_shear_measured(
            *need("shear_calibration.json")),
        ("docs/shear_calibration.md", "shear-levers"): lambda: render_shear_levers(
            *need(*(name for name in ("shear_inpainting_levers.json", "shear_inpainting_levers_cosmos_real.json")
                    if (results / name).is_file()))),
        ("docs/tiles.md", "tiles-plan"): lambda: render_tiles_plan(*need("tile_scaling.json")),
        ("docs/operations.md", "reprocess"): lambda: render_reprocess(*need("reprocess_overhead.json")),
        ("docs/operations.md", "orchestration-tax"): lambda: render_orchestration_tax(*need("orchestration_tax.json")),
        ("README.md", "realism"): lambda: render_realism(*need("realism.json")),
        ("README.md", "realism-replicates"): lambda: render_realism_replicates(*need("realism_replicates.json")),
        ("README.md", "realism-radio-seeds"): lambda: render_realism_radio_seeds(*need("realism_radio_seeds.json")),
        ("README.md", "optical-training-length"): lambda: render_optical_training_length(
            *need("optical_training_length.json")),
        **({("README.md", "real_inpainting"): lambda: render_real_inpainting(*need("real_inpainting.json"))}
           if (results / "real_inpainting.json").is_file() else {}),
    }


def marker_pattern(name: str) -> re.Pattern[str]:
    """``<!-- results:NAME -->`` body ``<!-- /results:NAME -->``, on lines of their own or inline."""
    return re.compile(rf"(<!-- results:{re.escape(name)} -->)(\n?)(.*?)(\n?)(<!-- /results:{re.escape(name)} -->)",
                      re.DOTALL)


def marked(text: str, name: str) -> str:
    """The text between the markers of section ``name`` (ValueError if they are missing or repeated)."""
    found = marker_pattern(name).findall(text)
    if len(found) != 1:
        raise ValueError(f"expected one <!-- results:{name} --> ... <!-- /results:{name} --> pair, found {len(found)}")
    return found[0][2]


def replace_marked(text: str, name: str, body: str) -> str:
    """``text`` with section ``name``'s body replaced (a block section keeps its markers on their own lines)."""
    marked(text, name)  # raises when the markers are missing

    def swap(match: re.Match[str]) -> str:
        block = match.group(2) == "\n"
        return match.group(1) + match.group(2) + body + ("\n" if block else "") + match.group(5)

    return marker_pattern(name).sub(swap, text, count=1)


def stale_sections(root: Path = ROOT, results: Path = RESULTS) -> list[str]:
    """``file:section`` of every marked section whose text differs from what the results render."""
    stale = []
    for (relative, name), render in sections(results).items():
        text = (root / relative).read_text()
        if (relative, name) in OPTIONAL_MARKERS and not marker_pattern(name).search(text):
            continue
        if marked(text, name) != render():
            stale.append(f"{relative}:{name}")
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a section is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_sections()
        if stale:
            print("stale published numbers (run python benchmarks/publish.py): " + ", ".join(stale))
            sys.exit(1)
        print("published numbers match docs/results/")
        return
    for (relative, name), render in sections().items():
        path = ROOT / relative
        text = path.read_text()
        if (relative, name) in OPTIONAL_MARKERS and not marker_pattern(name).search(text):
            print(f"skipped {relative}:{name}: no <!-- results:{name} --> ... <!-- /results:{name} --> markers")
            continue
        try:
            body = render()
        except FileNotFoundError as missing:
            print(f"skipped {relative}:{name}: {missing.filename} does not exist")
            continue
        except KeyError as missing:  # a results file of an older script, e.g. without provenance
            print(f"skipped {relative}:{name}: its results file has no {missing}")
            continue
        updated = replace_marked(text, name, body)
        if updated != text:
            path.write_text(updated)
            print(f"updated {relative}:{name}")


if __name__ == "__main__":
    main()
