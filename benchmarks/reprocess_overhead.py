"""Reprocessing overhead: Prefect + Dask time on top of the summed per-tile work, and memory vs tile count.

Writes N small MEF tiles (sky noise, a few GalSim galaxies, a bad column), runs
``lensforge reprocess`` on them (LocalCluster, 2 workers), then runs it again (every tile
skipped). Overhead = (wall time x workers - summed tile seconds) / summed tile seconds.
Results: ``benchmarks/results/reprocess_overhead.json``.

    python benchmarks/reprocess_overhead.py --n 1000 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reprocess_overhead.json"
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


def run_batch(tiles: Path, out: Path, workers: int, max_concurrent: int) -> dict:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "reprocess", str(tiles), "--output", str(out),
                           "--quiet", "--max-concurrent", str(max_concurrent), "--set", f"dask.n_workers={workers}",
                           "--out", str(out.parent / "runs")], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    summary = json.loads((out / "reprocess_summary.json").read_text())
    return {"command_seconds": round(time.perf_counter() - began, 2), "flow_wall_seconds": summary["wall_seconds"],
            "tile_seconds": summary["tile_seconds"], "done": summary["done"], "skipped": summary["skipped"],
            "peak_rss_gb_largest_process": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="tile counts to run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-concurrent", type=int, default=64)
    args = parser.parse_args()
    results = {"tile_pixels": SIZE, "workers": args.workers, "max_concurrent": args.max_concurrent, "runs": {}}
    for n in args.n:
        with tempfile.TemporaryDirectory() as scratch:
            tiles = Path(scratch) / "tiles"
            tiles.mkdir()
            write_tiles(tiles, n)
            first = run_batch(tiles, Path(scratch) / "out", args.workers, args.max_concurrent)
            again = run_batch(tiles, Path(scratch) / "out", args.workers, args.max_concurrent)
        busy = first["flow_wall_seconds"] * args.workers
        first["overhead_ratio"] = round((busy - first["tile_seconds"]) / first["tile_seconds"], 3)
        results["runs"][str(n)] = {"first": first, "rerun": again}
        print(n, json.dumps(results["runs"][str(n)]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
