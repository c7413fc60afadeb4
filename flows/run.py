"""Prefect flows: thin orchestration of the ``pipeline`` stages.

``simulate_flow``: simulate + mask (one Dask task per chunk) → Zarr store + truth
catalogue → manifest. ``run_flow``: the same, then train → in-paint → report →
manifest. The flows take the configuration as a plain dict; parallel work runs on
the Dask cluster given by the ``dask`` section (see ``flows.cluster``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.cluster import flow_runtime
from flows.tasks import (
    catalogue_task,
    create_store_task,
    inpaint_task,
    manifest_task,
    report_task,
    simulate_task,
    train_task,
)
from pipeline.config import RunConfig, build_config
from pipeline.rundir import REPORT_FIGURES, REPORT_JSON, STORE_NAME, prepare_run_dir

SIMULATION_PRODUCTS = [STORE_NAME, "catalogs/truth.fits", "catalogs/truth.parquet"]


def _simulate(config: dict, progress: bool) -> dict[str, Any]:
    began = time.perf_counter()
    create_store_task(config)
    summaries = simulate_task(config, progress)
    catalogue_task(config)
    return {"simulate_seconds": time.perf_counter() - began,
            "simulate_task_seconds": sum(s["seconds"] for s in summaries),
            "chunks_skipped": sum(s["skipped"] for s in summaries), "chunks": len(summaries)}


@flow(name="lensforge-simulate")
def simulate_flow(config: dict, progress: bool = True) -> dict[str, Any]:
    """Simulate the training set: store + truth catalogue + manifest in the run directory."""
    stats = _simulate(config, progress)
    manifest_task(config, SIMULATION_PRODUCTS, {"stages": ["simulate"], "timings": stats})
    return stats


@flow(name="lensforge-run")
def run_flow(config: dict, progress: bool = True) -> dict[str, Any]:
    """The whole path: simulate → mask → store + catalogue → train → in-paint → report → manifest."""
    stats = _simulate(config, progress)
    training = train_task(config, progress)
    inpaint_task(config, progress)
    metrics = report_task(config)
    run_dir = build_config(config).run_dir
    model_product = Path(training["model_dir"]).relative_to(run_dir).as_posix()
    report_files = [f"report/{name}" for name in (REPORT_JSON, *REPORT_FIGURES)
                    if (run_dir / "report" / name).exists()]  # figures are skipped when there is nothing to show
    products = [*SIMULATION_PRODUCTS, model_product, *report_files]
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
        return flow_fn.with_options(task_runner=runner)(config.to_dict(), progress=progress, **parameters)
