"""lensforge's benchmark suite: every ratio measured in the same run, one table, one JSON file.

Rows (each a ratio of two rates measured here, on the same cores, minutes apart):

* ``simulate_vs_bare``: the flow's simulate stage (Prefect tasks on Dask workers + masks + labels +
  Zarr + truth catalogue, from the first task submitted to the catalogue written) against a bare
  GalSim loop drawing the same kind of stamps in as many plain processes, process start and
  imports included (target >= 0.90, R2 5/5). The row also gives the chunk tasks' own work rate and the
  whole flow call's rate (Prefect server and Dask cluster start, with the workers' preload, included);
* ``workers_2_vs_1``: the simulate stage on 2 Dask workers against 1 (target >= 1.80, R2 5/5);
* ``generator_vs_galsim``: VAE-GAN generator + GalSim lensing/PSF/noise against GalSim's
  InterpolatedImage path (the same stamps from profiles in memory) and the parametric path;
* ``tile_inpaint_vs_biharmonic``: model in-painting of a masked tile against biharmonic;
* ``zarr_vs_raw``: the store write (chunked, lz4-compressed Zarr) against raw array bytes;
* ``memory_large_vs_small``: peak resident memory of ``lensforge simulate`` at N2 vs N1
  stamps (10k vs 100k with ``--full``; target <= 1.2).

A CUDA column (generator and tile in-painting) is added on a machine with a GPU.

Writes ``docs/results/bench.json`` (rows + provenance: commit, dirty flag, this command); README's
benchmark table is rendered from it (``benchmarks/publish.py``).

    python benchmarks/run.py                 # default sizes, ~10 min on 2 cores
    python benchmarks/run.py --full          # + memory at 10k vs 100k stamps (~20 min more)
    python benchmarks/run.py --quick --only zarr,tile   # smoke sizes, chosen rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "bench.json"
SIZES = {
    "quick": {"simulate": 256, "chunk": 64, "generate": 16, "tile": 128, "zarr": 128, "memory": (256, 1024)},
    "default": {"simulate": 8192, "chunk": 512, "generate": 256, "tile": 4096, "zarr": 1024, "memory": (1024, 10240)},
    "full": {"simulate": 8192, "chunk": 512, "generate": 256, "tile": 4096, "zarr": 1024, "memory": (10240, 102400)},
}
PEAK_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def row(name: str, measured: float, reference: float, unit: str, what: str, versus: str,
        target: str | None = None, met: bool | None = None, **extra) -> dict:
    """One table row: ``measured / reference`` (both in ``unit``) and the target verdict."""
    return {"name": name, "measured": measured, "reference": reference, "unit": unit,
            "ratio": measured / reference if reference else float("nan"), "what": what, "versus": versus,
            "target": target, "met": met, **extra}


# --- simulate: the stage against a bare GalSim loop, and 2 workers against 1 -----------------------

def _simulate_stage(n: int, chunk: int, workers: int, scratch: Path) -> dict:
    from benchmarks.simulate_throughput import flow_simulate

    return flow_simulate(n, workers, chunk, scratch / f"sim{workers}")


SIMULATE_ROUNDS = 3


def bench_simulate(sizes: dict, scratch: Path) -> list[dict]:
    """The simulate rows: the medians of three interleaved rounds (bare loop, 2 workers, 1 worker) and each
    round's ratios, since one round on shared cores moves either ratio by more than its distance to its target."""
    from benchmarks.simulate_throughput import bare_loop_timed

    n, chunk = sizes["simulate"], sizes["chunk"]
    quarter = max(n // 4, 1)
    rounds = []
    for index in range(SIMULATE_ROUNDS):
        bare_seconds, bare_work_2 = bare_loop_timed(n, 2)
        # The ceiling of the 2-vs-1 row on this machine: how the bare drawing itself scales from one
        # process (this one, a quarter of the objects) to two (the slowest one's drawing, no spawn).
        bare_scaling = bare_loop_timed(quarter, 1)[1] * n / quarter / bare_work_2
        two = _simulate_stage(n, chunk, 2, scratch / f"round{index}")
        one = _simulate_stage(n, chunk, 1, scratch / f"round{index}")
        rounds.append({"bare": n / bare_seconds, "two": n / two["simulate_seconds"], "one": n / one["simulate_seconds"],
                       "chunk_work_2": n / (two["simulate_task_seconds"] / 2), "call_2": n / two["call_seconds"],
                       "bare_scaling": bare_scaling})
        shutil.rmtree(scratch / f"round{index}", ignore_errors=True)  # two 8,192-stamp runs: ~0.6 GB

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    stage_2, stage_1, bare = median("two"), median("one"), median("bare")
    versus_bare = [r["two"] / r["bare"] for r in rounds]
    versus_one = [r["two"] / r["one"] for r in rounds]
    return [
        row("simulate_vs_bare", stage_2, bare, "stamps/s",
            f"simulate stage, 2 Dask workers, {n} stamps (chunk work alone: {median('chunk_work_2'):.0f}/s; "
            f"whole flow call with server and cluster start: {median('call_2'):.0f}/s)",
            "bare GalSim loop, 2 processes", ">= 0.90", stage_2 / bare >= 0.90,
            chunk_work_per_second=median("chunk_work_2"), flow_call_per_second=median("call_2"), ratios=versus_bare),
        row("workers_2_vs_1", stage_2, stage_1, "stamps/s",
            f"simulate stage, 2 workers, {n} stamps (the bare GalSim drawing: {median('bare_scaling'):.2f}x)",
            "the same on 1 worker", ">= 1.80", stage_2 / stage_1 >= 1.80,
            bare_loop_2_vs_1=median("bare_scaling"), ratios=versus_one, bare_loop_2_vs_1_rounds=[
                r["bare_scaling"] for r in rounds]),
    ]


# --- generation: VAE-GAN + GalSim against GalSim's own paths ---------------------------------------

def _model(run: Path | None):
    import torch

    from lensforge.models.checkpoint import load_checkpoint
    from lensforge.models.vaegan import VAEGAN, ModelSettings

    if run is not None:
        from lensforge.pipeline.config import build_config
        from lensforge.pipeline.generative.training import inpainting_model_dir

        return load_checkpoint(inpainting_model_dir(build_config({"out_dir": str(run.parent), "name": run.name})),
                               device="cpu")[0], "trained"
    torch.manual_seed(0)
    return VAEGAN(ModelSettings()).eval(), "untrained (speed only)"


def bench_generation(sizes: dict, run: Path | None) -> list[dict]:
    import torch

    from benchmarks.generation_throughput import decoder_rate, galsim_path_rates, real_galaxy_rate, torch_path_rates
    from lensforge.pipeline.config import RunConfig
    from lensforge.pipeline.stamps.surveys import build_psf

    model, label = _model(run)
    n = sizes["generate"]
    survey = RunConfig().survey
    # Three interleaved rounds of every path, so that each ratio has a spread: the GalSim paths on one
    # core; the torch path (float32) on both cores (its matrix products are threaded) and on one.
    rounds = []
    for _ in range(3):
        rates = galsim_path_rates(model, n)
        rates["real"] = real_galaxy_rate(min(n, 200), build_psf(survey), survey)
        rates["real_bare"] = real_galaxy_rate(min(n, 200), build_psf(survey), survey, bare=True)
        rates["fast"] = torch_path_rates(model, 4 * n, threads=2)
        rates["one_core"] = torch_path_rates(model, 4 * n, threads=1)
        rounds.append(rates)
    exact = torch_path_rates(model, 4 * n, precision="float64", threads=2)

    def median(pick) -> float:
        return float(np.median([pick(r) for r in rounds]))

    rates = {key: median(lambda r, key=key: r[key]) for key in ("galsim_interpolated_image", "generator_plus_galsim",
                                                                 "galsim_parametric")}
    real = median(lambda r: r["real"]) if rounds[0]["real"] else None
    real_bare = median(lambda r: r["real_bare"]) if rounds[0]["real"] else None
    fast = {key: median(lambda r, key=key: r["fast"][key]) for key in ("torch_rendering", "generator_plus_torch")}
    one_core = {key: median(lambda r, key=key: r["one_core"][key]) for key in ("torch_rendering",
                                                                               "generator_plus_torch")}
    torch_ratios = [r["fast"]["torch_rendering"] / r["galsim_interpolated_image"] for r in rounds]
    real_ratios = [r["fast"]["generator_plus_torch"] / r["real"] for r in rounds] if real else []
    cuda, torch_cuda = {}, {}
    if torch.cuda.is_available():
        cuda = {"cuda": decoder_rate(model.to("cuda"), 16 * n, "cuda"),
                "cuda_what": "decoder alone on the GPU, stamps/s"}
        on_gpu = torch_path_rates(model, 64 * n, batch_size=1024, device="cuda")
        model.to("cpu")
        torch_cuda = {"cuda": on_gpu["torch_rendering"], "cuda_generator_plus_torch": on_gpu["generator_plus_torch"],
                      "cuda_what": "the same on the GPU (float32, batches of 1024), stamps/s"}
    torch_extra = {"float64_stamps_per_s": exact["torch_rendering"],
                   "one_thread_stamps_per_s": one_core["torch_rendering"],
                   "one_thread_ratio": one_core["torch_rendering"] / rates["galsim_interpolated_image"],
                   "ratios": torch_ratios}
    rows = [
        row("torch_vs_interpolated", fast["torch_rendering"], rates["galsim_interpolated_image"], "stamps/s",
            "batched torch rendering (float32, 2 threads) of the same profiles: lensed stamp, unlensed stamp for "
            "the S/N, noise", "GalSim InterpolatedImage path (1 core) from profiles in memory", target=">= 10",
            met=fast["torch_rendering"] >= 10 * rates["galsim_interpolated_image"], **torch_extra, **torch_cuda),
        row("generator_vs_interpolated", rates["generator_plus_galsim"], rates["galsim_interpolated_image"],
            "stamps/s", f"generator ({label}) + GalSim lensing, PSF, pixel, noise",
            "GalSim InterpolatedImage path from profiles in memory", **cuda),
        row("generator_vs_parametric", rates["generator_plus_galsim"], rates["galsim_parametric"], "stamps/s",
            f"generator ({label}) + GalSim", "GalSim parametric bulge+disk stamp"),
    ]
    if real:
        rows += [
            row("generator_vs_real_galaxy", rates["generator_plus_galsim"], real, "stamps/s",
                f"generator ({label}) + GalSim", "GalSim RealGalaxy from the COSMOS HST stamps"),
            row("generator_torch_vs_real_galaxy", fast["generator_plus_torch"], real, "stamps/s",
                f"generator ({label}) + batched torch rendering (float32, 2 threads): per stamp a new galaxy, "
                "lensed stamp, unlensed stamp for the S/N, noise",
                "GalSim RealGalaxy from the COSMOS HST stamps (1 core), the same work per stamp", target=">= 10",
                met=fast["generator_plus_torch"] >= 10 * real,
                one_thread_ratio=one_core["generator_plus_torch"] / real, ratios=real_ratios,
                bare_real_galaxy_stamps_per_s=real_bare, bare_ratio=fast["generator_plus_torch"] / real_bare,
                bare_what="versus RealGalaxy drawing only a sheared stamp (no S/N stamp, no noise), this row's "
                          "reference before 2026-12-05",
                **({"cuda": torch_cuda["cuda_generator_plus_torch"]} if torch_cuda else {})),
        ]
    return rows


# --- tile in-painting: the image in-painter against one whole-image biharmonic call ------------------

# The defects of the benchmark tile: lensforge's tile defect model (cosmic rays, hot pixels, bad columns,
# a satellite trail, blank patches) at rates that mask about 1 % of the tile.
BENCH_DEFECTS = {"cosmic_rays_per_megapixel": 300.0, "hot_pixel_fraction": 1e-3, "bad_columns_per_chip": 2.0,
                 "satellite_trails_per_tile": 1.0, "blank_patches_per_tile": 4.0, "edge_pixels": 0}


def _bench_mask(size: int, seed: int = 7) -> np.ndarray:
    """The benchmark's defect mask of a (size, size) tile (one chip), drawn by lensforge's defect model."""
    from lensforge.pipeline.config import TileDefectConfig
    from lensforge.pipeline.tiles.defects import apply_defects, draw_tile_defects
    from lensforge.pipeline.tiles.regions import Region

    config = TileDefectConfig(**BENCH_DEFECTS, blank_patch_size_max_pixels=max(8, size // 16),
                              chip_size_pixels=(size, size))
    defects = draw_tile_defects(config, (size, size), np.random.default_rng(seed))
    image, bits = np.zeros((size, size), np.float32), np.zeros((size, size), np.int32)
    apply_defects(defects, Region(0, size, 0, size), (size, size), image, bits, None, 1.0, 1e30, config)
    return bits != 0


def _masked_tile(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A sky tile of GalSim galaxies (one per 2000 pixels) with noise, and :func:`_bench_mask`."""
    import galsim

    rng = np.random.default_rng(7)
    image = galsim.ImageF(size, size, scale=0.2)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    for x, y in rng.uniform(10, size - 10, size=(max(4, size * size // 2000), 2)):
        galaxy = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.9), flux=rng.uniform(500, 5000))
        stamp = galsim.Convolve([galaxy, psf]).drawImage(nx=48, ny=48, scale=0.2, center=galsim.PositionD(x + 1, y + 1))
        overlap = stamp.bounds & image.bounds
        image[overlap] += stamp[overlap]
    sigma = 2.0
    noisy = image.array + rng.normal(0, sigma, (size, size)).astype(np.float32)
    return noisy, image.array, _bench_mask(size), sigma


def _inpaint_seconds(method: str, noisy, mask, sigma, model=None, card=None,
                     thin_holes: str = "auto") -> tuple[float, np.ndarray, dict]:
    """Seconds of one in-painting of the masked tile by ``method`` (model: the shipped weights; ``thin_holes``
    as :func:`lensforge.pipeline.inpaint.images.inpaint_image`'s)."""
    from lensforge.pipeline.inpaint.images import image_inpainter, inpaint_image

    diagnostics: dict = {}
    image = np.where(mask, 0.0, noisy)
    began = time.perf_counter()
    if method == "model":
        filled, _ = inpaint_image(image, mask, sigma, model, card, diagnostics=diagnostics, thin_holes=thin_holes)
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
    else:
        filled, _ = image_inpainter(method)(image, mask, sigma)
    return time.perf_counter() - began, filled, diagnostics


TILE_REPEATS = 3


def bench_tile(sizes: dict, run: Path | None) -> list[dict]:
    """The shipped image in-painter against one skimage biharmonic call on the same masked tile.

    Each method runs once untimed on the full tile (a warm process: imports, the model, the first
    fault-in of tile-sized buffers), then ``TILE_REPEATS`` timed rounds alternate the methods, so all
    see the same machine; a row's ratio is the median round's, and every round's ratio is kept
    (``ratios``). A second row times the in-painter with every thin hole near a source through the
    network (``lensforge reprocess --thin-holes network``) in the same rounds.
    """
    import torch

    from lensforge.models.image_inpainter import load_image_inpainter
    from lensforge.pipeline.inpaint.images import WIDE_CELL_PIXELS

    noisy, truth, mask, sigma = _masked_tile(sizes["tile"])
    model, card = load_image_inpainter(None)
    for method in ("model", "biharmonic"):  # warm-up
        _inpaint_seconds(method, noisy, mask, sigma, model, card)
    rounds, network_rounds = [], []
    for _ in range(TILE_REPEATS):
        model_seconds, model_filled, diagnostics = _inpaint_seconds("model", noisy, mask, sigma, model, card)
        network_seconds, network_filled, network_diagnostics = _inpaint_seconds("model", noisy, mask, sigma, model,
                                                                                card, thin_holes="network")
        biharmonic_seconds, biharmonic_filled, _ = _inpaint_seconds("biharmonic", noisy, mask, sigma)
        rounds.append((biharmonic_seconds / model_seconds, model_seconds, biharmonic_seconds))
        network_rounds.append((biharmonic_seconds / network_seconds, network_seconds, biharmonic_seconds))
    ratio, model_seconds, biharmonic_seconds = sorted(rounds)[len(rounds) // 2]
    _, network_seconds, network_biharmonic_seconds = sorted(network_rounds)[len(network_rounds) // 2]
    megapixels = sizes["tile"] ** 2 / 1e6

    def rmse(filled):  # on the masked pixels, against the noiseless truth, in noise units
        return float(np.sqrt(np.mean((filled[mask] - truth[mask]) ** 2)) / sigma)

    cuda = {}
    if torch.cuda.is_available():
        cuda_model, cuda_card = load_image_inpainter(None, device="cuda")
        _inpaint_seconds("model", noisy, mask, sigma, cuda_model, cuda_card)
        cuda_seconds = min(_inpaint_seconds("model", noisy, mask, sigma, cuda_model, cuda_card)[0]
                           for _ in range(TILE_REPEATS))
        cuda = {"cuda": megapixels / cuda_seconds, "cuda_what": "model in-painting on the GPU, Mpix/s"}
    return [row("tile_inpaint_vs_biharmonic", megapixels / model_seconds, megapixels / biharmonic_seconds, "Mpix/s",
                f"shipped image in-painter on a {sizes['tile']}^2 tile, {100 * mask.mean():.2f} % masked "
                f"({diagnostics['n_network_cells']} network windows; {diagnostics['n_cells']} cells of "
                f"{WIDE_CELL_PIXELS}^2 hold holes; thin holes near sources: {diagnostics['thin_fill']} fill, "
                f"{int(diagnostics['from_thin_fill'].sum()):,} pixels), RMSE {rmse(model_filled):.2f} sigma",
                f"one whole-image skimage biharmonic call, RMSE {rmse(biharmonic_filled):.2f} sigma",
                target=">= 1.0", met=ratio >= 1.0, ratios=[r[0] for r in rounds],
                seconds={"model": [r[1] for r in rounds], "biharmonic": [r[2] for r in rounds]}, **cuda),
            row("tile_inpaint_network_thin_vs_biharmonic", megapixels / network_seconds,
                megapixels / network_biharmonic_seconds, "Mpix/s",
                f"the same with every thin hole near a source through the network (--thin-holes network: "
                f"{network_diagnostics['n_network_cells']} network windows), RMSE {rmse(network_filled):.2f} sigma",
                "the same biharmonic calls", ratios=[r[0] for r in network_rounds],
                seconds={"model": [r[1] for r in network_rounds], "biharmonic": [r[2] for r in network_rounds]})]


# --- Zarr write against raw bytes -------------------------------------------------------------------

def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory (their entries), ``root`` included."""
    directories = [root]
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            directories.append(path)
            continue
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    for directory in directories:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def bench_zarr(sizes: dict, scratch: Path) -> list[dict]:
    from lensforge.catalogs.store import create_store
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.stamps.simulate import simulate_stamps

    n = sizes["zarr"]
    config = build_config({"simulation": {"n_objects": n, "chunk_size": min(512, n)}})
    batches = [simulate_stamps(config, start, min(n, start + 512)) for start in range(0, n, 512)]
    arrays = [{name: getattr(batch, name) for name in ("images", "noiseless", "masks", "psf", "weights")}
              for batch in batches]
    megabytes = sum(a.nbytes for batch in arrays for a in batch.values()) / 1e6
    store = scratch / "bench.zarr"
    create_store(store, n, config.survey.stamp_size, min(512, n), include_noiseless=True)
    # Both sides are timed the same way: write every file, then fsync every file and directory
    # written, so neither rate is the page cache's.
    began = time.perf_counter()
    for batch in batches:
        batch.write(store)
    fsync_tree(store)
    zarr_seconds = time.perf_counter() - began
    raw = scratch / "raw"
    raw.mkdir()
    began = time.perf_counter()
    for index, batch in enumerate(arrays):
        for name, values in batch.items():
            with open(raw / f"{name}{index}.bin", "wb") as handle:
                handle.write(values.tobytes())
    fsync_tree(raw)
    raw_seconds = time.perf_counter() - began
    on_disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6
    return [row("zarr_vs_raw", megabytes / zarr_seconds, megabytes / raw_seconds, "MB/s",
                f"store write of {n} stamps ({megabytes:.0f} MB of arrays, {on_disk:.0f} MB on disk, lz4), + fsync",
                "raw array bytes, one file per array and batch", fsync="both sides: every file and directory")]


# --- peak memory against the number of stamps --------------------------------------------------------

def peak_rss_gb(n: int, scratch: Path) -> float:
    """Largest resident set (GB) among ``lensforge simulate``'s processes for ``n`` stamps, 2 workers."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_LAUNCHER, sys.executable, "-m", "lensforge.flows.cli",
                           "simulate", "--quiet", "--out", str(scratch), "--name", f"mem{n}", "--set",
                           f"simulation.n_objects={n}", "--set", "simulation.chunk_size=512"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lensforge simulate {n} failed: {done.stdout[-500:]}{done.stderr[-500:]}")
    shutil.rmtree(scratch / f"mem{n}", ignore_errors=True)
    return int(done.stderr.split()[-1]) / 1024**2


def bench_memory(sizes: dict, scratch: Path) -> list[dict]:
    small, large = sizes["memory"]
    large_gb, small_gb = peak_rss_gb(large, scratch), peak_rss_gb(small, scratch)
    return [row("memory_large_vs_small", large_gb, small_gb, "GB", f"peak RSS of lensforge simulate, {large} stamps",
                f"the same, {small} stamps", "<= 1.2", large_gb / small_gb <= 1.2)]


# --- start-up: small CLI calls, wall time from the shell's point of view ----------------------------------

STARTUP_RUNS = 3


def _cli_seconds(arguments: list[str], cwd: Path, expect: int) -> float:
    """Wall seconds of ``lensforge <arguments>`` as a user runs it: a fresh interpreter, no Prefect server or
    cluster configured (``PREFECT_API_URL`` unset), its exit status checked against ``expect``."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != expect:
        raise SystemExit(f"lensforge {' '.join(arguments)}: exit {done.returncode}, expected {expect}: "
                         f"{done.stdout[-400:]}{done.stderr[-400:]}")
    return seconds


def bench_startup(sizes: dict, scratch: Path) -> list[dict]:
    """A bad FITS tile (target: refused in < 3 s) and a 256-stamp simulate (target: done in < 10 s), each
    the median of ``STARTUP_RUNS`` calls; the rows' ratio is seconds over the target."""
    work = scratch / "startup"
    work.mkdir(parents=True, exist_ok=True)
    (work / "bad.fits").write_bytes(b"SIMPLE  = not a FITS file" + b" " * 2855)
    bad = [_cli_seconds(["reprocess", "bad.fits", "--output", f"out{i}", "--quiet"], work, expect=1)
           for i in range(STARTUP_RUNS)]
    small = [_cli_seconds(["simulate", "--quiet", "--out", str(work / "runs"), "--name", f"s{i}", "--set",
                           "simulation.n_objects=256"], work, expect=0) for i in range(STARTUP_RUNS)]
    shutil.rmtree(work, ignore_errors=True)
    return [row("startup_bad_tile", float(np.median(bad)), 3.0, "s", "`lensforge reprocess bad.fits` (not a FITS file) "
                "until its one-line failure, fresh process, median of 3", "the target, 3 s", "<= 1.0",
                float(np.median(bad)) < 3.0, runs=bad),
            row("startup_simulate_256", float(np.median(small)), 10.0, "s", "`lensforge simulate` of 256 stamps, "
                "fresh process, no server or cluster configured, median of 3", "the target, 10 s", "<= 1.0",
                float(np.median(small)) < 10.0, runs=small)]


BENCHMARKS: dict[str, Callable[..., list[dict]]] = {
    "startup": lambda sizes, scratch, run: bench_startup(sizes, scratch),
    "simulate": lambda sizes, scratch, run: bench_simulate(sizes, scratch),
    "generation": lambda sizes, scratch, run: bench_generation(sizes, run),
    "tile": lambda sizes, scratch, run: bench_tile(sizes, run),
    "zarr": lambda sizes, scratch, run: bench_zarr(sizes, scratch),
    "memory": lambda sizes, scratch, run: bench_memory(sizes, scratch),
}


def print_table(rows: list[dict]) -> None:
    """The rows as a plain-text table: measured, reference, ratio, target and verdict."""
    has_cuda = any("cuda" in r for r in rows)
    header = f"{'benchmark':<28}{'measured':>12}{'reference':>12}{'unit':>10}{'ratio':>8}{'target':>9}{'met':>5}"
    print(header + (f"{'CUDA':>12}" if has_cuda else ""))
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        line = (f"{r['name']:<28}{r['measured']:>12.4g}{r['reference']:>12.4g}{r['unit']:>10}{r['ratio']:>8.3f}"
                f"{r['target'] or '-':>9}{met:>5}")
        if has_cuda:
            line += f"{r['cuda']:>12.4g}" if "cuda" in r else f"{'':>12}"
        print(line)
    for r in rows:
        print(f"  {r['name']}: {r['what']} / {r['versus']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size", help="smoke sizes")
    size.add_argument("--full", action="store_const", const="full", dest="size", help="memory at 10k vs 100k")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--run", type=Path, help="run directory whose model to use (default: untrained)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size_name = args.size or "default"
    chosen = [name.strip() for name in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(BENCHMARKS)}")
    import galsim
    import torch

    galsim.utilities.set_omp_threads(1)  # as Dask's nanny does for its workers: one thread per process
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from benchmarks.provenance import provenance

    provenance_at_start = provenance()  # the code that ran: the commit and dirty flag before the first row
    rows: list[dict] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_name:
        for name in chosen:
            scratch = Path(scratch_name) / name
            scratch.mkdir()
            print(f"[{time.perf_counter() - began:6.0f} s] {name} ...", flush=True)
            rows.extend(BENCHMARKS[name](SIZES[size_name], scratch, args.run))
    result = {"provenance": provenance_at_start, "size": size_name,
              "sizes": SIZES[size_name], "seconds": round(time.perf_counter() - began, 1),
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "torch_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
              "rows": rows}
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
