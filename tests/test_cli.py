"""The CLI as a user meets it: real subprocesses, one-line errors, exit status 2, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LENSFORGE = [sys.executable, "-m", "flows.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LENSFORGE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


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
    from pipeline.config import build_config
    from pipeline.rundir import prepare_run_dir

    saved = build_config({"out_dir": str(tmp_path), "seed": 1}).to_yaml()
    (run_dir / "config.yaml").write_text(saved)
    with pytest.raises(Exception, match="different configuration; choose another name or pass --overwrite"):
        prepare_run_dir(build_config({"out_dir": str(tmp_path), "seed": 2}))
    assert (run_dir / "config.yaml").read_text() == saved  # nothing overwritten
    # Execution-only settings may change on resume: more workers give the same bytes.
    prepare_run_dir(build_config({"out_dir": str(tmp_path), "seed": 1, "dask": {"n_workers": 4}}))


@pytest.mark.slow
def test_bad_input_found_inside_a_flow_task_is_still_one_line(tmp_path):
    """A store of another layout under the run name fails inside a Prefect task: one line, exit 2."""
    from catalogs.store import create_store

    create_store(tmp_path / "x" / "trainset.zarr", n_objects=16, stamp_size=64, chunk_size=8)
    done = _run("simulate", "--out", str(tmp_path), "--name", "x", "--set", "simulation.n_objects=24",
                "--set", "simulation.chunk_size=8", "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a store with a different layout already exists" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "x" / "manifest.json").exists()
