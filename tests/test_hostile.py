"""Hostile inputs (tests/hostile/, see its README.md) fed to the real ``lensforge`` CLI.

Every case must give a non-zero exit status, exactly one non-empty line of error naming what is
wrong (no traceback, nothing on stdout, no warning lines), and leave what was already written
byte for byte as it was: a finished run directory, a run with a promoted model, earlier
reprocessing products and the corpus itself are hashed before and compared after every case.

Cases run in-process (``CliRunner``); a few run as real subprocesses, and the bad tiles go
through one real ``lensforge reprocess`` batch (one Prefect server and Dask cluster for all).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from hostile_support import finished_run as _finished_run
from hostile_support import sha256_tree as _sha256_tree
from typer.testing import CliRunner

from lensforge.flows.cli import app

HOSTILE = Path(__file__).resolve().parent / "hostile"
_spec = importlib.util.spec_from_file_location("hostile_corpus", HOSTILE / "make_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

# Warnings Python shows by default become lines on a user's terminal; these it hides.
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


# --- the world the hostile commands run against ---------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The corpus (a copy: commands only read it) plus the products a hostile command must not touch."""
    root = tmp_path_factory.mktemp("hostile")
    for sub in ("tiles", "config", "cosmos"):
        shutil.copytree(HOSTILE / sub, root / "corpus" / sub)
    corpus_dir = root / "corpus"
    stores = corpus.build_stores(corpus_dir / "stores")
    canary = root / "PICKLE_WAS_EXECUTED"
    checkpoints = corpus.build_checkpoints(corpus_dir / "models", canary)
    runs = root / "runs"
    good = _finished_run(runs, "good")
    tampered = _finished_run(runs, "tampered")  # its promoted model's weights are changed after promotion
    weights = tampered / "models" / "v001" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    reprocessed = root / "reprocessed"
    reprocessed.mkdir()
    # Products of an earlier, good version of two tiles that now come back broken: they must survive.
    for stem in ("all_nan", "truncated_data"):
        for suffix in (".reprocessed.fits", ".catalog.fits"):
            fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(reprocessed / f"{stem}{suffix}")
        (reprocessed / f"{stem}.done.json").write_text(json.dumps({"key": "an-earlier-tile", "status": "done"}))
    out = root / "out"  # where a command would write a new file (must stay absent)
    out.mkdir()
    watched = (corpus_dir, runs, reprocessed, out)
    return SimpleNamespace(root=root, corpus=corpus_dir, stores=stores, checkpoints=checkpoints, canary=canary,
                           runs=runs, good=good, tampered=tampered, reprocessed=reprocessed, out=out,
                           watched=watched, before=_sha256_tree(*watched))


SUMMARY = "reprocessed/reprocess_summary.json"  # the one file the reprocess batch adds


def _snapshot(world) -> dict[str, str]:
    return {key: value for key, value in _sha256_tree(*world.watched).items() if key != SUMMARY}


@pytest.fixture
def untouched(world):
    """After the test: every watched file has its bytes, none appeared or vanished, no pickle ran."""
    yield
    assert _snapshot(world) == world.before
    assert not world.canary.exists(), "a pickle was executed"


# --- running the CLI ------------------------------------------------------------------------------

@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


def _invoke(args: list[str]) -> Outcome:
    """Run ``lensforge ARGS`` in this process; shown-by-default warnings are kept (they would be lines too)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr, exception, shown)


def _subprocess(args: list[str]) -> Outcome:
    """Run ``lensforge ARGS`` as a user does: a new interpreter, real stdout / stderr."""
    done = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", *args], capture_output=True, text=True,
                          timeout=180)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _assert_one_line_error(outcome: Outcome, expect: tuple[str, ...], code: int = 2) -> str:
    everything = outcome.stdout + outcome.stderr
    assert outcome.exception is None, f"uncaught {type(outcome.exception).__name__}: {outcome.exception}"
    assert "Traceback" not in everything, everything
    assert outcome.exit_code == code, everything
    assert outcome.stdout.strip() == "", f"stdout: {outcome.stdout!r}"
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{outcome.stderr}"
    assert not outcome.warnings, outcome.warnings
    line = lines[0]
    assert line.startswith("lensforge: error: "), line
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"
    assert len(line) < 600, f"{len(line)} characters"
    return line


# --- the cases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A hostile input: how to call the CLI with it (given the world) and what the one line must say."""

    id: str
    category: str
    args: Callable[[SimpleNamespace], list[str]]
    expect: tuple[str, ...]
    subprocess: bool = False
    absent: Callable[[SimpleNamespace], Path] | None = None  # a path the command must not create


def _config_case(name: str, *expect: str, subprocess: bool = False, named: bool = True) -> Case:
    """``config show --config FILE``; the line names the file unless ``named`` is False (it names the preset)."""
    return Case(f"config/{name}", "config", lambda w: ["config", "show", "--config", str(w.corpus / "config" / name)],
                (*([name] if named else []), *expect), subprocess=subprocess)


def _set_case(case_id: str, override: str, *expect: str) -> Case:
    return Case(case_id, "config", lambda w: ["config", "show", "--set", override], expect)


def _store_case(name: str, *expect: str, command: str = "export", subprocess: bool = False) -> Case:
    def args(w):
        store = str(w.stores[name]) if name in w.stores else str(w.corpus / "stores" / f"{name}.zarr")
        if command == "export":
            return ["catalogs", "export", "--store", store, "-o", str(w.out / f"{name}.fits")]
        return ["validate-shear", "--store", store, "--out", str(w.runs), "--name", "good", "--quiet"]
    return Case(f"store/{name}/{command}", "zarr", args, (f"{name}.zarr", *expect), subprocess=subprocess,
                absent=lambda w: w.out / f"{name}.fits")


def _checkpoint_case(name: str, *expect: str, subprocess: bool = False) -> Case:
    return Case(f"checkpoint/{name}", "checkpoint",
                lambda w: ["models", "promote", name, "--models-root", str(w.corpus / "models")], (name, *expect),
                subprocess=subprocess, absent=lambda w: w.corpus / "models" / "PROMOTED")


def _cosmos_case(name: str, *expect: str) -> Case:
    return Case(f"cosmos/{name}", "catalogue",
                lambda w: ["tile", "--out", str(w.runs), "--name", f"cosmos-{name}", "--quiet",
                           "--set", "tile.population=cosmos", "--set", f"tile.cosmos_dir={w.corpus / 'cosmos' / name}"],
                ("tile.cosmos_dir", name, *expect), absent=lambda w: w.runs / f"cosmos-{name}")


def _good(*args: str) -> Callable[[SimpleNamespace], list[str]]:
    """``lensforge ARGS --out <runs> --name good``: a hostile option against the finished run."""
    return lambda w: [*args, "--out", str(w.runs), "--name", "good"]


CASES = [
    # invalid config values and types (--config FILE)
    _config_case("not_yaml.yaml", "not valid YAML (line"),
    _config_case("binary.yaml", "not valid YAML"),
    _config_case("top_level_list.yaml", "expected a mapping of sections"),
    _config_case("unknown_key.yaml", "unknown key 'train.stepz'"),
    _config_case("wrong_type.yaml", "invalid value for 'train.steps'", "'many'"),
    _config_case("section_scalar.yaml", "invalid value for 'survey'"),
    _config_case("out_of_range.yaml", "invalid value for 'simulation.n_objects'"),
    _config_case("negative_probability.yaml", "invalid value for 'masks.bad_column_probability'"),
    _config_case("inf_pixel_scale.yaml", "invalid value for 'survey.pixel_scale_arcsec'", "finite"),
    _config_case("nan_rotation.yaml", "invalid value for 'tile.rotation_deg'", "finite"),
    _config_case("huge_seed.yaml", "invalid value for 'seed'"),
    _config_case("list_for_number.yaml", "invalid value for 'train.learning_rate'"),
    _config_case("python_tag.yaml", "not valid YAML", subprocess=True),
    _config_case("billion_laughs.yaml", "invalid value for 'train.steps'"),
    _config_case("unknown_preset.yaml", "unknown survey preset 'hubble-deep-field'", named=False),
    _config_case("preset_not_a_name.yaml", "preset must be a name"),
    _config_case("cosmos_without_dir.yaml", "population=cosmos needs cosmos_dir"),
    Case("config/directory", "config", lambda w: ["config", "show", "--config", str(w.corpus / "config")],
         ("config file not found",)),
    # invalid config values and types (--set)
    _set_case("set/no_equals", "train.steps", "'train.steps': expected section.key=value"),
    _set_case("set/empty_key", "=3", "'=3': empty key"),
    _set_case("set/scalar_as_section", "seed.value=3", "invalid value for 'seed'"),
    _set_case("set/stamp_not_multiple_of_8", "survey.stamp_size=60", "'survey'", "multiple of 8"),
    _set_case("set/dask_address_scheme", "dask.address=http://0.0.0.0:8786", "invalid value for 'dask.address'"),
    _set_case("set/nan_threshold", "detect.threshold_nsigma=.nan", "invalid value for 'detect.threshold_nsigma'"),
    # paths that try to escape the output directory
    _config_case("name_escape.yaml", "invalid value for 'name'"),
    _config_case("preset_escape.yaml", "unknown survey preset '../../../../etc/passwd'", named=False),
    Case("escape/name_dotdot", "path", lambda w: ["config", "show", "--name", "../escape"],
         ("invalid value for 'name'", "../escape")),
    Case("escape/name_absolute", "path", lambda w: ["config", "show", "--name", "/etc/cron.d"],
         ("invalid value for 'name'",)),
    Case("escape/generate_sample_output", "path", _good("generate", "sample", "--output", "../escape.fits"),
         ("--output '../escape.fits'", "plain file name"), absent=lambda w: w.runs / "escape.fits"),
    Case("escape/generate_sample_absolute", "path",
         lambda w: ["generate", "sample", "--output", str(w.out / "abs.fits"), "--out", str(w.runs), "--name", "good"],
         ("plain file name",), absent=lambda w: w.out / "abs.fits"),
    Case("escape/generate_interpolate_subdir", "path",
         _good("generate", "interpolate", "0", "1", "--output", "sub/x.fits"), ("'sub/x.fits'", "plain file name")),
    Case("escape/generate_trainset_output", "path", _good("generate", "trainset", "--output", "../escape"),
         ("generated set name '../escape'",), absent=lambda w: w.runs / "escape.zarr"),
    Case("escape/models_promote_version", "path",
         lambda w: ["models", "promote", "../good/models/v001", "--models-root", str(w.tampered / "models")],
         ("unknown model version '../good/models/v001'",)),
    Case("escape/models_show_dotdot", "path", _good("models", "show", ".."), ("unknown model version '..'",)),
    Case("escape/inpaint_model_version", "path", _good("inpaint", "--model-version", "../../v001"),
         ("invalid value for 'inpaint.model_version'",)),
    Case("escape/train_model_version", "path", _good("train", "--set", "train.model_version=../v001"),
         ("invalid value for 'train.model_version'",)),
    # a truncated or foreign Zarr store
    _store_case("missing", "no such store"),
    _store_case("file_not_dir", "not a readable Zarr v3 store"),
    _store_case("empty_dir", "not a readable Zarr v3 store"),
    _store_case("zarr_v2", "not a readable Zarr v3 store"),
    _store_case("truncated_metadata", "not a readable Zarr v3 store"),
    _store_case("foreign_schema", "not a lensforge training set", "someone-elses-format", subprocess=True),
    _store_case("foreign_schema", "not a lensforge training set", command="validate-shear"),
    _store_case("other_version", "schema version '99.0'"),
    _store_case("no_arrays", "damaged store, missing arrays"),
    _store_case("no_layout", "no valid layout.n_objects"),
    _store_case("no_layout", "no valid layout.n_objects", command="validate-shear"),
    _store_case("wrong_length", "arrays ['g1'] do not have 8 objects"),
    _store_case("truncated_chunk", "array 'g1' has an unreadable chunk"),
    _store_case("garbage_array_metadata", "damaged store"),
    # malformed catalogue requests against the finished run
    Case("catalogue/select_code_injection", "catalogue",
         lambda w: ["catalogs", "export", "--out", str(w.runs), "--name", "good", "-o", str(w.out / "x.fits"),
                    "--select", "__import__('os').system('touch pwned')"],
         ("--select", "unknown function"), absent=lambda w: w.out / "x.fits"),
    Case("catalogue/unknown_column", "catalogue",
         lambda w: ["catalogs", "export", "--out", str(w.runs), "--name", "good", "-o", str(w.out / "x.fits"),
                    "--columns", "object_id,ra_of_the_moon"],
         ("--columns: unknown columns ['ra_of_the_moon']",), absent=lambda w: w.out / "x.fits"),
    # empty and malformed COSMOS catalogues (population=cosmos)
    _cosmos_case("empty_catalogue", "has no usable galaxies"),
    _cosmos_case("missing_columns", "lacks the columns", "mag_auto", "zphot"),
    _cosmos_case("garbage_catalogue", "cannot read the COSMOS catalogue"),
    _cosmos_case("no_such_directory", "cannot read the COSMOS catalogue"),
    # tampered, foreign and broken checkpoints
    _checkpoint_case("tampered_weights", "does not match meta.json: tampered with or corrupted"),
    _checkpoint_case("truncated_meta", "meta.json is not valid JSON"),
    _checkpoint_case("foreign_format", "foreign checkpoint", "pytorch-lightning"),
    _checkpoint_case("future_format_version", "format_version 99"),
    _checkpoint_case("weights_missing", "weights.safetensors are missing"),
    _checkpoint_case("pickle_weights", "not a readable safetensors file"),
    _checkpoint_case("empty_weights", "not a readable safetensors file"),
    _checkpoint_case("shape_mismatch", "has shape", "model expects"),
    _checkpoint_case("bad_model_settings", "invalid model_settings"),
    Case("checkpoint/no_registry", "checkpoint",
         lambda w: ["models", "promote", "v001", "--models-root", str(w.out / "nothing-here")], ("no model registry",)),
    Case("checkpoint/promoted_then_tampered", "checkpoint",
         lambda w: ["inpaint", "--out", str(w.runs), "--name", "tampered", "--quiet"],
         ("tampered", "does not match PROMOTED")),
]


def test_the_corpus_is_large_small_and_reproducible(tmp_path):
    """>= 30 bad inputs, under 1 MB committed, and make_corpus.py writes exactly the committed bytes."""
    tiles = sorted(p.name for p in (HOSTILE / "tiles").iterdir())
    assert len(CASES) + len(tiles) >= 30
    committed = [p for p in HOSTILE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in committed) < 1_000_000
    corpus.write_corpus(tmp_path)
    for sub in ("tiles", "config", "cosmos"):
        assert _sha256_tree(tmp_path / sub) == _sha256_tree(HOSTILE / sub), f"rerun make_corpus.py ({sub})"
    readme = (HOSTILE / "README.md").read_text()
    for path in (HOSTILE / "tiles").iterdir():
        assert path.name in readme, f"{path.name} is not described in README.md"
    for path in (HOSTILE / "config").iterdir():
        assert path.name in readme, f"{path.name} is not described in README.md"
    for name in (*corpus.STORE_CASES, *corpus.CHECKPOINT_CASES, *(p.name for p in (HOSTILE / "cosmos").iterdir())):
        assert name in readme, f"{name} is not described in README.md"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_is_one_line_and_harmless(case: Case, world, untouched):
    args = case.args(world)
    outcome = _subprocess(args) if case.subprocess else _invoke(args)
    _assert_one_line_error(outcome, case.expect)
    if case.absent is not None:
        assert not case.absent(world).exists(), f"{case.absent(world)} was created"


def test_inpainting_an_interrupted_store_leaves_it_as_it_was(tmp_path):
    """A store whose chunks were never written (an interrupted simulate; labels are NaN) and a good model."""
    run_dir = _finished_run(tmp_path / "runs", "interrupted")
    before = _sha256_tree(run_dir)
    outcome = _invoke(["inpaint", "--out", str(tmp_path / "runs"), "--name", "interrupted", "--quiet"])
    _assert_one_line_error(outcome, ("noise_sigma",))
    assert _sha256_tree(run_dir) == before


# --- the bad tiles: one reprocess batch -------------------------------------------------------------

# tile -> what its failure line must say (besides its name)
TILE_REASONS = {
    "empty.fits": "not a readable FITS tile",
    "text.fits": "not a readable FITS tile",
    "garbage_header.fits": "not a readable FITS tile",
    "truncated_header.fits": "not a readable FITS tile",
    "truncated_data.fits": "truncated FITS file",
    "no_end_card.fits": "not a readable FITS tile",
    "huge_naxis.fits": "truncated FITS file",
    "header_only.fits": "the primary HDU is not a 2-D image (no data)",
    "cube_3d.fits": "the primary HDU is not a 2-D image (3-D data)",
    "vector_1d.fits": "the primary HDU is not a 2-D image (1-D data)",
    "too_small.fits": "too small to reprocess",
    "mask_shape.fits": "MASK has shape (16, 16), SCIENCE (32, 32)",
    "variance_shape.fits": "VARIANCE has shape (32, 16), SCIENCE (32, 32)",
    "float_mask.fits": "MASK must be an integer bit mask, got float32",
    "table_mask.fits": "MASK is not a 2-D image (BinTableHDU)",
    "table_science.fits": "SCIENCE is not a 2-D image (BinTableHDU)",
    "all_nan.fits": "every pixel is masked",
    "all_inf.fits": "every pixel is masked",
    "nan_and_masked.fits": "every pixel is masked",
    "variance_nan.fits": "VARIANCE is negative or not finite on 16 unmasked pixels",
    "variance_negative.fits": "VARIANCE is negative or not finite on 1 unmasked pixels",
    "wcs_half_missing.fits": "invalid WCS",
    "wcs_singular.fits": "invalid WCS",
    "wcs_bad_projection.fits": "invalid WCS",
    "wcs_text_crval.fits": "invalid WCS, CRVAL1",
    "wcs_dec_beyond_pole.fits": "invalid WCS",
}


@pytest.fixture(scope="module")
def batch(world) -> Outcome:
    """``lensforge reprocess <corpus>/tiles -o <reprocessed>`` once for all the bad tiles (in this process:
    a subprocess would pay the imports again; the tiles' own warnings are recorded by parse_tile)."""
    return _invoke(["reprocess", str(world.corpus / "tiles"), "--output", str(world.reprocessed), "--quiet",
                    "--set", "dask.n_workers=1", "--out", str(world.runs)])


def test_every_committed_tile_has_a_reason():
    assert sorted(TILE_REASONS) == sorted(p.name for p in (HOSTILE / "tiles").iterdir())


def test_the_bad_tile_batch_fails_one_line_per_tile_and_writes_nothing(batch, world):
    everything = batch.stdout + batch.stderr
    assert batch.exception is None, f"uncaught {type(batch.exception).__name__}: {batch.exception}"
    assert batch.exit_code == 1, everything
    assert "Traceback" not in everything, everything
    assert not batch.warnings, batch.warnings
    n = len(TILE_REASONS)
    lines = [line for line in batch.stdout.splitlines() if line.strip()]
    assert lines[0].startswith(f"{n} tiles: 0 done, 0 skipped, {n} failed"), everything
    assert len(lines) == 1 + n, everything  # the summary, then exactly one line per failed tile
    assert batch.stderr.strip() == "", batch.stderr
    summary = json.loads((world.reprocessed / "reprocess_summary.json").read_text())
    assert [row["status"] for row in summary["tiles"]] == ["failed"] * n
    # The earlier products of all_nan / truncated_data are still there, byte for byte; nothing else appeared.
    assert _snapshot(world) == world.before


@pytest.mark.parametrize("tile", sorted(TILE_REASONS))
def test_bad_tile_is_one_line_naming_it(tile, batch, world):
    url = str(world.corpus / "tiles" / tile)
    mentions = [line for line in batch.stdout.splitlines() if tile in line]
    assert len(mentions) == 1, batch.stdout
    assert mentions[0].startswith(f"  failed {url}: "), mentions[0]
    assert TILE_REASONS[tile] in mentions[0], mentions[0]
    assert len(mentions[0]) < 600


def test_the_world_is_untouched_at_the_end(world):
    """Belt and braces after all cases (and the batch, whose summary file is the only new file)."""
    assert _snapshot(world) == world.before
    assert not world.canary.exists()
