"""Deployments: ``prefect.yaml`` agrees with ``lensforge.flows.deployments.DEPLOYMENTS``; ``lensforge serve`` builds the
deployments it says; and, against a real Prefect server (SQLite, 127.0.0.1), a deployment from ``prefect.yaml``
runs to completion on a process worker and one from ``serve`` on its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import typer
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule
from typer.testing import CliRunner

import lensforge.flows.deployments as deployments
from lensforge import flows  # noqa: F401 - quiet Prefect defaults
from lensforge.flows.deployments import (
    DEPLOYMENTS,
    SCHEDULE_TIMEZONE,
    WORK_POOL,
    WORK_POOL_TYPE,
    deployment_names,
    get_deployment,
    served_parameters,
)

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "prefect.yaml"
SET_WORKING_DIRECTORY = "prefect.deployments.steps.set_working_directory"


def _prefect_yaml() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))


def _yaml_entries() -> dict[str, dict]:
    return {entry["name"]: entry for entry in _prefect_yaml()["deployments"]}


# ---------------------------------------------------------------------------------------------------------------
# prefect.yaml and DEPLOYMENTS


def test_prefect_yaml_declares_every_deployment_in_order():
    data = _prefect_yaml()
    assert [entry["name"] for entry in data["deployments"]] == deployment_names()
    assert deployment_names() == ["simulate", "train", "inpaint", "build-training-set", "reprocess-tiles"]
    assert data["build"] is None and data["push"] is None
    assert data["pull"] == [{SET_WORKING_DIRECTORY: {"directory": "{{ $LENSFORGE_HOME }}"}}]


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda spec: spec.name)
def test_prefect_yaml_entry_matches_its_spec(spec):
    entry = _yaml_entries()[spec.name]
    path, function = entry["entrypoint"].split(":")
    assert entry["entrypoint"] == spec.entrypoint and (REPO / path).is_file()
    assert path == "flows/deployments.py"
    entry_flow = getattr(deployments, function)
    assert isinstance(entry_flow, Flow) and entry_flow is spec.flow
    assert entry["parameters"] == spec.parameters
    entry_flow.validate_parameters(entry["parameters"])  # names and types the flow accepts
    assert entry["description"] == spec.description
    assert entry["tags"] == list(spec.tags)
    assert entry["concurrency_limit"] == spec.concurrency_limit
    assert entry["work_pool"]["name"] == WORK_POOL
    assert entry["schedules"] == [{"cron": spec.cron, "timezone": SCHEDULE_TIMEZONE, "active": True}]


def test_prefect_yaml_loads_each_entrypoint_the_way_a_worker_does(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # the pull step's directory
    for spec in DEPLOYMENTS:
        assert load_flow_from_entrypoint(spec.entrypoint).name == spec.flow.name


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda spec: spec.name)
def test_schedules_are_valid_cron_and_parameters_valid_configurations(spec):
    fields = spec.cron.split()
    assert len(fields) == 5, spec.cron
    CronSchedule(cron=spec.cron, timezone=SCHEDULE_TIMEZONE)  # Prefect's own validation
    cfg = deployments._check_parameters(spec, spec.parameters)
    assert cfg.run_dir.parent == Path("runs")


def test_entry_flows_take_json_parameters_only():
    from prefect.utilities.callables import parameter_schema

    for spec in DEPLOYMENTS:
        schema = parameter_schema(spec.flow).model_dump()
        assert set(schema["properties"]) >= {"config_path", "overrides", "preset"}
        assert not schema["required"], spec.name  # every parameter has a default: a schedule needs none
        json.dumps(spec.parameters)


def test_unknown_deployment_lists_the_valid_names():
    from lensforge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown; choose from simulate, train, inpaint"):
        get_deployment("nightly")


def test_served_parameters_lay_the_options_over_the_defaults(tmp_path):
    spec = get_deployment("reprocess-tiles")
    config = tmp_path / "c.yaml"
    parameters = served_parameters(spec, config, ["seed=7"], tmp_path / "out", "mine", "hsc")
    assert parameters == {"overrides": ["name=tiles", "seed=7", f"out_dir={tmp_path / 'out'}", "name=mine"],
                          "config_path": str(config), "preset": "hsc"}
    assert spec.parameters == {"overrides": ["name=tiles"]}  # the spec is left as it was


# ---------------------------------------------------------------------------------------------------------------
# lensforge serve (serve_deployments), with prefect.serve replaced


@pytest.fixture
def serve_app(monkeypatch):
    """A one-command app running ``lensforge serve``; ``prefect.serve`` records its deployments instead."""
    import prefect

    import lensforge.flows.server

    served: dict = {}

    def fake_serve(*runner_deployments, **kwargs):
        served["deployments"] = runner_deployments
        served["kwargs"] = kwargs

    def fake_pause(specs):  # after serve returns: the deployments whose schedules Ctrl-C pauses
        assert "deployments" in served, "paused before serving"
        served["paused"] = [spec.name for spec, _, _ in specs]

    @contextlib.contextmanager
    def fake_api():
        yield "http://127.0.0.1:1/api"

    monkeypatch.setattr(prefect, "serve", fake_serve)
    monkeypatch.setattr(deployments, "_pause", fake_pause)
    monkeypatch.setattr(lensforge.flows.server, "shared_prefect_api", fake_api)
    for key in deployments._RUN_LOGGERS:
        monkeypatch.setenv(key, "CRITICAL")  # as lensforge.flows.cli sets them
    app = typer.Typer()
    from lensforge.flows.cli import serve

    app.command("serve")(serve)
    return app, served


def test_serve_builds_every_deployment_with_its_schedule(serve_app, tmp_path):
    app, served = serve_app
    result = CliRunner().invoke(app, ["--set", "dask.n_workers=1", "--out", str(tmp_path), "--limit", "2"])
    assert result.exit_code == 0, result.output
    built = served["deployments"]
    assert [d.name for d in built] == deployment_names()
    assert served["kwargs"]["limit"] == 2
    for spec, deployment in zip(DEPLOYMENTS, built, strict=True):
        assert deployment.entrypoint == f"lensforge.flows.deployments.{spec.flow.fn.__name__}"
        assert [s.schedule.cron for s in deployment.schedules] == [spec.cron]
        assert deployment.schedules[0].schedule.timezone == SCHEDULE_TIMEZONE
        assert deployment.parameters["overrides"][-2:] == ["dask.n_workers=1", f"out_dir={tmp_path.resolve()}"]
        assert deployment.concurrency_limit == spec.concurrency_limit
    assert f"{tmp_path.resolve()}/scheduled" in result.output
    for key in deployments._RUN_LOGGERS:  # served runs log to the API again
        assert os.environ[key] == "INFO"


def test_serve_only_some_without_schedules(serve_app):
    app, served = serve_app
    result = CliRunner().invoke(app, ["--only", "train", "--only", "simulate", "--no-schedules", "--name", "x"])
    assert result.exit_code == 0, result.output
    assert [d.name for d in served["deployments"]] == ["train", "simulate"]
    assert served["paused"] == ["train", "simulate"]  # Ctrl-C pauses what this process served, nothing else
    assert all(not d.schedules for d in served["deployments"])
    assert "triggered runs only" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--only", "nightly"], "deployment 'nightly': unknown; choose from simulate"),
    (["--set", "simulation.n_objects=0"], "deployment simulate: --set: invalid value for 'simulation.n_objects'"),
    (["--set", "nope=1"], "unknown key 'nope'"),
])
def test_serve_refuses_bad_input_in_one_line(serve_app, args, message):
    app, served = serve_app
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert "deployments" not in served


# ---------------------------------------------------------------------------------------------------------------
# A real Prefect server, work pool, worker and serve process


SERVER_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
TINY = ["simulation.n_objects=8", "simulation.chunk_size=8", "survey.stamp_size=32", "dask.n_workers=1"]



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else "(no log)"


def _default_sigint() -> None:
    # A shell that runs the suite in the background (nohup, CI) starts it with SIGINT ignored, and an
    # ignored signal stays ignored across exec: Python would then never raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``python -m <args>`` in its own session, output to ``log``, Ctrl-C (SIGINT) deliverable."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_default_sigint)


def _stop(proc: subprocess.Popen, first: int = signal.SIGTERM, grace_s: float = 20) -> None:
    """Stop ``proc`` and every process it started (flow runs start in sessions of their own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(first)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _prefect_cli(args: list[str], env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Server:
    def __init__(self, url: str, env: dict, root: Path):
        self.url, self.env, self.root = url, env, root

    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def trigger(self, name: str, parameters: dict | None = None):
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            return run_deployment(name, parameters=parameters, timeout=0)

    def wait_final(self, flow_run_id, timeout_s: float, watched: subprocess.Popen | None = None, log: Path = None):
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_final():
                    return run
                if watched is not None and watched.poll() is not None and log is not None:
                    raise AssertionError(f"exited with {watched.returncode} before the run finished:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"flow run still {run.state_name} after {timeout_s} s:\n"
                                         f"{_tail(log) if log else ''}")
                time.sleep(1)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``prefect server start`` on 127.0.0.1 with its own SQLite database; stopped (with its children) at the end."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "COLUMNS": "200",
    })
    log = root / "server.log"
    server = _start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, root)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if server.poll() is not None:
                raise AssertionError(f"prefect server exited with {server.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prefect server not healthy after {SERVER_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        client_env = {**env, "PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "INFO",  # logs go to files only
                      "LENSFORGE_HOME": str(REPO)}
        yield Server(url, client_env, root)
    finally:
        _stop(server)


@pytest.mark.slow
def test_worker_runs_a_deployment_from_prefect_yaml(prefect_server, tmp_path):
    env = prefect_server.env
    created = _prefect_cli(["work-pool", "create", WORK_POOL, "--type", WORK_POOL_TYPE], env, tmp_path)
    assert created.returncode == 0, created.stdout + created.stderr

    # Without LENSFORGE_HOME here the pull step keeps its placeholder, read from the worker's environment at
    # run time (set when deploying, `prefect deploy` would write its value into the deployment instead).
    deploy_env = {key: value for key, value in env.items() if key != "LENSFORGE_HOME"}
    deployed = _prefect_cli(["--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", "simulate"],
                            deploy_env, REPO)
    output = deployed.stdout + deployed.stderr
    assert "Deployment 'ops-simulate/simulate' successfully created" in output, output
    # Exit 0 needs fastapi < 0.151 (pyproject): newer ones answer Prefect's "limit": null with a 422.
    assert deployed.returncode == 0, output

    spec = get_deployment("simulate")
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name(f"{spec.flow.name}/{spec.name}")
    assert deployment.work_pool_name == WORK_POOL
    assert deployment.entrypoint == spec.entrypoint
    assert deployment.parameters == spec.parameters
    assert [s.schedule.cron for s in deployment.schedules] == [spec.cron]
    assert deployment.pull_steps == [{SET_WORKING_DIRECTORY: {"directory": "{{ $LENSFORGE_HOME }}"}}]

    out_dir = tmp_path / "runs"
    flow_run = prefect_server.trigger(f"{spec.flow.name}/{spec.name}",
                                      {"overrides": ["name=deployed", f"out_dir={out_dir}", *TINY]})
    log = tmp_path / "worker.log"
    # The worker runs elsewhere: the pull step takes the flow run into LENSFORGE_HOME (the repository).
    worker = _start(["prefect", "worker", "start", "--pool", WORK_POOL, "--name", "lensforge-test-worker",
                     "--run-once", "--install-policy", "never"], env, log, tmp_path)
    try:
        try:
            worker.wait(timeout=RUN_TIMEOUT_S)  # --run-once: submits what is due, waits for it, exits
        except subprocess.TimeoutExpired:
            pass
        final = prefect_server.wait_final(flow_run.id, 30, log=log)
    finally:
        _stop(worker)
    assert final.state.is_completed(), f"{final.state!r}\n{_tail(log)}"
    assert worker.returncode == 0, _tail(log)
    run_dir = out_dir / "deployed"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"] == ["simulate"] and manifest["config"]["simulation"]["n_objects"] == 8
    assert "trainset.zarr" in manifest["products"] and "catalogs/truth.parquet" in manifest["products"]


@pytest.mark.slow
def test_serve_runs_a_triggered_deployment(prefect_server, tmp_path):
    spec = get_deployment("simulate")
    full_name = f"{spec.flow.name}/{spec.name}"
    out_dir = tmp_path / "runs"
    log = tmp_path / "serve.log"
    args = ["lensforge.flows.serve", "--only", "simulate", "--out", str(out_dir), "--name", "served"]
    for item in TINY:
        args += ["--set", item]
    serve = _start(args, prefect_server.env, log, tmp_path)
    try:
        deadline = time.monotonic() + 90
        with prefect_server.client() as client:
            while True:  # registered by this process (another test may have deployed the same name before)
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name(full_name)
                    if "name=served" in (deployment.parameters or {}).get("overrides", []):
                        break
                assert serve.poll() is None, f"serve exited with {serve.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"deployment not served after 90 s:\n{_tail(log)}"
                time.sleep(1)
        assert deployment.entrypoint == "lensforge.flows.deployments.simulate"
        assert [s.schedule.cron for s in deployment.schedules] == [spec.cron] and not deployment.paused
        flow_run = prefect_server.trigger(full_name)  # the served defaults: the tiny run in out_dir
        final = prefect_server.wait_final(flow_run.id, RUN_TIMEOUT_S, watched=serve, log=log)
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        serve.wait(timeout=60)
    finally:
        _stop(serve, first=signal.SIGINT)
    assert final.state.is_completed(), f"{final.state!r}\n{_tail(log)}"
    assert serve.returncode == 0, _tail(log)
    with prefect_server.client() as client:
        assert client.read_deployment_by_name(full_name).paused  # stopping paused the schedule
    manifest = json.loads((out_dir / "served" / "manifest.json").read_text())
    assert manifest["stages"] == ["simulate"] and manifest["config"]["name"] == "served"
    assert "trainset.zarr" in manifest["products"]
