"""Security checks: no unsafe deserialisation or code evaluation in the sources, loopback-only
services by default, outputs confined to the run directory. Fast: no flow, no server, no cluster.

Related checks elsewhere: checkpoints are safetensors, never pickle (tests/test_models_checkpoint.py);
a pickle disguised as weights, a YAML python tag and a selection that calls ``__import__`` are in the
hostile-input corpus (tests/test_hostile.py); run names, generated-set names and registry versions
that try to escape are in tests/test_config.py, tests/test_generated_set.py and tests/test_registry.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.config import DaskConfig, build_config, load_config

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("flows", "pipeline", "models", "catalogs", "benchmarks")

# Calls that run code or deserialise pickles: dotted name as written in the source -> why not.
FORBIDDEN_CALLS = {
    "eval": "evaluates a string as Python",
    "exec": "executes a string as Python",
    "compile": "compiles a string as Python",
    "__import__": "imports a module named at run time",
    "torch.load": "unpickles (use lensforge.models.checkpoint: safetensors)",
    "torch.save": "writes a pickle (use lensforge.models.checkpoint: safetensors)",
    "pickle.load": "unpickles", "pickle.loads": "unpickles", "pickle.Unpickler": "unpickles",
    "marshal.load": "unmarshals code", "marshal.loads": "unmarshals code",
    "dill.load": "unpickles", "dill.loads": "unpickles",
    "cloudpickle.load": "unpickles", "cloudpickle.loads": "unpickles",
    "pandas.read_pickle": "unpickles", "pd.read_pickle": "unpickles",
    "yaml.unsafe_load": "constructs arbitrary Python objects", "yaml.unsafe_load_all": "idem",
    "yaml.full_load": "constructs Python objects", "yaml.full_load_all": "idem",
    "os.system": "runs a shell command", "os.popen": "runs a shell command",
}
FORBIDDEN_IMPORTS = {"pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
FORBIDDEN_FROM_IMPORTS = {("torch", "load"), ("torch", "save"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
                          ("yaml", "load"), ("yaml", "Loader"), ("yaml", "UnsafeLoader"), ("yaml", "FullLoader"),
                          ("pandas", "read_pickle"), ("numpy", "load")}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}


def _sources() -> list[Path]:
    files = [path for name in SOURCE_DIRS for path in sorted((ROOT / name).rglob("*.py"))]
    assert len(files) > 50, "the scan found too few sources"
    return files


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name / Attribute chain, else None (e.g. ``frame.eval`` -> "frame.eval")."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(path: Path) -> list[str]:
    """Every forbidden call or import in ``path``, as ``file:line: what (why)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ROOT).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] in FORBIDDEN_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            found += [f"{where}:{node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                      if (node.module, alias.name) in FORBIDDEN_FROM_IMPORTS]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in FORBIDDEN_CALLS:
                found.append(f"{where}:{node.lineno}: {name}() ({FORBIDDEN_CALLS[name]})")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader) not in SAFE_YAML_LOADERS:
                    found.append(f"{where}:{node.lineno}: {name}() without SafeLoader")
            elif name in ("np.load", "numpy.load"):
                allow = _keyword(node, "allow_pickle")
                if not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                    found.append(f"{where}:{node.lineno}: {name}(allow_pickle=...) unpickles")
            if name and name.split(".")[-1] in ("run", "Popen", "call", "check_call", "check_output") \
                    and name.split(".")[0] == "subprocess":
                shell = _keyword(node, "shell")
                if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                    found.append(f"{where}:{node.lineno}: {name}(shell=...) runs a shell")
    return found


def test_no_unsafe_deserialisation_or_evaluation_in_the_sources():
    found = [line for path in _sources() for line in unsafe_uses(path)]
    assert not found, "\n".join(found)


def test_the_scan_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The scanner itself: each pattern is found, and look-alikes (``model.eval()``, safe loaders) are not."""
    bad = ("import pickle\nfrom torch import load\nimport torch, yaml\ntorch.load('w.pt')\n"
           "yaml.load(text)\nyaml.load(text, Loader=yaml.Loader)\nyaml.unsafe_load(text)\neval(s)\nexec(s)\n"
           "import numpy as np\nnp.load('a.npy', allow_pickle=True)\nimport subprocess\n"
           "subprocess.run(cmd, shell=True)\n")
    good = ("import yaml, torch, safetensors.torch\nmodel.eval()\nframe.eval('a > 1')\n"
            "yaml.safe_load(text)\nyaml.load(text, Loader=yaml.SafeLoader)\nsafetensors.torch.load(blob)\n"
            "import numpy as np\nnp.load('a.npy')\nsubprocess.run(['git', 'status'], check=True)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "bad.py").write_text(bad)
    (tmp_path / "good.py").write_text(good)
    assert len(unsafe_uses(tmp_path / "bad.py")) == 10, unsafe_uses(tmp_path / "bad.py")
    assert unsafe_uses(tmp_path / "good.py") == []


def test_checkpoints_load_through_safetensors_only():
    """The only readers of weights files are the stamp checkpoints' (models/checkpoint.py) and the image
    in-painter's (models/image_inpainter.py), and both parse safetensors bytes (never a pickle)."""
    expected = ["models/checkpoint.py", "models/image_inpainter.py"]
    for reader in expected:
        text = (ROOT / reader).read_text(encoding="utf-8")
        assert "safetensors.torch.load(blob)" in text and "load_state_dict" in text, reader
        assert "torch.load(" not in text.replace("safetensors.torch.load(", ""), reader
    readers = sorted(path.relative_to(ROOT).as_posix() for path in _sources()
                     if "safetensors" in path.read_text(encoding="utf-8") and "import safetensors" in
                     path.read_text(encoding="utf-8"))
    assert readers == expected, readers


def test_config_files_are_read_with_the_safe_loader(tmp_path):
    """A python tag in a config file is refused, not constructed."""
    path = tmp_path / "tagged.yaml"
    path.write_text("train: !!python/object/apply:builtins.exit [7]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(overrides=["train.steps=!!python/object/apply:builtins.exit [7]"])


# --- loopback by default ---------------------------------------------------------------------------

@pytest.mark.parametrize("dashboard", [False, True])
def test_local_dask_cluster_binds_to_loopback(dashboard):
    from lensforge.flows.cluster import local_cluster_kwargs

    kwargs = local_cluster_kwargs(DaskConfig(dashboard=dashboard))
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["dashboard_address"].rsplit(":", 1)[0] == "127.0.0.1"
    assert not DaskConfig().dashboard  # and the dashboard is off unless asked for


def test_prefect_server_host_defaults_to_loopback():
    """``prefect server start`` (docs/operations.md) and Prefect's settings default to 127.0.0.1."""
    from prefect.settings.models.server.api import ServerAPISettings

    assert ServerAPISettings.model_fields["host"].default == "127.0.0.1"


def test_prefect_temporary_server_command_binds_to_loopback(monkeypatch):
    """The uvicorn command Prefect's temporary server runs (captured, not started) has --host 127.0.0.1."""
    import prefect.server.api.server as server_module
    from prefect.settings import PREFECT_SERVER_API_HOST, temporary_settings

    captured = {}

    def fake_popen(args, **kwargs):
        captured["args"] = list(args)
        return None

    monkeypatch.setattr(server_module.subprocess, "Popen", fake_popen)
    port = 47_123
    try:
        with temporary_settings(updates={PREFECT_SERVER_API_HOST: "0.0.0.0"}):  # even when told otherwise
            server = server_module.SubprocessASGIServer(port=port)
            server._run_uvicorn_command()
        args = captured["args"]
        assert args[args.index("--host") + 1] == "127.0.0.1", args
        assert server.api_url.startswith("http://127.0.0.1:")
    finally:
        server_module.SubprocessASGIServer._instances.pop(port, None)


def test_shared_prefect_api_pins_the_host_and_refuses_a_public_server(monkeypatch):
    """lensforge.flows.server starts the temporary server with the host setting pinned to 127.0.0.1 and checks
    its URL."""
    import prefect.server.api.server as server_module
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_HOST, temporary_settings

    from lensforge.flows import server as lensforge_server

    seen = {}

    class FakeServer:
        url = "http://127.0.0.1:8123/api"
        running, port = False, None

        def find_available_port(self):
            return 8123

        def start(self, timeout=None):
            seen["host"] = PREFECT_SERVER_API_HOST.value()

        def stop(self):
            seen["stopped"] = True

        @property
        def api_url(self):
            return type(self).url

    monkeypatch.setattr(server_module, "SubprocessASGIServer", FakeServer)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_SERVER_API_HOST: "0.0.0.0"}, restore_defaults={PREFECT_API_URL}):
        with lensforge_server.shared_prefect_api() as url:
            assert url == FakeServer.url
        assert seen["host"] == "127.0.0.1"
        FakeServer.url = "http://0.0.0.0:8123/api"
        with pytest.raises(RuntimeError, match="not on loopback"), lensforge_server.shared_prefect_api():
            pass
        assert seen.get("stopped")


def test_compose_publishes_ports_on_loopback_only():
    """docker/compose.yaml: every published port binds the host's 127.0.0.1 (the services have no auth)."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:  # "[HOST_IP:]HOST_PORT:CONTAINER_PORT"
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is published on every interface"
            published.append(name)
    assert "prefect-server" in published


# --- outputs confined to the run directory ----------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/etc", "a\\b", "", ".hidden", "x" * 65, "~root"])
def test_run_names_cannot_leave_out_dir(name):
    with pytest.raises(ConfigError, match="invalid value for 'name'"):
        build_config({"name": name})


@pytest.mark.parametrize("key", ["train.model_version", "inpaint.model_version"])
@pytest.mark.parametrize("version", ["../v001", "v001/../../x", "/v001", "v001/..", ".."])
def test_model_versions_cannot_leave_the_registry(key, version):
    with pytest.raises(ConfigError, match=f"invalid value for '{key}'"):
        load_config(overrides=[f"{key}={version}"])


@pytest.mark.parametrize("output", ["../escape.fits", "/tmp/escape.fits", "sub/x.fits", "..", ".", "x.png",
                                    "x.fits/../../y.fits"])
def test_generated_outputs_stay_in_the_run_directory(output, tmp_path):
    from lensforge.flows.generate_cli import _output_path

    cfg = build_config({"out_dir": str(tmp_path), "name": "r"})
    with pytest.raises(InputError, match="plain file name"):
        _output_path(cfg, output, "samples.fits")
    assert _output_path(cfg, "ok.fits", "samples.fits") == tmp_path / "r" / "generated" / "ok.fits"


@pytest.mark.parametrize("url", ["/data/../../etc/passwd.fits", "s3://bucket/a/../../b.fits", "memory:///..fits",
                                 "/tiles/...fits", "file:///tiles/x.fits.gz", "/tiles/.fits", "s3://bucket/.."])
def test_reprocess_outputs_stay_in_the_output_directory(url, tmp_path):
    from lensforge.pipeline.tiles.reprocess import MARKER_SUFFIX, OUTPUT_SUFFIXES, output_stem

    for suffix in (*OUTPUT_SUFFIXES, MARKER_SUFFIX):
        target = (tmp_path / f"{output_stem(url)}{suffix}").resolve()
        assert target.parent == tmp_path.resolve(), (url, target)

