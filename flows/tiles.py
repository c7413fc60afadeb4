"""Prefect flow for survey tiles: one coarse task per tile, its regions rendered in parallel on Dask.

Each ``render-tile`` task runs on a Dask worker (``DaskTaskRunner``) and fans its regions out
to the same cluster through ``distributed.worker_client`` (the task secedes while it waits),
so a single tile uses every worker and several tiles share them. Outside a worker (tests
calling ``.fn``) the regions render in-process.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from tqdm.auto import tqdm

from lensforge.flows.tasks import TASK_OPTIONS, manifest_task, worth_retrying
from lensforge.layout import RunLayout
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import run_layout
from lensforge.pipeline.tiles.stage import make_tile


@task(name="render-tile", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def tile_task(config: RunConfig, tile_id: int) -> dict[str, Any]:
    """Render tile ``tile_id`` and write its products (FITS, truth, detections, report)."""
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:  # not on a Dask worker: render in this process
        return make_tile(config, tile_id)
    with worker_client() as client:
        return make_tile(config, tile_id, client=client)


def tile_products(layout: RunLayout, summaries: list[dict[str, Any]]) -> list[str]:
    """Paths (relative to the run directory) of every product the tiles wrote, for the manifest."""
    return [layout.relative(path) for summary in summaries for path in summary.get("paths", {}).values()]


@flow(name="lensforge-tiles")
def tiles_flow(config: RunConfig, tile_ids: list[int], progress: bool = True) -> dict[str, Any]:
    """Render survey tiles ``tile_ids`` (one task each), then write the manifest."""
    began = time.perf_counter()
    futures = [tile_task.submit(config, tile_id) for tile_id in tile_ids]
    summaries = []
    with tqdm(total=len(futures), desc="tiles", unit="tile", disable=not progress) as bar:
        for future in as_completed(futures):
            summaries.append(future.result())
            bar.update()
    summaries.sort(key=lambda s: s["tile_id"])
    stats = {"tiles_seconds": time.perf_counter() - began, "tiles": summaries}
    manifest_task(config, tile_products(run_layout(config), summaries), {"stages": ["tiles"], "timings": {
        "tiles_seconds": stats["tiles_seconds"]}})
    return stats
