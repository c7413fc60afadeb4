"""The truth catalogue: every object's parameters as an astropy Table with units.

FITS and Parquet carry the same columns (snake_case, units in the metadata, not in
the names); both are written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Column, Table

from lensforge.atomic import atomic_path
from lensforge.catalogs.schema import LABEL_ARRAYS, ArraySpec
from lensforge.catalogs.store import finalize_store, open_store, read_labels
from lensforge.errors import InputError

# What a catalogue write imports on first use (astropy's Parquet writer imports pandas: ~0.4 s).
# Dask workers that write catalogues preload them (``lensforge.flows.run.run_with_dask``), so that
# the import does not land inside a run's last, single-worker step while the other workers wait.
WRITER_MODULES = ("pandas", "pyarrow.parquet", "astropy.io.fits")


def labels_table(labels: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None,
                 specs: Mapping[str, ArraySpec] = LABEL_ARRAYS) -> Table:
    """Build a truth Table from label arrays, attaching units and descriptions from ``specs``.

    ``specs`` is the schema of the catalogue: the stamps' ``LABEL_ARRAYS`` (default) or a tile's
    ``TILE_TRUTH_COLUMNS``; columns come out in the schema's order.
    """
    unknown = sorted(set(labels) - set(specs))
    if unknown:
        raise InputError(f"unknown truth columns {unknown}; valid: {sorted(specs)}", unknown)
    # The columns share the label arrays' memory (no copy when the dtype already matches): a copy
    # would add the whole catalogue again to the peak memory of the process that writes it.
    columns = [Column(np.asarray(labels[name], dtype=spec.dtype), name=name, copy=False,
                      unit=u.Unit(spec.units) if spec.units else None, description=spec.description)
               for name, spec in specs.items() if name in labels]
    return Table(columns, meta=dict(meta or {}), copy=False)


def _catalogue_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    return {fmt: Path(out_dir) / f"{stem}.{fmt}" for fmt in ("fits", "parquet")}


def write_truth_catalogue(table: Table, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``table`` as ``<out_dir>/<stem>.fits`` and ``.parquet``; return the paths by format."""
    paths = _catalogue_paths(out_dir, stem)
    for fmt, path in paths.items():
        with atomic_path(path) as tmp:
            (fits_safe(table) if fmt == "fits" else table).write(tmp, format=fmt, overwrite=True)
    return paths


def write_truth_catalogue_in_parts(template: Table, n_rows: int,
                                   read_rows: Callable[[int, int], Mapping[str, np.ndarray]],
                                   out_dir: str | Path, stem: str,
                                   rows_per_part: int = 16384) -> dict[str, Path]:
    """``write_truth_catalogue`` for a catalogue read ``rows_per_part`` rows at a time.

    ``template`` is the catalogue with no rows (columns, units, descriptions, meta);
    ``read_rows(start, stop)`` returns every column's values for those rows. The FITS table is
    one record array that astropy lays out from the template and this fills part by part (no
    second copy of the labels beside it); the Parquet file is written one row group per part
    (pyarrow, with the schema and metadata astropy writes for the template, so ``Table.read``
    restores units and meta). Each part is read once, for both formats, so the writing process
    holds the catalogue once (the FITS record array) and one part, never the full label arrays
    beside the writers' own copies of them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io import fits

    paths = _catalogue_paths(out_dir, stem)
    parts = [(start, min(start + rows_per_part, n_rows)) for start in range(0, n_rows, rows_per_part)]
    with atomic_path(paths["fits"]) as fits_tmp, atomic_path(paths["parquet"]) as parquet_tmp:
        fits_safe(template).write(fits_tmp, format="fits", overwrite=True)  # astropy's header and columns
        with fits.open(fits_tmp) as written:
            layout = written[1]
            hdu = fits.BinTableHDU.from_columns(layout.columns, header=layout.header, nrows=n_rows)
        template.write(parquet_tmp, format="parquet", overwrite=True)  # astropy's schema and metadata
        schema = pq.read_schema(parquet_tmp)
        # Each part is read once and goes to both: the FITS record array and one Parquet row group.
        with pq.ParquetWriter(parquet_tmp, schema, version="2.4") as writer:
            for start, stop in parts:
                rows = read_rows(start, stop)
                for name in template.colnames:
                    hdu.data[name][start:stop] = rows[name]
                arrays = [pa.array(np.asarray(rows[name], dtype=template[name].dtype.newbyteorder("<")),
                                   type=schema.field(name).type) for name in schema.names]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        hdu.writeto(fits_tmp, overwrite=True)
        del hdu
    return paths


def write_store_truth_catalogue(store_path: str | Path, out_dir: str | Path, meta: Mapping[str, Any],
                                stem: str) -> dict[str, Path]:
    """Consolidate a lensforge store and write its labels as the truth catalogue (FITS + Parquet),
    a part at a time (``write_truth_catalogue_in_parts``); ``meta`` goes into both headers."""
    finalize_store(store_path)
    store = open_store(store_path)
    n_objects = store[next(iter(LABEL_ARRAYS))].shape[0]
    template = labels_table({name: np.empty(0, spec.dtype) for name, spec in LABEL_ARRAYS.items()}, meta=meta)
    return write_truth_catalogue_in_parts(template, n_objects, lambda start, stop: read_labels(store, start, stop),
                                          out_dir, stem)


def fits_safe(table: Table) -> Table:
    """``table`` with int8 columns widened to int16: astropy writes int8 to FITS as logical (1 and 2 → True)."""
    int8_columns = [name for name in table.colnames if table[name].dtype == np.int8]
    if not int8_columns:
        return table
    safe = table.copy(copy_data=False)
    for name in int8_columns:
        column = safe[name]
        safe.replace_column(name, column.astype(np.int16))
        safe[name].unit, safe[name].description = column.unit, column.description
    return safe


def read_truth_catalogue(path: str | Path) -> Table:
    """Read a truth catalogue (FITS or Parquet, chosen by suffix) with its units."""
    path = Path(path)
    formats = {".fits": "fits", ".parquet": "parquet"}
    if path.suffix not in formats:
        raise InputError(f"{path}: expected a .fits or .parquet catalogue", str(path))
    if not path.is_file():
        raise InputError(f"{path}: no such catalogue", str(path))
    try:
        return Table.read(path, format=formats[path.suffix])
    except Exception as err:  # noqa: BLE001 - astropy/pyarrow raise many types for damaged files
        raise InputError(f"{path}: unreadable catalogue ({type(err).__name__})", str(path)) from None
