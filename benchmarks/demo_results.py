"""The default demo's evaluation, published: ``docs/results/demo_evaluation.json`` + ``docs/figures/``.

Either runs the default demo itself, or collects an existing run directory made by it:

    python benchmarks/demo_results.py --run                    # lensforge run --out <tmp> --name demo -q
    python benchmarks/demo_results.py --from-run /tmp/prod_after/demo \\
        --run-command "lensforge run --out /tmp/prod_after --name demo -q"

The results file holds the run's ``report/evaluation.json`` and, under ``provenance``, the
command that made the run, the commit (and dirty flag) recorded in the run's manifest, the
package versions of the run, the run's date, the simulate and train timings of the manifest,
whether the run's configuration is the default one (apart from out_dir, name and dask), and the
command and git state of this collection. The report's figures are copied to ``docs/figures/``.
README's in-painting, generation, temperature-sweep tables are rendered from this file
(``benchmarks/publish.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "demo_evaluation.json"
FIGURES = ROOT / "docs" / "figures"
# Settings that do not change a run's bytes (README, "The CLI"): not part of "the default configuration".
NOT_CONFIGURATION = ("out_dir", "name", "dask")


def configuration_differences(run_config: dict[str, Any]) -> list[str]:
    """``section.key`` of every setting in which the run's configuration differs from the defaults."""
    from lensforge.pipeline.config import RunConfig

    defaults = RunConfig().to_dict()
    differences = []
    for section in sorted(set(defaults) | set(run_config)):
        if section in NOT_CONFIGURATION:
            continue
        ours, theirs = defaults.get(section), run_config.get(section)
        if isinstance(ours, dict) and isinstance(theirs, dict):
            differences += [f"{section}.{key}" for key in sorted(set(ours) | set(theirs))
                            if ours.get(key) != theirs.get(key)]
        elif ours != theirs:
            differences.append(section)
    return differences


def collect(run_dir: Path, run_command: str, wall_seconds: float | None, figures: Path) -> dict[str, Any]:
    """The results file's content for the finished run at ``run_dir``; copies its report figures to ``figures``."""
    from benchmarks.provenance import provenance
    from lensforge.layout import REPORT_FIGURES, RunLayout

    layout = RunLayout(run_dir)
    if not layout.manifest.is_file():
        raise SystemExit(f"{run_dir}: no manifest.json, the run is incomplete")
    manifest = json.loads(layout.manifest.read_text())
    report = json.loads(layout.report_json.read_text())
    run_config = yaml.safe_load((run_dir / "config.yaml").read_text())
    revision = manifest.get("code_revision") or {}
    copied = []
    figures.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FIGURES:
        if (layout.report_dir / name).is_file():
            shutil.copyfile(layout.report_dir / name, figures / name)
            copied.append(name)
    return {
        "provenance": {
            "commit": revision.get("commit"), "dirty": revision.get("dirty"), "command": run_command,
            "date_utc": manifest.get("created_utc"), "packages": manifest.get("package_versions"),
            "default_configuration": not configuration_differences(run_config),
            "configuration_differences": configuration_differences(run_config),
            "timings": {**(manifest.get("timings") or {}), "command_wall_seconds": wall_seconds},
            "collected_by": provenance(),
        },
        "configuration": {"n_objects": run_config["simulation"]["n_objects"],
                          "stamp_size": run_config["survey"]["stamp_size"],
                          "train_steps": run_config["train"]["steps"], "seed": run_config["seed"]},
        "evaluation": report,
        "figures": copied,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="store_true", help="run the default demo now (in a temporary directory)")
    source.add_argument("--from-run", type=Path, help="an existing run directory of the default demo")
    parser.add_argument("--run-command", help="with --from-run: the command that made that run (recorded)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args()
    if args.from_run is not None:
        if not args.run_command:
            parser.error("--from-run needs --run-command: the exact command that made the run")
        result = collect(args.from_run, args.run_command, None, args.figures)
    else:
        with tempfile.TemporaryDirectory(prefix="lensforge-demo-") as scratch:
            command = [sys.executable, "-m", "lensforge.flows.cli", "run", "--out", scratch, "--name", "demo", "-q"]
            env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            began = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env)
            wall = round(time.perf_counter() - began, 1)
            if done.returncode != 0:
                raise SystemExit(f"the demo run failed with status {done.returncode}")
            shown = shlex.join(["lensforge", *command[3:5], "<tmp>", *command[6:]])
            result = collect(Path(scratch) / "demo", shown, wall, args.figures)
    if not result["provenance"]["default_configuration"]:
        print(f"warning: not the default configuration: {result['provenance']['configuration_differences']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} (commit {result['provenance']['commit']}, figures {result['figures']})")


if __name__ == "__main__":
    main()
