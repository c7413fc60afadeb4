"""Damaged users' data fed to the real ``lensforge`` CLI (issue R2 2/5 "Safe with users' data").

Deleted chunks, arrays rewritten with another dtype, memory-blowing sizes, an unusable shear
response and an undertrained model. Errors are exactly one ``lensforge: error:`` line on stderr with
exit status 2; warnings are ``lensforge: warning:`` lines; whatever was written before keeps its bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from hostile_support import sha256_tree as _sha256_tree
from typer.testing import CliRunner

from lensforge.flows.cli import app

N, SIZE, CHUNK = 8, 32, 4


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _error_line(result, *expect: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lensforge: error: "), lines[0]
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("lensforge: warning: ")]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished run (simulated stamps with counterfactuals, a 50-step promoted model), built once."""
    from astropy.table import Table

    from lensforge.catalogs.store import create_store, finalize_store
    from lensforge.models.checkpoint import save_checkpoint
    from lensforge.models.registry import promote
    from lensforge.models.vaegan import VAEGAN, ModelSettings
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.rundir import prepare_run_dir, store_path
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    runs = tmp_path_factory.mktemp("template") / "runs"
    cfg = build_config({"out_dir": str(runs), "name": "run", "survey": {"stamp_size": SIZE},
                        "simulation": {"n_objects": N, "chunk_size": CHUNK, "counterfactual_delta_g": 0.01},
                        "train": {"device": "cpu", "steps": 50}})
    run_dir = prepare_run_dir(cfg)
    path = store_path(cfg)
    create_store(path, N, SIZE, CHUNK, counterfactual_delta_g=0.01,
                 attrs={"run_name": "run", "run_seed": cfg.seed, "pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec})
    for start in range(0, N, CHUNK):
        simulate_stamps(cfg, start, start + CHUNK).write(path)
    finalize_store(path)
    (run_dir / "catalogs").mkdir()
    Table({"object_id": np.arange(N)}).write(run_dir / "catalogs" / "truth.fits")
    save_checkpoint(VAEGAN(ModelSettings(stamp_size=SIZE, latent_dim=4, base_channels=4)), run_dir / "models" / "v001",
                    extra_meta={"step": 50, "train_settings": {"steps": 50, "objective": "hybrid"}})
    promote(run_dir / "models", "v001")
    return runs


@pytest.fixture
def world(template, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(template, runs)
    return runs


def _opts(runs: Path) -> list[str]:
    return ["--out", str(runs), "--name", "run"]


def _store(runs: Path) -> Path:
    return runs / "run" / "trainset.zarr"


# --- case 1: a deleted chunk is an error naming the array and the chunk ----------------------------

DELETED = [("images", "c/1/0/0"), ("images", "c/0/0/0"), ("counterfactuals", "c/1/0/0/0"), ("masks", "c/0/0/0"),
           ("weights", "c/1/0/0"), ("g1", "c/1"), ("noise_sigma", "c/0")]


@pytest.mark.parametrize(("array", "key"), DELETED, ids=[f"{a}-{k}" for a, k in DELETED])
def test_deleted_chunk_is_refused_by_export(world, array, key, tmp_path):
    (_store(world) / array / key).unlink()
    before = _sha256_tree(world)
    out = tmp_path / "x.fits"
    result = _invoke(["catalogs", "export", "--store", str(_store(world)), "-o", str(out)])
    _error_line(result, "trainset.zarr", f"array {array!r} is missing chunk {key}")
    assert not out.exists() and _sha256_tree(world) == before


def test_deleted_chunk_is_refused_by_catalogs_open(world):
    from lensforge import catalogs
    from lensforge.errors import InputError

    (_store(world) / "images" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(InputError, match=r"array 'images' is missing chunk c/1/0/0 \(objects 4..7\)"):
        catalogs.open(_store(world))


@pytest.mark.parametrize(("array", "key"), [("images", "c/1/0/0"), ("counterfactuals", "c/0/0/0/0")])
def test_deleted_chunk_is_refused_by_validate_shear(world, array, key, prefect_api_env, monkeypatch):
    for name, value in prefect_api_env.items():
        monkeypatch.setenv(name, value)
    (_store(world) / array / key).unlink()
    before = _sha256_tree(world)
    result = _invoke(["validate-shear", *_opts(world), "--quiet", "--set", "dask.n_workers=1"])
    _error_line(result, f"array {array!r} is missing chunk {key}")
    assert _sha256_tree(world) == before and not (world / "run" / "report").exists()


@pytest.mark.parametrize("command", [["inpaint"], ["generate", "interpolate", "0", "1"]])
def test_deleted_chunk_is_refused_by_writing_commands(world, command):
    (_store(world) / "images" / "c" / "1" / "0" / "0").unlink()
    before = _sha256_tree(world)
    result = _invoke([*command, *_opts(world), *(["--quiet"] if command == ["inpaint"] else [])])
    _error_line(result, "array 'images' is missing chunk c/1/0/0")
    assert _sha256_tree(world) == before


# --- case 2: a deleted chunk of a finished in-painting is redone ----------------------------------

@pytest.mark.parametrize("array", ["inpainted", "inpainted_std"])
def test_inpaint_redoes_a_deleted_inpainted_chunk(world, array):
    first = _invoke(["inpaint", *_opts(world), "--quiet"])
    assert first.exit_code == 0, first.output
    done = _sha256_tree(world)
    chunk = _store(world) / array / "c" / "1" / "0" / "0"
    chunk.unlink()
    # Reading it is refused meanwhile: the in-painting is marked complete.
    _error_line(_invoke(["catalogs", "export", "--store", str(_store(world)), "-o", str(world / "x.fits")]),
                f"array {array!r} is missing chunk c/1/0/0")
    again = _invoke(["inpaint", *_opts(world), "--quiet"])
    assert again.exit_code == 0, again.output
    assert chunk.is_file()
    assert _sha256_tree(world) == done  # the redone chunk has the bytes of the first in-painting


# --- case 3: dtype, shape and chunking are the schema's -------------------------------------------

REWRITTEN = [("images", "int16", None, None, "has dtype int16, the schema says float32"),
             ("masks", "float32", None, None, "has dtype float32, the schema says uint8"),
             ("g1", "float32", None, None, "has dtype float32, the schema says float64"),
             ("images", "float32", (N, SIZE, SIZE // 2), None, "has shape (8, 32, 16), expected (8, 32, 32)"),
             ("psf", "float32", None, (2, SIZE, SIZE), "has chunks (2, 32, 32), expected (4, 32, 32)")]


@pytest.mark.parametrize(("array", "dtype", "shape", "chunks", "expect"), REWRITTEN,
                         ids=[f"{r[0]}-{r[4].split()[1]}" for r in REWRITTEN])
def test_rewritten_array_is_refused(world, array, dtype, shape, chunks, expect):
    from lensforge.catalogs.store import finalize_store

    group = zarr.open_group(_store(world), mode="r+", zarr_format=3, use_consolidated=False)
    old = group[array]
    values = np.asarray(old[:])
    shape = shape or old.shape
    group.create_array(array, shape=shape, chunks=chunks or (CHUNK, *shape[1:]), dtype=dtype,
                       dimension_names=old.metadata.dimension_names, overwrite=True)
    group[array][:] = values[tuple(slice(0, s) for s in shape)].astype(dtype)
    finalize_store(_store(world))
    before = _sha256_tree(world)
    _error_line(_invoke(["inpaint", *_opts(world), "--quiet"]), f"array {array!r} {expect}")
    assert _sha256_tree(world) == before


# --- case 4: sizes are checked against the memory budget before anything is allocated -------------

def test_simulate_a_trillion_objects_is_refused_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    result = _invoke(["simulate", "--out", str(runs), "--name", "huge", "--quiet",
                      "--set", "simulation.n_objects=1000000000000", "--set", "dask.n_workers=1"])
    _error_line(result, "simulation.n_objects=1000000000000", "limits.memory_budget_gb")
    assert not (runs / "huge").exists()


def test_simulate_a_huge_chunk_is_refused_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    result = _invoke(["simulate", "--out", str(runs), "--name", "huge", "--quiet", "--set", "dask.n_workers=1",
                      "--set", "simulation.n_objects=2000000", "--set", "simulation.chunk_size=2000000"])
    _error_line(result, "simulation.chunk_size=2000000", "limits.memory_budget_gb")
    assert not (runs / "huge").exists()


def test_generate_sample_at_the_cli_maximum_is_refused(world):
    before = _sha256_tree(world)
    result = _invoke(["generate", "sample", "--n", "100000", *_opts(world)])
    _error_line(result, "--n 100000", "limits.memory_budget_gb")
    assert _sha256_tree(world) == before and not (world / "run" / "generated").exists()


def test_generate_trainset_over_budget_is_refused(world):
    before = _sha256_tree(world)
    result = _invoke(["generate", "trainset", "--n", "100000000000", *_opts(world), "--quiet"])
    _error_line(result, "--n=100000000000", "limits.memory_budget_gb")
    assert _sha256_tree(world) == before and not (world / "run" / "generated").exists()


def test_a_small_budget_refuses_validate_shear(world):
    before = _sha256_tree(world)
    result = _invoke(["validate-shear", *_opts(world), "--quiet", "--set", "limits.memory_budget_gb=0.0001"])
    _error_line(result, "validate-shear of", "limits.memory_budget_gb")
    assert _sha256_tree(world) == before


# --- case 5: an unusable response matrix is flagged ------------------------------------------------

def test_response_problem_flags_the_reported_matrix():
    from lensforge.pipeline.shear.calibration import response_diagonal_range, response_problem

    assert "ill-conditioned" in response_problem([[-45, 44], [8.7, -4.3]])
    assert "expected scale" in response_problem(-np.eye(2))
    assert response_problem([[1.02, 0.01], [-0.01, 0.98]]) is None
    # Fourier_Quad's G / D keeps the noise power in D: the small COSMOS galaxies' 0.075 is its normal scale
    # (an HSM method's response that small is broken); a sign flip or under 1 % is broken for it too.
    small = [[0.0746, 0.00018], [0.0015, 0.0717]]
    assert "expected scale" in response_problem(small, response_diagonal_range("REGAUSS"))
    assert response_problem(small, response_diagonal_range("FOURIER_QUAD")) is None
    assert "expected scale" in response_problem(-np.eye(2) * 0.07, response_diagonal_range("FOURIER_QUAD"))
    assert "expected scale" in response_problem(np.eye(2) * 0.005, response_diagonal_range("FOURIER_QUAD"))


def test_validate_shear_warns_about_a_sign_flipped_response(world, prefect_api_env, monkeypatch):
    """Counterfactuals with +dg and -dg swapped (damaged data): R ~ -1; the report must not pass it off."""
    for name, value in prefect_api_env.items():
        monkeypatch.setenv(name, value)
    group = zarr.open_group(_store(world), mode="r+", zarr_format=3, use_consolidated=False)
    cf = np.asarray(group["counterfactuals"][:])
    group["counterfactuals"][:] = cf[:, [1, 0, 3, 2]]
    before = _sha256_tree(world)
    result = _invoke(["validate-shear", *_opts(world), "--quiet", "--set", "dask.n_workers=1",
                      "--methods", "KSB", "--variants", "raw,none", "--bootstrap", "4"])
    assert result.exit_code == 0, result.output
    warned = _warnings(result)
    assert any(line.startswith("lensforge: warning: KSB raw: response matrix [[") and "not a calibration" in line
               for line in warned), result.stderr
    report = json.loads((world / "run" / "report" / "shear_validation_trainset.json").read_text())
    assert report["methods"]["KSB"]["raw"]["response_suspect"] is True
    assert report["verdicts"]["KSB"]["response_ok"] is False and report["warnings"]
    # Neither the raw nor the secant-corrected figures of an unusable calibration meet anything.
    assert report["verdicts"]["KSB"]["raw_meets_lsst"] is False
    assert report["verdicts"]["KSB"]["raw_secant_meets_lsst"] is False
    # Nor does its noise test pass, however wide its errors.
    assert report["verdicts"]["KSB"]["m_unchanged_when_snr_weighted"] is False
    assert report["verdicts"]["KSB"]["m_unchanged_when_snr_weighted_secant"] is False
    assert report["verdicts"]["KSB"]["m_unchanged_when_snr_weighted_zero_shear"] is False
    after = _sha256_tree(world)
    assert {k: v for k, v in after.items() if k in before} == before  # only the report was added


# --- case 6: an undertrained model is named when it is used ---------------------------------------

def test_inpaint_with_a_50_step_model_warns(world):
    result = _invoke(["inpaint", *_opts(world), "--quiet"])
    assert result.exit_code == 0, result.output
    warned = _warnings(result)
    assert len(warned) == 1 and "only 50 training steps" in warned[0] and "v001" in warned[0], result.stderr


def test_generate_sample_with_a_50_step_model_warns(world):
    before = _sha256_tree(world)
    result = _invoke(["generate", "sample", "--n", "2", *_opts(world)])
    assert result.exit_code == 0, result.output
    warned = _warnings(result)
    assert len(warned) == 1 and "only 50 training steps" in warned[0], result.stderr
    after = _sha256_tree(world)
    assert {k: v for k, v in after.items() if k in before} == before


def test_undertrained_message_rules():
    from lensforge.models.checkpoint import undertrained_message

    assert undertrained_message("m", {"step": 50}) and undertrained_message("m", {}) is None
    assert "step 900 of" in undertrained_message("m", {"step": 900, "train_settings": {"steps": 1500}})
    assert undertrained_message("m", {"step": 1500, "train_settings": {"steps": 1500}}) is None


def test_env_is_quiet():
    assert os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false") == "false"


def test_a_simulated_single_chunk_store_refuses_its_lost_only_chunk(tmp_path, prefect_api_env, monkeypatch):
    """The real simulate marks the finished store complete: even an array's only chunk is then vouched for."""
    for name, value in prefect_api_env.items():
        monkeypatch.setenv(name, value)
    runs = tmp_path / "runs"
    done = _invoke(["simulate", "--out", str(runs), "--name", "one", "--quiet", "--set", "dask.n_workers=1",
                    "--set", "simulation.n_objects=4", "--set", "simulation.chunk_size=4",
                    "--set", "survey.stamp_size=32"])
    assert done.exit_code == 0, done.output
    store = runs / "one" / "trainset.zarr"
    assert zarr.open_group(store, mode="r").attrs["complete"] is True
    finished = _sha256_tree(store)
    (store / "images" / "c" / "0" / "0" / "0").unlink()
    before = _sha256_tree(runs)
    _error_line(_invoke(["catalogs", "export", "--store", str(store), "-o", str(tmp_path / "x.fits")]),
                "array 'images' is missing chunk c/0/0/0 (objects 0..3)")
    assert _sha256_tree(runs) == before and not (tmp_path / "x.fits").exists()
    # Rerunning simulate notices that the chunk's done marker outlived its data and redoes it, bit for bit.
    again = _invoke(["simulate", "--out", str(runs), "--name", "one", "--quiet", "--set", "dask.n_workers=1",
                     "--set", "simulation.n_objects=4", "--set", "simulation.chunk_size=4",
                     "--set", "survey.stamp_size=32"])
    assert again.exit_code == 0, again.output
    assert _sha256_tree(store) == finished
