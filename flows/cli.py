"""The ``lensforge`` command line.

Every command reads the same configuration: embedded defaults, then ``--config
FILE`` (YAML), then ``--set section.key=value`` overrides (repeatable). Bad input
(unknown key, invalid value, missing or damaged file) prints one line on stderr and
exits with status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import flows  # noqa: F401 - sets quiet Prefect defaults before Prefect is imported
from flows.catalogs_cli import catalogs_app
from flows.cli_common import (
    ConfigOption,
    DaskAddressOption,
    NameOption,
    OutOption,
    PresetOption,
    QuietOption,
    SetOption,
    config_from_options,
    exit_on_bad_input,
    require_store,
)
from flows.generate_cli import generate_app
from flows.models_cli import models_app

# A task that fails on bad input makes Prefect log the whole traceback of every run that saw it;
# the CLI reports lensforge errors in one line instead, and a real bug still surfaces as the
# exception the command re-raises. Set before Prefect configures logging (here and in the workers,
# which inherit the environment). Deployments keep Prefect's default logging.
for _logger in ("FLOW_RUNS", "TASK_RUNS"):
    os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{_logger}_LEVEL", "CRITICAL")

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="lensforge: lensed-galaxy simulation, patchy data, VAE-GAN in-painting, Zarr training sets.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

@config_app.command("show")
@exit_on_bad_input
def config_show(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None,
                name: NameOption = None, preset: PresetOption = None) -> None:
    """Print the effective configuration (defaults + file + overrides) as YAML."""
    typer.echo(config_from_options(config, set_, out, name, preset).to_yaml(), nl=False)


def _summary(title: str, payload: dict[str, Any]) -> None:
    typer.echo(f"{title}\n{json.dumps(payload, indent=2, default=str)}")


@app.command()
@exit_on_bad_input
def run(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
        preset: PresetOption = None,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")] = False,
        dask_address: DaskAddressOption = None, quiet: QuietOption = False) -> None:
    """Run the whole flow: simulate → mask → store + catalogue → train → in-paint → report."""
    from flows.run import run_flow, run_with_dask

    cfg = config_from_options(config, set_, out, name, preset, dask_address)
    result = run_with_dask(run_flow, cfg, overwrite=overwrite, progress=not quiet)
    report = result["report"]
    lines = [f"run directory: {cfg.run_dir}",
             f"simulated {cfg.simulation.n_objects} stamps in {result['simulate_seconds']:.1f} s; "
             f"trained {result['training']['steps']} steps in {result['training']['seconds']:.1f} s"]
    for method, errors in report["inpainting"].get("methods", {}).items():
        lines.append(f"masked-pixel RMSE [noise sigma] {method:>12}: {_fmt(errors['rmse_noise_units'])} "
                     f"(on galaxy: {_fmt(errors['on_galaxy_rmse_noise_units'])})")
    typer.echo("\n".join(lines))


@app.command()
@exit_on_bad_input
def simulate(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
        preset: PresetOption = None,
             overwrite: Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")] = False,
             dask_address: DaskAddressOption = None, quiet: QuietOption = False) -> None:
    """Simulate the training set (Zarr store + truth catalogue + manifest) on Dask."""
    from flows.run import run_with_dask, simulate_flow

    cfg = config_from_options(config, set_, out, name, preset, dask_address)
    stats = run_with_dask(simulate_flow, cfg, overwrite=overwrite, progress=not quiet)
    typer.echo(f"run directory: {cfg.run_dir}\nsimulated {cfg.simulation.n_objects} stamps in "
               f"{stats['simulate_seconds']:.1f} s ({stats['chunks_skipped']} of {stats['chunks']} chunks resumed)")


@app.command()
@exit_on_bad_input
def train(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
        preset: PresetOption = None,
          objective: Annotated[str | None, typer.Option(
              help="hybrid (default), or an ablation: vae, gan (models/v001-vae, models/v001-gan).")] = None,
          fresh: Annotated[bool, typer.Option(help="Start over instead of resuming from the last checkpoint.")] = False,
          quiet: QuietOption = False) -> None:
    """Train the VAE-GAN (or an ablation) on an existing run's training set; resumes where it stopped."""
    from pipeline.rundir import store_path
    from pipeline.training import train_stage

    extra = [*(set_ or []), *([f"train.objective={objective}"] if objective else [])]
    cfg = config_from_options(config, extra, out, name, preset)
    require_store(cfg)
    result = train_stage(cfg, store_path(cfg), progress=not quiet, resume=not fresh)
    _summary(f"model: {result.out_dir} ({result.steps} steps, {result.seconds:.1f} s)", result.final_losses)


@app.command()
@exit_on_bad_input
def evaluate(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
        preset: PresetOption = None,
             generation: Annotated[bool, typer.Option(help="Also evaluate generated galaxies.")] = True) -> None:
    """Evaluate the run's models (hybrid + ablations present) on held-out stamps: report/evaluation.{json,png}."""
    from catalogs.errors import InputError
    from pipeline.report import write_report
    from pipeline.rundir import report_dir, store_path
    from pipeline.training import load_models

    cfg = config_from_options(config, set_, out, name, preset)
    require_store(cfg)
    models = load_models(cfg)
    if not models:
        raise InputError(f"{cfg.run_dir}/models: no trained model; run `lensforge train` first")
    report = write_report(cfg, store_path(cfg), report_dir(cfg), models, generation=generation)
    typer.echo(f"report: {report_dir(cfg) / 'evaluation.json'}")
    for method, entry in report["inpainting"].get("methods", {}).items():
        typer.echo(f"in-painting {method:>12}: masked RMSE {_fmt(entry['rmse_noise_units'])} sigma, "
                   f"on galaxy {_fmt(entry['on_galaxy_rmse_noise_units'])}, "
                   f"|de| {_fmt(entry['ellipticity']['mean_abs_delta_e'], 4)}")
    for model_name, entry in report.get("generation", {}).get("models", {}).items():
        ratios = [v for v in entry["wasserstein_ratio"].values() if v is not None]
        typer.echo(f"generation {model_name:>13}: worst Wasserstein / truth-vs-truth "
                   f"{_fmt(max(ratios) if ratios else None, 2)}, coverage {_fmt(entry['coverage'], 2)}")


@app.command()
@exit_on_bad_input
def inpaint(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
            preset: PresetOption = None,
            model_version: Annotated[str | None, typer.Option(
                help="Model version (default: the promoted one, else the one this run trains; see "
                     "`lensforge models`).")] = None,
            quiet: QuietOption = False) -> None:
    """In-paint an existing run's masked pixels with its trained model (writes inpainted, inpainted_std)."""
    from models.checkpoint import load_checkpoint
    from pipeline.inpaint import inpaint_store
    from pipeline.rundir import store_path
    from pipeline.training import inpainting_model_dir

    overrides = [*(set_ or []), *([f"inpaint.model_version={model_version}"] if model_version else [])]
    cfg = config_from_options(config, overrides, out, name, preset)
    require_store(cfg)
    chosen = inpainting_model_dir(cfg)
    model, meta = load_checkpoint(chosen, device=cfg.train.device)
    count = inpaint_store(store_path(cfg), model, cfg.inpaint.n_samples, cfg.seed, cfg.inpaint.batch_size,
                          progress=not quiet, model_sha256=meta["weights_sha256"])
    from catalogs.manifest import refresh_manifest

    refresh_manifest(cfg.run_dir, "inpaint")  # the store changed: its checksum in the manifest must follow
    typer.echo(f"in-painted {count} stamps into {store_path(cfg)} with model {chosen.name} "
               "(arrays inpainted, inpainted_std)")


@app.command()
@exit_on_bad_input
def tile(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
         preset: PresetOption = None,
         count: Annotated[int, typer.Option("--count", "-n", min=1, help="Number of tiles to render.")] = 1,
         first: Annotated[int, typer.Option(min=0, help="Id of the first tile (seeds it).")] = 0,
         overwrite: Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")] = False,
         dask_address: DaskAddressOption = None, quiet: QuietOption = False) -> None:
    """Render survey tiles on Dask: tiles/*.fits (SCIENCE, MASK, VARIANCE + WCS), truth, detections, report."""
    from flows.run import run_with_dask
    from flows.tiles import tiles_flow

    cfg = config_from_options(config, set_, out, name, preset, dask_address)
    if cfg.tile.population == "cosmos":
        from pipeline.tiles import check_cosmos_catalog

        # A missing, empty or malformed catalogue: one line now, before a run directory or cluster exists.
        check_cosmos_catalog(cfg)
    result = run_with_dask(tiles_flow, cfg, overwrite=overwrite, progress=not quiet,
                           tile_ids=list(range(first, first + count)))
    typer.echo(f"run directory: {cfg.run_dir}\nrendered {count} {cfg.survey.name} tile(s) in "
               f"{result['tiles_seconds']:.1f} s")
    for summary in result["tiles"]:
        line = f"tile {summary['tile_id']}: {summary['paths']['fits']} ({summary.get('n_objects', 0)} objects)"
        detection = summary.get("detection")
        if detection:
            line += (f"; {detection['n_detected']} detections, purity {_fmt(detection['purity'], 2)}, "
                     f"completeness at S/N 5-6 {_fmt(detection['completeness_at_snr_5'], 2)}")
        typer.echo(line)


@app.command("validate-shear")
@exit_on_bad_input
def validate_shear(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None,
                   name: NameOption = None, preset: PresetOption = None,
                   store: Annotated[str | None, typer.Option(
                       help="Store to validate (default: the run's trainset.zarr), e.g. a generated set.")] = None,
                   methods: Annotated[str, typer.Option(help="HSM methods, comma-separated.")] = "REGAUSS,KSB",
                   variants: Annotated[str | None, typer.Option(
                       help="raw,none,biharmonic,model (default: all; model where an in-painting exists).")] = None,
                   label: Annotated[str | None, typer.Option(
                       help="Report name: report/shear_validation_<label>.* (default: the store's name).")] = None,
                   bootstrap: Annotated[int, typer.Option(min=2, help="Bootstrap resamples.")] = 200,
                   dask_address: DaskAddressOption = None, quiet: QuietOption = False) -> None:
    """Shear calibration of a training set: HSM shapes, counterfactual response, m and c vs the LSST limits."""
    from pathlib import Path

    from catalogs.errors import InputError
    from catalogs.store import open_store
    from flows.shear_validation import run_validation
    from pipeline.inpaint import inpainting_complete
    from pipeline.rundir import store_path
    from pipeline.training import inpainting_model_dir

    cfg = config_from_options(config, set_, out, name, preset, dask_address)
    path = Path(store) if store else store_path(cfg)
    group = open_store(path)  # one-line InputError for a missing, foreign or damaged store
    # With a trained model the counterfactuals are in-painted too (the model variant's own response);
    # without one, the store's inpainted array (from `lensforge inpaint`) is measured as it is.
    model_dir = inpainting_model_dir(cfg)
    chosen_model = model_dir if model_dir.is_dir() else None
    if variants is None:
        wanted = ["raw", "none", "biharmonic"] + (["model"] if chosen_model or inpainting_complete(group) else [])
    else:
        wanted = [v.strip() for v in variants.split(",") if v.strip()]
        if "model" in wanted and chosen_model is None and not inpainting_complete(group):
            raise InputError(f"variant 'model': {path} has no inpainted array and {model_dir} no model; "
                             "run `lensforge train` / `lensforge inpaint` first", str(path))
    report = run_validation(cfg, path, [m.strip().upper() for m in methods.split(",") if m.strip()], wanted,
                            label or path.name.removesuffix(".zarr"), chosen_model, bootstrap, progress=not quiet)
    typer.echo(f"report: {report['path']} ({report['n_objects']} stamps, {report['seconds']:.1f} s)")
    for method, entry in report["methods"].items():
        for variant in wanted:
            fit = entry[variant]
            line = (f"{method:>7} {variant:>10}: m1 {_sci(fit['g1']['m'])} ± {_sci(fit['g1']['m_err'])}, "
                    f"m2 {_sci(fit['g2']['m'])} ± {_sci(fit['g2']['m_err'])}, "
                    f"c1 {_sci(fit['g1']['c'])}, c2 {_sci(fit['g2']['c'])}")
            if "shift" in fit:
                line += f"; dm1 {_sci(fit['shift']['g1']['dm'])} ± {_sci(fit['shift']['g1']['dm_err'])}"
            typer.echo(line)


@app.command()
@exit_on_bad_input
def reprocess(source: Annotated[str, typer.Argument(
                  help="A tile FITS, or a directory / object-store prefix of them (any fsspec URL).")],
              output: Annotated[Path, typer.Option("--output", "-o", help="Directory of the outputs.")],
              method: Annotated[str, typer.Option(help="In-painting: model, biharmonic, interpolate.")] = "biharmonic",
              model_version: Annotated[str | None, typer.Option(
                  help="Model version for --method model (default: the promoted one, see `lensforge models`).")] = None,
              max_concurrent: Annotated[int, typer.Option(min=1, help="Tasks in flight at once.")] = 8,
              tiles_per_task: Annotated[int, typer.Option(min=1, help="Tiles per Prefect task.")] = 64,
              config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
              preset: PresetOption = None, dask_address: DaskAddressOption = None,
              quiet: QuietOption = False) -> None:
    """Reprocess survey tiles: validate, background, detect, mask, in-paint, catalogue (idempotent, resumable)."""
    from flows.reprocess import run_reprocess

    cfg = config_from_options(config, set_, out, name, preset, dask_address)
    summary = run_reprocess(cfg, source, output, method, model_version, max_concurrent, tiles_per_task,
                            progress=not quiet)
    typer.echo(f"{summary['n_tiles']} tiles: {summary['done']} done, {summary['skipped']} skipped, "
               f"{summary['failed']} failed in {summary['wall_seconds']:.1f} s "
               f"(tile work {summary['tile_seconds']:.1f} s); summary: {output / 'reprocess_summary.json'}")
    for row in summary["tiles"]:
        if row["status"] == "failed":
            typer.echo(f"  failed {row['tile']}: {row['reason']}")
    if summary["failed"]:
        raise typer.Exit(code=1)


@app.command("serve")
@exit_on_bad_input
def serve(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
          preset: PresetOption = None,
          only: Annotated[list[str] | None, typer.Option(
              "--only", help="Serve only this deployment (repeatable): simulate, train, inpaint, "
              "build-training-set, reprocess-tiles.")] = None,
          schedules: Annotated[bool, typer.Option(
              "--schedules/--no-schedules", help="Run the cron schedules (off: triggered runs only).")] = True,
          limit: Annotated[int | None, typer.Option(min=1, help="Most flow runs at once.")] = None) -> None:
    """Serve the deployments (docs/operations.md) from this process: cron schedules and triggered runs, until Ctrl-C."""
    # Imported here: the deployments module loads Prefect (~2 s) that other commands do not need.
    from flows.deployments import serve_deployments

    serve_deployments(config, set_, out, name, preset, only, schedules, limit)


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1e}"


def _fmt(value: float | None, digits: int = 3) -> str:
    """A report number for humans; NaN is written as null in the JSON and shown as n/a."""
    return "n/a" if value is None else f"{value:.{digits}f}"


app.add_typer(generate_app, name="generate")
app.add_typer(catalogs_app, name="catalogs")
app.add_typer(models_app, name="models")


def main() -> None:
    """Console entry point."""
    app(prog_name="lensforge")


if __name__ == "__main__":
    sys.exit(main())
