"""Prefect flow behind ``lensforge reprocess``: one task per tile on Dask, a bad tile fails alone.

The flow lists the tiles (fsspec), skips those already done (same key), submits the rest as
coarse tasks of ``tiles_per_task`` tiles (Dask runs the tiles of a task in parallel), at most
``max_concurrent`` tasks at a time (memory stays flat however many tiles there are), and gathers
one summary row per tile:
``done``, ``skipped`` (same tile bytes, settings and model as last time) or ``failed`` with the
reason. Nothing a finished tile wrote is touched again, so a crashed batch is resumed by
running the same command.

The batch's checks, the in-painter lookup and the per-tile rows are Prefect-free
(:mod:`lensforge.flows.tile_batch`); :func:`lensforge.flows.stages.run_reprocess` starts this
flow for a batch, and does a single image in its own process when no cluster or Prefect server is
configured).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed

from lensforge.flows.tasks import TASK_OPTIONS, worth_retrying
from lensforge.flows.tile_batch import failure_reason, reprocess_batch, tile_rows
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB

# Each Dask task costs a scheduler round trip before the worker starts the next one, which is a
# noticeable share of a small tile's work; a few tiles per task amortise it and still leave several
# tasks per chunk to balance between workers.
TILES_PER_DASK_TASK = 4


@task(name="reprocess-tiles", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def reprocess_chunk_task(urls: list[str], out_dir: str, settings: dict, model_dir: str | None,
                         source: str | None = None, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                         mask: str | None = None) -> list[dict]:
    """A coarse task: several tiles, fanned out in small groups on the same Dask cluster (``worker_client``).

    Prefect's per-task bookkeeping (a few API calls) costs about as much as a small tile, so
    Prefect sees chunks and Dask sees groups of tiles (the exception to the fan-out rule of
    :mod:`lensforge.flows.cluster`). Outside a Dask worker the tiles run in
    this process.
    """
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        return tile_rows(urls, out_dir, settings, model_dir, source, memory_budget_gb, mask)
    groups = [urls[i:i + TILES_PER_DASK_TASK] for i in range(0, len(urls), TILES_PER_DASK_TASK)]
    with worker_client() as client:
        futures = client.map(tile_rows, groups, out_dir=out_dir, settings=settings, model_dir=model_dir,
                             source=source, memory_budget_gb=memory_budget_gb, mask=mask, pure=False)
        return [row for rows in client.gather(futures) for row in rows]


@flow(name="lensforge-reprocess")
def reprocess_flow(source: str, out_dir: str, settings: dict, model_dir: str | None = None,
                   max_concurrent: int = 8, tiles_per_task: int = 64, progress: bool = True,
                   memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, mask: str | None = None) -> dict[str, Any]:
    """Reprocess every tile under ``source`` into ``out_dir``; writes and returns the batch summary.

    Tiles already done with the same key are skipped here, before any task; the rest go out in
    chunks of ``tiles_per_task`` tiles, at most ``max_concurrent`` chunks at a time. Nothing under
    ``out_dir`` is ever listed as a tile. ``model_dir``: the image in-painter of ``model`` / ``auto``;
    ``mask``: the mask file of a single-image ``source``.
    """
    def run_chunks(chunks: list[list[str]]) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        submit = lambda chunk: reprocess_chunk_task.submit(  # noqa: E731 - the window's one-line callback
            chunk, out_dir, settings, model_dir, source, memory_budget_gb, mask)
        for chunk, future in sliding_window(chunks, max_concurrent, submit):
            yield chunk, _rows_of(future, chunk)

    return reprocess_batch(source, out_dir, settings, model_dir, tiles_per_task, progress, memory_budget_gb, mask,
                           run_chunks)


def sliding_window(items: list, max_in_flight: int, submit) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, future)`` as each finishes, keeping at most ``max_in_flight`` submitted at once.

    A new item goes out as soon as any one finishes (a window that waited for its slowest
    member left workers idle at every window boundary).
    """
    waiting = iter(items)
    in_flight: dict[Any, Any] = {}
    for item in itertools.islice(waiting, max_in_flight):
        in_flight[submit(item)] = item
    while in_flight:
        finished = next(as_completed(list(in_flight)))
        item = in_flight.pop(finished)
        for following in itertools.islice(waiting, 1):
            in_flight[submit(following)] = following
        yield item, finished


def _rows_of(future, chunk: list[str]) -> list[dict[str, Any]]:
    """The chunk's rows, or ``failed`` rows for a chunk whose task crashed (after its retry)."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - one chunk's crash must not stop the batch
        return [{"tile": url, "status": "failed", "reason": failure_reason(err)} for url in chunk]


