"""Deployments: the entry flows a Prefect server schedules, their schedules, and ``lensforge serve``.

Each entry flow takes JSON-able parameters only (a config file path, ``section.key=value``
overrides, a survey preset, a few switches), builds the ``RunConfig`` exactly as the CLI
does (defaults < preset < file < overrides) and calls the operation's runner in
:mod:`lensforge.flows.stages`, the one the CLI command calls too.

Two ways to run them, both described by ``DEPLOYMENTS``:

- ``prefect.yaml`` (repository root) declares the same deployments on the process work pool
  ``lensforge-process``: ``prefect deploy --all``, then ``prefect worker start --pool
  lensforge-process`` with ``LENSFORGE_HOME`` set to the repository (the pull step changes
  into it). ``tests/test_deployments.py`` checks that the file and ``DEPLOYMENTS`` agree.
- ``lensforge serve`` (``serve_deployments``): one long-running process that registers the
  deployments with the Prefect API and runs their schedules and triggered runs itself, no
  work pool or worker (``prefect.serve``).

See ``docs/operations.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from prefect import Flow, flow, get_run_logger

from lensforge.errors import ConfigError, InputError
from lensforge.flows import stages
from lensforge.pipeline.config import RunConfig, load_config

WORK_POOL = "lensforge-process"
WORK_POOL_TYPE = "process"
ENTRY_MODULE = "flows/deployments.py"
SCHEDULE_TIMEZONE = "UTC"


def _config(config_path: str | None, overrides: list[str] | None, preset: str | None,
            extra: list[str] | None = None) -> RunConfig:
    """The effective configuration of a deployment run: defaults < preset < file < overrides < ``extra``."""
    return load_config(config_path, [*(overrides or []), *(extra or [])], preset)


# Every entry flow below builds the RunConfig from its parameters and calls the operation's runner in
# ``lensforge.flows.stages``, the same function the CLI command calls; it only logs the summary.


@flow(name="ops-simulate")
def simulate(config_path: str | None = None, overrides: list[str] | None = None, preset: str | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Simulate a training set (store + truth catalogue + manifest) on Dask, like ``lensforge simulate``.

    Rerunning with the same configuration resumes (finished chunks are skipped), so a schedule
    on an unchanged configuration only completes what is missing.

    Args:
        config_path: YAML configuration file (any subset of ``lensforge config show``).
        overrides: ``section.key=value`` overrides, applied in order after the file.
        preset: survey preset (lsst, hsc, euclid_vis, roman, ska_mid).
        overwrite: replace an existing run of another configuration under the same name.
    """
    cfg = _config(config_path, overrides, preset)
    stats = stages.simulate(cfg, overwrite=overwrite, progress=False)
    get_run_logger().info("simulated %d stamps into %s in %.1f s (%d of %d chunks resumed)",
                          cfg.simulation.n_objects, cfg.run_dir, stats["simulate_seconds"],
                          stats["chunks_skipped"], stats["chunks"])
    return stats


@flow(name="ops-train")
def train(config_path: str | None = None, overrides: list[str] | None = None, preset: str | None = None,
          objective: str | None = None) -> dict[str, Any]:
    """Train the VAE-GAN (or the ``vae`` / ``gan`` ablation) on an existing run's store, like ``lensforge train``.

    Resumes an interrupted training from its last checkpoint.

    Args:
        config_path: YAML configuration file (any subset of ``lensforge config show``).
        overrides: ``section.key=value`` overrides, applied in order after the file.
        preset: survey preset (lsst, hsc, euclid_vis, roman, ska_mid).
        objective: hybrid (default), or the ablation vae / gan (models/v001-vae, models/v001-gan).
    """
    cfg = _config(config_path, overrides, preset, [f"train.objective={objective}"] if objective else None)
    result = stages.train(cfg, progress=False)
    get_run_logger().info("model %s: %d steps in %.1f s", result["model_dir"], result["steps"], result["seconds"])
    return result


@flow(name="ops-inpaint")
def inpaint(config_path: str | None = None, overrides: list[str] | None = None,
            preset: str | None = None) -> dict[str, Any]:
    """In-paint an existing run's masked pixels with its trained model, like ``lensforge inpaint``.

    Args:
        config_path: YAML configuration file (any subset of ``lensforge config show``).
        overrides: ``section.key=value`` overrides, applied in order after the file.
        preset: survey preset (lsst, hsc, euclid_vis, roman, ska_mid).
    """
    cfg = _config(config_path, overrides, preset)
    result = stages.inpaint(cfg, progress=False)
    get_run_logger().info("in-painted %d stamps into %s", result["inpainted"], result["store"])
    return result


@flow(name="ops-build-training-set")
def build_training_set(config_path: str | None = None, overrides: list[str] | None = None,
                       preset: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The whole path (simulate → mask → store + catalogue → train → in-paint → report), like ``lensforge run``.

    Args:
        config_path: YAML configuration file (any subset of ``lensforge config show``).
        overrides: ``section.key=value`` overrides, applied in order after the file.
        preset: survey preset (lsst, hsc, euclid_vis, roman, ska_mid).
        overwrite: replace an existing run of another configuration under the same name.
    """
    cfg = _config(config_path, overrides, preset)
    result = stages.run(cfg, overwrite=overwrite, progress=False)
    get_run_logger().info("training set %s: %d stamps, %d training steps", cfg.run_dir,
                          cfg.simulation.n_objects, result["training"]["steps"])
    return {"run_dir": result["run_dir"], "simulate_seconds": result["simulate_seconds"],
            "training": result["training"]}


@flow(name="ops-reprocess-tiles")
def reprocess_tiles(config_path: str | None = None, overrides: list[str] | None = None,
                    preset: str | None = None, source: str | None = None, output: str | None = None,
                    method: str = "biharmonic", model_version: str | None = None,
                    max_concurrent: int = 8, tiles_per_task: int = 64) -> dict[str, Any]:
    """Reprocess the survey tiles under ``source`` on Dask, like ``lensforge reprocess``.

    Tiles already reprocessed with the same bytes, settings and model are skipped, so a
    schedule over a directory where new tiles arrive does only the new ones.

    Args:
        config_path: YAML configuration file (any subset of ``lensforge config show``).
        overrides: ``section.key=value`` overrides, applied in order after the file.
        preset: survey preset (lsst, hsc, euclid_vis, roman, ska_mid).
        source: tile FITS, directory or fsspec URL (default: the run's ``tiles/``, where
            ``lensforge tile`` writes).
        output: output directory (default: the run's ``reprocessed/``).
        method: in-painting method: biharmonic, interpolate or model.
        model_version: registry version for ``model`` (default: the promoted one).
        max_concurrent: Prefect tasks in flight at once.
        tiles_per_task: tiles per Prefect task.
    """
    cfg = _config(config_path, overrides, preset)
    summary = stages.reprocess(cfg, source, output, method, model_version, max_concurrent, tiles_per_task,
                               progress=False)
    logger = get_run_logger()
    logger.info("%d tiles from %s: %d done, %d skipped, %d failed; summary in %s", summary["n_tiles"],
                summary["source"], summary["done"], summary["skipped"], summary["failed"], summary["output"])
    for row in summary["tiles"]:
        if row["status"] == "failed":
            logger.warning("failed %s: %s", row["tile"], row["reason"])
    if summary["failed"]:
        raise InputError(f"{summary['failed']} of {summary['n_tiles']} tiles failed (reasons in "
                         f"{summary['summary_path']})", summary["output"])
    return {key: summary[key] for key in ("source", "n_tiles", "done", "skipped", "failed", "wall_seconds")}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its name, entry flow, default parameters and cron schedule (UTC).

    ``prefect.yaml`` and ``lensforge serve`` both follow these; a test keeps them in step.
    """

    name: str
    flow: Flow
    cron: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    concurrency_limit: int | None = 1  # one run at a time: scheduled runs of a deployment share a run directory
    tags: tuple[str, ...] = ("lensforge",)

    @property
    def entrypoint(self) -> str:
        """``flows/deployments.py:<function>``, relative to the repository root (as in ``prefect.yaml``)."""
        return f"{ENTRY_MODULE}:{self.flow.fn.__name__}"


# Scheduled runs write under the names below (in ``out_dir``, default ``runs/`` of the working
# directory), apart from the CLI's ``demo``: simulate every night, train and in-paint that run on
# Sundays, reprocess new survey tiles every night, build a whole training set once a month.
DEPLOYMENTS: list[DeploymentSpec] = [
    DeploymentSpec("simulate", simulate, "0 2 * * *", {"overrides": ["name=scheduled"]},
                   "Nightly: simulate (or finish) the 'scheduled' run's training set."),
    DeploymentSpec("train", train, "0 3 * * 0", {"overrides": ["name=scheduled"]},
                   "Weekly (Sunday): train the VAE-GAN on the 'scheduled' run's store."),
    DeploymentSpec("inpaint", inpaint, "0 6 * * 0", {"overrides": ["name=scheduled"]},
                   "Weekly (Sunday, after train): in-paint the 'scheduled' run's store with its model."),
    DeploymentSpec("build-training-set", build_training_set, "0 4 1 * *", {"overrides": ["name=monthly"]},
                   "Monthly (1st): the whole flow, simulate to report, into the 'monthly' run."),
    DeploymentSpec("reprocess-tiles", reprocess_tiles, "0 5 * * *", {"overrides": ["name=tiles"]},
                   "Nightly: reprocess the new survey tiles of the 'tiles' run (tiles/ -> reprocessed/)."),
]


def deployment_names() -> list[str]:
    """The deployment names, in ``DEPLOYMENTS`` order."""
    return [spec.name for spec in DEPLOYMENTS]


def get_deployment(name: str) -> DeploymentSpec:
    """The ``DeploymentSpec`` called ``name``; ``ConfigError`` listing the valid names otherwise."""
    for spec in DEPLOYMENTS:
        if spec.name == name:
            return spec
    raise ConfigError(f"deployment {name!r}: unknown; choose from {', '.join(deployment_names())}", name)


def served_parameters(spec: DeploymentSpec, config: Path | None = None, overrides: list[str] | None = None,
                      out: Path | None = None, name: str | None = None, preset: str | None = None) -> dict[str, Any]:
    """``spec``'s default parameters with the ``lensforge serve`` options laid on top.

    The options win over the deployment's own overrides (``--name`` replaces its run name);
    paths become absolute, so runs do not depend on the serving process's working directory.
    """
    parameters = dict(spec.parameters)
    extra = [*parameters.get("overrides", []), *(overrides or [])]
    if out is not None:
        extra.append(f"out_dir={out.expanduser().resolve()}")
    if name is not None:
        extra.append(f"name={name}")
    parameters["overrides"] = extra
    if config is not None:
        parameters["config_path"] = str(config.expanduser().resolve())
    if preset is not None:
        parameters["preset"] = preset
    return parameters


def _check_parameters(spec: DeploymentSpec, parameters: dict[str, Any]) -> RunConfig:
    """Build the configuration a run with ``parameters`` would use: bad input fails now, not at 2 a.m."""
    try:
        return load_config(parameters.get("config_path"), parameters.get("overrides", []), parameters.get("preset"))
    except ConfigError as err:
        raise ConfigError(f"deployment {spec.name}: {err}", spec.name) from None


# The CLI silences the flow- and task-run loggers (one-line errors); served runs log to the API.
_RUN_LOGGERS = ("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL")


def serve_deployments(config: Path | None = None, set_: list[str] | None = None, out: Path | None = None,
                      name: str | None = None, preset: str | None = None, only: list[str] | None = None,
                      schedules: bool = True, limit: int | None = None) -> None:
    """Serve the deployments from this process: cron schedules and triggered runs, until Ctrl-C.

    Registers every deployment (or --only some) with the Prefect API at PREFECT_API_URL (else a
    temporary local server) and runs their flows in subprocesses; no work pool or worker needed.
    --config, --set, --out, --name and --preset are laid on each deployment's default parameters.
    Ctrl-C stops serving and pauses the schedules.
    """
    import prefect
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from lensforge.flows.server import shared_prefect_api

    specs = [get_deployment(n) for n in dict.fromkeys(only)] if only else list(DEPLOYMENTS)
    served = []
    for spec in specs:
        parameters = served_parameters(spec, config, set_, out, name, preset)
        cfg = _check_parameters(spec, parameters)
        served.append((spec, parameters, cfg))
    for key in _RUN_LOGGERS:
        if os.environ.get(key, "CRITICAL") == "CRITICAL":
            os.environ[key] = "INFO"
    with shared_prefect_api() as api_url:
        deployments = [
            spec.flow.to_deployment(
                name=spec.name, description=spec.description, parameters=parameters, tags=list(spec.tags),
                concurrency_limit=spec.concurrency_limit,
                # lensforge.flows.deployments.<function>: the installed package, whatever the working directory
                entrypoint_type=EntrypointType.MODULE_PATH,
                schedules=[Cron(spec.cron, timezone=SCHEDULE_TIMEZONE)] if schedules else None)
            for spec, parameters, _ in served]
        lines = [f"serving {len(deployments)} deployment(s) on {api_url} (Ctrl-C stops and pauses the schedules):"]
        lines += [f"  {spec.flow.name}/{spec.name}: "
                  f"{spec.cron + ' ' + SCHEDULE_TIMEZONE if schedules else 'triggered runs only'} -> {cfg.run_dir}"
                  for spec, _, cfg in served]
        typer.echo("\n".join(lines))
        prefect.serve(*deployments, limit=limit, print_starting_message=False)
        _pause(served)


def _pause(served: list) -> None:
    """Pause the served deployments' schedules (after Ctrl-C ended ``prefect.serve``).

    Prefect's runner pauses them on its way out too, but not always: under load (two busy cores)
    ``tests/test_deployments.py`` saw a runner exit 0 after Ctrl-C with its schedule still active.
    Pausing again here (idempotent) keeps the promise that Ctrl-C pauses the schedules.
    """
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for spec, _, _ in served:
            client.pause_deployment(client.read_deployment_by_name(f"{spec.flow.name}/{spec.name}").id)
