"""Static checks of the project's shape: one namespace, import direction, no cycles, one run layout.

The house (``lensforge/__init__.py``, ``pipeline/__init__.py``): the root modules every floor may
import; ``catalogs`` and ``models`` above them (siblings: neither imports the other); the
``pipeline`` root (config, presets, rundir) and its rooms in the order of ``PIPELINE_ROOMS``; and
``flows`` on top. A module may import modules of its own room or of lower ones, never higher, and
no two modules may import each other, however indirectly (imports inside functions included).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("catalogs", "models", "pipeline", "flows")  # repository folder = lensforge.<name>
PIPELINE_ROOMS = ("radio", "stamps", "generative", "inpaint", "tiles", "datasets", "evaluation", "shear")


def module_files() -> dict[str, Path]:
    """Every module of the distribution by dotted name (``lensforge.pipeline.stamps.simulate``)."""
    modules = {}
    for folder, prefix in [("lensforge", "lensforge"), *((name, f"lensforge.{name}") for name in SUBPACKAGES)]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((prefix, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = module_files()


def rank(module: str) -> tuple[int, str]:
    """(floor, room) of a module: higher floors may import lower ones only."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in SUBPACKAGES:
        return 0, "root"
    if parts[1] in ("catalogs", "models"):
        return 1, parts[1]
    if parts[1] == "flows":
        return 3 + len(PIPELINE_ROOMS), "flows"
    if len(parts) > 2 and parts[2] in PIPELINE_ROOMS:
        return 3 + PIPELINE_ROOMS.index(parts[2]), parts[2]
    return 2, "pipeline"


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, inside functions too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else node.module


def project_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _, target in imports_of(path):
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]  # an attribute of a module, e.g. lensforge.layout.RunLayout
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def test_every_module_is_in_the_lensforge_namespace():
    for path in ROOT.glob("*/**/*.py"):
        top = path.relative_to(ROOT).parts[0]
        if top in SUBPACKAGES or top == "lensforge":
            assert path in MODULES.values(), path
    for path in MODULES.values():
        for line, target in imports_of(path):
            assert target.split(".")[0] not in SUBPACKAGES, f"{path.relative_to(ROOT)}:{line} imports {target}"


def test_the_distribution_lists_every_package_under_one_namespace():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == packages
    assert setuptools["package-dir"] == {"lensforge": "lensforge", **{f"lensforge.{n}": n for n in SUBPACKAGES}}


def test_installed_package_imports_from_anywhere_and_shadows_nothing(tmp_path):
    code = ("import lensforge.pipeline, lensforge.models, lensforge.catalogs, lensforge.flows\n"
            "import importlib.util\n"
            "for name in ('pipeline', 'models', 'catalogs', 'flows'):\n"
            "    assert importlib.util.find_spec(name) is None, name\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_imports_point_downward():
    offenders = []
    for name, path in MODULES.items():
        floor, room = rank(name)
        for line, target in imports_of(path):
            if not target.startswith("lensforge"):
                continue
            target_floor, target_room = rank(target)
            sibling = floor == target_floor == 1 and room != target_room  # catalogs <-> models
            if target_floor > floor or sibling:
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({room}) imports {target} ({target_room})")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles():
    graph = project_imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


# Names of the run directory tree (lensforge/layout.py): nothing else may join them into a path.
RUN_TREE_NAMES = ("config.yaml", "trainset.zarr", "manifest.json", ".progress", "catalogs", "report", "models",
                  "tiles", "generated", "reprocessed", "evaluation.json")


def _spelled_paths(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and right.value in RUN_TREE_NAMES:
                yield f"{path.relative_to(ROOT)}:{node.lineno} ... / {right.value!r}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in ("config.yaml", "trainset.zarr", "manifest.json", ".progress", "evaluation.json") or \
                    re.fullmatch(r"(catalogs|report|models|tiles|generated|reprocessed)/[\w.{}-]+", node.value):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"


def test_only_the_run_layout_spells_run_directory_paths():
    offenders = [hit for name, path in MODULES.items() if name != "lensforge.layout" for hit in _spelled_paths(path)]
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_a_spelled_path(tmp_path):
    example = ROOT / "lensforge" / "layout.py"
    assert any("'trainset.zarr'" in hit for hit in _spelled_paths(example))


def test_dockerfile_matches_the_project():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert torch_pin.replace(" ", "") in dockerfile  # same torch as pyproject, CPU index
    assert "download.pytorch.org/whl/cpu" in dockerfile
    entry = re.search(r'^ENTRYPOINT \["(\w+)"\]', dockerfile, re.M).group(1)
    assert entry in project["scripts"]
    for package in ("lensforge", *SUBPACKAGES):
        assert f"COPY {package} ./{package}" in dockerfile


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


@pytest.mark.parametrize("module", sorted(n for n in MODULES if rank(n)[0] == 2 or rank(n)[1] in PIPELINE_ROOMS))
def test_pipeline_modules_do_not_import_prefect_or_dask_distributed(module):
    names = {target.split(".")[0] for _, target in imports_of(MODULES[module])}
    assert not names & {"prefect", "prefect_dask"}, module
