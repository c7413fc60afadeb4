"""Prefect tasks: coarse wrappers (a chunk of stamps, a whole stage) over ``pipeline`` functions.

Tasks take the configuration as a plain dict (JSON-able, cheap to ship to Dask
workers) and return small summaries; the data goes straight into the run directory.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from catalogs.manifest import write_manifest
from catalogs.store import create_store
from catalogs.truth import write_store_truth_catalogue
from flows.cluster import map_on_cluster
from pipeline.config import build_config
from pipeline.rundir import CONFIG_NAME, catalog_dir, is_done, mark_done, report_dir, store_path
from pipeline.simulate import chunk_ranges, simulate_stamps

# torch and matplotlib (train / in-paint / report) are imported inside those tasks: Dask workers
# unpickle this module to run simulate_chunk, and should not pay seconds of imports they never use.

# Results stay in the run directory, not in Prefect's result store.
TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@functools.cache
def cached_model(model_dir: str):
    """A checkpoint loaded once per (worker) process on the CPU: (model, meta)."""
    from models.checkpoint import load_checkpoint

    return load_checkpoint(Path(model_dir), device="cpu")


def worth_retrying(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry after a crashed worker or an OS error, not after bad
    input (a ``LensforgeError`` would fail the same way again)."""
    from catalogs.errors import LensforgeError

    try:
        state.result()
    except LensforgeError:
        return False
    except Exception:  # noqa: BLE001 - anything else (a lost worker, an OS error) may pass on a retry
        return True
    return False


@task(name="create-store", **TASK_OPTIONS)
def create_store_task(config: dict) -> str:
    """Create (or reopen) the run's empty Zarr store."""
    cfg = build_config(config)
    path = store_path(cfg)
    create_store(path, cfg.simulation.n_objects, cfg.survey.stamp_size, cfg.simulation.chunk_size,
                 include_noiseless=cfg.simulation.store_noiseless,
                 counterfactual_delta_g=cfg.simulation.counterfactual_delta_g,
                 attrs={"run_name": cfg.name, "run_seed": cfg.seed,
                        "pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec})
    return str(path)


def simulate_chunk(config: dict, start: int, stop: int) -> dict[str, Any]:
    """Simulate and mask objects ``start..stop-1`` and write them into the store (skipped if done).

    A plain function, one Dask task per chunk (``simulate_task``): returns a small summary.
    """
    cfg = build_config(config)
    if is_done(cfg, "simulate", start, stop):
        return {"start": start, "stop": stop, "seconds": 0.0, "skipped": True}
    batch = simulate_stamps(cfg, start, stop)
    batch.write(store_path(cfg))
    mark_done(cfg, "simulate", start, stop)
    return {"start": start, "stop": stop, "seconds": batch.seconds, "skipped": False}


@task(name="simulate", **TASK_OPTIONS)
def simulate_task(config: dict, progress: bool = True) -> list[dict[str, Any]]:
    """Simulate every chunk of the store, one Dask task per chunk on the flow's cluster; returns
    the chunks' summaries (objects, seconds of work, skipped) in the order they finished.

    The stage is the Prefect task and the chunks are Dask's: a Prefect task run per chunk (its
    states and logs through the API) cost ~0.15 s of the shared cores per chunk, 20% of the stage
    at 512 stamps per chunk on 2 cores. Chunks already done (a rerun after a crash) are skipped.
    """
    cfg = build_config(config)
    calls = [(config, start, stop) for start, stop in chunk_ranges(cfg.simulation.n_objects,
                                                                   cfg.simulation.chunk_size)]
    summaries = []
    with tqdm(total=cfg.simulation.n_objects, desc="simulate", unit="stamp", disable=not progress) as bar:
        for summary in map_on_cluster(simulate_chunk, calls):
            summaries.append(summary)
            bar.update(summary["stop"] - summary["start"])
    return summaries


def write_catalogue(config: dict) -> dict[str, str]:
    """Consolidate the store and write the truth catalogue (FITS + Parquet) from its labels, a part
    at a time: the writing process's memory does not grow with n_objects."""
    cfg = build_config(config)
    # FITS header keys: at most 8 characters.
    meta = {"RUNNAME": cfg.name, "RUNSEED": cfg.seed, "PIXSCALE": cfg.survey.pixel_scale_arcsec}
    paths = write_store_truth_catalogue(store_path(cfg), catalog_dir(cfg), meta)
    return {fmt: str(path) for fmt, path in paths.items()}


@task(name="write-catalogue", **TASK_OPTIONS)
def catalogue_task(config: dict) -> dict[str, str]:
    """``write_catalogue`` on a Dask worker: the labels of every object never load into the flow process,
    which keeps its memory flat with the number of objects."""
    return next(map_on_cluster(write_catalogue, [(config,)]))


@task(name="train", **TASK_OPTIONS)
def train_task(config: dict, progress: bool = True) -> dict[str, Any]:
    """Train the VAE-GAN on the training split (runs in the flow process, using its cores)."""
    from pipeline.training import train_stage

    cfg = build_config(config)
    result = train_stage(cfg, store_path(cfg), progress=progress)
    return {"model_dir": str(result.out_dir), "seconds": result.seconds, "steps": result.steps,
            "final_losses": result.final_losses}


@task(name="inpaint", **TASK_OPTIONS)
def inpaint_task(config: dict, progress: bool = True) -> int:
    """Write the model's in-painted mean and standard deviation for every stamp."""
    from models.checkpoint import load_checkpoint
    from pipeline.inpaint import inpaint_store
    from pipeline.training import inpainting_model_dir

    cfg = build_config(config)
    model, meta = load_checkpoint(inpainting_model_dir(cfg), device=cfg.train.device)
    return inpaint_store(store_path(cfg), model, cfg.inpaint.n_samples, cfg.seed, cfg.inpaint.batch_size,
                         progress=progress, model_sha256=meta["weights_sha256"])


@task(name="report", **TASK_OPTIONS)
def report_task(config: dict) -> dict[str, Any]:
    """Evaluation report of the trained models on the held-out stamps (JSON + PNGs)."""
    from pipeline.report import write_report
    from pipeline.training import load_models

    cfg = build_config(config)
    return write_report(cfg, store_path(cfg), report_dir(cfg), load_models(cfg),
                        generation=cfg.evaluate.generation)


@task(name="write-manifest", **TASK_OPTIONS)
def manifest_task(config: dict, products: list[str], extra: dict[str, Any]) -> str:
    """Write ``manifest.json`` last: checksums of every product, config, seed, versions, revision."""
    cfg = build_config(config)
    return str(write_manifest(cfg.run_dir, cfg.to_dict(), cfg.seed, [CONFIG_NAME, *products], extra))
