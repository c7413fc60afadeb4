"""Prefect flows: thin orchestration of the ``pipeline`` stages.

``simulate_flow``: simulate + mask (one Dask task per chunk) → Zarr store + truth
catalogue → manifest. ``run_flow``: the same, then train → in-paint → report →
manifest. The flows take the run's ``RunConfig``; parallel work runs on the Dask cluster
given by its ``dask`` section (see ``lensforge.flows.cluster``).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from lensforge.flows.cluster import flow_runtime
from lensforge.flows.tasks import (
    catalogue_task,
    create_store_task,
    inpaint_task,
    manifest_task,
    report_task,
    simulate_task,
    train_task,
)
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import prepare_run_dir, run_layout


def _simulate(config: RunConfig, progress: bool) -> dict[str, Any]:
    began = time.perf_counter()
    create_store_task(config)
    summaries = simulate_task(config, progress)
    catalogue_task(config)
    return {"simulate_seconds": time.perf_counter() - began,
            "simulate_task_seconds": sum(s["seconds"] for s in summaries),
            "chunks_skipped": sum(s["skipped"] for s in summaries), "chunks": len(summaries)}


@flow(name="lensforge-simulate")
def simulate_flow(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Simulate the training set: store + truth catalogue + manifest in the run directory."""
    stats = _simulate(config, progress)
    manifest_task(config, run_layout(config).simulation_products(), {"stages": ["simulate"], "timings": stats})
    return stats


@flow(name="lensforge-run")
def run_flow(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """The whole path: simulate → mask → store + catalogue → train → in-paint → report → manifest."""
    stats = _simulate(config, progress)
    training = train_task(config, progress)
    inpaint_task(config, progress)
    metrics = report_task(config)
    layout = run_layout(config)
    products = [*layout.simulation_products(), layout.relative(training["model_dir"]), *layout.report_products()]
    manifest_task(config, products, {"stages": ["simulate", "train", "inpaint", "report"],
                                     "timings": {**stats, "train_seconds": training["seconds"]}})
    return {**stats, "training": training, "report": metrics}


def run_with_dask(flow_fn, config: RunConfig, overwrite: bool = False, progress: bool = True,
                  **parameters: Any) -> dict[str, Any]:
    """Prepare the run directory, then run ``flow_fn`` (with extra ``parameters``) on the configured Dask runner.

    New workers (a LocalCluster or dask-jobqueue jobs) preload Prefect's task engine and the flow's
    module, which imports its tasks' science stack: a fresh worker otherwise pays those imports
    (2-4 s) inside its first task, after the flow has started waiting on it.
    """
    preload = ["prefect.task_engine", flow_fn.fn.__module__]
    with flow_runtime(config.dask, preload, prepare=lambda: prepare_run_dir(config, overwrite=overwrite)) as runner:
        return flow_fn.with_options(task_runner=runner)(config, progress=progress, **parameters)
