"""Subsets of a training set's truth catalogue, selected by an expression, as FITS / Parquet / CSV.

    from lensforge.catalogs.export import export_catalogue
    export_catalogue("runs/demo/trainset.zarr", "bright.fits", selection="snr > 30 and abs(g1) > 0.02",
                     columns=["object_id", "g1", "g2", "snr"])

A selection is a pandas-query style expression over the catalogue's columns: comparisons,
``and`` / ``or`` / ``not`` (or ``&`` / ``|`` / ``~``), arithmetic, ``in [..]`` and the math
functions of :data:`SELECTION_FUNCTIONS` (``abs``, ``sqrt``, ``log10`` ...). It must give one
boolean per row; anything else is an :class:`~lensforge.errors.InputError` naming the expression
and the valid columns.

Every format keeps the units and carries the provenance (:func:`provenance`): the store, the
selection, the rows selected of the total, the schema version and, when the run is complete,
the manifest's code revision and the store's checksum.

- FITS: a binary table (``TUNITn`` units, descriptions as ``TTYPEn`` comments); provenance in
  8-character header keywords (see :data:`FITS_KEYWORDS`). ``int8`` columns (e.g. ``split``)
  are written as ``int16``: astropy would write them as FITS logicals, turning 2 into True.
- Parquet: each field's metadata holds ``unit`` and ``description``; the file metadata holds the
  provenance as JSON under ``lensforge_provenance`` (and astropy's ``table_meta_yaml``, so
  ``Table.read`` gives the units back too).
- CSV: astropy ECSV with ``,`` delimiter: units, descriptions and provenance live in the ``#``
  header, so ``pandas.read_csv(path, comment="#")`` reads the plain table and
  ``Table.read(path, format="ascii.ecsv")`` the table with units (astropy guesses plain CSV
  from a ``.csv`` suffix, hence the explicit format).

Writes are atomic (:func:`lensforge.atomic.atomic_path`).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table

from lensforge.atomic import atomic_path
from lensforge.errors import InputError, one_line
from lensforge.layout import STORE_NAME, run_product, store_sidecars

if TYPE_CHECKING:
    from lensforge.catalogs.dataset import TrainingSet

FORMATS: dict[str, str] = {".fits": "fits", ".parquet": "parquet", ".csv": "csv"}
"""Output suffix → format name."""

SELECTION_FUNCTIONS: tuple[str, ...] = (
    "abs", "sqrt", "exp", "expm1", "log", "log1p", "log10", "floor", "ceil", "sin", "cos", "tan",
    "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh")
"""Functions a selection may call (those pandas ``eval`` supports)."""

FITS_KEYWORDS: dict[str, str] = {
    "store": "STORE", "selection": "SELECT", "n_selected": "NSELECT", "n_total": "NTOTAL",
    "schema_version": "SCHEMAV", "code_commit": "CODEREV", "code_dirty": "CODEDIRT", "store_sha256": "STORESHA",
}
"""Provenance key → FITS header keyword (at most 8 characters)."""

_FITS_COMMENTS: dict[str, str] = {
    "store": "lensforge training set the rows come from", "selection": "row selection (empty: all rows)",
    "n_selected": "rows selected", "n_total": "rows in the truth catalogue",
    "schema_version": "lensforge-trainset schema version", "code_commit": "git commit of the run (manifest)",
    "code_dirty": "uncommitted changes at run time", "store_sha256": "SHA-256 of the store (manifest)",
}

PARQUET_PROVENANCE_KEY = b"lensforge_provenance"

_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load,
                  ast.Constant, ast.Call, ast.List, ast.Tuple, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)
_BACKTICKED = re.compile(r"`[^`]*`")


class EmptySelectionWarning(UserWarning):
    """A selection matched no rows: the export is a valid, empty catalogue."""


def _selection_error(selection: str, reason: str, columns: Sequence[str]) -> InputError:
    return InputError(f"--select {selection!r}: {one_line(reason)}; columns: {', '.join(columns)}", selection)


def _check_syntax(selection: str, columns: Sequence[str]) -> None:
    """Refuse what is not a plain expression over the columns (``@`` locals, attributes, indexing, unknown names).

    Backtick-quoted names are pandas syntax, checked by pandas itself.
    """
    if "@" in selection:
        raise _selection_error(selection, "'@' local-variable references are not allowed", columns)
    try:
        tree = ast.parse(_BACKTICKED.sub("_quoted_name_", selection).strip(), mode="eval")
    except SyntaxError as err:
        hint = "; compare with ==, not =" if re.search(r"(?<![=!<>])=(?!=)", selection) else ""
        raise _selection_error(selection, f"syntax error ({err.msg}){hint}", columns) from None
    known = {*columns, "_quoted_name_"}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise _selection_error(selection, f"{type(node).__name__.lower()} is not allowed in a selection "
                                   f"(only columns, numbers, comparisons, and/or/not, arithmetic and "
                                   f"{', '.join(SELECTION_FUNCTIONS[:4])}, ...)", columns)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                               and node.func.id in SELECTION_FUNCTIONS and not node.keywords):
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise _selection_error(selection, f"unknown function {name!r} (valid: {', '.join(SELECTION_FUNCTIONS)})",
                                   columns)
        if isinstance(node, ast.Name) and node.id not in known and node.id not in SELECTION_FUNCTIONS:
            raise _selection_error(selection, f"unknown column {node.id!r}", columns)


def _frame(table: Table):
    """The table's 1-D columns as a pandas DataFrame in native byte order (FITS data is big-endian)."""
    import pandas as pd

    data = {}
    for name in table.colnames:
        column = np.asarray(table[name])
        if column.ndim == 1:
            data[name] = column.astype(column.dtype.newbyteorder("="), copy=False)
    return pd.DataFrame(data, index=pd.RangeIndex(len(table)))


def select_rows(table: Table, selection: str | None) -> np.ndarray:
    """Boolean mask of the rows of ``table`` for which ``selection`` holds.

    Args:
        table: A catalogue (e.g. ``TrainingSet.truth``); the expression sees its 1-D columns by name,
            as plain numbers in the column's unit (``half_light_radius > 0.5`` means 0.5 arcsec).
        selection: A pandas-query style expression, e.g. ``"snr > 30 and abs(g1) > 0.02"``; ``None`` or
            blank selects every row.

    Returns:
        ``bool`` array (``numpy.ndarray``) of ``len(table)``.

    Raises:
        InputError: Unknown column or function, syntax error, ``@`` reference, or a result that is not one
            boolean per row; the message names the expression and the valid columns.
    """
    if selection is None or not selection.strip():
        return np.ones(len(table), dtype=bool)
    frame = _frame(table)
    columns = list(frame.columns)
    _check_syntax(selection, columns)
    try:
        result = frame.eval(selection.strip(), engine="python")
    except Exception as err:  # noqa: BLE001 - pandas raises many types for a bad expression
        raise _selection_error(selection, f"{type(err).__name__}: {err}", columns) from None
    return _as_mask(result, selection, len(table), columns)


def _as_mask(result: Any, selection: str, n_rows: int, columns: Sequence[str]) -> np.ndarray:
    """Check that an evaluated selection is one boolean per row and return it as a numpy array."""
    import pandas as pd

    if not isinstance(result, pd.Series) or len(result) != n_rows:
        kind = type(result).__name__ if not isinstance(result, pd.Series) else f"{len(result)} values"
        raise _selection_error(selection, f"gives {kind}, not one boolean per row", columns)
    if not pd.api.types.is_bool_dtype(result.dtype) or result.isna().any():
        raise _selection_error(selection, f"gives {result.dtype} values, not booleans (use a comparison)",
                               columns)
    return result.to_numpy(dtype=bool)


def _format_of(out_path: Path, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from the suffix of ``out_path``."""
    valid = sorted(FORMATS.values())
    if fmt is not None:
        name = fmt.strip().lower().lstrip(".")
        if name not in valid:
            raise InputError(f"--format {fmt!r}: unknown format; valid: {', '.join(valid)}", fmt)
        return name
    if out_path.suffix.lower() not in FORMATS:
        raise InputError(f"{out_path}: cannot tell the format from the suffix {out_path.suffix!r}; use one of "
                         f"{', '.join(FORMATS)} or give --format ({', '.join(valid)})", str(out_path))
    return FORMATS[out_path.suffix.lower()]


def _pick_columns(table: Table, columns: Sequence[str] | None) -> list[str]:
    """The columns to write, in the order asked (duplicates dropped); all when ``columns`` is None."""
    if columns is None:
        return list(table.colnames)
    wanted = list(dict.fromkeys(name.strip() for name in columns if name.strip()))
    if not wanted:
        raise InputError(f"--columns: no column names given; valid: {', '.join(table.colnames)}", list(columns))
    unknown = [name for name in wanted if name not in table.colnames]
    if unknown:
        raise InputError(f"--columns: unknown columns {unknown}; valid: {', '.join(table.colnames)}", unknown)
    return wanted


def provenance(training_set: TrainingSet, selection: str | None, n_selected: int) -> dict[str, Any]:
    """Where an export comes from: store path, selection, row counts, schema version, manifest facts.

    ``code_commit`` / ``code_dirty`` / ``store_sha256`` come from the run's manifest and are left
    out when the run has none (incomplete) or the manifest does not record them.
    """
    attrs = dict(training_set.store.attrs)
    facts: dict[str, Any] = {
        "store": str(Path(training_set.path).resolve()),
        "selection": (selection or "").strip(),
        "n_selected": int(n_selected),
        "n_total": len(training_set.truth),
        "schema_version": str(attrs.get("schema_version", training_set.schema_version)),
    }
    manifest = training_set.manifest
    if manifest is not None:
        revision = manifest.get("code_revision") or {}
        facts["code_commit"] = revision.get("commit")
        facts["code_dirty"] = revision.get("dirty")
        facts["store_sha256"] = (manifest.get("products") or {}).get(Path(training_set.path).name)
    return {key: value for key, value in facts.items() if value is not None}


def _ascii(value: Any) -> Any:
    """FITS headers are ASCII: escape anything else in strings (e.g. a path with accents)."""
    return value.encode("ascii", "backslashreplace").decode("ascii") if isinstance(value, str) else value


def _fitted_comment(keyword: str, value: Any, comment: str) -> str:
    """``comment`` cut to fit a header card's 80 columns beside ``value``.

    A value ends at column 30 or later; a long string's CONTINUE cards hold the whole comment.
    """
    from astropy.io import fits

    image = fits.Card(keyword, value).image
    if len(image) > 80:
        return comment
    room = 80 - max(len(image.rstrip()), 30) - 3  # " / "
    if room < 8:
        return ""
    return comment if len(comment) <= room else comment[:room - 3] + "..."


def _write_fits(table: Table, tmp: Path, facts: dict[str, Any]) -> None:
    """A binary table (units in ``TUNITn``, descriptions as ``TTYPEn`` comments) with provenance cards."""
    from astropy.io import fits

    plain = Table(table, copy=False)
    plain.meta = {}
    for name in plain.colnames:
        if plain[name].dtype == np.int8:  # astropy writes int8 as FITS logical ('L'), losing every value > 1
            plain.replace_column(name, plain[name].astype(np.int16), copy=False)
    hdu = fits.table_to_hdu(plain)
    hdu.name = "TRUTH"
    for index, name in enumerate(plain.colnames, start=1):
        keyword = f"TTYPE{index}"
        hdu.header.comments[keyword] = _fitted_comment(keyword, name, _ascii(plain[name].description or ""))
    for key, value in facts.items():
        keyword, value = FITS_KEYWORDS.get(key, key[:8].upper()), _ascii(value)
        hdu.header[keyword] = (value, _fitted_comment(keyword, value, _FITS_COMMENTS.get(key, key)))
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True, output_verify="exception")


def _write_parquet(table: Table, tmp: Path, facts: dict[str, Any]) -> None:
    """Fields with ``unit`` / ``description`` metadata; provenance JSON and astropy's YAML header in the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table.meta import get_yaml_from_table

    fields, arrays = [], []
    for name in table.colnames:
        column = np.asarray(table[name])
        column = column.astype(column.dtype.newbyteorder("="), copy=False)
        metadata = {"unit": str(table[name].unit or ""), "description": table[name].description or ""}
        fields.append(pa.field(name, pa.from_numpy_dtype(column.dtype), metadata=metadata))
        arrays.append(pa.array(column))
    described = Table(table, copy=False)
    described.meta = dict(facts)
    metadata = {PARQUET_PROVENANCE_KEY: json.dumps(facts).encode("utf-8"),
                b"table_meta_yaml": "\n".join(get_yaml_from_table(described)).encode("utf-8")}
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata)), tmp)


def _write_csv(table: Table, tmp: Path, facts: dict[str, Any]) -> None:
    """ECSV with ``,``: units, descriptions and provenance in the ``#`` header."""
    described = Table(table, copy=False)
    described.meta = dict(facts)
    described.write(tmp, format="ascii.ecsv", delimiter=",", overwrite=True)


_WRITERS = {"fits": _write_fits, "parquet": _write_parquet, "csv": _write_csv}


def write_catalogue(table: Table, out_path: str | Path, fmt: str | None = None,
                    facts: Mapping[str, Any] | None = None) -> str:
    """Write ``table`` (units and descriptions kept) atomically as FITS, Parquet or CSV (ECSV).

    Args:
        table: The catalogue; its own ``meta`` is not written, ``facts`` is.
        out_path: The file to write; parent directories are created, an existing file is replaced.
        fmt: ``"fits"``, ``"parquet"`` or ``"csv"``; ``None`` infers it from the suffix.
        facts: Provenance (str / int / bool values, e.g. from :func:`provenance`): FITS header cards,
            Parquet file metadata (JSON) or the ECSV header's ``meta``.

    Returns:
        The format written (str).

    Note:
        FITS has no signed 8-bit integers: ``int8`` columns are written as ``int16``.
    """
    out_path = Path(out_path)
    fmt = _format_of(out_path, fmt)
    try:
        with atomic_path(out_path) as tmp:
            _WRITERS[fmt](table, tmp, dict(facts or {}))
    except OSError as err:
        raise InputError(f"{out_path}: cannot write ({err.strerror or err})", str(out_path)) from None
    return fmt


def check_output(out_path: str | Path, store: str | Path, overwrite: bool = False) -> Path:
    """``out_path`` if an export may write it, else ``InputError`` naming why.

    Refused: the store being read or a file inside it, the store's sidecars, any product of a
    lensforge run directory (:func:`lensforge.layout.run_product`: ``config.yaml``, ``manifest.json``,
    ``trainset.zarr/``, ``catalogs/``, ``models/``, ``tiles/``, ``report/``; the store's own run counts
    even without its ``config.yaml``), something that is not a regular file, and an existing file
    unless ``overwrite``. Symlinks are resolved first, so a link cannot point the write elsewhere.
    """
    out_path, store = Path(out_path), Path(store)
    resolved, store_resolved = out_path.resolve(), store.resolve()
    if resolved == store_resolved or store_resolved in resolved.parents:
        raise InputError(f"--output {out_path}: inside the training set {store} being exported; write elsewhere",
                         str(out_path))
    truth, provenance_file = store_sidecars(store)
    if resolved in {p.resolve() for p in (truth.with_suffix(".fits"), truth.with_suffix(".parquet"),
                                          provenance_file)}:
        raise InputError(f"--output {out_path}: a file that belongs with the training set {store}; write elsewhere",
                         str(out_path))
    owner = run_product(out_path, runs=(store.parent,) if store.name == STORE_NAME else ())
    if owner is not None:
        run, product = owner
        raise InputError(f"--output {out_path}: is {product} of the run directory {run}; a run's products are "
                         "never written over, write elsewhere", str(out_path))
    if out_path.is_symlink() or out_path.exists():
        if not out_path.is_file():
            raise InputError(f"--output {out_path}: exists and is not a regular file", str(out_path))
        if not overwrite:
            raise InputError(f"--output {out_path}: already exists; pass --overwrite to replace it", str(out_path))
    return out_path


def export_catalogue(training_set_or_path: TrainingSet | str | Path, out_path: str | Path,
                     selection: str | None = None, columns: Sequence[str] | None = None,
                     fmt: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the rows of the truth catalogue selected by ``selection`` to ``out_path``.

    Args:
        training_set_or_path: An open :class:`~lensforge.catalogs.dataset.TrainingSet` or the path of a
            store (``trainset.zarr``).
        out_path: The file to write (atomically; parent directories are created). It must not be the store,
            a file of it or a product of a run directory (see :func:`check_output`).
        selection: Expression over the columns (see :func:`select_rows`); ``None`` exports every row. It may
            use columns that are not exported.
        columns: Columns to write, in this order; ``None`` writes all of them.
        fmt: ``"fits"``, ``"parquet"`` or ``"csv"`` (ECSV); ``None`` infers it from the suffix
            (``.fits``, ``.parquet``, ``.csv``).
        overwrite: Replace an existing ``out_path`` (never an input or a run's product); else refuse it.

    Returns:
        A dict: ``path`` (str), ``format``, ``n_selected``, ``n_total`` and ``columns`` (list of str).

    Raises:
        InputError: Bad selection, unknown column or format, unreadable store, an unwritable ``out_path``, an
            ``out_path`` that is an input or a run's product, or one that exists without ``overwrite``.

    Warns:
        EmptySelectionWarning: The selection matched no rows; the file is still written (valid and empty).
    """
    from lensforge.catalogs.dataset import TrainingSet, open_trainset

    out_path = Path(out_path)
    fmt = _format_of(out_path, fmt)
    check_output(out_path, training_set_or_path.path if isinstance(training_set_or_path, TrainingSet)
                 else training_set_or_path, overwrite)
    training_set = training_set_or_path if isinstance(training_set_or_path, TrainingSet) \
        else open_trainset(training_set_or_path)
    truth = training_set.truth
    names = _pick_columns(truth, columns)
    mask = select_rows(truth, selection)
    subset = truth[mask][names]
    if not len(subset):
        warnings.warn(f"selection {selection!r} matched none of the {len(truth)} rows; writing an empty "
                      f"{fmt} catalogue to {out_path}", EmptySelectionWarning, stacklevel=2)
    write_catalogue(subset, out_path, fmt, provenance(training_set, selection, len(subset)))
    return {"path": str(out_path), "format": fmt, "n_selected": len(subset), "n_total": len(truth),
            "columns": names}
