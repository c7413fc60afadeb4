"""Prefect flow behind ``lensforge reprocess``: one task per tile on Dask, a bad tile fails alone.

The flow lists the tiles (fsspec), skips those already done (same key), submits the rest as
coarse tasks of ``tiles_per_task`` tiles (Dask runs the tiles of a task in parallel), at most
``max_concurrent`` tasks at a time (memory stays flat however many tiles there are), and gathers
one summary row per tile:
``done``, ``skipped`` (same tile bytes, settings and model as last time) or ``failed`` with the
reason. Nothing a finished tile wrote is touched again, so a crashed batch is resumed by
running the same command.

Before anything starts, :func:`check_batch` refuses (one line) an output directory that holds the
source or is a run's product, and a batch whose outputs would replace another tile's (the same
file name under another source). Tiles are sized against ``limits.memory_budget_gb`` from their
headers before their data are read (:func:`lensforge.pipeline.tiles.reprocess.read_tile`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from tqdm.auto import tqdm

from lensforge.atomic import atomic_write_text
from lensforge.errors import ConfigError, InputError, LensforgeError, one_line
from lensforge.flows.tasks import TASK_OPTIONS, cached_model, worth_retrying
from lensforge.layout import RunLayout, run_product
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.tiles.reprocess import (
    ReprocessSettings,
    is_done,
    list_tiles,
    output_owner,
    output_stem,
    read_tile,
    reprocess_tile,
    tile_identity,
    tile_key,
)

SUMMARY_NAME = "reprocess_summary.json"


def tile_row(url: str, out_dir: str, settings: dict, model_dir: str | None, source: str | None = None,
             memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> dict[str, Any]:
    """Reprocess one tile (``lensforge.pipeline.tiles.reprocess.reprocess_tile``); any error becomes a
    ``failed`` row."""
    from lensforge.errors import LensforgeError

    model, sha = (None, None)
    if model_dir:
        model, meta = cached_model(model_dir)
        sha = meta["weights_sha256"]
    try:
        return reprocess_tile(url, out_dir, ReprocessSettings(**settings), model=model, model_sha256=sha,
                              source=source, memory_budget_gb=memory_budget_gb)
    except LensforgeError as err:
        return {"tile": url, "status": "failed", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - one tile's bug must not stop the batch
        return {"tile": url, "status": "failed", "reason": failure_reason(err)}


def failure_reason(err: BaseException) -> str:
    """An unexpected error as a summary row's reason: ``Type: message`` on one line, at most 300 characters."""
    return one_line(f"{type(err).__name__}: {err}", 300)


def tile_rows(urls: list[str], out_dir: str, settings: dict, model_dir: str | None, source: str | None = None,
              memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> list[dict[str, Any]]:
    """``tile_row`` for a few tiles in turn: one Dask task (see ``TILES_PER_DASK_TASK``)."""
    return [tile_row(url, out_dir, settings, model_dir, source, memory_budget_gb) for url in urls]


# Each Dask task costs a scheduler round trip before the worker starts the next one, which is a
# noticeable share of a small tile's work; a few tiles per task amortise it and still leave several
# tasks per chunk to balance between workers.
TILES_PER_DASK_TASK = 4


@task(name="reprocess-tiles", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def reprocess_chunk_task(urls: list[str], out_dir: str, settings: dict, model_dir: str | None,
                         source: str | None = None,
                         memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> list[dict]:
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
        return tile_rows(urls, out_dir, settings, model_dir, source, memory_budget_gb)
    groups = [urls[i:i + TILES_PER_DASK_TASK] for i in range(0, len(urls), TILES_PER_DASK_TASK)]
    with worker_client() as client:
        futures = client.map(tile_rows, groups, out_dir=out_dir, settings=settings, model_dir=model_dir,
                             source=source, memory_budget_gb=memory_budget_gb, pure=False)
        return [row for rows in client.gather(futures) for row in rows]


def _already_done(url: str, out_dir: Path, settings: ReprocessSettings, model_sha256: str | None,
                  source: str | None = None, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> bool:
    """The cheap check a rerun needs: the tile's key against its marker (no task, no pixels decoded)."""
    try:
        return is_done(out_dir, output_stem(url, source),
                       tile_key(read_tile(url, memory_budget_gb), settings, model_sha256), tile_identity(url))
    except LensforgeError:
        return False  # unreadable: let its task report why


@flow(name="lensforge-reprocess")
def reprocess_flow(source: str, out_dir: str, settings: dict, model_dir: str | None = None,
                   max_concurrent: int = 8, tiles_per_task: int = 64, progress: bool = True,
                   memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> dict[str, Any]:
    """Reprocess every tile under ``source`` into ``out_dir``; writes and returns the batch summary.

    Tiles already done with the same key are skipped here, before any task; the rest go out in
    chunks of ``tiles_per_task`` tiles, at most ``max_concurrent`` chunks at a time. Nothing under
    ``out_dir`` is ever listed as a tile.
    """
    began = time.perf_counter()
    urls = list_tiles(source, exclude=out_dir)
    model_sha = None
    if model_dir:
        from lensforge.models.checkpoint import read_meta  # torch: only for the model method

        model_sha = read_meta(model_dir)["weights_sha256"]
    typed = ReprocessSettings(**settings)
    rows: dict[str, dict[str, Any]] = {}
    for url in urls:
        if _already_done(url, Path(out_dir), typed, model_sha, source, memory_budget_gb):
            rows[url] = {"tile": url, "status": "skipped", "seconds": 0.0}
    pending = [url for url in urls if url not in rows]
    chunks = [pending[i:i + tiles_per_task] for i in range(0, len(pending), tiles_per_task)]
    with tqdm(total=len(urls), initial=len(rows), desc="reprocess", unit="tile", disable=not progress) as bar:
        for chunk, future in sliding_window(chunks, max_concurrent,
                                            lambda chunk: reprocess_chunk_task.submit(
                                                chunk, out_dir, settings, model_dir, source, memory_budget_gb)):
            for row in _rows_of(future, chunk):
                rows[row["tile"]] = row
            bar.update(len(chunk))
    ordered = [rows[url] for url in urls]
    counts = {status: sum(row["status"] == status for row in ordered) for status in ("done", "skipped", "failed")}
    summary = {"source": source, "n_tiles": len(urls), **counts,
               "tile_seconds": round(sum(row.get("seconds", 0.0) for row in ordered), 3),
               "wall_seconds": round(time.perf_counter() - began, 3), "settings": settings,
               "model_dir": model_dir, "tiles": ordered}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


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


def check_batch(source: str, output: str | Path) -> list[str]:
    """The tiles under ``source``, once the batch may write into ``output``; else a one-line ``InputError``.

    Refused: an ``output`` that is not a directory, that holds the (local) source, that is a run's
    product (``lensforge.layout.run_product``: a run's ``tiles/``, ``catalogs/``, store ...), and a
    batch with a tile whose output names another tile already claimed (a file of the same name
    under another source): those outputs are never written over.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: exists and is not a directory", str(output))
    owner = run_product(output)
    if owner is not None:
        raise InputError(f"--output {output}: is {owner[1]} of the run directory {owner[0]}; a run's products are "
                         "never written over, write elsewhere", str(output))
    if "://" not in source or source.startswith("file://"):
        resolved_source, resolved_output = Path(tile_identity(source)), output.resolve()
        if resolved_source == resolved_output or resolved_output in resolved_source.parents:
            raise InputError(f"--output {output}: holds the source {source}; outputs would be read back as tiles, "
                             "write elsewhere", str(output))
    urls = list_tiles(source, exclude=output)
    clashes = []
    for url in urls:
        stem = output_stem(url, source)
        recorded = output_owner(output, stem)
        if recorded is not None and recorded != tile_identity(url):
            clashes.append((url, stem, recorded))
    if clashes:
        url, stem, recorded = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise InputError(f"--output {output}: {stem}.reprocessed.fits there holds the products of {recorded}, not of "
                         f"{url}{more}; they are never written over: reprocess into another --output", str(output))
    return urls


def settings_dict(settings: ReprocessSettings) -> dict[str, Any]:
    """The settings as the flow's JSON parameter."""
    return asdict(settings)


def run_reprocess(config: RunConfig, source: str, output: str | Path, method: str = "biharmonic",
                  model_version: str | None = None, max_concurrent: int = 8, tiles_per_task: int = 64,
                  progress: bool = True) -> dict[str, Any]:
    """Reprocess the tiles under ``source`` into ``output`` on ``config``'s Dask cluster (``lensforge reprocess``).

    ``method`` is an in-painting method of ``lensforge.pipeline.inpaint.stamps``; ``model`` uses ``model_version``
    from the run's registry (``<run>/models``), else the promoted version. The PSF FWHM (pixels)
    and detection threshold come from ``config``'s survey and detect sections. Returns the
    summary (also written to ``<output>/reprocess_summary.json``); failed tiles are rows, not errors.
    """
    from lensforge.flows.cluster import flow_runtime
    from lensforge.pipeline.inpaint.stamps import INPAINTERS

    if method not in INPAINTERS:
        raise ConfigError(f"method {method!r}: valid methods are {sorted(INPAINTERS)}", method)
    check_batch(source, output)
    chosen = None
    if method == "model":
        from lensforge.models.registry import resolve_version

        chosen = str(resolve_version(RunLayout(config.run_dir).models_dir, model_version))
    settings = ReprocessSettings(method=method,
                                 psf_fwhm_pixels=config.survey.psf_fwhm_arcsec / config.survey.pixel_scale_arcsec,
                                 threshold_nsigma=config.detect.threshold_nsigma)
    with flow_runtime(config.dask, preload=["lensforge.flows.worker_preload"]) as runner:
        return reprocess_flow.with_options(task_runner=runner)(source, str(output), settings_dict(settings), chosen,
                                                               max_concurrent, tiles_per_task, progress=progress,
                                                               memory_budget_gb=config.limits.memory_budget_gb)
