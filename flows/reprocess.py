"""Prefect flow behind ``lensforge reprocess``: one task per tile on Dask, a bad tile fails alone.

The flow lists the tiles (fsspec), submits at most ``max_concurrent`` tile tasks at a time
(memory stays flat however many tiles there are), and gathers one summary row per tile:
``done``, ``skipped`` (same tile bytes, settings and model as last time) or ``failed`` with the
reason. Nothing a finished tile wrote is touched again, so a crashed batch is resumed by
running the same command.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import wait
from tqdm.auto import tqdm

from catalogs.atomic import atomic_write_text
from flows.tasks import TASK_OPTIONS, cached_model, worth_retrying
from pipeline.reprocess import ReprocessSettings, list_tiles, reprocess_tile

SUMMARY_NAME = "reprocess_summary.json"


@task(name="reprocess-tile", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def reprocess_tile_task(url: str, out_dir: str, settings: dict, model_dir: str | None) -> dict[str, Any]:
    """Reprocess one tile (``pipeline.reprocess.reprocess_tile``); bad input becomes a ``failed`` row."""
    from catalogs.errors import LensforgeError

    model, sha = (None, None)
    if model_dir:
        model, meta = cached_model(model_dir)
        sha = meta["weights_sha256"]
    try:
        return reprocess_tile(url, out_dir, ReprocessSettings(**settings), model=model, model_sha256=sha)
    except LensforgeError as err:
        return {"tile": url, "status": "failed", "reason": str(err)}


def _row_of(future, url: str) -> dict[str, Any]:
    """The task's row, or a ``failed`` row for a task that crashed (after its retry)."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - one tile's crash must not stop the batch
        return {"tile": url, "status": "failed", "reason": f"{type(err).__name__}: {err}"}


@flow(name="lensforge-reprocess")
def reprocess_flow(source: str, out_dir: str, settings: dict, model_dir: str | None = None,
                   max_concurrent: int = 8, progress: bool = True) -> dict[str, Any]:
    """Reprocess every tile under ``source`` into ``out_dir``; writes and returns the batch summary."""
    began = time.perf_counter()
    urls = list_tiles(source)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(urls), desc="reprocess", unit="tile", disable=not progress) as bar:
        for start in range(0, len(urls), max_concurrent):
            window = urls[start:start + max_concurrent]
            futures = [reprocess_tile_task.submit(url, out_dir, settings, model_dir) for url in window]
            wait(futures)
            for future, url in zip(futures, window, strict=True):
                rows.append(_row_of(future, url))
                bar.update()
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "skipped", "failed")}
    summary = {"source": source, "n_tiles": len(urls), **counts,
               "tile_seconds": round(sum(row.get("seconds", 0.0) for row in rows), 3),
               "wall_seconds": round(time.perf_counter() - began, 3), "settings": settings,
               "model_dir": model_dir, "tiles": rows}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def settings_dict(settings: ReprocessSettings) -> dict[str, Any]:
    """The settings as the flow's JSON parameter."""
    return asdict(settings)
