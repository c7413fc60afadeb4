"""Crash and resume: SIGKILL a stage midway, rerun it, get the bytes of an uninterrupted run.

Each test starts the ``lensforge`` command in its own session, waits for its progress
markers (simulation chunks, training checkpoints, in-painting chunks), SIGKILLs the whole
process tree (or one Dask worker), checks that the run directory is visibly incomplete,
reruns the same command and compares the outputs with an uninterrupted run computed here
once per module (the same stage functions, in this process).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from lensforge import catalogs
from lensforge.catalogs.manifest import read_manifest
from lensforge.catalogs.store import open_store
from lensforge.errors import InputError
from lensforge.layout import CONFIG_NAME, MANIFEST_NAME, PROGRESS_DIR, STORE_NAME
from lensforge.pipeline.config import build_config
from lensforge.pipeline.rundir import prepare_run_dir, run_layout

pytestmark = pytest.mark.slow

# 64 stamps of 32x32 in 8 chunks; a tiny network trained for 40 steps, checkpointed every 10.
VALUES = {
    "name": "crash",
    "seed": 2024,
    "survey": {"stamp_size": 32},
    "simulation": {"n_objects": 64, "chunk_size": 8},
    "train": {"steps": 40, "batch_size": 8, "base_channels": 8, "latent_dim": 8, "checkpoint_every": 10,
              "device": "cpu"},
    "inpaint": {"n_samples": 64, "batch_size": 8},
    "dask": {"n_workers": 1},
}
N_CHUNKS = 8
CATALOGUES = ("catalogs/truth.fits", "catalogs/truth.parquet")
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
WAIT_S = 240


def _config(out: Path):
    return build_config({**VALUES, "out_dir": str(out)})


def _command(stage: str, config_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lensforge.flows.cli", stage, "--config", str(config_file), "--out", str(out),
            "--quiet"]


def _run(command: list[str], env: dict[str, str] = ENV) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _kill_when(command: list[str], ready: Callable[[], bool], env: dict[str, str] = ENV) -> None:
    """Start ``command`` in its own session; once ``ready()``, SIGKILL the whole process tree."""
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_for(process, ready)
    finally:
        _kill_group(process)


def _kill_group(process) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for(process, ready: Callable[[], bool]) -> None:
    began = time.monotonic()
    while not ready():
        assert process.poll() is None, f"the command ended (rc {process.returncode}) before the kill"
        assert time.monotonic() - began < WAIT_S, f"no progress in {WAIT_S} s"
        time.sleep(0.01)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_same_files(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)  # no missing chunk, no stray temporary file
    assert not [name for name in fa if fa[name] != fb[name]], "files differ"


def _copy_run(source: Path, out: Path) -> Path:
    destination = out / VALUES["name"]
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="module")
def flow_env(prefect_api_env):
    """The environment of the simulate commands: one Prefect API for the module (conftest)."""
    return prefect_api_env


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crash-config") / "crash.yaml"
    path.write_text(yaml.safe_dump(VALUES))
    return path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """The uninterrupted simulation: the flow's tasks, one after the other, in this process."""
    from lensforge.flows.tasks import create_store_task, manifest_task, simulate_chunk, write_catalogue
    from lensforge.pipeline.stamps.simulate import chunk_ranges

    config = _config(tmp_path_factory.mktemp("reference") / "runs")
    prepare_run_dir(config)
    create_store_task.fn(config)
    for start, stop in chunk_ranges(config.simulation.n_objects, config.simulation.chunk_size):
        simulate_chunk(config, start, stop)
    write_catalogue(config)
    manifest_task.fn(config, run_layout(config).simulation_products(), {"stages": ["simulate"]})
    return config.run_dir


@pytest.fixture(scope="module")
def trained(simulated, config_file, tmp_path_factory) -> Path:
    """The uninterrupted training (of a copy of the simulated run), by the same command as the crashed one.

    Not in this process: torch's float results depend on its thread count, which earlier tests
    in this process may have changed; a fresh ``lensforge train`` has the same one as the rerun.
    """
    out = tmp_path_factory.mktemp("trained") / "runs"
    run_dir = _copy_run(simulated, out)
    _run(_command("train", config_file, out))
    return run_dir


def _assert_same_simulation(run_dir: Path, reference: Path) -> None:
    _assert_same_files(run_dir / STORE_NAME, reference / STORE_NAME)
    for catalogue in CATALOGUES:
        assert (run_dir / catalogue).read_bytes() == (reference / catalogue).read_bytes(), catalogue
    products = read_manifest(run_dir)["products"]  # the manifest is back, written last
    expected = read_manifest(reference)["products"]
    assert {k: v for k, v in products.items() if k != CONFIG_NAME} == \
        {k: v for k, v in expected.items() if k != CONFIG_NAME}  # config.yaml records out_dir


def _simulated_chunks(run_dir: Path) -> int:
    return len(list((run_dir / PROGRESS_DIR / "simulate").glob("*.done")))


def test_killing_a_simulation_midway_then_rerunning_gives_the_uninterrupted_run(simulated, config_file, flow_env,
                                                                                tmp_path):
    """SIGKILL the flow process with its Dask scheduler, nanny and worker once 2 of 8 chunks are written."""
    out = tmp_path / "runs"
    run_dir = out / VALUES["name"]
    command = _command("simulate", config_file, out)
    _kill_when(command, lambda: _simulated_chunks(run_dir) >= 2, flow_env)
    done_before = _simulated_chunks(run_dir)
    assert 2 <= done_before < N_CHUNKS, done_before

    # Visibly incomplete: no manifest, and readers say so in one line.
    assert not (run_dir / MANIFEST_NAME).exists()
    with pytest.raises(InputError, match="no manifest, the run is incomplete") as error:
        read_manifest(run_dir)
    assert "\n" not in str(error.value)
    assert catalogs.open(run_dir / STORE_NAME).manifest is None

    summary = _run(command, flow_env)
    resumed = re.search(r"\((\d+) of (\d+) chunks resumed\)", summary)
    assert resumed and int(resumed[2]) == N_CHUNKS and int(resumed[1]) >= done_before, summary
    _assert_same_simulation(run_dir, simulated)


def test_killing_a_dask_worker_during_the_store_writes_then_rerunning_gives_the_uninterrupted_run(
        simulated, config_file, flow_env, tmp_path):
    """The worker process writing the chunks dies mid-run; its nanny restarts it. Either the flow redoes
    the lost chunk itself or it fails and leaves the run incomplete; after a rerun where needed, the run
    is the uninterrupted one."""
    import psutil

    out = tmp_path / "runs"
    run_dir = out / VALUES["name"]
    command = _command("simulate", config_file, out)
    process = psutil.Popen(command, env=flow_env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        _wait_for(process, lambda: _simulated_chunks(run_dir) >= 1)
        workers = [p for p in process.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 1, [p.cmdline() for p in process.children(recursive=True)]
        os.kill(workers[0].pid, signal.SIGKILL)
        killed_after = _simulated_chunks(run_dir)
        returncode = process.wait(timeout=WAIT_S)
    finally:
        _kill_group(process)  # whatever is left of the tree (nothing, after a clean exit)
    assert killed_after < N_CHUNKS, "the simulation finished before the worker was killed"
    if returncode != 0:  # the flow gave up on the lost chunk: the run must say it is incomplete
        assert not (run_dir / MANIFEST_NAME).exists()
        _run(command, flow_env)
    _assert_same_simulation(run_dir, simulated)


def test_killing_training_after_a_checkpoint_then_rerunning_resumes_to_the_same_weights(
        simulated, trained, config_file, tmp_path):
    from lensforge.models.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint

    out = tmp_path / "runs"
    run_dir = _copy_run(simulated, out)
    model_dir = run_dir / "models" / "v001"
    command = _command("train", config_file, out)
    _kill_when(command, lambda: (model_dir / "training_state.json").is_file())
    state = json.loads((model_dir / "training_state.json").read_text())
    assert 10 <= state["step"] < VALUES["train"]["steps"], state["step"]

    summary = _run(command)
    assert f"({VALUES['train']['steps'] - state['step']} steps," in summary, summary  # resumed, not restarted
    reference = trained / "models" / "v001"
    assert (model_dir / WEIGHTS_FILE).read_bytes() == (reference / WEIGHTS_FILE).read_bytes()
    meta, expected = load_checkpoint(model_dir)[1], load_checkpoint(reference)[1]
    assert meta["weights_sha256"] == expected["weights_sha256"] and meta["step"] == VALUES["train"]["steps"]
    assert (model_dir / "losses.csv").read_text() == (reference / "losses.csv").read_text()
    assert (model_dir / META_FILE).is_file()


def test_killing_inpainting_midway_then_rerunning_gives_the_uninterrupted_arrays(trained, config_file, tmp_path):
    from lensforge.pipeline.inpaint.stamps import inpainting_complete

    reference_out = tmp_path / "reference" / "runs"
    reference = _copy_run(trained, reference_out)
    _run(_command("inpaint", config_file, reference_out))  # a fresh process, as the rerun (see `trained`)

    out = tmp_path / "crashed" / "runs"
    run_dir = _copy_run(trained, out)
    markers = run_dir / PROGRESS_DIR / "inpaint"

    def inpainted_chunks() -> int:
        return len(list(markers.glob("*/*/*.done")))

    command = _command("inpaint", config_file, out)
    _kill_when(command, lambda: inpainted_chunks() >= 1)
    done_before = {path: path.stat().st_mtime_ns for path in markers.glob("*/*/*.done")}
    assert 1 <= len(done_before) < N_CHUNKS, len(done_before)
    group = open_store(run_dir / STORE_NAME)
    assert not inpainting_complete(group)  # marked incomplete until the last chunk is written

    _run(command)
    assert inpainted_chunks() == N_CHUNKS
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done_before.items())  # finished chunks skipped
    group, expected = open_store(run_dir / STORE_NAME), open_store(reference / STORE_NAME)
    assert inpainting_complete(group)
    for name in ("inpainted", "inpainted_std"):
        np.testing.assert_array_equal(group[name][:], expected[name][:], err_msg=name)
    _assert_same_files(run_dir / STORE_NAME, reference / STORE_NAME)  # every chunk and metadata byte
    images, masks = group["images"][:], group["masks"][:]
    known = masks == 0
    np.testing.assert_array_equal(group["inpainted"][:][known], images[known])  # known pixels never altered
