"""The ``lensforge`` command line.

Every command reads the same configuration: embedded defaults, then ``--config
FILE`` (YAML), then ``--set section.key=value`` overrides (repeatable). Bad input
(unknown key, invalid value, missing or damaged file) prints one line on stderr and
exits with status 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

import flows  # noqa: F401 - sets quiet Prefect defaults before Prefect is imported
from catalogs.errors import LensforgeError
from pipeline.config import RunConfig, load_config

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

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding the defaults.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Parent directory of the run directory.")]
NameOption = Annotated[str | None, typer.Option("--name", help="Run name (the run directory's name).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _exit_on_bad_input(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn lensforge errors into one line on stderr and exit status 2."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LensforgeError as err:
            typer.echo(f"lensforge: error: {err}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("lensforge: interrupted; rerun the same command to resume", err=True)
            raise typer.Exit(code=130) from None
    return wrapper


def _config(config: Path | None, overrides: list[str] | None, out: Path | None = None,
            name: str | None = None) -> RunConfig:
    extra = list(overrides or [])
    if out is not None:
        extra.append(f"out_dir={out}")
    if name is not None:
        extra.append(f"name={name}")
    return load_config(config, extra)


@config_app.command("show")
@_exit_on_bad_input
def config_show(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None,
                name: NameOption = None) -> None:
    """Print the effective configuration (defaults + file + overrides) as YAML."""
    typer.echo(_config(config, set_, out, name).to_yaml(), nl=False)


def _summary(title: str, payload: dict[str, Any]) -> None:
    typer.echo(f"{title}\n{json.dumps(payload, indent=2, default=str)}")


@app.command()
@_exit_on_bad_input
def run(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")] = False,
        quiet: QuietOption = False) -> None:
    """Run the whole flow: simulate → mask → store + catalogue → train → in-paint → report."""
    from flows.run import run_flow, run_with_dask

    cfg = _config(config, set_, out, name)
    result = run_with_dask(run_flow, cfg, overwrite=overwrite, progress=not quiet)
    report = result["report"]
    lines = [f"run directory: {cfg.run_dir}",
             f"simulated {cfg.simulation.n_objects} stamps in {result['simulate_seconds']:.1f} s; "
             f"trained {result['training']['steps']} steps in {result['training']['seconds']:.1f} s"]
    for method, errors in report.get("methods", {}).items():
        lines.append(f"masked-pixel RMSE [noise sigma] {method:>10}: {errors['rmse_noise_units']:.3f} "
                     f"(on galaxy: {errors['on_galaxy_rmse_noise_units']:.3f})")
    typer.echo("\n".join(lines))


@app.command()
@_exit_on_bad_input
def simulate(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
             overwrite: Annotated[bool, typer.Option(help="Replace an existing run of another configuration.")] = False,
             quiet: QuietOption = False) -> None:
    """Simulate the training set (Zarr store + truth catalogue + manifest) on Dask."""
    from flows.run import run_with_dask, simulate_flow

    cfg = _config(config, set_, out, name)
    stats = run_with_dask(simulate_flow, cfg, overwrite=overwrite, progress=not quiet)
    typer.echo(f"run directory: {cfg.run_dir}\nsimulated {cfg.simulation.n_objects} stamps in "
               f"{stats['simulate_seconds']:.1f} s ({stats['chunks_skipped']} of {stats['chunks']} chunks resumed)")


def _existing_run(cfg: RunConfig) -> None:
    from catalogs.errors import InputError
    from pipeline.rundir import store_path

    if not store_path(cfg).exists():
        raise InputError(f"{store_path(cfg)}: no training set; run `lensforge simulate` with the same "
                         "configuration first", str(store_path(cfg)))


@app.command()
@_exit_on_bad_input
def train(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
          quiet: QuietOption = False) -> None:
    """Train the VAE-GAN on an existing run's training set."""
    from pipeline.rundir import store_path
    from pipeline.training import train_stage

    cfg = _config(config, set_, out, name)
    _existing_run(cfg)
    result = train_stage(cfg, store_path(cfg), progress=not quiet)
    _summary(f"model: {result.out_dir} ({result.steps} steps, {result.seconds:.1f} s)", result.final_losses)


@app.command()
@_exit_on_bad_input
def inpaint(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
            quiet: QuietOption = False) -> None:
    """In-paint an existing run's masked pixels with its trained model (writes inpainted, inpainted_std)."""
    from models.checkpoint import load_checkpoint
    from pipeline.inpaint import inpaint_store
    from pipeline.rundir import store_path
    from pipeline.training import model_dir

    cfg = _config(config, set_, out, name)
    _existing_run(cfg)
    model, _ = load_checkpoint(model_dir(cfg), device=cfg.train.device)
    count = inpaint_store(store_path(cfg), model, cfg.inpaint.n_samples, cfg.seed, cfg.inpaint.batch_size,
                          progress=not quiet)
    typer.echo(f"in-painted {count} stamps into {store_path(cfg)} (arrays inpainted, inpainted_std)")


def main() -> None:
    """Console entry point."""
    app(prog_name="lensforge")


if __name__ == "__main__":
    sys.exit(main())
