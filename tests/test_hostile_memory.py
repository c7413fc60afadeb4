"""Peak memory on the hostile inputs that used to exhaust it stays under the memory budget.

Each case runs ``lensforge`` as a user does (a new process tree: the command, its Dask workers)
and the resident memory of the whole tree is sampled until it exits. Before the memory budget
(``limits.memory_budget_gb``, default 4 GB) these inputs grew past 4-6 GB; now each is refused in
one line from its headers or counts, and the tree's peak stays far below the budget.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from astropy.io import fits
from hostile_support import finished_run

BUDGET_BYTES = 4e9  # limits.memory_budget_gb's default
HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_memory_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the module look themselves up there
    spec.loader.exec_module(module)
    return module


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # a child that just exited
            continue
    return total


def run_measured(args: list[str], env: dict, timeout_s: float = 180) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak resident bytes of the process tree) of ``lensforge ARGS``."""
    proc = subprocess.Popen([sys.executable, "-m", "lensforge.flows.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched = psutil.Process(proc.pid)
    peak, deadline = 0, time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, _tree_rss(watched))
        except psutil.Error:
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return proc.returncode, stdout, stderr, peak


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    hostile = root / "hostile"
    hostile.mkdir()
    _load("test_hostile_outputs")._compressed_30000(hostile / "compressed_30000.fits")
    (hostile / "zero.fits").symlink_to("/dev/zero")
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 30000, "NAXIS2": 30000})
    (hostile / "naxis_30000.fits").write_bytes(header.tostring().encode() + np.zeros(2880, np.uint8).tobytes())
    runs = root / "runs"
    finished_run(runs, "trained")
    return root


CASES = {
    "compressed 30000^2 tile": lambda w: ["reprocess", str(w / "hostile" / "compressed_30000.fits"),
                                          "--output", str(w / "out1"), "--set", "dask.n_workers=1", "--quiet"],
    "header-only 30000^2 tile": lambda w: ["reprocess", str(w / "hostile" / "naxis_30000.fits"),
                                           "--output", str(w / "out2"), "--set", "dask.n_workers=1", "--quiet"],
    "symlink to /dev/zero": lambda w: ["reprocess", str(w / "hostile" / "zero.fits"), "--output", str(w / "out3"),
                                       "--set", "dask.n_workers=1", "--quiet"],
    "a trillion objects": lambda w: ["simulate", "--out", str(w / "runs"), "--name", "trillion", "--quiet",
                                     "--set", "simulation.n_objects=1000000000000", "--set", "dask.n_workers=1"],
    "generate sample --n 100000": lambda w: ["generate", "sample", "--out", str(w / "runs"), "--name", "trained",
                                             "--n", "100000"],
}


# What each refusal says: sized from headers or counts, or not read at all.
EXPECTED = {"compressed 30000^2 tile": "over the memory budget of 4 GB",
            "header-only 30000^2 tile": "truncated FITS file",  # its data are missing: refused before sizing matters
            "symlink to /dev/zero": "not a regular file",
            "a trillion objects": "over the memory budget of 4 GB",
            "generate sample --n 100000": "over the memory budget of 4 GB"}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_peak_memory_stays_under_the_budget(case, world, prefect_api_env):
    code, stdout, stderr, peak = run_measured(CASES[case](world), prefect_api_env)
    # A lone bad source is a one-line error (exit 2); a bad tile of a batch is a failed row (exit 1).
    refusal = stderr if code == 2 else stdout
    assert code in (1, 2) and "Traceback" not in stdout + stderr, stdout + stderr
    assert EXPECTED[case] in refusal, stdout + stderr
    assert 0 < peak < BUDGET_BYTES, f"{case}: peak {peak / 1e9:.2f} GB"
