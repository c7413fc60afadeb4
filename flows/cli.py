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

from lensforge.flows.catalogs_cli import catalogs_app
from lensforge.flows.cli_common import QuietOption, run_command
from lensforge.flows.evaluate_inpainting_cli import evaluate_inpainting
from lensforge.flows.generate_cli import generate_app
from lensforge.flows.models_cli import models_app
from lensforge.flows.serve import serve
from lensforge.flows.train_inpainter_cli import train_inpainter

# A task that fails on bad input makes Prefect log the whole traceback of every run that saw it;
# the CLI reports lensforge errors in one line instead, and a real bug still surfaces as the
# exception the command re-raises. Set before Prefect configures logging (here and in the workers,
# which inherit the environment). Deployments keep Prefect's default logging.
for _logger in ("FLOW_RUNS", "TASK_RUNS"):
    os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{_logger}_LEVEL", "CRITICAL")

# rich_markup_mode=None: help texts keep their [units] (rich markup would eat them) and flags get no <bool>.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  help="lensforge: lensed-galaxy simulation, patchy data, VAE-GAN in-painting, Zarr training sets.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

@config_app.command("show")
@run_command(existing_run=False)
def config_show(cfg) -> None:
    """Print the effective configuration (defaults + file + overrides) as YAML."""
    typer.echo(cfg.to_yaml(), nl=False)


def _summary(title: str, payload: dict[str, Any]) -> None:
    typer.echo(f"{title}\n{json.dumps(payload, indent=2, default=str)}")


OverwriteOption = Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")]


@app.command()
@run_command(dask=True, existing_run=False)
def run(cfg, overwrite: OverwriteOption = False, quiet: QuietOption = False) -> None:
    """Run the whole flow: simulate → mask → store + catalogue → train → in-paint → report."""
    from lensforge.flows import stages

    result = stages.run(cfg, overwrite=overwrite, progress=not quiet)
    report = result["report"]
    lines = [f"run directory: {cfg.run_dir}",
             f"simulated {cfg.simulation.n_objects} stamps in {result['simulate_seconds']:.1f} s; "
             f"trained {result['training']['steps']} steps in {result['training']['seconds']:.1f} s"]
    for method, errors in report["inpainting"].get("methods", {}).items():
        lines.append(f"masked-pixel RMSE [noise sigma] {method:>12}: {_fmt(errors['rmse_noise_units'])} "
                     f"(on galaxy: {_fmt(errors['on_galaxy_rmse_noise_units'])})")
    typer.echo("\n".join(lines))


@app.command()
@run_command(dask=True, existing_run=False)
def simulate(cfg, overwrite: OverwriteOption = False, quiet: QuietOption = False) -> None:
    """Simulate the training set (Zarr store + truth catalogue + manifest) on Dask."""
    from lensforge.flows import stages

    stats = stages.simulate(cfg, overwrite=overwrite, progress=not quiet)
    typer.echo(f"run directory: {cfg.run_dir}\nsimulated {cfg.simulation.n_objects} stamps in "
               f"{stats['simulate_seconds']:.1f} s ({stats['chunks_skipped']} of {stats['chunks']} chunks resumed)")


@app.command()
@run_command(option_keys={"objective": "train.objective"})
def train(cfg, objective: Annotated[str | None, typer.Option(
              help="hybrid (default), or an ablation: vae, gan (models/v001-vae, models/v001-gan).")] = None,
          fresh: Annotated[bool, typer.Option(help="Start over instead of resuming from the last checkpoint.")] = False,
          quiet: QuietOption = False) -> None:
    """Train the VAE-GAN (or an ablation) on an existing run's training set; resumes where it stopped."""
    from lensforge.flows import stages

    result = stages.train(cfg, resume=not fresh, progress=not quiet)
    _summary(f"model: {result['model_dir']} ({result['steps']} steps, {result['seconds']:.1f} s)",
             result["final_losses"])


@app.command()
@run_command()
def evaluate(cfg, generation: Annotated[bool, typer.Option(help="Also evaluate generated galaxies.")] = True) -> None:
    """Evaluate the run's models (hybrid + ablations present) on held-out stamps: report/evaluation.{json,png}."""
    from lensforge.flows import stages

    report = stages.evaluate(cfg, generation=generation)
    typer.echo(f"report: {report['path']}")
    for method, entry in report["inpainting"].get("methods", {}).items():
        typer.echo(f"in-painting {method:>12}: masked RMSE {_fmt(entry['rmse_noise_units'])} sigma, "
                   f"on galaxy {_fmt(entry['on_galaxy_rmse_noise_units'])}, "
                   f"|de| {_fmt(entry['ellipticity']['mean_abs_delta_e'], 4)}")
    for model_name, entry in report.get("generation", {}).get("models", {}).items():
        ratios = [v for v in entry["wasserstein_ratio"].values() if v is not None]
        typer.echo(f"generation {model_name:>13}: worst Wasserstein / truth-vs-truth "
                   f"{_fmt(max(ratios) if ratios else None, 2)}, coverage {_fmt(entry['coverage'], 2)}")


@app.command()
@run_command(option_keys={"model_version": "inpaint.model_version"})
def inpaint(cfg, model_version: Annotated[str | None, typer.Option(
                help="Model version (default: the promoted one, else the one this run trains; see "
                     "`lensforge models`).")] = None,
            quiet: QuietOption = False) -> None:
    """In-paint an existing run's masked pixels with its trained model (writes inpainted, inpainted_std)."""
    from lensforge.flows import stages

    result = stages.inpaint(cfg, progress=not quiet)
    typer.echo(f"in-painted {result['inpainted']} stamps into {result['store']} with model "
               f"{Path(result['model_dir']).name} (arrays inpainted, inpainted_std)")


@app.command()
@run_command(dask=True, existing_run=False)
def tile(cfg, count: Annotated[int, typer.Option("--count", "-n", min=1, help="Number of tiles to render.")] = 1,
         first: Annotated[int, typer.Option(min=0, help="Id of the first tile (seeds it).")] = 0,
         overwrite: OverwriteOption = False, quiet: QuietOption = False) -> None:
    """Render survey tiles on Dask: tiles/*.fits (SCIENCE, MASK, VARIANCE + WCS), truth, detections, report."""
    from lensforge.flows import stages

    result = stages.tiles(cfg, list(range(first, first + count)), overwrite=overwrite, progress=not quiet)
    typer.echo(f"run directory: {cfg.run_dir}\nrendered {count} {cfg.survey.name} tile(s) in "
               f"{result['tiles_seconds']:.1f} s")
    for summary in result["tiles"]:
        line = f"tile {summary['tile_id']}: {summary['paths']['fits']} ({summary.get('n_objects', 0)} objects)"
        detection = summary.get("detection")
        if detection:
            line += (f"; {detection['n_detected']} detections, purity {_fmt(detection['purity'], 2)}, "
                     f"completeness at S/N 5-6 {_fmt(detection['completeness_at_snr_5'], 2)}")
        typer.echo(line)


def _names(text: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None stays None."""
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


@app.command("validate-shear")
@run_command(dask=True)
def validate_shear(cfg, store: Annotated[str | None, typer.Option(
                       help="Store to validate (default: the run's trainset.zarr), e.g. a generated set.")] = None,
                   methods: Annotated[str, typer.Option(
                       help="Shape methods, comma-separated: HSM's REGAUSS and KSB, and the independent "
                            "FOURIER_QUAD.")] = "REGAUSS,KSB,FOURIER_QUAD",
                   variants: Annotated[str | None, typer.Option(
                       help="raw,none,biharmonic,model,image_model,symmetric,image_model_symmetric (default: "
                            "raw,none,biharmonic and model where an in-painting exists; image_model: the shipped "
                            "image in-painter; symmetric: a masked pixel takes its point mirror about the galaxy "
                            "where that is known).")] = None,
                   label: Annotated[str | None, typer.Option(
                       help="Report name: report/shear_validation_<label>.* (default: the store's name).")] = None,
                   bootstrap: Annotated[int, typer.Option(min=2, help="Bootstrap resamples.")] = 200,
                   quiet: QuietOption = False) -> None:
    """Shear calibration of a training set: HSM shapes, counterfactual response, m and c vs the LSST limits."""
    from lensforge.flows import stages

    report = stages.validate_shear(cfg, store, tuple(_names(methods)), _names(variants), label, bootstrap,
                                   progress=not quiet)
    typer.echo(f"report: {report['path']} ({report['n_objects']} stamps, {report['seconds']:.1f} s)")
    for method, entry in report["methods"].items():
        for variant in report["variants"]:
            fit = entry[variant]
            line = (f"{method:>7} {variant:>10}: m1 {_sci(fit['g1']['m'])} ± {_sci(fit['g1']['m_err'])}, "
                    f"m2 {_sci(fit['g2']['m'])} ± {_sci(fit['g2']['m_err'])}, "
                    f"c1 {_sci(fit['g1']['c'])}, c2 {_sci(fit['g2']['c'])}")
            if "shift" in fit:
                line += f"; dm1 {_sci(fit['shift']['g1']['dm'])} ± {_sci(fit['shift']['g1']['dm_err'])}"
            typer.echo(line)
        if "raw_secant" in entry:
            fit = entry["raw_secant"]
            typer.echo(f"{method:>7} {'raw secant':>10}: m1 {_sci(fit['g1']['m'])} ± {_sci(fit['g1']['m_err'])}, "
                       f"m2 {_sci(fit['g2']['m'])} ± {_sci(fit['g2']['m_err'])} (the O(g^2) term removed)")
        for key, name, calibration in (("snr_weighting", "S/N-weighted", "raw"),
                                       ("snr_weighting_secant", "S/N-w. sec.", "secant calibration"),
                                       ("snr_weighting_zero_shear", "S/N-w. g->0", "m's g -> 0 limit, the verdict")):
            if key in entry:
                shift = entry[key]
                typer.echo(f"{method:>7} {name:>10}: dm1 {_sci(shift['g1']['dm'])} ± {_sci(shift['g1']['dm_err'])}, "
                           f"dm2 {_sci(shift['g2']['dm'])} ± {_sci(shift['g2']['dm_err'])} "
                           f"({calibration}, weights = snr label)")
    centre = report.get("centre_not_inpainted")
    for method, entry in (centre or {}).get("methods", {}).items():
        for variant, fit in entry.items():
            if variant != "n_pairs_used":
                typer.echo(f"{method:>7} {variant:>10}: dm1 {_sci(fit['shift']['g1']['dm'])} ± "
                           f"{_sci(fit['shift']['g1']['dm_err'])}, dm2 {_sci(fit['shift']['g2']['dm'])} ± "
                           f"{_sci(fit['shift']['g2']['dm_err'])} on the {entry['n_pairs_used']} pairs whose "
                           "centre is not in-painted")
    coverage = report.get("inpainting_uncertainty")
    if coverage:
        typer.echo(f"model in-painting std: 1σ coverage {_fmt(coverage['coverage_1sigma'], 3)} of masked pixels, "
                   f"{_fmt(coverage['on_galaxy_coverage_1sigma'], 3)} on the galaxy (target "
                   f"{coverage['target'][0]}-{coverage['target'][1]}); 2σ {_fmt(coverage['coverage_2sigma'], 3)}, "
                   f"{_fmt(coverage['on_galaxy_coverage_2sigma'], 3)}")


@app.command()
@run_command(dask=True, existing_run=False)
def reprocess(cfg, source: Annotated[str, typer.Argument(
                  help="A FITS image or tile, or a directory / object-store prefix of them (any fsspec URL).")],
              output: Annotated[Path, typer.Option("--output", "-o", help="Directory of the outputs.")],
              method: Annotated[str, typer.Option(
                  help="In-painting: biharmonic, interpolate, model (the image in-painter) or auto (the model "
                       "inside its training domain, else biharmonic).")] = "biharmonic",
              model_version: Annotated[str | None, typer.Option(
                  help="Image in-painter for --method model/auto: a model directory's path, or a version in the "
                       "run's inpainters/ (with --out/--name). Default: the shipped one.")] = None,
              mask: Annotated[str | None, typer.Option(
                  help="Mask file of a single-image SOURCE (nonzero = masked). For a directory, put "
                       "<stem>.mask.fits beside each image.")] = None,
              thin_holes: Annotated[str, typer.Option(
                  help="--method model/auto: thin holes near sources (cosmic rays, hot pixels, bad columns) take "
                       "the fill that suits the image's sky (auto) or always the network (network: slower on a "
                       "sparsely masked tile; README: Large images).")] = "auto",
              max_concurrent: Annotated[int, typer.Option(min=1, help="Tasks in flight at once.")] = 8,
              tiles_per_task: Annotated[int, typer.Option(min=1, help="Tiles per Prefect task.")] = 64,
              quiet: QuietOption = False) -> None:
    """Reprocess FITS images: validate, in-paint masked pixels, detect sources, catalogue (idempotent, resumable).

    Takes lensforge tiles and one's own images alike: a plain FITS (MASK extension, NaNs or a
    <stem>.mask.fits beside it), radio images in Jy/beam with degenerate frequency/Stokes axes.
    Detection follows each image's beam (BMAJ/BMIN) or PSF keywords.
    """
    from lensforge.flows import stages

    summary = stages.reprocess(cfg, source, output, method, model_version, max_concurrent, tiles_per_task,
                               progress=not quiet, mask=mask, thin_holes=thin_holes)
    typer.echo(f"{summary['n_tiles']} tiles: {summary['done']} done, {summary['skipped']} skipped, "
               f"{summary['failed']} failed in {summary['wall_seconds']:.1f} s "
               f"(tile work {summary['tile_seconds']:.1f} s); summary: {summary['summary_path']}")
    for row in summary["tiles"]:
        if row.get("warning"):
            stages.warn(row["warning"])
        if row["status"] == "failed":
            typer.echo(f"  failed {row['tile']}: {row['reason']}")
    if summary["failed"]:
        raise typer.Exit(code=1)


app.command("serve")(serve)
app.command("evaluate-inpainting")(evaluate_inpainting)
app.command("train-inpainter")(train_inpainter)


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
    from lensforge import interrupts

    try:
        app(prog_name="lensforge")
    except SystemExit as exit_:
        if interrupts.requested() is not None:  # the one line is out: skip a shutdown that threads may abort
            interrupts.exit_after_interrupt(exit_.code if isinstance(exit_.code, int) else 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
