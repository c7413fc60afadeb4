"""The Zarr v3 training-set store: create, write chunk by chunk, open with validation.

Layout (one group): image arrays ``(object, y, x)`` and label arrays ``(object,)``,
chunked along ``object`` only, Blosc/zstd compressed, each with ``dimension_names``,
``units`` and ``description``; the root carries ``schema_name``/``schema_version``
and the mask bit names. Chunks are written independently by Dask workers, so a
writer only ever touches whole chunks of its own object range.
"""

from __future__ import annotations

import asyncio
import os
import re
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore

from lensforge.catalogs.schema import (
    ALL_ARRAYS,
    COUNTERFACTUAL_SHIFTS,
    IMAGE_ARRAYS,
    LABEL_ARRAYS,
    REQUIRED_ARRAYS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SPLIT_NAMES,
    STAMP_MASK_BITS,
    VISIBILITY_ARRAYS,
)
from lensforge.errors import InputError

# lz4 + bitshuffle: pixel noise does not compress, so a stronger codec such as zstd saves almost
# no disk on noisy stamps while writing them several times slower.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def _fill_value(dtype: str) -> Any:
    # NaN marks float pixels/labels that were never written; integers have no NaN.
    return np.nan if np.dtype(dtype).kind == "f" else 0


# Root attribute of stores whose writers store every chunk they write, even one equal to the fill
# value (``write_empty_chunks``): in such a store a chunk file that is absent was never written or was
# lost, never "all zero". Stores written before it may lack all-zero integer chunks by design.
EVERY_CHUNK_STORED = "every_chunk_stored"
# Root attribute set once every chunk of every array a stage wrote is on disk (a finished simulation,
# :func:`mark_complete`): from then on any absent chunk file of an array is damage, even if it was the
# array's only chunk.
COMPLETE = "complete"
# Temporaries of interrupted writes (zarr's ``<key>.<uuid hex>.partial``): not chunks.
_PARTIAL = re.compile(r".+\.[0-9a-f]{32}\.partial")


def expected_layout(name: str, n_objects: int, stamp_size: int, chunk_size: int,
                    visibility_cells: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, chunks) of array ``name`` in a store of this layout: chunked along ``object`` only
    (``visibility_cells``: the length of the ``uv`` axis of a store with visibilities)."""
    spec = ALL_ARRAYS[name]
    # Every array is chunked along ``object`` only: one chunk holds whole stamps (and all their shifts).
    sizes = {"object": n_objects, "shift": len(COUNTERFACTUAL_SHIFTS), "y": stamp_size, "x": stamp_size,
             "uv": visibility_cells or 0}
    shape = tuple(sizes[dim] for dim in spec.dims)
    return shape, (min(chunk_size, n_objects), *shape[1:])


def _create_array(group: zarr.Group, name: str, n_objects: int, stamp_size: int, chunk_size: int,
                  visibility_cells: int | None = None) -> None:
    spec = ALL_ARRAYS[name]
    shape, chunks = expected_layout(name, n_objects, stamp_size, chunk_size, visibility_cells)
    attributes: dict[str, Any] = {"units": spec.units, "description": spec.description}
    if name == "masks":
        attributes["mask_bits"] = dict(STAMP_MASK_BITS)
    if name == "counterfactuals":
        attributes["shifts"] = [[component, sign] for component, sign in COUNTERFACTUAL_SHIFTS]
    if name == "split":
        attributes["split_names"] = {str(code): label for code, label in SPLIT_NAMES.items()}
    group.create_array(
        name, shape=shape, chunks=chunks, dtype=spec.dtype, compressors=_COMPRESSOR,
        fill_value=_fill_value(spec.dtype), dimension_names=spec.dims, attributes=attributes, overwrite=True,
    )


def _open_group(path: str | Path, mode: str) -> zarr.Group:
    # Read the real metadata, not the consolidated copy: arrays are added after consolidation.
    return zarr.open_group(Path(path), mode=mode, zarr_format=3, use_consolidated=False)


def create_store(path: str | Path, n_objects: int, stamp_size: int, chunk_size: int,
                 include_noiseless: bool = True, attrs: Mapping[str, Any] | None = None,
                 counterfactual_delta_g: float | None = None,
                 visibility_cells: Mapping[str, Any] | None = None) -> Path:
    """Create an empty store for ``n_objects`` stamps of ``stamp_size``² pixels.

    ``counterfactual_delta_g`` (dimensionless shear step) adds the ``counterfactuals`` array
    ``(object, shift, y, x)``. ``visibility_cells`` (radio stamps: ``uv_wavelengths`` (n_cells, 2),
    ``samples_per_cell`` and ``n_samples``, from ``StampVisibilities``) adds ``visibilities`` and
    ``visibility_weights`` ``(object, uv)``, the cells in the attributes of ``visibilities``.
    If a store with exactly this layout already exists (an interrupted run), it is kept so that
    finished chunks survive; any other existing store is an error.
    """
    path = Path(path)
    layout = {"n_objects": n_objects, "stamp_size": stamp_size, "chunk_size": chunk_size,
              "include_noiseless": include_noiseless, "counterfactual_delta_g": counterfactual_delta_g}
    n_cells = None if visibility_cells is None else len(visibility_cells["samples_per_cell"])
    if n_cells is not None:  # only then: the layout of every other store stays what it was
        layout["visibility_cells"] = n_cells
    if path.exists():
        try:
            existing = zarr.open_group(path, mode="r")
        except Exception:  # noqa: BLE001 - anything unreadable is reported the same way
            raise InputError(f"{path}: exists but is not a Zarr store; remove it or choose another run name",
                             str(path)) from None
        if dict(existing.attrs.get("layout", {})) == layout:
            return path
        raise InputError(f"{path}: a store with a different layout already exists "
                         f"({dict(existing.attrs.get('layout', {}))} vs {layout})", str(path))
    group = zarr.open_group(path, mode="w", zarr_format=3)
    names = [*REQUIRED_ARRAYS, *(["noiseless"] if include_noiseless else []),
             *(["counterfactuals"] if counterfactual_delta_g is not None else [])]
    for name in names:
        _create_array(group, name, n_objects, stamp_size, chunk_size)
    if counterfactual_delta_g is not None:
        group["counterfactuals"].attrs["delta_g"] = float(counterfactual_delta_g)
    if visibility_cells is not None:
        for name in VISIBILITY_ARRAYS:
            _create_array(group, name, n_objects, stamp_size, chunk_size, n_cells)
        group["visibilities"].attrs.update({
            "uv_wavelengths": np.asarray(visibility_cells["uv_wavelengths"], dtype=np.float64).tolist(),
            "samples_per_cell": np.asarray(visibility_cells["samples_per_cell"], dtype=np.int64).tolist(),
            "n_samples": int(visibility_cells["n_samples"]),
            "convention": "V = sum sky exp(-2 pi i (u l + v m)), l along x, m along y, phase centre at pixel "
                          "(n//2, n//2); conjugate cells implicit"})
    group.attrs.update({
        "schema_name": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "mask_bits": dict(STAMP_MASK_BITS),
        "layout": layout, EVERY_CHUNK_STORED: True, **dict(attrs or {}),
    })
    return path


def add_image_array(path: str | Path, name: str) -> None:
    """Create the optional image array ``name`` (e.g. ``inpainted``) with the store's layout, if absent."""
    if name not in IMAGE_ARRAYS:
        raise InputError(f"unknown image array {name!r}; valid: {sorted(IMAGE_ARRAYS)}", name)
    group = _open_group(path, "r+")
    if name in group:
        return
    layout = group.attrs["layout"]
    _create_array(group, name, layout["n_objects"], layout["stamp_size"], layout["chunk_size"])
    finalize_store(path)


def write_objects(path: str | Path, start: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` (name → values for objects ``start:start+len``) into the store, all arrays at once,
    and flush their chunk files to disk (:func:`flush_chunks`) before returning.

    Callers pass chunk-aligned ranges so that two writers never share a Zarr chunk.
    """
    stored = dict(_open_group(path, "r+").arrays())  # every array's metadata in one listing
    writes = []
    for name, values in arrays.items():
        if name not in stored:
            raise InputError(f"{path}: store has no array {name!r}", name)
        values = np.asarray(values, dtype=ALL_ARRAYS[name].dtype)
        # Every chunk written is a file, even one equal to the fill value (all-zero masks): open_store's
        # completeness check can then tell a lost chunk from a chunk that was never needed.
        target = stored[name].with_config({"write_empty_chunks": True}).async_array
        writes.append(target.setitem(slice(start, start + len(values)), values))

    async def write_all() -> None:
        # One trip to zarr's event loop for every array: a chunk of stamps has ~27 arrays, most of them
        # small label columns whose separate synchronous writes cost ~1 ms of hand-offs each.
        await asyncio.gather(*writes)

    zarr_sync(write_all())
    flush_chunks(path, [stored[name] for name in arrays], start, start + max(map(len, arrays.values()), default=0))


def flush_chunks(path: str | Path, arrays: Collection[zarr.Array], start: int, stop: int) -> None:
    """Flush the chunk files of ``arrays`` that hold objects ``start..stop-1`` to disk (``fdatasync``) and
    drop those of pixel arrays (more than one dimension) from the page cache (``POSIX_FADV_DONTNEED``).

    Why: a chunk's done-marker, written next, then vouches for bytes that are on disk, not only in the page
    cache. And a simulation streams far more pixels than it will read back soon: dropping them keeps it from
    evicting the rest of the machine's cache, and lets the next chunk reuse the same pages. On the 2-core VM
    these benchmarks run on, writing into pages the kernel had not used before cost ~90 ms of CPU per 16 MB
    chunk; flushed and dropped, ~6 ms plus ~10 ms of waiting for the disk. Label columns (a few kB a chunk)
    stay cached: the truth catalogue reads them all right after the last chunk.
    """
    if stop <= start:
        return
    for array in arrays:
        rows = array.chunks[0]
        for index in range(start // rows, -(-stop // rows)):
            key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
            descriptor = os.open(Path(path) / array.path / key, os.O_RDONLY)
            try:
                os.fdatasync(descriptor)
                if array.ndim > 1 and hasattr(os, "posix_fadvise"):  # not on macOS: there they stay cached
                    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def finalize_store(path: str | Path) -> None:
    """Consolidate metadata so readers (xarray) open the store with one read."""
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not yet in the v3 spec; xarray reads it all the same.
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(Path(path), zarr_format=3)


def mark_complete(path: str | Path) -> None:
    """Record that every array of the store holds all its chunks (call when the writing stage finished):
    :func:`open_store` then treats any absent chunk file as damage. Consolidates the metadata."""
    _open_group(path, "r+").attrs[COMPLETE] = True
    finalize_store(path)


def open_store(path: str | Path, mode: str = "r", rewriting: Collection[str] = ()) -> zarr.Group:
    """Open a lensforge store, checking schema name, version, required arrays, every array's dtype,
    shape and chunking against the schema, and (local stores) that no written chunk is missing.

    Raises ``InputError`` naming the path (and the array and chunk) for a missing, foreign, damaged
    or other-version store. ``rewriting`` names arrays the caller is about to (re)write, whose chunk
    completeness is its own business (a resumable stage); arrays with attribute ``complete: false``
    are being written and are not checked for completeness either.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such store", str(path))
    try:
        group = _open_group(path, mode)
        attrs = dict(group.attrs)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for damaged metadata
        raise InputError(f"{path}: not a readable Zarr v3 store ({type(err).__name__})", str(path)) from None
    if attrs.get("schema_name") != SCHEMA_NAME:
        raise InputError(f"{path}: not a lensforge training set (schema_name={attrs.get('schema_name')!r})",
                         str(path))
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: schema version {attrs.get('schema_version')!r} is not the supported "
                         f"{SCHEMA_VERSION!r}", str(path))
    layout = attrs.get("layout")
    n_objects = layout.get("n_objects") if isinstance(layout, dict) else None
    if not isinstance(n_objects, int) or isinstance(n_objects, bool) or n_objects < 1:
        # A store with the right schema but no layout would otherwise fail later with a bare KeyError traceback.
        raise InputError(f"{path}: damaged store, no valid layout.n_objects in its attributes (got {layout!r:.80})",
                         str(path))
    try:
        missing = [name for name in REQUIRED_ARRAYS if name not in group]
        if missing:
            raise InputError(f"{path}: damaged store, missing arrays {missing}", str(path))
        # An array whose zarr.json is damaged raises here, not when the group is opened.
        wrong = [name for name in REQUIRED_ARRAYS if group[name].shape[0] != n_objects]
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - zarr raises many types for damaged array metadata
        raise InputError(f"{path}: damaged store, unreadable array metadata ({type(err).__name__})",
                         str(path)) from None
    if wrong:
        raise InputError(f"{path}: damaged store, arrays {wrong} do not have {n_objects} objects", str(path))
    try:
        arrays = dict(group.arrays())
    except Exception as err:  # noqa: BLE001 - as above, for an optional array's metadata
        raise InputError(f"{path}: damaged store, unreadable array metadata ({type(err).__name__})",
                         str(path)) from None
    _check_schema(path, arrays, layout, n_objects)
    _check_chunks(path, group, arrays, rewriting)
    return group


def _check_schema(path: Path, arrays: Mapping[str, Any], layout: Mapping[str, Any], n_objects: int) -> None:
    """``InputError`` naming the first array whose dtype, shape or chunking is not the schema's."""
    images = arrays["images"]
    stamp_size = layout.get("stamp_size") if isinstance(layout.get("stamp_size"), int) else images.shape[-1]
    chunk_size = layout.get("chunk_size") if isinstance(layout.get("chunk_size"), int) else images.chunks[0]
    for name, array in arrays.items():
        if name not in ALL_ARRAYS:
            continue  # not ours: left alone
        spec = ALL_ARRAYS[name]
        if np.dtype(array.dtype) != np.dtype(spec.dtype):
            raise InputError(f"{path}: damaged store, array {name!r} has dtype {np.dtype(array.dtype)}, "
                             f"the schema says {spec.dtype}", name)
        shape, chunks = expected_layout(name, n_objects, stamp_size, chunk_size, layout.get("visibility_cells"))
        if tuple(array.shape) != shape:
            raise InputError(f"{path}: damaged store, array {name!r} has shape {tuple(array.shape)}, "
                             f"expected {shape} {spec.dims}", name)
        if tuple(array.chunks) != chunks:
            raise InputError(f"{path}: damaged store, array {name!r} has chunks {tuple(array.chunks)}, "
                             f"expected {chunks}", name)


def _chunk_files(directory: Path) -> set[str]:
    """Chunk keys (``c/0/0/0``) stored under an array's directory; temporaries are not chunks."""
    found = set()
    for root, _, files in os.walk(directory / "c"):
        relative = Path(root).relative_to(directory).as_posix()
        found.update(f"{relative}/{name}" for name in files if not _PARTIAL.fullmatch(name))
    return found


def _check_chunks(path: Path, group: zarr.Group, arrays: Mapping[str, Any], rewriting: Collection[str]) -> None:
    """``InputError`` naming an array and chunk that should hold data but whose file is missing (local stores).

    A chunk row (objects ``i*chunk .. (i+1)*chunk - 1``) is *written* when any checked array stores
    it: writers write every array of a row together, so each array that holds any data must hold
    every written row (an unfinished simulation leaves whole rows unwritten, which is not damage:
    its labels are NaN and the stages say so). One directory walk per array.
    """
    if not isinstance(group.store, LocalStore):
        return  # listing an object store costs requests; its writers replace whole objects atomically
    root = Path(group.store.root) / group.path
    every_chunk = bool(group.attrs.get(EVERY_CHUNK_STORED, False))
    strict = every_chunk and group.attrs.get(COMPLETE) is True
    missing: dict[str, list[int]] = {}
    written_rows: set[int] = set()
    for name, array in arrays.items():
        if name not in ALL_ARRAYS or name in rewriting or array.attrs.get("complete", True) is False:
            continue
        if not every_chunk and not (name in IMAGE_ARRAYS and ALL_ARRAYS[name].dtype.startswith("float")):
            continue  # an older store may lack all-zero (integer) or all-NaN (label) chunks by design
        n_rows = -(-array.shape[0] // array.chunks[0])
        rest = (0,) * (array.ndim - 1)
        present = _chunk_files(root / name)
        absent = [i for i in range(n_rows) if array.metadata.encode_chunk_key((i, *rest)) not in present]
        if len(absent) < n_rows or strict:  # holds data (or must): it must hold every written row
            written_rows.update(set(range(n_rows)) - set(absent))
            missing[name] = absent
    for name, absent in missing.items():
        lost = absent if strict else [i for i in absent if i in written_rows]
        if lost:
            array = arrays[name]
            key = array.metadata.encode_chunk_key((lost[0], *(0,) * (array.ndim - 1)))
            first = lost[0] * array.chunks[0]
            raise InputError(f"{path}: damaged store, array {name!r} is missing chunk {key} (objects {first}.."
                             f"{min(first + array.chunks[0], array.shape[0]) - 1})"
                             + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                             + "; its data was deleted or never finished writing", name)


def read_labels(group: zarr.Group, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """All label arrays of an open store (objects ``start:stop``, default all), in schema order,
    as numpy arrays.

    Raises ``InputError`` naming the array when a chunk cannot be decoded (truncated or corrupted).
    """
    names = list(LABEL_ARRAYS)
    arrays = [group[name].async_array for name in names]

    async def read_all() -> list[Any]:
        # One trip to zarr's event loop for every column, as write_objects writes them.
        return await asyncio.gather(*(array.getitem(slice(start, stop)) for array in arrays), return_exceptions=True)

    values = zarr_sync(read_all())
    for name, value in zip(names, values, strict=True):
        if isinstance(value, Exception):  # the codecs raise many types for a damaged chunk
            where = str(group.store_path).removeprefix("file://")
            raise InputError(f"{where}: damaged store, array {name!r} has an unreadable chunk "
                             f"({type(value).__name__})", name)
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def chunk_stored(group: zarr.Group, name: str, start: int) -> bool:
    """Whether the chunk of array ``name`` holding object ``start`` has its file (always True off local disk)."""
    if not isinstance(group.store, LocalStore):
        return True
    array = group[name]
    key = array.metadata.encode_chunk_key((start // array.chunks[0], *(0,) * (array.ndim - 1)))
    return (Path(group.store.root) / group.path / name / key).is_file()


def row_stored(path: str | Path, start: int) -> bool:
    """Whether every array of the store (but those being written, ``complete: false``) has the file of the
    chunk holding object ``start``: a resuming writer redoes a chunk whose done marker outlived its data."""
    group = _open_group(path, "r")
    return all(chunk_stored(group, name, start) for name, array in group.arrays()
               if name in ALL_ARRAYS and array.attrs.get("complete", True) is not False)
