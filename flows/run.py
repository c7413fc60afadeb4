"""Prefect flows: thin orchestration of the ``pipeline`` stages.

``simulate_flow``: simulate + mask (one Dask task per chunk) → Zarr store + truth
catalogue → manifest. ``run_flow``: the same, then train → in-paint → report →
manifest. The flows take the run's ``RunConfig``; parallel work runs on the Dask cluster
given by its ``dask`` section (see ``lensforge.flows.cluster``).
"""

from __future__ import annotations

import itertools
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


def _simulate(config: RunConfig, progress: bool, plain: bool = False) -> dict[str, Any]:
    def call(task):  # plain: the task's own function, in this process, without Prefect
        return task.fn if plain else task

    began = time.perf_counter()
    call(create_store_task)(config)
    store_seconds = time.perf_counter() - began
    chunks_began = time.time()  # wall clock: the chunks' own spans are read on the workers
    summaries = call(simulate_task)(config, progress)
    chunks_ended = time.time()
    call(catalogue_task)(config)
    return {"simulate_seconds": time.perf_counter() - began,
            "simulate_task_seconds": sum(s["seconds"] for s in summaries),
            "chunks_skipped": sum(s["skipped"] for s in summaries), "chunks": len(summaries),
            "store_seconds": store_seconds, **chunk_timeline(summaries, chunks_began, chunks_ended),
            "catalogue_seconds": time.time() - chunks_ended}


def chunk_timeline(summaries: list[dict[str, Any]], began: float, ended: float) -> dict[str, float]:
    """Where the chunk phase's wall time [s] (``began``..``ended``, epoch seconds) went besides the
    chunks' work: the wait for the first chunk to start (task submission, scheduling), the tail in
    which some worker had no chunk left while another still ran, and each worker's time between
    chunks (result hand-off, the next task's start), summed over workers."""
    by_worker: dict[Any, list[tuple[float, float]]] = {}
    for summary in summaries:
        by_worker.setdefault(summary["worker"], []).append((summary["began"], summary["ended"]))
    if not by_worker:
        return {"chunk_ramp_seconds": 0.0, "chunk_tail_seconds": 0.0, "chunk_gap_seconds": 0.0,
                "chunk_end_seconds": 0.0}
    spans = [sorted(spans) for spans in by_worker.values()]
    gaps = sum(later[0] - earlier[1] for worker in spans for earlier, later in itertools.pairwise(worker))
    last = [worker[-1][1] for worker in spans]
    return {"chunk_ramp_seconds": min(worker[0][0] for worker in spans) - began,
            "chunk_tail_seconds": max(last) - min(last) if len(spans) > 1 else 0.0,
            "chunk_gap_seconds": gaps, "chunk_end_seconds": ended - max(last)}


@flow(name="lensforge-simulate")
def simulate_flow(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Simulate the training set: store + truth catalogue + manifest in the run directory."""
    stats = _simulate(config, progress)
    manifest_task(config, run_layout(config).simulation_products(), {"stages": ["simulate"], "timings": stats})
    return stats


def runs_in_process(config: RunConfig) -> bool:
    """Whether ``lensforge simulate`` does its (small) job in this process: fewer objects than
    ``dask.in_process_below`` and neither a Dask cluster nor a Prefect server configured. Starting a
    temporary Prefect server and a LocalCluster costs ~10-30 s, more than such a job's work."""
    from lensforge.flows.cluster import is_local
    from lensforge.flows.in_process import configured_prefect_api

    return (config.simulation.n_objects < config.dask.in_process_below and is_local(config.dask)
            and not configured_prefect_api())


def simulate_in_process(config: RunConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """The simulate flow's steps as plain calls in this process (the same chunks, bytes and manifest)."""
    prepare_run_dir(config, overwrite=overwrite)
    stats = _simulate(config, progress, plain=True)
    manifest_task.fn(config, run_layout(config).simulation_products(), {"stages": ["simulate"], "timings": stats})
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

    New workers (a LocalCluster or dask-jobqueue jobs) preload Prefect's task engine, the flow's
    module, which imports its tasks' science stack, and the catalogue writers: a fresh worker
    otherwise pays those imports (2-4 s) inside its first task, after the flow has started waiting on it.
    """
    from lensforge.catalogs.truth import WRITER_MODULES

    preload = ["prefect.task_engine", flow_fn.fn.__module__, *WRITER_MODULES]
    with flow_runtime(config.dask, preload, prepare=lambda: prepare_run_dir(config, overwrite=overwrite)) as runner:
        return flow_fn.with_options(task_runner=runner)(config, progress=progress, **parameters)
