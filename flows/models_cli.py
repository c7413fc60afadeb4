"""``lensforge models``: the model registry of a run (``<run>/models/``) or any registry directory.

    lensforge models list --name demo            # versions, objective, steps, sha256, promoted marker
    lensforge models list --json
    lensforge models show v001 --name demo       # meta.json + settings.json + metrics, as JSON
    lensforge models promote v001 --name demo    # verify the checkpoint, write models/PROMOTED
    lensforge models list --models-root /data/registry

Metrics come from a version's ``metrics.json``; where there is none, from the run's
``report/evaluation.json`` (written by ``lensforge evaluate``) when it is newer than the weights:
``v001`` is the report's "vaegan", ``v001-vae`` its "vae", ``v001-gan`` its "gan".
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lensforge.flows.cli_common import run_command
from lensforge.layout import REPORT_DIR, REPORT_JSON, RunLayout

models_app = typer.Typer(no_args_is_help=True,
                         help="Model registry: list versions, show their metadata, promote the one reprocessing uses.")

RootOption = Annotated[Path | None, typer.Option(
    "--models-root", help="A registry directory to use instead of the run's models/.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the records as JSON.")]
VersionArgument = Annotated[str, typer.Argument(help="Model version: a directory name such as v001 or v001-vae.")]

REPORT_SOURCE = f"{REPORT_DIR}/{REPORT_JSON}"  # as the registry records where metrics came from
T = TypeVar("T")


def _root(cfg, models_root: Path | None) -> tuple[Path, dict[str, str]]:
    """(registry directory, version -> report model name) of the run (or ``--models-root``)."""
    from lensforge.pipeline.generative.training import model_dir

    report_names = {model_dir(cfg, objective).name: report_name
                    for objective, report_name in (("hybrid", "vaegan"), ("vae", "vae"), ("gan", "gan"))}
    return (models_root if models_root is not None else model_dir(cfg).parent), report_names


def _report_path(root: Path) -> Path:
    """The report of the run whose ``models/`` is ``root``."""
    return RunLayout.of_models_dir(root).report_json


def report_metrics(report_path: Path, models_root: Path, report_names: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Metrics by version from a run's ``evaluation.json``: in-painting errors, ratios and generation metrics.

    A version whose weights are newer than the report was not what the report evaluated and gets
    none. A missing or unreadable report gives no metrics (the registry still lists the models).
    """
    from lensforge.models.checkpoint import WEIGHTS_FILE

    try:
        report = json.loads(report_path.read_text())
        report_time = report_path.stat().st_mtime
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(report, dict):
        return {}
    inpainting = report.get("inpainting") or {}
    generation = (report.get("generation") or {}).get("models") or {}
    metrics: dict[str, dict[str, Any]] = {}
    for version, name in report_names.items():
        weights = models_root / version / WEIGHTS_FILE
        if not weights.is_file() or weights.stat().st_mtime > report_time:
            continue
        entry: dict[str, Any] = {}
        if name in (inpainting.get("methods") or {}):
            entry["inpainting"] = inpainting["methods"][name]
            entry["inpainting_ratios"] = {key: value for key, value in (inpainting.get("ratios") or {}).items()
                                          if key.startswith(f"{name}_")}
        if name in generation:
            entry["generation"] = generation[name]
        if entry:
            metrics[version] = dict(entry, report_model=name)
    return metrics


def _echo_warnings(call: Callable[[], T]) -> T:
    """Run ``call``; print registry warnings as one ``lensforge: warning:`` line each."""
    from lensforge.models.registry import RegistryWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RegistryWarning)
        result = call()
    for warning in caught:
        if issubclass(warning.category, RegistryWarning):
            typer.echo(f"lensforge: warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def _fmt_rmse(metrics: dict[str, Any] | None) -> str:
    value = ((metrics or {}).get("inpainting") or {}).get("rmse_noise_units")
    return "-" if value is None else f"{value:.3f}"


def format_table(records: list) -> str:
    """One line per :class:`~lensforge.models.registry.ModelRecord`; ``*`` marks the promoted version."""
    header = ("", "version", "objective", "step/steps", "created (UTC)", "sha256", "rmse[sigma]")
    rows = [header]
    for r in records:
        steps = r.train_summary.get("steps")
        progress = f"{'-' if r.step is None else r.step}/{'-' if steps is None else steps}"
        rows.append(("*" if r.promoted else "", r.version, r.objective or "?", progress,
                     r.created.replace("+00:00", ""), r.weights_sha256[:12], _fmt_rmse(r.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


@models_app.command("list")
@run_command()
def list_(cfg, models_root: RootOption = None, as_json: JsonOption = False) -> None:
    """List the model versions: objective, step/steps, created, sha256, masked-pixel RMSE; * = promoted."""
    from lensforge.models.registry import list_models

    root, names = _root(cfg, models_root)
    metrics = report_metrics(_report_path(root), root, names)
    records = _echo_warnings(lambda: list_models(root, metrics, REPORT_SOURCE))
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True))
    elif not records:
        typer.echo(f"no model versions in {root}")
    else:
        typer.echo(format_table(records))


@models_app.command("show")
@run_command()
def show(cfg, version: VersionArgument, models_root: RootOption = None) -> None:
    """Print everything known about VERSION as JSON: meta.json, settings.json, metrics, files."""
    from lensforge.models.registry import show_model

    root, names = _root(cfg, models_root)
    metrics = report_metrics(_report_path(root), root, names)
    shown = _echo_warnings(lambda: show_model(root, version, metrics, REPORT_SOURCE))
    typer.echo(json.dumps(shown, indent=2, sort_keys=True))


@models_app.command("promote")
@run_command()
def promote_(cfg, version: VersionArgument, models_root: RootOption = None,
             allow_incomplete: Annotated[bool, typer.Option(
                 help="Promote a checkpoint of an unfinished training.")] = False) -> None:
    """Verify VERSION's checkpoint and make it the one reprocessing uses (models/PROMOTED)."""
    from lensforge.models.registry import promote

    root, _ = _root(cfg, models_root)
    path = _echo_warnings(lambda: promote(root, version, allow_incomplete=allow_incomplete))
    record = json.loads(path.read_text())
    typer.echo(f"promoted {version} (sha256 {record['weights_sha256'][:12]}...): {path}")
