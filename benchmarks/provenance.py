"""Provenance of a published results file: the commit, the exact command, the packages, the machine.

Every file under ``docs/results/`` carries a ``provenance`` block written by the script that
produced it (``tests/test_published_numbers.py`` checks it is there, and that the script exists):

    from benchmarks.provenance import provenance
    result = {"provenance": provenance(), ...}
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "results"


def git_state() -> dict[str, Any]:
    """``git rev-parse HEAD`` and whether tracked files differed from it (read-only git calls)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=10,
                                 check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "dirty_paths": []}
    return {"commit": commit, "dirty": bool(changed), "dirty_paths": sorted(line[3:] for line in changed)}


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script, as typed from the repository root (``python benchmarks/x.py ...``)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", script.as_posix(), *argv[1:]])


def provenance(argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``provenance`` block of a results file: commit, dirty flag, command, date, packages, machine."""
    from lensforge.catalogs.manifest import package_versions

    return {**git_state(), "command": command_line(argv),
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "packages": package_versions(),
            "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        # 1, 5 and 15 min load averages when the measurement began: how shared the cores were
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            **extra}
