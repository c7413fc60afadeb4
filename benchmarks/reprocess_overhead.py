"""Reprocessing overhead: Prefect + Dask time on top of the summed per-tile work, and memory vs tile count.

Writes N small MEF tiles (sky noise, a few GalSim galaxies, a bad column), runs
``lensforge reprocess`` on them, then runs it again (every tile skipped), on two kinds of cluster:

* ``local``: the LocalCluster the command starts (2 workers), while Prefect's temporary server
  starts, before the flow;
* ``existing``: a ``dask scheduler`` and ``dask worker --nworkers 2 --preload lensforge.flows.worker_preload``
  (with ``docker/dask.yaml``) started beforehand, as an operator runs them, and ``--dask-address``.

Overhead = (flow wall time x workers - summed tile seconds) / summed tile seconds: every
worker-second not spent inside a tile, whatever took it (cluster start, Prefect task runs, Dask
scheduling, idle tails). Results: ``docs/results/reprocess_overhead.json``, with the provenance
(commit, dirty flag, command) of each tile count's measurement; docs/operations.md quotes it
(rendered by ``benchmarks/publish.py``).

    python benchmarks/reprocess_overhead.py --n 1000 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "reprocess_overhead.json"
SIZE = 128


def write_tiles(directory: Path, n: int) -> None:
    """N tiles of SIZE^2 pixels, each from its own seed."""
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    for index in range(n):
        rng = np.random.default_rng(index)
        image = galsim.ImageF(SIZE, SIZE, scale=0.2)
        for x, y in rng.uniform(12, SIZE - 12, size=(6, 2)):
            galsim.Convolve([galsim.Exponential(half_light_radius=0.5, flux=2000.0), psf]).drawImage(
                image, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
        science = image.array + rng.normal(100.0, 2.0, size=(SIZE, SIZE)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), np.int32)
        mask[:, int(rng.integers(0, SIZE))] = 2
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(science, name="SCIENCE"), fits.ImageHDU(mask, name="MASK"),
                      fits.ImageHDU(np.full((SIZE, SIZE), 4.0, np.float32), name="VARIANCE")]).writeto(
            directory / f"tile{index:05d}.fits")


# Runs the command as its child and prints the largest resident set among its processes (the
# command, and the LocalCluster's workers; not an existing cluster's), so each batch is measured
# on its own rather than as a maximum over everything this benchmark ran before.
PEAK_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run_batch(tiles: Path, out: Path, workers: int, address: str | None) -> dict:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cluster = ["--dask-address", address] if address else ["--set", f"dask.n_workers={workers}"]
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_LAUNCHER, sys.executable, "-m", "lensforge.flows.cli",
                           "reprocess", str(tiles), "--output", str(out), "--quiet", *cluster,
                           "--out", str(out.parent / "runs")],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    summary = json.loads((out / "reprocess_summary.json").read_text())
    return {"command_seconds": round(time.perf_counter() - began, 2), "flow_wall_seconds": summary["wall_seconds"],
            "tile_seconds": summary["tile_seconds"], "done": summary["done"], "skipped": summary["skipped"],
            "peak_rss_gb_largest_process": round(int(done.stderr.split()[-1]) / 1024**2, 3)}


@contextlib.contextmanager
def existing_cluster(workers: int, scratch: Path) -> Iterator[str]:
    """A loopback ``dask scheduler`` and ``dask worker`` processes, stopped on exit, set up as
    docs/operations.md tells operators: preloaded, with the images' Dask settings (docker/dask.yaml)."""
    dask = Path(sys.executable).parent / "dask"
    config_dir = scratch / "dask-config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "lensforge.yaml").write_text((ROOT / "docker" / "dask.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_CONFIG": str(config_dir)}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    scheduler_file = scratch / "scheduler.json"
    processes = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = [str(dask), "worker", address, "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard",
                  "--host", "127.0.0.1", "--preload", "lensforge.flows.worker_preload"]
        processes.append(subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def measure(tiles: Path, scratch: Path, workers: int, address: str | None, label: str) -> dict:
    """A first batch and a rerun of it into a fresh output directory."""
    out = scratch / f"out-{label}"
    first = run_batch(tiles, out, workers, address)
    again = run_batch(tiles, out, workers, address)
    busy = first["flow_wall_seconds"] * workers
    first["overhead_ratio"] = round((busy - first["tile_seconds"]) / first["tile_seconds"], 3)
    return {"first": first, "rerun": again}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="tile counts to run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clusters", nargs="+", choices=["local", "existing"], default=["local", "existing"])
    args = parser.parse_args()
    from benchmarks.provenance import provenance

    this_run = provenance()
    # Runs of other tile counts from earlier invocations are kept (each row is measured in one run)
    # when they carry their own provenance; the file's provenance is that of its latest invocation.
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if results.get("tile_pixels") != SIZE or results.get("workers") != args.workers:
        results = {"tile_pixels": SIZE, "workers": args.workers, "runs": {}}
    results["runs"] = {n: row for n, row in results.get("runs", {}).items() if "provenance" in row}
    results = {"provenance": this_run, **{k: v for k, v in results.items() if k != "provenance"}}
    for n in args.n:
        results["runs"][str(n)] = {"provenance": this_run}
        with tempfile.TemporaryDirectory() as scratch_name:
            scratch = Path(scratch_name)
            tiles = scratch / "tiles"
            tiles.mkdir()
            write_tiles(tiles, n)
            for kind in args.clusters:
                if kind == "local":
                    row = measure(tiles, scratch, args.workers, None, kind)
                else:
                    with existing_cluster(args.workers, scratch) as address:
                        row = measure(tiles, scratch, args.workers, address, kind)
                results["runs"].setdefault(str(n), {})[kind] = row
                print(n, kind, json.dumps(row), flush=True)
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
