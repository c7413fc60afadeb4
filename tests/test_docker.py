"""docker/: the compose file and the Dockerfiles, checked without a Docker engine.

Every service command is resolved against the CLI it runs (``lensforge`` through its typer app,
``prefect`` and ``dask`` through their own ``--help``), every ``build`` against a Dockerfile in the
repository, every reference between services against the services defined.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lensforge.flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
REQUIRED_SERVICES = {"postgres", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker"}
LENSFORGE_IMAGE_SERVICES = REQUIRED_SERVICES - {"postgres"}
HELP_TIMEOUT_S = 60


# --- helpers ----------------------------------------------------------------------------------

def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR}`` with an empty environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1]:]


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name] = value.strip('"')
    return defaults


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is YAML
    assert isinstance(value, list), f"{args!r}: use the exec form (a JSON array)"
    return value


def image_entrypoint(service: dict) -> list[str]:
    """The entrypoint a service runs with: its own, or its Dockerfile's ENTRYPOINT."""
    if "entrypoint" in service:
        return as_list(service["entrypoint"])
    if "build" not in service:
        return []  # a registry image (postgres): its own entrypoint
    for keyword, args in reversed(final_stage(dockerfile_instructions(dockerfile_of(service)))):
        if keyword == "ENTRYPOINT":
            return exec_form(args)
    return []


def dockerfile_of(service: dict) -> Path:
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    return context / build.get("dockerfile", "Dockerfile")


def argv(service: dict) -> list[str]:
    return [interpolate(token) for token in image_entrypoint(service) + as_list(service.get("command"))]


def option_names(tokens: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in tokens if token.startswith("-")]


def resolve_lensforge(args: list[str]) -> tuple[list[str], object]:
    """Walk ``args`` down the lensforge command tree; check every option and positional token.

    Duck-typed (groups have ``commands``, parameters a ``param_type_name``): typer may carry its own click.
    """
    command = typer.main.get_command(app)
    path: list[str] = []
    tokens = list(args)
    while hasattr(command, "commands"):
        assert tokens and not tokens[0].startswith("-"), f"lensforge {' '.join(path)}: no sub-command given"
        name = tokens.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"lensforge {' '.join(path)}: no command {name!r} (has {sorted(command.commands)})"
        command, path = sub, [*path, name]
    options = {opt: param for param in command.params if param.param_type_name == "option"
               for opt in [*param.opts, *param.secondary_opts]}
    n_arguments = sum(1 for param in command.params if param.param_type_name == "argument")
    positionals = 0
    while tokens:
        token = tokens.pop(0)
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            assert name in options, f"lensforge {' '.join(path)}: no option {name} (has {sorted(options)})"
            param = options[name]
            if "=" not in token and not (param.is_flag or param.count):
                assert tokens, f"lensforge {' '.join(path)} {name}: no value"
                tokens.pop(0)
        else:
            positionals += 1
    assert positionals <= n_arguments, f"lensforge {' '.join(path)}: {positionals} arguments, takes {n_arguments}"
    return path, command


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def external_help(services: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """``<cli> <command ...> --help`` for every service that runs prefect or dask, run in parallel once."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("PREFECT_API_URL", None)
    bin_dir = Path(sys.executable).parent
    commands = {name: argv(service) for name, service in services.items()
                if argv(service)[:1] in (["prefect"], ["dask"])}

    def run(cmd: list[str]) -> tuple[int, str]:
        exe = bin_dir / cmd[0]
        if not exe.exists():
            pytest.skip(f"{cmd[0]} is not installed next to {sys.executable}")
        done = subprocess.run([str(exe), *cmd[1:], "--help"], capture_output=True, text=True, env=env,
                              timeout=HELP_TIMEOUT_S, cwd=tmp_path_factory.mktemp("cwd"))
        return done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=len(commands) or 1) as pool:
        results = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    return {name: (commands[name], *results[name]) for name in commands}


# --- compose: structure -----------------------------------------------------------------------

def test_compose_has_the_required_services_started_by_default(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"compose.yaml lacks {sorted(missing)}"
    for name in REQUIRED_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"
    assert services["lensforge"]["profiles"] == ["cli"]


def test_every_service_has_an_image_or_a_build(services):
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_every_build_names_an_existing_dockerfile(services):
    built = {name: dockerfile_of(service) for name, service in services.items() if "build" in service}
    assert {name for name, path in built.items() if path.name == "Dockerfile"} >= LENSFORGE_IMAGE_SERVICES
    assert any(path.name == "Dockerfile.cuda" for path in built.values())
    for name, path in built.items():
        assert path.is_file(), f"{name}: {path} does not exist"
        assert path.parent == DOCKER, f"{name}: {path} is not in docker/"
        context = (COMPOSE_FILE.parent / services[name]["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root (COPY paths)"


def test_depends_on_names_existing_services_and_healthchecks(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on an unknown service {dep!r}"
            assert dep != name
            condition = (spec or {}).get("condition", "service_started")
            assert condition in conditions, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
            assert not services[dep].get("profiles") or services[dep].get("profiles") == service.get("profiles"), \
                f"{name} depends on {dep}, which only starts in profile(s) {services[dep]['profiles']}"
    for name, service in services.items():
        check = service.get("healthcheck")
        if check:
            test = check["test"]
            assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck {test}"


def test_named_volumes_are_declared_and_runs_are_shared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"
    # The flow process and the Dask workers write the same run directory: same volume, same path.
    for name in ("prefect-worker", "dask-worker", "lensforge", "lensforge-gpu"):
        assert "runs:/work/runs" in services[name]["volumes"], name


def test_environment_values_are_strings(services):
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert isinstance(value, str), f"{name}: {key}={value!r} (quote it)"


def test_prefect_wiring(services):
    server = argv(services["prefect-server"])
    port = int(server[server.index("--port") + 1]) if "--port" in server else 4200
    api = f"http://prefect-server:{port}/api"
    for name in ("prefect-worker", "dask-worker", "lensforge", "lensforge-gpu"):
        assert environment(services[name])["PREFECT_API_URL"] == api, name
    assert f"127.0.0.1:{port}:{port}" in services["prefect-server"]["ports"]  # loopback only (test_security.py)
    for name, service in services.items():
        if "build" in service:  # the lensforge images
            assert environment(service).get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false", name

    url = urlparse(environment(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    postgres = environment(services["postgres"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dask_wiring(services):
    scheduler = argv(services["dask-scheduler"])
    port = int(scheduler[scheduler.index("--port") + 1]) if "--port" in scheduler else 8786
    address = f"tcp://dask-scheduler:{port}"
    worker = argv(services["dask-worker"])
    assert worker[:3] == ["dask", "worker", address]
    assert worker[worker.index("--nthreads") + 1] == "1"
    preload = worker[worker.index("--preload") + 1]  # the module must exist in the image's code
    assert importlib.util.find_spec(preload) is not None, preload
    for name in ("lensforge", "lensforge-gpu"):
        assert f"dask.address={address}" in argv(services[name]), name


# --- compose: commands against the CLIs -------------------------------------------------------

def test_services_running_lensforge_use_its_entrypoint(services):
    runs_lensforge = {name for name, service in services.items() if "lensforge" in argv(service)[:1]}
    assert {"lensforge", "lensforge-gpu"} <= runs_lensforge
    for name in runs_lensforge:
        assert image_entrypoint(services[name]) == ["lensforge"], name
    for name in LENSFORGE_IMAGE_SERVICES:
        assert argv(services[name])[0] in {"lensforge", "prefect", "dask"}, name


def test_lensforge_commands_resolve_against_the_cli(services):
    runner = CliRunner()
    checked = 0
    for name, service in services.items():
        tokens = argv(service)
        if tokens[:1] != ["lensforge"]:
            continue
        args = tokens[1:]
        path, _ = resolve_lensforge(args)
        result = runner.invoke(app, [*args, "--help"], prog_name="lensforge")
        assert result.exit_code == 0, f"{name}: lensforge {' '.join(args)} --help\n{result.output}"
        assert f"lensforge {' '.join(path)}" in " ".join(result.output.split())
        # The configuration the command would run with is valid (keys and values of --set, --preset).
        config_args = [token for i, token in enumerate(args) if token in {"--set", "-s", "--preset", "-p"}
                       or (i and args[i - 1] in {"--set", "-s", "--preset", "-p"})]
        shown = runner.invoke(app, ["config", "show", *config_args])
        assert shown.exit_code == 0, f"{name}: {config_args}: {shown.output}"
        checked += 1
    assert checked >= 2


def test_resolve_lensforge_rejects_unknown_names():
    with pytest.raises(AssertionError, match="no command 'simulat'"):
        resolve_lensforge(["simulat"])
    with pytest.raises(AssertionError, match="no option --bogus"):
        resolve_lensforge(["run", "--bogus", "1"])
    with pytest.raises(AssertionError, match="takes 0"):
        resolve_lensforge(["run", "extra"])
    assert resolve_lensforge(["generate", "interpolate", "1", "2", "--steps", "8"])[0] == ["generate", "interpolate"]


@pytest.mark.parametrize("service", sorted(LENSFORGE_IMAGE_SERVICES))
def test_prefect_and_dask_commands_resolve_against_their_clis(external_help, service):
    cmd, returncode, output = external_help[service]
    assert returncode == 0, f"{' '.join(cmd)} --help failed:\n{output}"
    assert cmd[1] in output.split("Usage:", 1)[-1].split("\n", 1)[0], output[:400]
    for option in option_names(cmd[1:]):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", output), f"{' '.join(cmd)}: no option {option}"


def test_worker_runs_the_deployments_of_prefect_yaml(services):
    """The worker polls the pool prefect.yaml deploys to, and finds the code where its pull step looks."""
    path = ROOT / "prefect.yaml"
    if not path.exists():
        pytest.skip("no prefect.yaml")
    project = yaml.safe_load(path.read_text())
    worker = argv(services["prefect-worker"])
    pool = worker[worker.index("--pool") + 1]
    pools = {deployment["work_pool"]["name"] for deployment in project.get("deployments", [])}
    assert pools <= {pool}, f"prefect.yaml deploys to {sorted(pools)}; the worker polls {pool}"
    for step in project.get("pull") or []:
        directory = (step.get("prefect.deployments.steps.set_working_directory") or {}).get("directory")
        if directory is None:
            continue
        variable = re.fullmatch(r"\{\{\s*\$(\w+)\s*\}\}", directory)
        for name in ("Dockerfile", "Dockerfile.cuda"):
            stage = final_stage(dockerfile_instructions(DOCKER / name))
            env = " ".join(args for keyword, args in stage if keyword == "ENV")
            sources = next(args for keyword, args in stage if keyword == "WORKDIR")  # where COPY puts the code
            if variable:
                assert f"{variable.group(1)}={sources}" in env, f"{name}: set {variable.group(1)}={sources}"
            else:
                assert directory == sources, f"{name}: the pull step changes into {directory}, the code is in {sources}"
            runs = " ".join(args for keyword, args in stage if keyword == "RUN")
            assert f"ln -s /work/runs {sources}/runs" in runs, f"{name}: runs of deployments miss the volume"


# --- Dockerfiles ------------------------------------------------------------------------------

def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin() -> str:
    pins = [dep.replace(" ", "") for dep in pyproject()["project"]["dependencies"] if dep.startswith("torch")]
    assert len(pins) == 1 and pins[0].startswith("torch=="), pins
    return pins[0].removeprefix("torch==")


def dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")] if path.exists() else []


@pytest.fixture(scope="module", params=["Dockerfile", "Dockerfile.cuda"])
def dockerfile(request) -> tuple[str, list[tuple[str, str]]]:
    return request.param, dockerfile_instructions(DOCKER / request.param)


def test_dockerfile_common_shape(dockerfile):
    name, instructions = dockerfile
    stage = final_stage(instructions)
    keywords = [keyword for keyword, _ in stage]
    entrypoints = [exec_form(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["lensforge"]], name
    assert "lensforge" in pyproject()["project"]["scripts"]
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, f"{name}: runs as root"
    assert ("WORKDIR", "/work") in stage and any(k == "VOLUME" and "/work/runs" in a for k, a in stage)
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in " ".join(a for k, a in stage if k == "ENV")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN" and "pip install" in
                                        stage[i][1]), f"{name}: install as root, run as the user"
    assert arg_defaults(instructions)["TORCH_VERSION"] == torch_pin(), f"{name}: torch differs from pyproject"


def test_dockerfile_copies_the_whole_package_from_existing_paths(dockerfile):
    name, instructions = dockerfile
    ignored = dockerignore()
    copied = set()
    for keyword, args in instructions:
        if keyword not in {"COPY", "ADD"} or "--from=" in args:
            continue
        *sources, _ = [token for token in args.split() if not token.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{name}: {source} is ignored"
            copied.add(source.rstrip("/"))
    packages = set(pyproject()["tool"]["setuptools"]["package-dir"].values())  # the folders lensforge.* installs from
    assert packages | {"pyproject.toml", "README.md"} <= copied, f"{name}: copies {sorted(copied)}"


def test_cpu_dockerfile_installs_the_pinned_cpu_torch():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    base = next(args for keyword, args in instructions if keyword == "FROM")
    assert re.fullmatch(r"python:3\.11-slim-\w+", base), base
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert 'https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"' in runs
    assert "--constraint /opt/torch-constraint.txt ." in runs  # the project install keeps that build


def test_cuda_dockerfile_installs_cuda_torch_on_an_nvidia_base():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.cuda")
    defaults = arg_defaults(instructions)
    final_from = final_stage(instructions)[0][1]
    assert final_from == "${CUDA_IMAGE}" and defaults["CUDA_IMAGE"].startswith("nvidia/cuda:"), final_from
    assert "runtime" in defaults["CUDA_IMAGE"] or "devel" in defaults["CUDA_IMAGE"]
    assert re.fullmatch(r"cu\d{3}", defaults["TORCH_CUDA"])
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", defaults["CUDA_IMAGE"]).groups()
    assert defaults["TORCH_CUDA"] == f"cu{cuda[0]}{cuda[1]}", "base image and torch build differ in CUDA version"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert '"https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"' in runs
    assert "--constraint /opt/torch-constraint.txt ." in runs
    assert "torch.version.cuda" in runs  # the build fails if the installed torch is not a CUDA build
    # Same Python minor version as the CPU image: one Dask cluster serves clients of both images.
    cpu_base = next(args for keyword, args in dockerfile_instructions(DOCKER / "Dockerfile") if keyword == "FROM")
    cpu_python = re.match(r"python:(3\.\d+)", cpu_base).group(1)
    assert f"uv python install {cpu_python}" in runs


def test_dockerfiles_pass_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed")
    for name in ("Dockerfile", "Dockerfile.cuda"):
        done = subprocess.run([exe, "--failure-threshold", "error", str(DOCKER / name)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_images_give_dask_workers_the_settings_lensforge_gives_its_own(dockerfile):
    """docker/dask.yaml, copied to /etc/dask, is what dask reads for the `dask worker` services."""
    import dask

    from lensforge.flows.cluster import QUIET_WORKER_CONFIG, WORKER_DASK_CONFIG

    name, instructions = dockerfile
    copies = [args.split() for keyword, args in final_stage(instructions) if keyword == "COPY"]
    assert ["docker/dask.yaml", "/etc/dask/lensforge.yaml"] in copies, f"{name}: no Dask config in /etc/dask"
    on_disk = dask.config.collect(paths=[str(DOCKER / "dask.yaml")], env={})
    with dask.config.set(on_disk):
        for key, value in WORKER_DASK_CONFIG.items():
            assert dask.config.get(key, default="absent") == value, key
        for key, (_, quiet) in QUIET_WORKER_CONFIG.items():
            assert dask.config.get(key, default="absent") == quiet, key
