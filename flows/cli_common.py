"""Options and helpers shared by the ``lensforge`` commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from catalogs.errors import LensforgeError
from pipeline.config import RunConfig, load_config

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding the defaults.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Parent directory of the run directory.")]
NameOption = Annotated[str | None, typer.Option("--name", help="Run name (the run directory's name).")]
PresetOption = Annotated[str | None, typer.Option(
    "--preset", "-p", help="Survey preset: lsst, hsc, euclid_vis, roman, ska_mid (see docs/surveys.md).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DaskAddressOption = Annotated[str | None, typer.Option(
    "--dask-address", envvar="LENSFORGE_DASK_ADDRESS",
    help="tcp://host:port of an existing Dask scheduler (same as --set dask.address=...).")]


def exit_on_bad_input(command: Callable[..., Any]) -> Callable[..., Any]:
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


def config_from_options(config: Path | None, overrides: list[str] | None, out: Path | None = None,
                        name: str | None = None, preset: str | None = None,
                        dask_address: str | None = None) -> RunConfig:
    """The effective configuration: defaults < preset < ``--config`` file < ``--set`` < ``--out`` / ``--name``
    / ``--dask-address``."""
    extra = list(overrides or [])
    if dask_address is not None:
        extra.append(f"dask.address={dask_address}")
    if out is not None:
        extra.append(f"out_dir={out}")
    if name is not None:
        extra.append(f"name={name}")
    return load_config(config, extra, preset)


def require_store(cfg: RunConfig) -> None:
    from catalogs.errors import InputError
    from pipeline.rundir import store_path

    if not store_path(cfg).exists():
        raise InputError(f"{store_path(cfg)}: no training set; run `lensforge simulate` with the same "
                         "configuration first", str(store_path(cfg)))


