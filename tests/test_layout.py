"""Static checks of the project's shape: import direction, Dockerfile, CI entry point."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"pipeline": {"flows"}, "models": {"pipeline", "flows"}, "catalogs": {"models", "flows", "pipeline"}}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_downward(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN[package]]
    assert not offenders


def test_dockerfile_matches_the_project():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert torch_pin.replace(" ", "") in dockerfile  # same torch as pyproject, CPU index
    assert "download.pytorch.org/whl/cpu" in dockerfile
    entry = re.search(r'^ENTRYPOINT \["(\w+)"\]', dockerfile, re.M).group(1)
    assert entry in project["scripts"]
    for package in ("pipeline", "models", "flows", "catalogs"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
