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

from lensforge.errors import ConfigError, LensforgeError, one_line
from lensforge.layout import RunLayout, science_settings
from lensforge.pipeline.config import RunConfig, build_config, config_values, load_config, read_config_file

_DEFAULT_OUT = str(RunConfig.model_fields["out_dir"].default)
_DEFAULT_NAME = str(RunConfig.model_fields["name"].default)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding the defaults.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                                                     help="Override: section.key=value (repeatable).")]
# The defaults are spelled in the help: the options' own default is None, so that a --config file's
# out_dir / name are not overridden by an option nobody gave.
OutOption = Annotated[Path | None, typer.Option(
    "--out", help=f"Parent directory of the run directory (else out_dir of --config).  [default: {_DEFAULT_OUT}]")]
NameOption = Annotated[str | None, typer.Option(
    "--name", help=f"Run name, the run directory's name (else name of --config).  [default: {_DEFAULT_NAME}]")]
PresetOption = Annotated[str | None, typer.Option(
    "--preset", "-p", help="Survey preset: lsst, hsc, euclid_vis, roman, ska_mid (see docs/surveys.md).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DaskAddressOption = Annotated[str | None, typer.Option(
    "--dask-address", envvar="LENSFORGE_DASK_ADDRESS",
    help="tcp://host:port of an existing Dask scheduler (same as --set dask.address=...).")]

# name -> annotation of the options every run command takes, in the order --help lists them.
RUN_OPTIONS: dict[str, Any] = {"config": ConfigOption, "set_": SetOption, "out": OutOption, "name": NameOption,
                               "preset": PresetOption}


def exit_on_bad_input(command: Callable[..., Any] | None = None, *, signal_ends_normally: bool = False) -> Any:
    """Turn lensforge errors into one line on stderr and exit status 2; a full disk, a denied or
    read-only path, or exhausted memory into one line naming the path (or the memory budget setting)
    and exit status 1; SIGINT / SIGTERM into one line and exit status 130 / 143, within seconds
    (:mod:`lensforge.interrupts`: the work stops at its next safe point, a rerun resumes).

    A command that returns after a signal was recorded ends as interrupted too (the signal's exception
    was swallowed on the way, e.g. in a weakref callback), unless ``signal_ends_normally`` (``serve``,
    whose normal end is Ctrl-C). Use as ``@exit_on_bad_input`` or ``@exit_on_bad_input(...)``."""
    if command is None:
        return functools.partial(exit_on_bad_input, signal_ends_normally=signal_ends_normally)
    from lensforge import interrupts
    from lensforge.errors import resource_error_message

    def _output_dir(options: dict[str, Any]) -> Path | None:
        # The run directory a run command writes to, to name when an error carries no path.
        try:
            return config_from_options(options["config"], options.get("set_"), options.get("out"),
                                       options.get("name"), options.get("preset")).run_dir
        except Exception:
            return options.get("out")

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handlers = interrupts.install()
        try:
            try:
                result = command(*args, **kwargs)
                if not signal_ends_normally:
                    # A signal whose exception Python swallowed (it landed in a weakref or GC callback)
                    # still ends the command as interrupted: one line and 130 / 143, not a silent success.
                    interrupts.check()
                return result
            except KeyboardInterrupt:
                raise
            except BaseException as err:
                # An interrupt that surfaces as another error (a lost worker, a cancelled request) is
                # still the interrupt; a resource error is one line wherever it is wrapped.
                if interrupts.requested() is not None and not isinstance(err, (SystemExit, typer.Exit)):
                    raise KeyboardInterrupt from None
                if isinstance(err, LensforgeError) or resource_error_message(err) is None:
                    raise
                message = resource_error_message(err, _output_dir(kwargs))
                typer.echo(f"lensforge: error: {message}", err=True)
                raise typer.Exit(code=1) from None
        except LensforgeError as err:
            typer.echo(f"lensforge: error: {err}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            interrupts.announce()
            interrupts.finish_quickly()
            raise typer.Exit(code=interrupts.exit_code()) from None
        finally:
            interrupts.restore(handlers)
    return wrapper


def config_from_options(config: Path | None, overrides: list[str] | None, out: Path | None = None,
                        name: str | None = None, preset: str | None = None,
                        dask_address: str | None = None) -> RunConfig:
    """The effective configuration: defaults < preset < ``--config`` file < ``--set`` < ``--out`` / ``--name``
    / ``--dask-address``."""
    return load_config(config, _extra(overrides, out, name, dask_address), preset)


def _extra(overrides: list[str] | None, out: Path | None, name: str | None, dask_address: str | None) -> list[str]:
    extra = list(overrides or [])
    if dask_address is not None:
        extra.append(f"dask.address={dask_address}")
    if out is not None:
        extra.append(f"out_dir={out}")
    if name is not None:
        extra.append(f"name={name}")
    return extra


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any) -> str:
    return one_line(value if isinstance(value, str) else repr(value) if value is None else str(value), 80)


def _saved_run_config(layout: RunLayout) -> RunConfig:
    """The configuration an existing run saved (``<run>/config.yaml``); ``ConfigError`` names the file."""
    values = read_config_file(layout.config_file)
    return build_config(values, f"{layout.config_file} (the run's saved configuration)")


def _preset_of(cfg: RunConfig) -> str:
    return "no preset" if cfg.survey.name == "default" else f"preset {cfg.survey.name}"


def config_for_run(config: Path | None, overrides: list[str] | None, out: Path | None = None,
                   name: str | None = None, preset: str | None = None, dask_address: str | None = None,
                   own_keys: tuple[str, ...] = (), notes: list[str] | None = None) -> RunConfig:
    """The effective configuration of a command acting on an existing run.

    When ``<out>/<name>/config.yaml`` exists, the run's saved settings replace the defaults:
    ``lensforge train --name euclid`` on a run made with ``--preset euclid_vis`` trains on that
    survey. The preset, ``--config`` and ``--set`` lay on top of them; each setting they change that
    changes products (``lensforge.layout.science_settings``; not ``own_keys``, which the command's
    own options set) is appended to ``notes`` as a line to print. Without a saved run it is
    :func:`config_from_options`.
    """
    from lensforge.pipeline.presets import deep_merge

    values, source, used_preset = config_values(config, _extra(overrides, out, name, dask_address), preset)
    # Where the run is: only the (validated) name and out_dir, so a bad name reads nothing.
    where = build_config({key: values[key] for key in ("out_dir", "name") if key in values}, source)
    layout = RunLayout(where.run_dir)
    if not layout.config_file.is_file():
        return build_config(values, source)
    saved = _saved_run_config(layout)
    base = {key: value for key, value in saved.to_dict().items() if key not in ("out_dir", "name")}
    cfg = build_config(deep_merge(base, values), source)
    if notes is not None:
        if used_preset is not None and used_preset != saved.survey.name:
            notes.append(f"run {cfg.name} was made with {_preset_of(saved)}; preset {used_preset} overrides "
                         "its settings")
        for key, old, new in _changed_settings(saved, cfg):
            if key != "name" and key not in own_keys:
                notes.append(f"overriding {key} of run {cfg.name} ({_short(old)} -> {_short(new)})")
    return cfg


def _changed_settings(saved: RunConfig, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) of every product-changing setting that differs, in
    ``cfg``'s key order, then keys only ``saved`` has (``lensforge.layout.science_settings``)."""
    before, after = _flatten(science_settings(saved.to_dict())), _flatten(science_settings(cfg.to_dict()))
    keys = [*after, *(key for key in before if key not in after)]
    return [(key, before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)]


def check_new_run(cfg: RunConfig, overwrite: bool) -> None:
    """For commands that create a run (simulate, run, tile): refuse, in one line naming the first
    settings that differ and the preset each side used, a run directory that holds another configuration.

    ``lensforge.pipeline.rundir.prepare_run_dir`` refuses it too, later and without the why.
    """
    layout = RunLayout(cfg.run_dir)
    if overwrite or not layout.config_file.is_file():
        return
    try:
        saved = _saved_run_config(layout)
    except ConfigError:
        return  # prepare_run_dir refuses an unreadable one in its own words
    differ = _changed_settings(saved, cfg)
    if not differ:
        return
    shown = ", ".join(f"{key} {_short(old)} -> {_short(new)}" for key, old, new in differ[:3])
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    presets = ""
    if saved.survey.name != cfg.survey.name:
        presets = f"; the run was made with {_preset_of(saved)}, this command asks for {_preset_of(cfg)}"
    raise ConfigError(f"{cfg.run_dir}: holds a run with a different configuration ({shown}{more}{presets}); "
                      "pass the same settings (see its config.yaml), choose another --name, or pass --overwrite",
                      str(cfg.run_dir))


def _galsim_failure(err: BaseException) -> bool:
    """Whether ``err`` is GalSim's or was raised inside GalSim (its traceback passes through the package)."""
    if type(err).__module__.split(".")[0] == "galsim":
        return True
    tb = err.__traceback__
    while tb is not None:
        if "/galsim/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def run_command(dask: bool = False, option_keys: Mapping[str, str] | None = None, existing_run: bool = True):
    """Decorator: the command gets the shared run options and is called with the effective config.

    The decorated function's first parameter receives the :class:`RunConfig`; its other
    parameters are its own options. ``option_keys`` maps some of those options to
    configuration keys (``{"objective": "train.objective"}``): a value given on the command line
    becomes a ``--set`` override (after the user's own ``--set``). With ``dask`` the command also
    takes ``--dask-address``. Errors are one line and exit status 2 (:func:`exit_on_bad_input`).

    ``existing_run`` (train, in-paint, evaluate, generate, ...): the command acts on a run, and an
    existing run's saved ``config.yaml`` is the base instead of the defaults (:func:`config_for_run`);
    every setting the options change is a ``lensforge: note:`` line on stderr. Commands that create
    a run (``existing_run=False``) refuse one of another configuration unless given ``--overwrite``.
    A GalSim failure the configuration validation did not foresee is one line, too.
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
            if existing_run:
                notes: list[str] = []
                cfg = config_for_run(values["config"], overrides, values["out"], values["name"], values["preset"],
                                     values.get("dask_address"), tuple(option_keys.values()), notes)
                for note in notes:
                    typer.echo(f"lensforge: note: {note}", err=True)
            else:
                cfg = config_from_options(values["config"], overrides, values["out"], values["name"],
                                          values["preset"], values.get("dask_address"))
                if "overwrite" in kwargs:
                    check_new_run(cfg, bool(kwargs["overwrite"]))
            try:
                return command(cfg, **kwargs)
            except (LensforgeError, KeyboardInterrupt):
                raise
            except Exception as err:
                if not _galsim_failure(err):
                    raise
                raise ConfigError(f"GalSim cannot draw with this configuration ({type(err).__name__}: "
                                  f"{one_line(err, 200)}); check the survey and population settings",
                                  type(err).__name__) from None

        wrapper.__name__, wrapper.__qualname__ = command.__name__, command.__qualname__
        wrapper.__doc__ = command.__doc__
        wrapper.__module__, wrapper.__wrapped__ = command.__module__, command
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
