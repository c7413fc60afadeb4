"""Where the cores go while the simulate stage runs on 2 Dask workers: the orchestration tax, broken down.

The stage (store created -> chunks -> truth catalogue) runs inside ``lensforge``'s simulate flow with
its Prefect server and LocalCluster already up. CPU seconds of every process are read (psutil) at the
stage's start and end:

* the Dask workers: the chunks' own work (GalSim, masks, labels: the chunk summaries' seconds) and the
  rest of their CPU (Zarr writes, task handling, the catalogue when it runs there);
* this process: the flow, Prefect's client, the Dask scheduler and the nannies;
* Prefect's temporary server;
* steal: time the hypervisor gave these cores to other machines (a shared VM);
* idle: the stage's wall time x cores, less all of the above.

The chunks' work is their wall time, so a chunk slowed by steal or by the other roles counts that
time twice, and "workers_other" can read below zero.

    python benchmarks/orchestration_tax.py [--n 8192] [--chunk 512] [--out docs/results/orchestration_tax.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _snapshot() -> dict[str, float]:
    """CPU seconds by role: this process, Prefect's server, the Dask workers (children of this process)."""
    import psutil

    me = psutil.Process()
    # steal: time the hypervisor gave this VM's cores to someone else (a shared machine), not idle.
    roles = {"flow_scheduler_nannies": _cpu_seconds(me), "prefect_server": 0.0, "workers": 0.0,
             "steal": getattr(psutil.cpu_times(), "steal", 0.0)}
    for child in me.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            role = "prefect_server" if "uvicorn" in command or "prefect.server" in command else "workers"
            roles[role] += _cpu_seconds(child)
        except psutil.Error:  # a process that ended between the listing and the read
            continue
    return roles


def measure(n_objects: int, chunk_size: int, scratch: Path) -> dict:
    """One simulate flow on 2 workers; the CPU breakdown of its stage."""
    import lensforge.flows.run as run_module
    from lensforge import flows  # noqa: F401 - quiet Prefect defaults
    from lensforge.pipeline.config import build_config

    marks: dict[str, object] = {}
    stage = run_module._simulate

    def timed_stage(config, progress, plain=False):
        marks["start"], marks["start_cpu"] = time.perf_counter(), _snapshot()
        stats = stage(config, progress, plain)
        marks["end"], marks["end_cpu"] = time.perf_counter(), _snapshot()
        return stats

    run_module._simulate = timed_stage
    try:
        config = build_config({"name": "tax", "out_dir": str(scratch), "dask": {"n_workers": 2},
                               "simulation": {"n_objects": n_objects, "chunk_size": chunk_size}})
        began = time.perf_counter()
        stats = run_module.run_with_dask(run_module.simulate_flow, config, overwrite=True, progress=False)
        call_seconds = time.perf_counter() - began
    finally:
        run_module._simulate = stage
    wall = marks["end"] - marks["start"]
    used = {role: marks["end_cpu"][role] - marks["start_cpu"][role] for role in marks["end_cpu"]}
    chunk_work = stats["simulate_task_seconds"]
    capacity = 2 * wall
    breakdown = {"chunk_work": chunk_work, "workers_other": used["workers"] - chunk_work,
                 "flow_scheduler_nannies": used["flow_scheduler_nannies"], "prefect_server": used["prefect_server"],
                 "steal": used["steal"]}
    breakdown["idle"] = capacity - sum(breakdown.values())
    return {"n_objects": n_objects, "chunk_size": chunk_size, "stage_seconds": wall, "call_seconds": call_seconds,
            "capacity_cpu_seconds": capacity, "cpu_seconds": breakdown,
            "fractions": {key: value / capacity for key, value in breakdown.items()},
            "timeline_seconds": {key: stats[key] for key in ("store_seconds", "chunk_ramp_seconds", "chunk_gap_seconds",
                                                              "chunk_tail_seconds", "chunk_end_seconds",
                                                              "catalogue_seconds")},
            "stamps_per_second": n_objects / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "orchestration_tax.json")
    args = parser.parse_args()
    from benchmarks.provenance import provenance

    start = provenance()
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            rounds.append(measure(args.n, args.chunk, Path(scratch) / f"round{index}"))
            fractions = rounds[-1]["fractions"]
            print(f"round {index}: {rounds[-1]['stamps_per_second']:.0f} stamps/s; "
                  + ", ".join(f"{key} {value:.1%}" for key, value in fractions.items()) + "; "
                  + ", ".join(f"{key} {value:.2f}" for key, value in rounds[-1]["timeline_seconds"].items()),
                  flush=True)
    result = {"provenance": start, "cpu_count": os.cpu_count(), "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
