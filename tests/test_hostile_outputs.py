"""Outputs that would land on users' data, fed to the real ``lensforge`` CLI.

``catalogs export`` onto a run's truth catalogue, manifest, store or models; ``reprocess`` of two
sources with tiles of the same name into one directory, into a directory inside its source, with a
registry whose ``PROMOTED`` points outside it; tiles that would blow the memory budget (a
tile-compressed 30000² image, a symlink to ``/dev/zero``), a FIFO, absurd WCS numbers. Each refusal
is one line naming what is wrong with a non-zero exit (``lensforge: error: ...`` and 2 for the
command, a ``failed`` row and 1 for one tile of a batch), and every file written before keeps its
bytes (sha256 of the trees before and after).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from hostile_support import finished_run as _finished_run
from hostile_support import sha256_tree as _sha256_tree
from typer.testing import CliRunner

from lensforge.flows.cli import app

HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
SIZE = 96


def _invoke(args: list[str]) -> SimpleNamespace:
    """``lensforge ARGS`` in this process; warnings shown by default would be lines too, so they are kept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, [str(a) for a in args])
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return SimpleNamespace(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                           exception=exception, warnings=shown)


def _one_line_error(outcome, *expect: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``lensforge: error: ...`` line on stderr holding ``expect``."""
    everything = outcome.stdout + outcome.stderr
    assert outcome.exception is None, f"uncaught {type(outcome.exception).__name__}: {outcome.exception}"
    assert "Traceback" not in everything, everything
    assert outcome.exit_code == 2, everything
    assert outcome.stdout.strip() == "", outcome.stdout
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith("lensforge: error: "), lines[0]
    for text in expect:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert len(lines[0]) < 600 and not outcome.warnings, outcome.warnings
    return lines[0]


# --- tiles ------------------------------------------------------------------------------------------

def _sky(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 2.0, size=(SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for x, y in rng.uniform(15, SIZE - 15, size=(4, 2)):
        image += (400.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)).astype(np.float32)
    return image


def _wcs_header(**changes) -> fits.Header:
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 48.0, "CRPIX2": 48.0,
                          "CRVAL1": 150.1, "CRVAL2": 2.2, "CDELT1": -5.5e-5, "CDELT2": 5.5e-5,
                          "CUNIT1": "deg", "CUNIT2": "deg"})
    header.update(changes)
    return header


def _mef(seed: int = 1, **wcs) -> fits.HDUList:
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[:, 40] = 2
    return fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(_sky(seed), header=_wcs_header(**wcs), name="SCIENCE"),
                         fits.ImageHDU(mask, name="MASK"),
                         fits.ImageHDU(np.full((SIZE, SIZE), 4.0, np.float32), name="VARIANCE")])


def _compressed_30000(path: Path) -> None:
    """A small tile-compressed image whose headers then declare 30000 x 30000 pixels (3.6 GB of float32):
    what a 4.8 MB compressed survey tile of that size says; sizing must refuse it from the headers."""
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(_sky(3), name="SCIENCE")]).writeto(path)
    data = path.read_bytes()
    for key in (b"ZNAXIS1", b"ZNAXIS2"):
        card = key.ljust(8) + b"= " + str(SIZE).encode().rjust(20)
        assert data.count(card) == 1, card
        data = data.replace(card, key.ljust(8) + b"= " + b"30000".rjust(20))
    path.write_bytes(data)


# --- the world --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_api_env):
    """A finished run (truth catalogue, manifest, promoted model), a loose store, and two nights of tiles."""
    root = tmp_path_factory.mktemp("outputs")
    runs = root / "runs"
    good = _finished_run(runs, "good")
    evil = _finished_run(runs, "evil")  # its PROMOTED will name a model outside its registry
    outside = runs / "chunks" / "models" / "v001"
    shutil.copytree(evil / "models" / "v001", outside)
    promoted = json.loads((evil / "models" / "PROMOTED").read_text())
    (evil / "models" / "PROMOTED").write_text(json.dumps({**promoted, "version": "../../chunks/models/v001"}))
    (evil / "models" / "v002").symlink_to(outside, target_is_directory=True)
    loose = root / "loose"  # a store outside any run directory
    shutil.copytree(good / "trainset.zarr", loose / "set.zarr")
    sky = root / "sky"
    (sky / "night1" / "deep").mkdir(parents=True)
    (sky / "night2").mkdir()
    _mef(1).writeto(sky / "night1" / "a.fits")
    _mef(2).writeto(sky / "night1" / "deep" / "a.fits")  # same name, another directory of the same source
    _mef(4).writeto(sky / "night2" / "a.fits")
    hostile = root / "hostile"
    hostile.mkdir()
    _compressed_30000(hostile / "compressed_30000.fits")
    (hostile / "zero.fits").symlink_to("/dev/zero")
    os.mkfifo(hostile / "pipe.fits")
    _mef(5, CRPIX1=1e300).writeto(hostile / "crpix_1e300.fits")
    _mef(6, CRPIX2=-5e6).writeto(hostile / "crpix_far.fits")
    _mef(7, CDELT1=-1000.0, CDELT2=1000.0).writeto(hostile / "scale_1000deg.fits")
    _mef(8, CDELT1=-1e-14, CDELT2=1e-14).writeto(hostile / "scale_tiny.fits")
    buffer = root / "plain.fits"
    _mef(9).writeto(buffer)
    import gzip

    (hostile / "good.fits.gz").write_bytes(gzip.compress(buffer.read_bytes()))
    buffer.unlink()
    out = root / "out"
    out.mkdir()
    (out / "existing.fits").write_bytes(b"someone's earlier export\n")
    (out / "a_directory.fits").mkdir()
    (out / "link.fits").symlink_to(good / "catalogs" / "truth.fits")
    return SimpleNamespace(root=root, runs=runs, good=good, evil=evil, loose=loose / "set.zarr", sky=sky,
                           hostile=hostile, out=out, env=prefect_api_env)


def _tree(world) -> dict[str, str]:
    return _sha256_tree(world.runs, world.root / "loose", world.sky, world.hostile, world.out)


# --- catalogs export --------------------------------------------------------------------------------

def _run(w, *rest):
    return ["catalogs", "export", "--out", w.runs, "--name", "good", *rest]


EXPORT_CASES = {
    "run_truth_catalogue": (lambda w: _run(w, "-o", w.good / "catalogs" / "truth.fits", "--select", "snr > 30"),
                            ("catalogs/truth.fits of the run directory", "never written over")),
    "run_truth_with_overwrite": (lambda w: _run(w, "-o", w.good / "catalogs" / "truth.fits", "--overwrite"),
                                 ("catalogs/truth.fits of the run directory",)),
    "run_manifest": (lambda w: _run(w, "-o", w.good / "manifest.json", "--format", "fits"),
                     ("manifest.json of the run directory",)),
    "run_config": (lambda w: _run(w, "-o", w.good / "config.yaml", "--format", "csv", "--overwrite"),
                   ("config.yaml of the run directory",)),
    "run_store_file": (lambda w: _run(w, "-o", w.good / "trainset.zarr" / "zarr.json", "--format", "fits"),
                       ("inside the training set",)),
    "run_new_file_in_catalogs": (lambda w: _run(w, "-o", w.good / "catalogs" / "bright.fits"),
                                 ("catalogs/bright.fits of the run directory",)),
    "run_models": (lambda w: _run(w, "-o", w.good / "models" / "v001" / "x.parquet"),
                   ("models/v001/x.parquet of the run directory",)),
    "run_report": (lambda w: _run(w, "-o", w.good / "report" / "x.csv"), ("report/x.csv of the run directory",)),
    "run_tiles": (lambda w: _run(w, "-o", w.good / "tiles" / "x.fits"), ("tiles/x.fits of the run directory",)),
    "other_run_manifest": (lambda w: _run(w, "-o", w.evil / "manifest.json", "--format", "csv", "--overwrite"),
                           ("manifest.json of the run directory", "evil")),
    "symlink_to_truth": (lambda w: _run(w, "-o", w.out / "link.fits", "--overwrite"),
                         ("link.fits", "catalogs/truth.fits of the run directory")),
    "loose_store_inside": (lambda w: ["catalogs", "export", "--store", w.loose, "-o", w.loose / "rows.fits"],
                           ("inside the training set",)),
    "existing_file": (lambda w: _run(w, "-o", w.out / "existing.fits"),
                      ("existing.fits: already exists; pass --overwrite to replace it",)),
    "existing_directory": (lambda w: _run(w, "-o", w.out / "a_directory.fits", "--overwrite"),
                           ("a_directory.fits: exists and is not a regular file",)),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_never_writes_over_an_input_a_run_product_or_an_existing_file(case, world):
    args, expect = EXPORT_CASES[case]
    before = _tree(world)
    _one_line_error(_invoke(args(world)), "--output", *expect)
    assert _tree(world) == before


def test_export_overwrites_an_ordinary_file_only_when_asked(world, tmp_path):
    target = tmp_path / "mine.fits"
    first = _invoke(_run(world, "-o", target, "--columns", "object_id"))
    assert first.exit_code == 0, first.stdout + first.stderr
    written = target.read_bytes()
    _one_line_error(_invoke(_run(world, "-o", target)), "already exists")
    assert target.read_bytes() == written
    again = _invoke(_run(world, "-o", target, "--select", "snr > 50", "--overwrite"))
    assert again.exit_code == 0 and len(Table.read(target)) < 8, again.stdout + again.stderr


# --- reprocess: where outputs go ---------------------------------------------------------------------

def _reprocess(world, source, output, *rest):
    return _invoke(["reprocess", source, "--output", output, "--quiet", "--set", "dask.n_workers=1",
                    "--out", world.runs, *rest])


@pytest.fixture(scope="module")
def nights(world):
    """night1 reprocessed into a directory inside itself, then again (a rerun): what the cases must keep."""
    out = world.sky / "night1" / "out"
    first = _reprocess(world, world.sky / "night1", out)
    rerun = _reprocess(world, world.sky / "night1", out)
    return SimpleNamespace(out=out, first=first, rerun=rerun)


def test_tiles_of_the_same_name_in_one_source_get_their_own_outputs(nights):
    assert nights.first.exit_code == 0, nights.first.stdout + nights.first.stderr
    assert nights.first.stdout.startswith("2 tiles: 2 done, 0 skipped, 0 failed")
    names = sorted(p.relative_to(nights.out).as_posix() for p in nights.out.rglob("*.fits"))
    assert names == ["a.catalog.fits", "a.reprocessed.fits", "deep/a.catalog.fits", "deep/a.reprocessed.fits"]
    marker = json.loads((nights.out / "deep" / "a.done.json").read_text())
    assert marker["source"].endswith("night1/deep/a.fits")


def test_a_rerun_with_the_output_inside_the_source_never_reads_its_outputs(nights):
    assert nights.rerun.exit_code == 0, nights.rerun.stdout + nights.rerun.stderr
    assert nights.rerun.stdout.startswith("2 tiles: 0 done, 2 skipped, 0 failed"), nights.rerun.stdout
    assert not list(nights.out.rglob("*.reprocessed.reprocessed*"))


REPROCESS_REFUSALS = {
    "other_source_same_name": (lambda w, n: (w.sky / "night2", n.out),
                               ("a.reprocessed.fits there holds the products of", "night1/a.fits",
                                "night2/a.fits", "another --output")),
    "output_holds_the_source": (lambda w, n: (w.sky / "night1", w.sky),
                                ("holds the source", "read back as tiles")),
    "output_is_the_source": (lambda w, n: (w.sky / "night2", w.sky / "night2"), ("holds the source",)),
    "output_in_run_catalogs": (lambda w, n: (w.sky / "night2", w.good / "catalogs"),
                               ("is catalogs of the run directory",)),
    "output_in_run_store": (lambda w, n: (w.sky / "night2", w.good / "trainset.zarr" / "out"),
                            ("is trainset.zarr/out of the run directory",)),
    "output_is_a_file": (lambda w, n: (w.sky / "night2", w.out / "existing.fits"),
                         ("exists and is not a directory",)),
    "source_symlink_to_dev_zero": (lambda w, n: (w.hostile / "zero.fits", w.root / "new"),
                                   ("zero.fits: not a regular file",)),
    "source_fifo": (lambda w, n: (w.hostile / "pipe.fits", w.root / "new"), ("pipe.fits: not a regular file",)),
}


@pytest.mark.parametrize("case", sorted(REPROCESS_REFUSALS))
def test_reprocess_refuses_outputs_over_other_products_in_one_line(case, world, nights):
    source, output = REPROCESS_REFUSALS[case][0](world, nights)
    before = _tree(world)
    _one_line_error(_reprocess(world, source, output), *REPROCESS_REFUSALS[case][1])
    assert _tree(world) == before
    assert not (world.root / "new").exists()


# Without --model-version, reprocess uses the shipped image in-painter (package data): the run's
# hostile registry is never read, so only named versions can point outside it.
@pytest.mark.parametrize(("version", "expect"), [
    ("v002", ("unknown model version 'v002'",)),
    ("../../chunks/models/v001", ("unknown model version '../../chunks/models/v001'",)),
])
def test_reprocess_loads_no_model_from_outside_the_registry(version, expect, world):
    before = _tree(world)
    outcome = _invoke(["reprocess", world.sky / "night2", "--output", world.root / "new", "--method", "model",
                       "--quiet", "--out", world.runs, "--name", "evil", "--model-version", version])
    _one_line_error(outcome, *expect)
    assert _tree(world) == before and not (world.root / "new").exists()


# --- reprocess: hostile tiles in one batch ------------------------------------------------------------

TILE_REASONS = {
    "compressed_30000.fits": ("30000x30000 pixels, tile-compressed", "over the memory budget of 4 GB",
                              "limits.memory_budget_gb"),
    "zero.fits": ("not a regular file",),
    "pipe.fits": ("not a regular file",),
    "crpix_1e300.fits": ("invalid WCS, CRPIX1 = 1e+300 is more than 1000 image sizes",),
    "crpix_far.fits": ("invalid WCS, CRPIX2 = -5e+06",),
    "scale_1000deg.fits": ("invalid WCS", "pixel scale 1e+03 deg is outside"),
    "scale_tiny.fits": ("invalid WCS", "pixel scale 1e-14 deg is outside"),
}


@pytest.fixture(scope="module")
def batch(world):
    out = world.root / "batch"
    before = _tree(world)
    outcome = _reprocess(world, world.hostile, out)
    return SimpleNamespace(outcome=outcome, out=out, unchanged=_tree(world) == before)


def test_the_hostile_batch_fails_each_bad_tile_and_keeps_the_good_one(batch):
    outcome = batch.outcome
    everything = outcome.stdout + outcome.stderr
    assert outcome.exception is None and "Traceback" not in everything, everything
    assert outcome.exit_code == 1, everything
    assert outcome.stderr.strip() == "" and not outcome.warnings, (outcome.stderr, outcome.warnings)
    n = len(TILE_REASONS) + 1
    lines = [line for line in outcome.stdout.splitlines() if line.strip()]
    assert lines[0].startswith(f"{n} tiles: 1 done, 0 skipped, {n - 1} failed"), everything
    assert len(lines) == n, everything
    assert batch.unchanged, "the batch changed files outside its output directory"
    assert sorted(p.name for p in batch.out.iterdir()) == [
        "good.catalog.fits", "good.done.json", "good.reprocessed.fits", "good.source.json", "reprocess_summary.json"]


@pytest.mark.parametrize("tile", sorted(TILE_REASONS))
def test_a_bad_tile_is_one_line_naming_it(tile, batch, world):
    mentions = [line for line in batch.outcome.stdout.splitlines() if tile in line]
    assert len(mentions) == 1, batch.outcome.stdout
    assert mentions[0].startswith(f"  failed {world.hostile / tile}: "), mentions[0]
    for text in TILE_REASONS[tile]:
        assert text in mentions[0], mentions[0]


def test_a_gzipped_tile_keeps_its_wcs_on_every_image_and_its_sources_get_sky_positions(batch):
    with fits.open(batch.out / "good.reprocessed.fits") as hdus:
        for name in ("SCIENCE", "MASK", "INPAINT_STD", "VARIANCE"):
            header = hdus[name].header
            assert (header["CTYPE1"], header["CTYPE2"]) == ("RA---TAN", "DEC--TAN"), name
            assert header["CRVAL1"] == pytest.approx(150.1) and header["CRPIX2"] == pytest.approx(48.0), name
    catalog = Table.read(batch.out / "good.catalog.fits")
    assert len(catalog) >= 2
    assert catalog["ra"].unit == u.deg and catalog["dec"].unit == u.deg
    assert np.all(np.abs(catalog["ra"] - 150.1) < SIZE * 5.5e-5) and np.all(np.abs(catalog["dec"] - 2.2) < 0.01)


def test_the_memory_budget_setting_applies_to_reprocess(world, tmp_path):
    before = _tree(world)
    outcome = _reprocess(world, world.sky / "night2", tmp_path / "out", "--set", "limits.memory_budget_gb=0.0001")
    assert outcome.exit_code == 1 and outcome.stderr.strip() == "", outcome.stdout + outcome.stderr
    failed = [line for line in outcome.stdout.splitlines() if line.startswith("  failed")]
    assert len(failed) == 1 and "96x96 pixels" in failed[0] and "memory budget of 0.0001 GB" in failed[0], failed
    assert _tree(world) == before and not list((tmp_path / "out").rglob("*.fits"))
