"""Every measured number in README.md and docs/*.md comes from a results file under docs/results/.

The numbers sit between ``<!-- results:NAME -->`` markers and are rendered from the results files
by ``benchmarks/publish.py``; each results file records the commit and the exact command of the
script (in this repository) that wrote it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import publish  # noqa: E402

RESULTS = sorted((ROOT / "docs" / "results").glob("*.json"))
SCRIPT = re.compile(r"benchmarks/[\w]+\.py")


def _commands(provenance: dict) -> list[str]:
    return [provenance["command"], *([provenance["collected_by"]["command"]] if "collected_by" in provenance else [])]


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_results_file_records_commit_command_and_an_existing_script(path):
    result = json.loads(path.read_text())
    provenance = result["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"] or ""), provenance.get("commit")
    assert isinstance(provenance["dirty"], bool)
    assert provenance["command"].strip()
    assert path.name in publish.WRITERS, f"{path.name}: no script is known to write it"
    writer = publish.WRITERS[path.name]
    assert any(writer in command for command in _commands(provenance)), (writer, _commands(provenance))
    for command in _commands(provenance):
        for script in SCRIPT.findall(command):
            assert (ROOT / script).is_file(), f"{path.name}: {script} is not in the repository"
    for figure in result.get("figures", {}).values() if isinstance(result.get("figures"), dict) else []:
        assert (ROOT / figure).is_file(), figure
    for figure in result.get("figures", []) if isinstance(result.get("figures"), list) else []:
        assert (ROOT / "docs" / "figures" / figure).is_file(), figure


def test_every_writer_script_exists_and_every_section_names_a_results_file():
    for name, script in publish.WRITERS.items():
        assert (ROOT / script).is_file(), script
        assert (ROOT / "docs" / "results" / name).is_file(), name


def test_published_sections_equal_what_the_results_files_render():
    assert publish.stale_sections() == [], "run: python benchmarks/publish.py"


def _copy_docs(tmp_path: Path) -> Path:
    for relative in {relative for relative, _ in publish.sections()}:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, tmp_path / relative)
    return tmp_path


def test_a_changed_number_in_a_copy_of_the_readme_is_detected(tmp_path):
    root = _copy_docs(tmp_path)
    assert publish.stale_sections(root) == []
    readme = (root / "README.md").read_text()
    body = publish.marked(readme, "bench")
    digit = re.search(r"\d", body)
    assert digit is not None
    changed = body[:digit.start()] + str((int(digit.group()) + 1) % 10) + body[digit.end():]
    (root / "README.md").write_text(readme.replace(body, changed, 1))
    assert publish.stale_sections(root) == ["README.md:bench"]


def test_a_removed_marker_is_an_error(tmp_path):
    root = _copy_docs(tmp_path)
    doc = root / "docs" / "shear_calibration.md"
    doc.write_text(doc.read_text().replace("<!-- /results:shear-measured -->", ""))
    with pytest.raises(ValueError, match="shear-measured"):
        publish.stale_sections(root)


def test_a_changed_results_file_makes_its_sections_stale(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    tiles = json.loads((results / "tile_scaling.json").read_text())
    tiles["two_worker_seconds"] *= 2
    (results / "tile_scaling.json").write_text(json.dumps(tiles))
    assert publish.stale_sections(ROOT, results) == ["README.md:tiles"]
