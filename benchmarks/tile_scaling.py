"""Tile rendering on 1 vs 2 Dask workers, and the detection completeness of the same tile.

Renders one survey tile (default: the LSST-like preset, 4096 x 4096 pixels, 512-pixel
regions) from the same plan on a LocalCluster of 1 worker and of 2 workers, checks that
the two tiles are byte-identical, and reports the wall time of each render (cluster
start-up excluded: the workers are warm and have imported GalSim), the speed-up, and the
peak resident memory of a worker (bounded by the region size, not the tile size). Then
runs photutils detection on the tile and writes the completeness / purity curves.

Writes ``docs/results/tile_scaling.json`` (with its provenance: commit, command) and copies the
detection figures to ``docs/figures/<preset>_tile_detection_{snr,mag}.png``; README's "Survey
tiles" figures are rendered from that file (``benchmarks/publish.py``).

    python benchmarks/tile_scaling.py [--preset lsst] [--size 4096] [--region 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "tile_scaling.json"
FIGURES = ROOT / "docs" / "figures"


def _worker_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _warm(_: int) -> int:
    import galsim  # noqa: F401 - import cost is start-up, not rendering

    import lensforge.pipeline.tiles.render  # noqa: F401
    return 0


def render_on(plan, n_workers: int):
    from distributed import Client, LocalCluster

    from lensforge.pipeline.tiles.render import render_tile

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.run(_warm, 0)
        began = time.perf_counter()
        pixels = render_tile(plan, client=client, progress=True)
        seconds = time.perf_counter() - began
        peak_mb = max(client.run(_worker_peak_rss_mb).values())
    return pixels, seconds, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lsst")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--region", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the detection figures are copied")
    args = parser.parse_args()

    from benchmarks.provenance import provenance
    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.tiles.render import plan_tile
    from lensforge.pipeline.tiles.stage import detection_report

    run_dir = Path(tempfile.mkdtemp(prefix="lensforge-tile-bench-"))
    config = load_config(preset=args.preset, overrides=[f"tile.size_pixels=[{args.size},{args.size}]",
                                                        f"tile.region_size_pixels={args.region}",
                                                        f"out_dir={run_dir}", "name=bench"])
    plan = plan_tile(config)
    print(f"{args.preset}: {len(plan)} objects ({int(plan.objects['is_star'].sum())} stars), "
          f"plan {plan.seconds:.1f} s")
    one, one_seconds, one_peak = render_on(plan, 1)
    two, two_seconds, two_peak = render_on(plan, 2)
    identical = all(np.array_equal(getattr(one, k), getattr(two, k)) for k in ("image", "bitmask", "variance"))
    detection = detection_report(two)
    report = run_dir / "bench" / "report"
    figures = {}
    args.figures.mkdir(parents=True, exist_ok=True)
    for kind, name in (("snr", "tile_0000_detection.png"), ("mag", "tile_0000_detection_mag.png")):
        if (report / name).is_file():
            target = args.figures / f"{args.preset}_tile_detection_{kind}.png"
            shutil.copyfile(report / name, target)
            figures[kind] = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else str(target)
    result = {
        "provenance": provenance(),
        "preset": args.preset, "depth_5sigma_mag": config.survey.depth_5sigma_mag,
        "tile_pixels": [args.size, args.size], "region_pixels": args.region,
        "n_objects": len(plan), "plan_seconds": plan.seconds,
        "one_worker_seconds": one_seconds, "two_worker_seconds": two_seconds,
        "speedup": one_seconds / two_seconds, "identical_bytes": identical,
        "worker_peak_rss_mb": {"one_worker": one_peak, "two_workers": two_peak},
        "tile_mb": one.image.nbytes * 3 / 2**20,
        "detection": {k: detection[k] for k in ("n_detected", "n_isolated_galaxies", "purity",
                                                "completeness_at_snr_5", "n_at_snr_5", "threshold_nsigma",
                                                "by_snr", "by_mag")},
        "figures": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "detection"}, indent=2))
    print(f"detection: completeness at S/N 5-6 = {detection['completeness_at_snr_5']:.3f} "
          f"({detection['n_at_snr_5']} isolated galaxies), purity {detection['purity']:.3f}")


if __name__ == "__main__":
    main()
