"""Prefect tasks: coarse wrappers (a stage, a whole store) over ``pipeline`` functions.

Tasks take the run's :class:`~lensforge.pipeline.config.RunConfig` itself (it pickles for Dask
workers) and return small summaries; the data goes straight into the run directory.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from lensforge.catalogs.manifest import write_manifest
from lensforge.catalogs.store import create_store, mark_complete, row_stored
from lensforge.catalogs.truth import write_store_truth_catalogue
from lensforge.flows.cluster import map_on_cluster
from lensforge.layout import CONFIG_NAME
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import run_layout
from lensforge.pipeline.stamps.simulate import check_simulation, chunk_ranges, simulate_stamps

# torch and matplotlib (train / in-paint / report) are imported inside those tasks: Dask workers
# unpickle this module to run simulate_chunk, and should not pay seconds of imports they never use.

# Results stay in the run directory, not in Prefect's result store.
TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@functools.cache
def cached_model(model_dir: str):
    """A checkpoint loaded once per (worker) process on the CPU: (model, meta)."""
    from lensforge.models.checkpoint import load_checkpoint

    return load_checkpoint(Path(model_dir), device="cpu")


def worth_retrying(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry after a crashed worker or an OS error, not after bad
    input (a ``LensforgeError`` would fail the same way again)."""
    from lensforge.errors import LensforgeError

    try:
        state.result()
    except LensforgeError:
        return False
    except Exception:  # noqa: BLE001 - anything else (a lost worker, an OS error) may pass on a retry
        return True
    return False


@task(name="create-store", **TASK_OPTIONS)
def create_store_task(config: RunConfig) -> str:
    """Create (or reopen) the run's empty Zarr store."""
    check_simulation(config)  # a deployment's run too: sized before anything is allocated
    path = run_layout(config).store
    cells = None
    if config.radio.stamp_visibilities:
        from lensforge.pipeline.radio.stamp_visibilities import stamp_visibilities

        cells = stamp_visibilities(config.survey, config.radio).cell_table()
    create_store(path, config.simulation.n_objects, config.survey.stamp_size, config.simulation.chunk_size,
                 include_noiseless=config.simulation.store_noiseless,
                 counterfactual_delta_g=config.simulation.counterfactual_delta_g, visibility_cells=cells,
                 attrs={"run_name": config.name, "run_seed": config.seed,
                        "pixel_scale_arcsec": config.survey.pixel_scale_arcsec})
    return str(path)


def simulate_chunk(config: RunConfig, start: int, stop: int) -> dict[str, Any]:
    """Simulate and mask objects ``start..stop-1`` and write them into the store (skipped if done).

    A plain function, one Dask task per chunk (``simulate_task``): returns a small summary.
    """
    began = time.time()
    layout = run_layout(config)
    progress = layout.progress("simulate")
    if progress.is_done(start, stop) and not row_stored(layout.store, start):
        progress.marker(start, stop).unlink()  # it vouches for data that is gone (deleted): redo the chunk
    batch = progress.run(start, stop, lambda: simulate_stamps(config, start, stop),
                         lambda stamps: stamps.write(layout.store))
    # Wall-clock span and process: the flow's timings tell scheduling gaps from work (flows.run.chunk_timeline).
    return {"start": start, "stop": stop, "seconds": 0.0 if batch is None else batch.seconds,
            "skipped": batch is None, "began": began, "ended": time.time(), "worker": os.getpid()}


@task(name="simulate", **TASK_OPTIONS)
def simulate_task(config: RunConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Simulate every chunk of the store, one Dask task per chunk on the flow's cluster; returns
    the chunks' summaries (objects, seconds of work, skipped) in the order they finished.

    The stage is the Prefect task and the chunks are Dask's (the fan-out rule of
    :mod:`lensforge.flows.cluster`). Chunks already done (a rerun after a crash) are skipped.
    """
    calls = [(config, start, stop) for start, stop in chunk_ranges(config.simulation.n_objects,
                                                                   config.simulation.chunk_size)]
    summaries = []
    with tqdm(total=config.simulation.n_objects, desc="simulate", unit="stamp", disable=not progress) as bar:
        for summary in map_on_cluster(simulate_chunk, calls):
            summaries.append(summary)
            bar.update(summary["stop"] - summary["start"])
    return summaries


def write_catalogue(config: RunConfig) -> dict[str, str]:
    """Consolidate the store and write the truth catalogue (FITS + Parquet) from its labels, a part
    at a time: the writing process's memory does not grow with n_objects."""
    layout = run_layout(config)
    progress = layout.progress("simulate")
    if all(progress.is_done(start, stop) for start, stop in chunk_ranges(config.simulation.n_objects,
                                                                        config.simulation.chunk_size)):
        mark_complete(layout.store)  # every chunk is written: from now on a missing one is damage
    # FITS header keys: at most 8 characters.
    meta = {"RUNNAME": config.name, "RUNSEED": config.seed, "PIXSCALE": config.survey.pixel_scale_arcsec}
    paths = write_store_truth_catalogue(layout.store, layout.truth_catalogue.parent, meta,
                                        stem=layout.truth_catalogue.name)
    return {fmt: str(path) for fmt, path in paths.items()}


@task(name="write-catalogue", **TASK_OPTIONS)
def catalogue_task(config: RunConfig) -> dict[str, str]:
    """``write_catalogue`` on a Dask worker: the labels of every object never load into the flow process,
    which keeps its memory flat with the number of objects."""
    return next(map_on_cluster(write_catalogue, [(config,)]))


@task(name="train", **TASK_OPTIONS)
def train_task(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """The train stage (``lensforge.pipeline.generative.training.train_stage``), in the flow process."""
    from lensforge.pipeline.generative.training import train_stage

    result = train_stage(config, progress=progress)
    return {"model_dir": str(result.out_dir), "seconds": result.seconds, "steps": result.steps,
            "final_losses": result.final_losses}


@task(name="inpaint", **TASK_OPTIONS)
def inpaint_task(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """The in-paint stage (``lensforge.pipeline.inpaint.stamps.inpaint_stage``)."""
    from lensforge.pipeline.inpaint.stamps import inpaint_stage

    return inpaint_stage(config, progress=progress)


@task(name="report", **TASK_OPTIONS)
def report_task(config: RunConfig) -> dict[str, Any]:
    """The evaluate stage (``lensforge.pipeline.evaluation.report.evaluate_stage``): JSON + PNGs."""
    from lensforge.pipeline.evaluation.report import evaluate_stage

    return evaluate_stage(config, generation=config.evaluate.generation)


@task(name="write-manifest", **TASK_OPTIONS)
def manifest_task(config: RunConfig, products: list[str], extra: dict[str, Any]) -> str:
    """Write ``manifest.json`` last: checksums of every product, config, seed, versions, revision."""
    return str(write_manifest(config.run_dir, config.to_dict(), config.seed, [CONFIG_NAME, *products], extra))
