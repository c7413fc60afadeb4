"""Scale-out: the flows run on an existing Dask cluster (real `dask scheduler` / `dask worker` processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from lensforge.flows.cluster import jobqueue_kwargs
from lensforge.pipeline.config import build_config

DASK = Path(sys.executable).parent / "dask"


def _wait_for(path: Path, timeout_s: float = 60.0) -> dict:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if path.exists() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear in {timeout_s} s")


@pytest.fixture
def external_cluster(tmp_path):
    """A loopback scheduler and two single-threaded workers, started as the operator would, then stopped."""
    if not DASK.exists():
        pytest.skip("the dask command-line tool is not installed")
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address = _wait_for(scheduler_file)["address"]
        processes.append(subprocess.Popen([str(DASK), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                           "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):  # workers first, while their scheduler can still see them go
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _store_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(run_dir / "trainset.zarr", mode="r")
    return {name: group[name][:] for name in group.array_keys()}


@pytest.mark.slow
def test_simulate_on_an_existing_scheduler_gives_the_local_bytes(external_cluster, tiny_config_values, tmp_path):
    from lensforge.flows.cli import app

    runner = CliRunner()
    common = ["--out", tiny_config_values["out_dir"], "--set", "survey.stamp_size=32",
              "--set", "simulation.n_objects=32", "--set", "simulation.chunk_size=8", "--quiet"]
    result = runner.invoke(app, ["simulate", *common, "--name", "external", "--dask-address", external_cluster])
    assert result.exit_code == 0, result.output
    from distributed import Client

    with Client(external_cluster, timeout=30) as client:  # the work ran on the external workers
        assert len(client.scheduler_info()["workers"]) == 2
    result = runner.invoke(app, ["simulate", *common, "--name", "local", "--set", "dask.n_workers=1"])
    assert result.exit_code == 0, result.output
    external, local = (_store_arrays(tmp_path / "runs" / name) for name in ("external", "local"))
    assert set(external) == set(local)
    for name in local:
        np.testing.assert_array_equal(external[name], local[name], err_msg=name)
    shutil.rmtree(tmp_path / "runs")


@pytest.mark.parametrize("address", ["localhost:8786", "tcp://host", "http://host:8786"])
def test_a_malformed_scheduler_address_is_one_line(address):
    from lensforge.flows.cli import app

    result = CliRunner().invoke(app, ["config", "show", "--set", f"dask.address={address}"])
    assert result.exit_code == 2 and "dask.address" in result.output


def test_an_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    import lensforge.flows.cluster
    from lensforge.flows.cli import app

    # The probe is tested, not its 10 s patience.
    monkeypatch.setattr(lensforge.flows.cluster, "SCHEDULER_TIMEOUT_S", 1.0)

    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path), "--quiet",
                                      "--dask-address", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "no Dask scheduler answered" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # refused before any run directory was made


def test_jobqueue_cluster_is_configuration():
    config = build_config({"dask": {"jobqueue": {"kind": "slurm", "jobs": 3, "cores": 4, "processes": 4,
                                                 "memory": "8GB", "queue": "short",
                                                 "job_extra_directives": ["--constraint=cpu"]}}})
    kwargs = jobqueue_kwargs(config.dask)
    assert kwargs["cluster_class"] == "dask_jobqueue.SLURMCluster"
    assert kwargs["cluster_kwargs"] == {"cores": 4, "processes": 4, "memory": "8GB", "walltime": "02:00:00",
                                        "job_extra_directives": ["--constraint=cpu"], "queue": "short"}
    assert kwargs["adapt_kwargs"] == {"minimum_jobs": 3, "maximum_jobs": 3}
    with pytest.raises(Exception, match="not both"):
        build_config({"dask": {"address": "tcp://127.0.0.1:8786", "jobqueue": {"kind": "pbs"}}})
