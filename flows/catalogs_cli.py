"""``lensforge catalogs``: products derived from a run's truth catalogue.

    lensforge catalogs export --name demo --select "snr > 30 and abs(g1) > 0.02" -o bright.fits
    lensforge catalogs export --store runs/demo/trainset.zarr --columns object_id,g1,g2 -o shears.parquet
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from lensforge.flows.cli_common import run_command

catalogs_app = typer.Typer(no_args_is_help=True,
                           help="Export subsets of a run's truth catalogue (FITS, Parquet, CSV with units).")

StoreOption = Annotated[Path | None, typer.Option(
    "--store", help="A training set (trainset.zarr) to read instead of the run's own.")]
SelectOption = Annotated[str | None, typer.Option(
    "--select", help='Rows to keep, e.g. "snr > 30 and abs(g1) > 0.02" (pandas query syntax); default: all.')]
ColumnsOption = Annotated[str | None, typer.Option(
    "--columns", help="Comma-separated columns to write, e.g. object_id,g1,g2; default: all.")]
FormatOption = Annotated[str | None, typer.Option(
    "--format", help="fits, parquet or csv (ECSV); default: from the output's suffix.")]
OutputOption = Annotated[Path, typer.Option(
    "--output", "-o", help="File to write (.fits, .parquet or .csv); never an input or a run's product.")]
OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace --output if it exists (an input or a run's product is refused all the same).")]


def _split_columns(columns: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; ``None`` stays ``None`` (all columns)."""
    return None if columns is None else [name.strip() for name in columns.split(",")]


@catalogs_app.command("export")
@run_command()
def export(cfg, output: OutputOption, store: StoreOption = None, select: SelectOption = None,
           columns: ColumnsOption = None, format_: FormatOption = None, overwrite: OverwriteOption = False) -> None:
    """Write the truth-catalogue rows matching --select (all by default) to --output, with units and provenance."""
    from lensforge.catalogs.export import EmptySelectionWarning, export_catalogue
    from lensforge.pipeline.rundir import require_store

    if store is None:
        store = require_store(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptySelectionWarning)
        summary = export_catalogue(store, output, selection=select, columns=_split_columns(columns), fmt=format_,
                                   overwrite=overwrite)
    for warning in caught:
        if issubclass(warning.category, EmptySelectionWarning):
            typer.echo(f"lensforge: warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    typer.echo(f"wrote {summary['path']} ({summary['format']}): {summary['n_selected']} of {summary['n_total']} "
               f"rows, {len(summary['columns'])} columns")
