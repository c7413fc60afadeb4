"""benchmarks/shear_calibration.py --update: the sets it skips are kept, each under its own provenance."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import publish, shear_calibration  # noqa: E402

OLD_RUN = {"command": "python benchmarks/shear_calibration.py --n 8192 --steps 300", "commit": "a" * 40,
           "dirty": False, "date_utc": "2026-12-01"}
NEW_RUN = {"command": "python benchmarks/shear_calibration.py --skip run,validate,generate --update",
           "commit": "c" * 40, "dirty": False, "date_utc": "2026-12-07"}


def _previous() -> dict:
    return {"provenance": OLD_RUN, "simulated": {"n": 1}, "generated": {"n": 2}, "cosmos_real": {"n": 3},
            "steps": {"run": {"seconds": 1.0}, "validate_simulated": {"seconds": 2.0}, "generate": {"seconds": 3.0},
                      "validate_generated": {"seconds": 4.0}, "simulate_cosmos_real": {"seconds": 5.0},
                      "validate_cosmos_real": {"seconds": 6.0}},
            "figures": ["shear_validation_simulated_summary.png", "shear_validation_simulated_REGAUSS.png",
                        "shear_validation_generated_summary.png"]}


def test_update_keeps_the_skipped_sets_their_steps_and_figures_under_their_own_provenance():
    results = {"provenance": NEW_RUN, "cosmos_real": {"n": 4}, "figures": [],
               "steps": {"simulate_cosmos_real": {"seconds": 50.0}, "validate_cosmos_real": {"seconds": 60.0}}}
    merged = shear_calibration.keep_unmeasured_sets(results, _previous())
    assert [merged[key]["n"] for key in ("simulated", "generated", "cosmos_real")] == [1, 2, 4]
    assert merged["section_provenance"] == {"cosmos_real": NEW_RUN, "simulated": OLD_RUN, "generated": OLD_RUN}
    assert {name: step["seconds"] for name, step in merged["steps"].items()} == {
        "simulate_cosmos_real": 50.0, "validate_cosmos_real": 60.0, "run": 1.0, "validate_simulated": 2.0,
        "generate": 3.0, "validate_generated": 4.0}
    assert merged["figures"] == _previous()["figures"]  # none of them shows the re-measured set
    assert publish._shear_source(merged) == (
        f"`{OLD_RUN['command']}` at commit `aaaaaaaaaa`, 2026-12-01 (sets (a), (b), (c)); `{NEW_RUN['command']}` at "
        "commit `cccccccccc`, 2026-12-07 (set (d)); `docs/results/shear_calibration.json`")
    # Updated again, a kept set keeps its first provenance, not the intermediate file's top level.
    again = shear_calibration.keep_unmeasured_sets({**results, "provenance": {**NEW_RUN, "commit": "d" * 40}},
                                                   merged)
    assert again["section_provenance"]["simulated"] == OLD_RUN


def test_a_file_of_one_run_names_that_run_alone():
    assert publish._shear_source(_previous()) == (
        f"`{OLD_RUN['command']}` at commit `aaaaaaaaaa`, 2026-12-01; `docs/results/shear_calibration.json`")
