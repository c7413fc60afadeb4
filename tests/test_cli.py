"""The CLI as a user meets it: real subprocesses, one-line errors, exit status 2, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LENSFORGE = [sys.executable, "-m", "lensforge.flows.cli"]


def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LENSFORGE, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _invoke(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up per command), shaped like ``_run``'s result."""
    from typer.testing import CliRunner

    from lensforge.flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_config_show_prints_the_effective_configuration(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  steps: 7\n")
    done = _run("config", "show", "--config", str(config_file), "--set", "seed=5", "--name", "x")
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["train"]["steps"] == 7 and shown["seed"] == 5 and shown["name"] == "x"
    assert shown["survey"]["stamp_size"] == 64  # defaults spelled out


@pytest.mark.parametrize("args, message", [
    (["config", "show", "--set", "train.stepz=3"], "unknown key 'train.stepz'"),
    (["config", "show", "--set", "dask.n_workers=zero"], "invalid value for 'dask.n_workers'"),
    (["config", "show", "--config", "/nonexistent/run.yaml"], "config file not found"),
    (["train", "--out", "/nonexistent-lensforge-dir"], "no training set"),
    (["inpaint", "--out", "/nonexistent-lensforge-dir"], "no training set"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = _run(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("lensforge: error:")
    assert "Traceback" not in done.stderr + done.stdout


def test_rerun_with_another_configuration_is_refused(tmp_path):
    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.rundir import prepare_run_dir

    saved = build_config({"out_dir": str(tmp_path), "seed": 1}).to_yaml()
    (run_dir / "config.yaml").write_text(saved)
    with pytest.raises(Exception, match="different configuration; choose another name or pass --overwrite"):
        prepare_run_dir(build_config({"out_dir": str(tmp_path), "seed": 2}))
    assert (run_dir / "config.yaml").read_text() == saved  # nothing overwritten
    # Execution-only settings may change on resume: more workers give the same bytes.
    prepare_run_dir(build_config({"out_dir": str(tmp_path), "seed": 1, "dask": {"n_workers": 4}}))


@pytest.mark.slow
def test_bad_input_found_inside_a_flow_task_is_still_one_line(tmp_path):
    """A store of another layout under the run name fails inside a Prefect task: one line, exit 2.

    The command runs as a user runs it, with no Prefect API configured: it starts Prefect's
    temporary server in the background while its LocalCluster starts (lensforge.flows.server.shared_prefect_api).
    """
    from lensforge.catalogs.store import create_store

    create_store(tmp_path / "x" / "trainset.zarr", n_objects=16, stamp_size=64, chunk_size=8)
    done = _run("simulate", "--out", str(tmp_path), "--name", "x", "--set", "simulation.n_objects=24",
                "--set", "simulation.chunk_size=8", "--quiet",
                env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a store with a different layout already exists" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "x" / "manifest.json").exists()


@pytest.mark.slow
def test_train_resume_evaluate_and_generate_from_the_cli(tmp_path, tiny_config_values):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config_values))
    common = ["--config", str(config_file), "--quiet"]
    assert _invoke("simulate", *common).returncode == 0
    done = _invoke("train", *common)
    assert done.returncode == 0, done.stderr
    run_dir = Path(tiny_config_values["out_dir"]) / "tiny"
    assert (run_dir / "models" / "v001" / "training_state.json").is_file()
    again = _invoke("train", *common)  # finished: resumes to a no-op
    assert again.returncode == 0 and "(0 steps" in again.stdout
    assert _invoke("train", *common, "--objective", "vae").returncode == 0
    assert (run_dir / "models" / "v001-vae" / "meta.json").is_file()

    done = _invoke("evaluate", "--config", str(config_file), "--no-generation")
    assert done.returncode == 0, done.stderr
    assert "in-painting       vaegan" in done.stdout and "in-painting          vae" in done.stdout
    assert (run_dir / "report" / "evaluation.json").is_file()

    commands = [("sample", "--n", "3", "--hlr", "0.5", "--g1", "0.03", "--snr", "30"),
                ("interpolate", "40", "44", "--steps", "3"), ("arithmetic", "40", "41", "42")]
    for command in commands:
        done = _invoke("generate", *command, "--config", str(config_file))
        assert done.returncode == 0, done.stderr
    from astropy.io import fits

    with fits.open(run_dir / "generated" / "samples.fits") as hdus:
        assert hdus[0].data.shape == (3, 32, 32) and hdus["INTRINSIC"].data.shape == (3, 64, 64)
        assert hdus["NOISY"].data.shape == (3, 32, 32) and hdus[0].header["G1"] == 0.03
        assert len(hdus[0].header["MODELSHA"]) == 64
    with fits.open(run_dir / "generated" / "arithmetic_40_41_42.fits") as hdus:
        assert hdus[0].data.shape == (4, 32, 32)
    assert (run_dir / "generated" / "interpolate_40_44.png").is_file()

    for bad, message in ((["generate", "sample", "--output", "../escape.fits"], "plain file name"),
                         (["generate", "interpolate", "0", "4800"], "outside the store"),
                         (["train", "--objective", "diffusion"], "train.objective")):
        done = _invoke(*bad, "--config", str(config_file))
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr
