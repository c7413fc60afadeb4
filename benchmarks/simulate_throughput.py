"""Simulate-stage throughput: lensforge's flow (Prefect + Dask + Zarr) vs a bare GalSim loop.

Both draw the same kind of stamp (bulge+disk Sersic, intrinsic shape, shear, Moffat
PSF, pixel, Gaussian noise at a target S/N) on the same cores, in ring pairs (the second
galaxy of a pair is the first turned by 90 degrees) whose noise sigma gives the *unlensed*
first galaxy the S/N: one more drawing per pair, as lensforge does. The bare loop is the
floor: a plain ``multiprocessing`` pool of GalSim calls that keeps the stamps in memory
and writes nothing (its time includes spawning the processes and importing GalSim).
The flow's simulate stage is timed as the flow runs it, from the first task submitted to
the truth catalogue written: task submission and scheduling, Prefect task runs, masks,
labels and Zarr writes (the Dask cluster has started, its workers preloaded with the task
modules). The chunk tasks' own work (GalSim + masks, summed over tasks, divided by the
workers) isolates the per-stamp cost from those fixed costs; the whole flow call adds the
Prefect server and Dask cluster start.

    python benchmarks/simulate_throughput.py [--n-objects 8192] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np

STAMP, SCALE = 64, 0.2


def bare_galsim_stamps(start: int, stop: int, seed: int = 1) -> float:
    """Draw objects start..stop-1 with nothing but GalSim and numpy; returns seconds."""
    began = time.perf_counter()
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    out = np.empty((stop - start, STAMP, STAMP), np.float32)
    sigma = None
    for row, index in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, index // 2])  # one galaxy per ring pair
        flux = np.exp(rng.uniform(np.log(1e3), np.log(2e4)))
        hlr, bulge_fraction, snr = rng.uniform(0.3, 1.0), rng.uniform(0, 0.5), rng.uniform(20, 100)
        e1, e2 = rng.normal(0, 0.2, 2).clip(-0.55, 0.55)
        g = 0.05 * np.sqrt(rng.uniform()) * np.exp(2j * np.pi * rng.uniform())
        galaxy = galsim.Add([galsim.Sersic(n=4, half_light_radius=0.5 * hlr, flux=flux * bulge_fraction),
                             galsim.Sersic(n=1, half_light_radius=hlr, flux=flux * (1 - bulge_fraction))])
        galaxy = galaxy.shear(g1=e1, g2=e2)
        if index % 2 == 0 or sigma is None:  # the pair's noise: from its unlensed, unrotated galaxy
            unlensed = galsim.Convolve([galaxy, psf]).drawImage(nx=STAMP, ny=STAMP, scale=SCALE).array
            sigma = np.sqrt(np.sum(unlensed.astype(np.float64) ** 2)) / snr
        if index % 2 == 1:
            galaxy = galaxy.rotate(90 * galsim.degrees)
        image = galsim.Convolve([galaxy.shear(g1=g.real, g2=g.imag), psf]).drawImage(nx=STAMP, ny=STAMP, scale=SCALE)
        image.addNoise(galsim.GaussianNoise(galsim.BaseDeviate(seed * 1_000_003 + index + 1), sigma=sigma))
        out[row] = image.array
    return time.perf_counter() - began


def _bare_chunk(bounds: tuple[int, int]) -> float:
    return bare_galsim_stamps(*bounds)


def _one_openmp_thread() -> None:
    # GalSim parallelises some C++ loops with OpenMP (2 threads here); two processes of two
    # threads on two cores run ~2.5x slower. Dask's nanny sets OMP_NUM_THREADS=1 for its
    # workers, so the fair floor gives the bare processes one thread each too.
    galsim.utilities.set_omp_threads(1)


def bare_loop_timed(n_objects: int, processes: int) -> tuple[float, float]:
    """The bare loop split over ``processes`` processes: (wall seconds including the processes'
    spawn and imports, seconds of the slowest process's own drawing)."""
    edges = np.linspace(0, n_objects, processes + 1).astype(int)
    began = time.perf_counter()
    if processes == 1:  # in this process, with one OpenMP thread like each of the pool's processes
        threads = galsim.utilities.get_omp_threads()
        galsim.utilities.set_omp_threads(1)
        try:
            work = bare_galsim_stamps(0, n_objects)
        finally:
            galsim.utilities.set_omp_threads(threads)
    else:
        with multiprocessing.get_context("spawn").Pool(processes, initializer=_one_openmp_thread) as pool:
            work = max(pool.map(_bare_chunk, list(zip(edges[:-1], edges[1:], strict=True))))
    return time.perf_counter() - began, work


def bare_loop(n_objects: int, processes: int) -> float:
    """Wall seconds for the bare loop split over ``processes`` processes."""
    return bare_loop_timed(n_objects, processes)[0]


def flow_simulate(n_objects: int, workers: int, chunk_size: int, out_dir: Path) -> dict:
    """Run lensforge's simulate flow; returns its stage timings and the whole call's wall time."""
    from lensforge import flows  # noqa: F401 - quiet Prefect defaults
    from lensforge.flows.run import run_with_dask, simulate_flow
    from lensforge.pipeline.config import build_config

    config = build_config({"name": f"bench-{workers}w", "out_dir": str(out_dir),
                           "simulation": {"n_objects": n_objects, "chunk_size": chunk_size},
                           "dask": {"n_workers": workers}})
    began = time.perf_counter()
    stats = run_with_dask(simulate_flow, config, overwrite=True, progress=False)
    return {**stats, "call_seconds": time.perf_counter() - began}


def _provenance() -> dict:
    """Commit, dirty flag and this command (benchmarks/provenance.py), importable when run as a script."""
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.provenance import provenance

    return provenance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-objects", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    n, workers = args.n_objects, args.workers
    print(f"simulate throughput: {n} stamps of {STAMP}x{STAMP}, {workers} worker(s), {os.cpu_count()} cores")
    bare_1 = bare_loop(n // 4, 1) * 4  # one core: a quarter of the objects is plenty for the rate
    bare_n = bare_loop(n, workers)
    with tempfile.TemporaryDirectory() as tmp:
        flow = flow_simulate(n, workers, args.chunk_size, Path(tmp))
    rows = {
        "bare GalSim loop, 1 process": n / bare_1,
        f"bare GalSim loop, {workers} processes": n / bare_n,
        f"lensforge simulate stage, {workers} Dask workers": n / flow["simulate_seconds"],
        f"lensforge chunk tasks' own work, {workers} workers": n / (flow["simulate_task_seconds"] / workers),
        "lensforge simulate flow call incl. server + cluster start": n / flow["call_seconds"],
    }
    width = max(map(len, rows))
    for label, rate in rows.items():
        print(f"  {label:<{width}}  {rate:8.1f} stamps/s")
    ratio = rows[f"lensforge simulate stage, {workers} Dask workers"] / rows[f"bare GalSim loop, {workers} processes"]
    print(f"  ratio simulate stage / bare loop on the same cores: {ratio:.3f}")
    result = {"provenance": _provenance(), "n_objects": n, "workers": workers,
              "stamps_per_second": rows, "ratio_stage_over_bare": ratio,
              "flow_stats": flow}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "simulate_throughput.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
