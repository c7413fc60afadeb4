"""What ``lensforge reprocess`` does without Prefect: check the batch, find the in-painter, run tiles.

The batch's checks (:func:`check_batch`, :func:`check_mask_option`, :func:`resolve_inpainter`), the
per-tile rows and the summary live here, free of Prefect and Dask imports, so that a one-tile call
(:func:`lensforge.flows.stages.run_reprocess` on a single image, no cluster or Prefect server
configured) runs in this process and answers in seconds: the Prefect flow of many tiles
(:mod:`lensforge.flows.reprocess`) costs a server's and a cluster's start-up first, and imports Prefect itself.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lensforge.atomic import atomic_write_text
from lensforge.errors import InputError, LensforgeError, one_line
from lensforge.layout import RunLayout, run_product
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.tiles.reprocess import (
    MODEL_METHODS,
    ReprocessSettings,
    inputs_key,
    is_done,
    list_tiles,
    output_owner,
    output_stem,
    read_inputs,
    recorded_row,
    reprocess_tile,
    tile_identity,
)

SUMMARY_NAME = "reprocess_summary.json"



@functools.cache
def cached_image_inpainter(model_dir: str):
    """The image in-painter of ``model_dir`` loaded once per (worker) process on the CPU: (model, card).

    torch is imported here, on first use: a batch of biharmonic tiles never loads it.
    """
    from lensforge.models.image_inpainter import load_image_inpainter

    return load_image_inpainter(Path(model_dir), device="cpu")


def model_card(model_dir: str):
    """The card of the image in-painter in ``model_dir`` (read, not loaded: the flow process needs only its
    checksum); ``ModelError`` naming the file when it is missing or not a card."""
    from lensforge.models.image_inpainter import read_card

    return read_card(Path(model_dir))


def tile_row(url: str, out_dir: str, settings: dict, model_dir: str | None, source: str | None = None,
             memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, mask: str | None = None) -> dict[str, Any]:
    """Reprocess one tile (``lensforge.pipeline.tiles.reprocess.reprocess_tile``); any error becomes a
    ``failed`` row. ``model_dir`` is the image in-painter of ``model`` / ``auto`` (else unused)."""
    from lensforge.errors import LensforgeError

    try:
        model, card = (None, None)
        if settings.get("method") in MODEL_METHODS:
            if not model_dir:
                raise InputError(f"reprocess: method {settings.get('method')!r} needs an in-painter directory",
                                 settings.get("method"))
            model, card = cached_image_inpainter(str(model_dir))
        return reprocess_tile(url, out_dir, ReprocessSettings(**settings), model=model, card=card,
                              source=source, memory_budget_gb=memory_budget_gb, mask=mask)
    except LensforgeError as err:
        return {"tile": url, "status": "failed", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - one tile's bug must not stop the batch
        return {"tile": url, "status": "failed", "reason": failure_reason(err)}


def failure_reason(err: BaseException) -> str:
    """An unexpected error as a summary row's reason: ``Type: message`` on one line, at most 300 characters."""
    return one_line(f"{type(err).__name__}: {err}", 300)


def tile_rows(urls: list[str], out_dir: str, settings: dict, model_dir: str | None, source: str | None = None,
              memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, mask: str | None = None) -> list[dict[str, Any]]:
    """``tile_row`` for a few tiles in turn: one Dask task (see ``TILES_PER_DASK_TASK``)."""
    return [tile_row(url, out_dir, settings, model_dir, source, memory_budget_gb, mask) for url in urls]


def _already_done(url: str, out_dir: Path, settings: ReprocessSettings, model_sha256: str | None,
                  source: str | None = None, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                  mask: str | None = None) -> bool:
    """The cheap check a rerun needs: the key of the tile (and its mask file) against its marker (no task,
    no pixels decoded)."""
    try:
        inputs = read_inputs(url, mask, memory_budget_gb)
        return is_done(out_dir, output_stem(url, source), inputs_key(inputs, settings, model_sha256),
                       tile_identity(url))
    except LensforgeError:
        return False  # unreadable: let its task report why


def reprocess_in_process(source: str, out_dir: str, settings: dict, model_dir: str | None = None,
                         progress: bool = True, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                         mask: str | None = None) -> dict[str, Any]:
    """:func:`reprocess_flow`'s work in this process, with no Prefect API or Dask cluster: for a single tile,
    whose work is less than their start-up. The same rows, outputs and summary."""
    def run_chunks(chunks: list[list[str]]) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        for chunk in chunks:
            try:
                rows = tile_rows(chunk, out_dir, settings, model_dir, source, memory_budget_gb, mask)
            except Exception as err:  # noqa: BLE001 - as the flow's crashed chunk: rows, not a stopped batch
                rows = [{"tile": url, "status": "failed", "reason": failure_reason(err)} for url in chunk]
            yield chunk, rows

    return reprocess_batch(source, out_dir, settings, model_dir, 1, progress, memory_budget_gb, mask, run_chunks)


def reprocess_batch(source: str, out_dir: str, settings: dict, model_dir: str | None, tiles_per_task: int,
                    progress: bool, memory_budget_gb: float, mask: str | None, run_chunks) -> dict[str, Any]:
    """The batch: skip the tiles already done, ``run_chunks(chunks)`` the rest (yielding each chunk with its
    rows), write and return the summary. Shared by the flow and the in-process path."""
    began = time.perf_counter()
    urls = list_tiles(source, exclude=out_dir)
    typed = ReprocessSettings(**settings)
    model_sha = None
    if typed.method in MODEL_METHODS and model_dir:
        model_sha = model_card(model_dir).get("weights_sha256")
    rows: dict[str, dict[str, Any]] = {}
    for url in urls:
        if _already_done(url, Path(out_dir), typed, model_sha, source, memory_budget_gb, mask):
            rows[url] = {"tile": url, "status": "skipped",
                         **recorded_row(Path(out_dir), output_stem(url, source)), "seconds": 0.0}
    pending = [url for url in urls if url not in rows]
    chunks = [pending[i:i + tiles_per_task] for i in range(0, len(pending), tiles_per_task)]
    with tqdm(total=len(urls), initial=len(rows), desc="reprocess", unit="tile", disable=not progress) as bar:
        for chunk, chunk_rows in run_chunks(chunks):
            for row in chunk_rows:
                rows[row["tile"]] = row
            bar.update(len(chunk))
    ordered = [rows[url] for url in urls]
    counts = {status: sum(row["status"] == status for row in ordered) for status in ("done", "skipped", "failed")}
    summary = {"source": source, "n_tiles": len(urls), **counts,
               "tile_seconds": round(sum(row.get("seconds", 0.0) for row in ordered), 3),
               "wall_seconds": round(time.perf_counter() - began, 3), "settings": settings,
               "model_dir": model_dir if typed.method in MODEL_METHODS else None, "model_sha256": model_sha,
               "mask": mask, "warnings": [row["warning"] for row in ordered if row.get("warning")],
               "tiles": ordered}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


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


def _weights_checked(directory: Path) -> Path:
    """``directory`` once it holds an image in-painter whose weights match its card's checksum (one-line
    ``ModelError`` naming the file otherwise): a damaged model fails the batch before any tile."""
    import hashlib

    from lensforge.errors import ModelError
    from lensforge.models.image_inpainter import WEIGHTS_FILE, read_card

    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    try:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    except OSError as err:
        raise ModelError(f"{weights}: unreadable ({type(err).__name__}); {directory} is not a usable image "
                         "in-painter", str(weights)) from None
    if digest != card.get("weights_sha256"):
        raise ModelError(f"{weights}: sha256 {digest[:12]}... does not match its model card's "
                         f"{str(card.get('weights_sha256'))[:12]}...: damaged or replaced weights", str(weights))
    return directory


def _is_path(version: str) -> bool:
    """Whether ``--model-version`` names a directory by its path rather than a version of the run."""
    return "/" in version or "\\" in version or version.startswith(("~", ".")) or Path(version).is_absolute()


def resolve_inpainter(config: RunConfig, model_version: str | None = None) -> Path:
    """The image in-painter directory of ``--method model`` / ``auto`` (absolute), its weights checked.

    ``model_version`` None: the weights shipped in the package. A path (anything with a ``/``, or starting
    with ``~`` or ``.``): that model directory (a relative path is the user's, relative to the working
    directory). A plain name: that version in the run's in-painter directory
    (:attr:`lensforge.layout.RunLayout.inpainters_dir` of ``config.run_dir``), which must lie inside it.
    ``ModelError`` in one line naming the directory looked in, otherwise.
    """
    from lensforge.errors import ModelError
    from lensforge.models.image_inpainter import CARD_FILE, SHIPPED_DIR

    if model_version is None:
        if not (SHIPPED_DIR / CARD_FILE).is_file():
            raise ModelError(f"no shipped image in-painter in {SHIPPED_DIR} (no {CARD_FILE}); name one with "
                             "--model-version DIR (a directory `lensforge train-inpainter` wrote)", str(SHIPPED_DIR))
        return _weights_checked(SHIPPED_DIR)
    if _is_path(model_version):
        directory = Path(model_version).expanduser().absolute()
        if not (directory / CARD_FILE).is_file():
            raise ModelError(f"unknown model version {model_version!r}: {directory} is not an image in-painter "
                             f"directory (no {CARD_FILE})", model_version)
        return _weights_checked(directory)
    root = RunLayout(config.run_dir).inpainters_dir.absolute()
    versions = sorted(p.name for p in root.iterdir() if (p / CARD_FILE).is_file()) if root.is_dir() else []
    directory = RunLayout(config.run_dir).inpainter_dir(model_version).absolute()
    inside = directory.resolve().parent == root.resolve() if directory.exists() else False
    if not (inside and (directory / CARD_FILE).is_file()):
        where = f"in {root} (versions: {', '.join(versions) or 'none'})" if root.is_dir() else \
            f"(no in-painter directory {root})"
        raise ModelError(f"unknown model version {model_version!r} {where}; give a model directory's path or "
                         "a version of this run (--out / --name)", model_version)
    return _weights_checked(directory)


def check_mask_option(source: str, urls: list[str], mask: str | None) -> str | None:
    """``--mask``: allowed with a single image only, and must name a file; one-line ``InputError`` otherwise."""
    if mask is None:
        return None
    import fsspec

    if len(urls) != 1 or urls[0] != source:
        raise InputError(f"--mask {mask}: SOURCE {source} is not a single image; for a directory, put each "
                         "image's mask beside it as <stem>.mask.fits", mask)
    fs, path = fsspec.core.url_to_fs(mask)
    if not fs.isfile(path):
        raise InputError(f"--mask {mask}: no such file", mask)
    if tile_identity(mask) == tile_identity(source):
        raise InputError(f"--mask {mask}: is the image itself", mask)
    return mask
