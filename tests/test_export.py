"""lensforge.catalogs.export and ``lensforge catalogs export``: selected truth rows as FITS / Parquet / CSV
with units."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table
from typer.testing import CliRunner

from lensforge import catalogs
from lensforge.catalogs.export import (
    FITS_KEYWORDS,
    PARQUET_PROVENANCE_KEY,
    EmptySelectionWarning,
    export_catalogue,
    select_rows,
    write_catalogue,
)
from lensforge.catalogs.manifest import read_manifest, write_manifest
from lensforge.catalogs.store import create_store, finalize_store
from lensforge.errors import InputError
from lensforge.flows.catalogs_cli import catalogs_app
from lensforge.pipeline.config import build_config
from lensforge.pipeline.stamps.simulate import simulate_stamps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A complete little run: ``<tmp>/runs/tiny/trainset.zarr`` (24 stamps) and its manifest."""
    run = tmp_path_factory.mktemp("export") / "runs" / "tiny"
    store = run / "trainset.zarr"
    config = build_config({"survey": {"stamp_size": 32}, "seed": 9})
    create_store(store, n_objects=24, stamp_size=32, chunk_size=8)
    for start in (0, 8, 16):
        simulate_stamps(config, start, start + 8).write(store)
    finalize_store(store)
    write_manifest(run, {"seed": 9}, 9, ["trainset.zarr"])
    return run


@pytest.fixture(scope="module")
def ts(run_dir):
    return catalogs.open(run_dir / "trainset.zarr")


def _column(table: Table, name: str) -> np.ndarray:
    return np.asarray(table[name])


@pytest.mark.parametrize("expression, expected", [
    ("snr > 50", lambda t: t["snr"] > 50),
    ("snr > 30 and abs(g1) > 0.02", lambda t: (t["snr"] > 30) & (np.abs(t["g1"]) > 0.02)),
    ("ring_rotation == 90 or flux < 3000", lambda t: (t["ring_rotation"] == 90) | (t["flux"] < 3000)),
    ("not (g2 > 0)", lambda t: ~(t["g2"] > 0)),
    ("object_id in [1, 5, 7]", lambda t: np.isin(t["object_id"], [1, 5, 7])),
    ("sqrt(flux) > 80 & ~(g1 < 0)", lambda t: (np.sqrt(t["flux"]) > 80) & ~(t["g1"] < 0)),
    ("0.2 < half_light_radius * 2 <= 1.5", lambda t: (0.2 < t["half_light_radius"] * 2)
     & (t["half_light_radius"] * 2 <= 1.5)),
])
def test_selection_gives_exactly_the_rows_numpy_computes(ts, expression, expected):
    columns = {name: _column(ts.truth, name) for name in ts.truth.colnames}
    mask = select_rows(ts.truth, expression)
    assert mask.dtype == bool and mask.shape == (len(ts),)
    assert np.array_equal(mask, expected(columns))


def test_selection_sees_every_column_generically_and_none_selects_all(ts):
    assert select_rows(ts.truth, None).all() and select_rows(ts.truth, "  ").all()
    for name in ts.truth.colnames:  # any column the schema has (labels may be added) can be selected on
        column = _column(ts.truth, name)
        assert np.array_equal(select_rows(ts.truth, f"{name} >= {column.min().item()!r}"), column >= column.min())


def test_selection_works_on_a_table_read_back_from_fits(ts, tmp_path):
    export_catalogue(ts, tmp_path / "all.fits")
    table = Table.read(tmp_path / "all.fits")  # big-endian columns
    assert np.array_equal(select_rows(table, "snr > 50 and g1 < 0"),
                          (_column(ts.truth, "snr") > 50) & (_column(ts.truth, "g1") < 0))


def test_fits_round_trip_keeps_values_units_and_provenance(ts, run_dir, tmp_path):
    path = tmp_path / "sub" / "positive.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)  # every card fits (long comments are cut, not warned about)
        summary = export_catalogue(ts, path, selection="g1 > 0")
    mask = _column(ts.truth, "g1") > 0
    assert 0 < mask.sum() < len(ts)
    assert summary == {"path": str(path), "format": "fits", "n_selected": int(mask.sum()), "n_total": len(ts),
                       "columns": ts.truth.colnames}
    table = Table.read(path)
    assert table.colnames == ts.truth.colnames and len(table) == mask.sum()
    for name in ts.truth.colnames:
        assert table[name].unit == ts.truth[name].unit, name
        assert np.array_equal(_column(table, name), _column(ts.truth, name)[mask]), name
    header = fits.getheader(path, "TRUTH")
    manifest = read_manifest(run_dir)
    assert header["STORE"] == str((run_dir / "trainset.zarr").resolve())
    assert header["SELECT"] == "g1 > 0" and header["NSELECT"] == mask.sum() and header["NTOTAL"] == len(ts)
    assert header["SCHEMAV"] == ts.store.attrs["schema_version"]
    assert header["STORESHA"] == manifest["products"]["trainset.zarr"]
    if manifest["code_revision"]["commit"] is not None:
        assert header["CODEREV"] == manifest["code_revision"]["commit"]
    assert all(len(keyword) <= 8 for keyword in FITS_KEYWORDS.values())
    assert "shear" in header.comments["TTYPE4"]  # g1's description


def test_parquet_round_trip_keeps_values_unit_metadata_and_provenance(ts, run_dir, tmp_path):
    path = tmp_path / "bright.parquet"
    export_catalogue(ts, path, selection="snr > 50")
    mask = _column(ts.truth, "snr") > 50
    arrow = pq.read_table(path)
    assert arrow.num_rows == mask.sum() and arrow.column_names == ts.truth.colnames
    for name in ts.truth.colnames:
        metadata = arrow.schema.field(name).metadata
        assert metadata[b"unit"].decode() == str(ts.truth[name].unit or ""), name
        assert metadata[b"description"].decode() == ts.truth[name].description, name
        assert np.array_equal(arrow.column(name).to_numpy(), _column(ts.truth, name)[mask]), name
    facts = json.loads(arrow.schema.metadata[PARQUET_PROVENANCE_KEY])
    assert facts["selection"] == "snr > 50" and facts["n_selected"] == mask.sum() and facts["n_total"] == len(ts)
    assert facts["store_sha256"] == read_manifest(run_dir)["products"]["trainset.zarr"]
    table = Table.read(path)  # astropy finds the units too
    assert str(table["flux"].unit) == "adu" and table.meta["selection"] == "snr > 50"


def test_csv_is_ecsv_for_astropy_and_plain_csv_for_pandas(ts, tmp_path):
    path = tmp_path / "wide.csv"
    export_catalogue(ts, path, selection="abs(g2) > 0.01")
    mask = np.abs(_column(ts.truth, "g2")) > 0.01
    table = Table.read(path, format="ascii.ecsv")
    assert table.meta["selection"] == "abs(g2) > 0.01" and table.meta["n_selected"] == mask.sum()
    frame = pd.read_csv(path, comment="#")
    assert list(frame.columns) == ts.truth.colnames and len(frame) == mask.sum()
    for name in ts.truth.colnames:
        assert table[name].unit == ts.truth[name].unit, name
        assert np.array_equal(_column(table, name), _column(ts.truth, name)[mask]), name
        assert np.allclose(frame[name].to_numpy(), _column(ts.truth, name)[mask], rtol=1e-14, atol=0), name


def test_column_subset_in_the_order_asked_may_select_on_other_columns(ts, tmp_path):
    summary = export_catalogue(ts, tmp_path / "few.parquet", selection="g1 < 0", columns=["snr", "object_id", "snr"])
    mask = _column(ts.truth, "g1") < 0
    assert summary["columns"] == ["snr", "object_id"] and summary["n_selected"] == mask.sum()
    table = Table.read(tmp_path / "few.parquet")
    assert table.colnames == ["snr", "object_id"]
    assert np.array_equal(_column(table, "object_id"), _column(ts.truth, "object_id")[mask])


def test_format_option_overrides_the_suffix_and_a_path_opens_the_store(run_dir, tmp_path):
    summary = export_catalogue(run_dir / "trainset.zarr", tmp_path / "rows.dat", fmt="CSV", columns=["g1"])
    assert summary["format"] == "csv" and summary["n_selected"] == summary["n_total"] == 24
    assert Table.read(tmp_path / "rows.dat", format="ascii.ecsv").colnames == ["g1"]


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".csv"])
def test_empty_selection_warns_and_writes_a_valid_empty_file(ts, tmp_path, suffix):
    path = tmp_path / f"none{suffix}"
    with pytest.warns(EmptySelectionWarning, match="matched none of the 24 rows"):
        summary = export_catalogue(ts, path, selection="snr > 1e9", columns=["object_id", "flux"])
    assert summary["n_selected"] == 0
    table = Table.read(path, format="ascii.ecsv") if suffix == ".csv" else Table.read(path)
    assert len(table) == 0 and table.colnames == ["object_id", "flux"] and str(table["flux"].unit) == "adu"


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".csv"])
def test_small_integers_booleans_and_units_survive_every_format(tmp_path, suffix):
    table = Table({"split": np.array([0, 1, 2, -3], dtype=np.int8), "star": np.array([True, False, True, False]),
                   "size": np.array([0.5, 1.25, 2.0, 1e-7])})
    table["size"].unit, table["size"].description = "arcsec", "a size"
    path = tmp_path / f"small{suffix}"
    assert write_catalogue(table, path, facts={"selection": "x > 1", "n_selected": 4}) == suffix[1:]
    back = Table.read(path, format="ascii.ecsv") if suffix == ".csv" else Table.read(path)
    assert back["split"].tolist() == [0, 1, 2, -3]  # astropy alone writes int8 to FITS as logicals: [F, T, T, T]
    assert back["star"].tolist() == [True, False, True, False] and back["size"].tolist() == [0.5, 1.25, 2.0, 1e-7]
    assert str(back["size"].unit) == "arcsec"
    assert back.meta.get("SELECT", back.meta.get("selection")) == "x > 1"


def test_without_a_manifest_the_provenance_has_no_run_facts(run_dir, tmp_path):
    shutil.copytree(run_dir / "trainset.zarr", tmp_path / "trainset.zarr")
    export_catalogue(tmp_path / "trainset.zarr", tmp_path / "bare.fits")
    header = fits.getheader(tmp_path / "bare.fits", 1)
    assert "STORESHA" not in header and "CODEREV" not in header and header["SELECT"] == ""
    assert header["NSELECT"] == header["NTOTAL"] == 24


@pytest.mark.parametrize("expression, message", [
    ("nonexistent > 1", "unknown column 'nonexistent'"),
    ("snr >", "syntax error"),
    ("snr = 3", "syntax error (invalid syntax); compare with ==, not ="),
    ("snr + 1", "gives float64 values, not booleans"),
    ("True", "gives bool, not one boolean per row"),
    ("snr > @limit", "'@' local-variable references are not allowed"),
    ("snr.to_csv('x') > 0", "unknown function 'snr.to_csv'"),
    ("snr.values > 0", "attribute is not allowed"),
    ("g1[0] > 0", "subscript is not allowed"),
    ("open('x') == 1", "unknown function 'open'"),
])
def test_bad_selections_are_input_errors_naming_expression_and_columns(ts, tmp_path, expression, message):
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        select_rows(ts.truth, expression)
    text = str(caught.value)
    assert text.startswith(f"--select {expression!r}: ") and "\n" not in text
    assert "columns: object_id, ring_pair_id" in text and caught.value.value == expression
    with pytest.raises(InputError, match=re.escape(message)):
        export_catalogue(ts, tmp_path / "bad.fits", selection=expression)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


@pytest.mark.parametrize("out, kwargs, message", [
    ("out.txt", {}, "cannot tell the format from the suffix '.txt'"),
    ("out.fits", {"fmt": "xlsx"}, "--format 'xlsx': unknown format; valid: csv, fits, parquet"),
    ("out.fits", {"columns": ["g1", "nope"]}, "--columns: unknown columns ['nope']; valid: object_id, "),
    ("out.fits", {"columns": ["", " "]}, "--columns: no column names given"),
])
def test_bad_outputs_and_columns_are_input_errors(ts, tmp_path, out, kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        export_catalogue(ts, tmp_path / out, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_missing_store_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such store"):
        export_catalogue(tmp_path / "missing.zarr", tmp_path / "out.fits")


# --- the command line -------------------------------------------------------------------------------

def _cli(*args: str):
    app = typer.Typer()
    app.add_typer(catalogs_app, name="catalogs")
    return CliRunner().invoke(app, ["catalogs", "export", *args])


def test_cli_finds_the_run_store_from_the_config_options(run_dir, tmp_path):
    out = tmp_path / "bright.parquet"
    result = _cli("--out", str(run_dir.parent), "--name", "tiny", "--select", "snr > 50",
                  "--columns", "object_id, snr", "-o", str(out))
    mask = _column(catalogs.open(run_dir / "trainset.zarr").truth, "snr") > 50
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out} (parquet): {mask.sum()} of 24 rows, 2 columns"
    assert pq.read_table(out).column_names == ["object_id", "snr"]


def test_cli_with_an_explicit_store_and_format(run_dir, tmp_path):
    out = tmp_path / "rows.txt"
    result = _cli("--store", str(run_dir / "trainset.zarr"), "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out, comment="#")) == 24


def test_cli_warns_in_one_line_on_an_empty_selection(run_dir, tmp_path):
    result = _cli("--store", str(run_dir / "trainset.zarr"), "--select", "snr < 0", "-o", str(tmp_path / "e.fits"))
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("lensforge: warning: selection 'snr < 0' matched none")
    assert len(result.stderr.strip().splitlines()) == 1 and (tmp_path / "e.fits").is_file()


@pytest.mark.parametrize("args, message", [
    (["--select", "snr >> > 3"], "--select 'snr >> > 3': syntax error"),
    (["--select", "shear > 0"], "unknown column 'shear'"),
    (["--columns", "g1,shear"], "unknown columns ['shear']"),
])
def test_cli_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, args, message):
    result = _cli("--store", str(run_dir / "trainset.zarr"), *args, "-o", str(tmp_path / "x.fits"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lensforge: error: ") and message in lines[0]
    assert result.stdout == "" and not (tmp_path / "x.fits").exists()


def test_cli_without_a_store_for_the_run_is_exit_2(tmp_path):
    result = _cli("--out", str(tmp_path), "--name", "absent", "-o", str(tmp_path / "x.fits"))
    assert result.exit_code == 2 and "no training set" in result.stderr
