"""Options and helpers shared by the ``lensforge`` commands.

The options every command that acts on a run takes (``--config``, ``--set``, ``--out``,
``--name``, ``--preset``, and ``--dask-address`` where Dask runs) are declared once, here:
:func:`run_command` adds them to a command and hands it the effective
:class:`~lensforge.pipeline.config.RunConfig` as its first argument.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from lensforge.errors import LensforgeError
from lensforge.pipeline.config import RunConfig, load_config

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

# name -> annotation of the options every run command takes, in the order --help lists them.
RUN_OPTIONS: dict[str, Any] = {"config": ConfigOption, "set_": SetOption, "out": OutOption, "name": NameOption,
                               "preset": PresetOption}


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


def run_command(dask: bool = False, option_keys: Mapping[str, str] | None = None):
    """Decorator: the command gets the shared run options and is called with the effective config.

    The decorated function's first parameter receives the :class:`RunConfig`; its other
    parameters are its own options. ``option_keys`` maps some of those options to
    configuration keys (``{"objective": "train.objective"}``): a value given on the command line
    becomes a ``--set`` override (after the user's own ``--set``). With ``dask`` the command also
    takes ``--dask-address``. Errors are one line and exit status 2 (:func:`exit_on_bad_input`).
    """
    option_keys = dict(option_keys or {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
        shared = dict(RUN_OPTIONS, **({"dask_address": DaskAddressOption} if dask else {}))
        parameters = own[:]
        insert_at = next((i for i, p in enumerate(own) if p.default is not inspect.Parameter.empty), len(own))
        parameters[insert_at:insert_at] = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
            for name, annotation in shared.items()]

        @exit_on_bad_input
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in shared}
            overrides = list(values["set_"] or [])
            overrides += [f"{key}={kwargs[option]}" for option, key in option_keys.items()
                          if kwargs.get(option) is not None]
            cfg = config_from_options(values["config"], overrides, values["out"], values["name"], values["preset"],
                                      values.get("dask_address"))
            return command(cfg, **kwargs)

        wrapper.__name__, wrapper.__qualname__ = command.__name__, command.__qualname__
        wrapper.__doc__ = command.__doc__
        wrapper.__module__, wrapper.__wrapped__ = command.__module__, command
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
