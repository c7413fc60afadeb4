"""The benchmark suite (benchmarks/run.py) at smoke sizes: a table and JSON of real, positive ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_suite_prints_a_table_and_writes_measured_ratios(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--only", "zarr,tile,generation",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert {"zarr_vs_raw", "tile_inpaint_vs_biharmonic", "generator_vs_interpolated",
            "generator_vs_parametric"} <= set(rows)
    for row in rows.values():
        assert row["measured"] > 0 and row["reference"] > 0, row
        assert row["ratio"] == pytest.approx(row["measured"] / row["reference"])
        assert row["name"] in done.stdout  # one table line each
    # The generator path includes the InterpolatedImage path it is compared with: it cannot be faster.
    assert rows["generator_vs_interpolated"]["ratio"] <= 1.0
    assert result["size"] == "quick" and result["machine"]["cpu_count"] >= 1
    # Published results carry where they came from (tests/test_published_numbers.py).
    provenance = result["provenance"]
    assert len(provenance["commit"]) == 40 and isinstance(provenance["dirty"], bool)
    assert provenance["command"].startswith("python benchmarks/run.py --quick --only zarr,tile,generation")
    # Both sides of the store-write row are fsynced the same way.
    assert rows["zarr_vs_raw"]["fsync"].startswith("both sides")


def test_unknown_benchmark_is_refused():
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--only", "nope"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unknown ['nope']" in done.stderr
