"""How far the radio generator's realism ratios move with the generation seed alone.

``benchmarks/realism.py`` scores the radio generator with one generated sample (seed 0: one galaxy per
FIRST calibration source, at its conditions). This script keeps the trained generator and both real
splits fixed and draws the generated sample again with ``--seeds`` seeds (0 is the one the table
reports), so each statistic's ratio gets a mean, a spread and a standard error over draws. It also re-splits the
held-out sources of both splits at random (``yardstick_spread``) to show how far the yardstick itself,
W(A, B) of one split, moves with the split.

    python benchmarks/realism_radio_seeds.py [--radio-model benchmarks/runs/realism/radio_generator] [--seeds 5]

Writes ``docs/results/realism_radio_seeds.json`` with its provenance (~1 min per seed on 2 cores).
Cite Becker, White & Helfand 1995 and Porter & Scaife 2023 with these results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results" / "realism_radio_seeds.json"
YARDSTICK_SPLITS = 200  # random re-splits of the held-out FIRST sources behind the yardstick's spread


def seed_ratios(model_dir: Path, seeds: int, workers: int) -> dict:
    """Per generation seed, the radio generator's ratio on each realism statistic, and their summary."""
    from benchmarks.realism import radio_section
    from benchmarks.realism_replicates import ratio_summary
    from lensforge.pipeline.evaluation.realism import REALISM_KEYS

    rows, section, stats = [], {}, {}
    for seed in range(seeds):
        began = time.perf_counter()
        section = radio_section(model_dir, steps=0, train_if_missing=False, seed=seed, workers=workers, figure=None,
                                stats_out=stats)
        ratio = section["table"]["candidates"]["radio generator"]["ratio"]
        rows.append({"seed": seed, "ratio": ratio, "seconds": time.perf_counter() - began})
        print(f"seed {seed}: " + ", ".join(f"{k} {ratio[k]:.2f}" for k in REALISM_KEYS), flush=True)
    summary = ratio_summary(rows, REALISM_KEYS)
    passes = [sum(r["ratio"][k] <= section["table"]["bar"] for k in REALISM_KEYS) for r in rows]
    spread = yardstick_spread(stats["real A"], stats["real B"], REALISM_KEYS)
    for key in REALISM_KEYS:  # the generated distance over the median yardstick instead of the one split's
        summary[key]["mean_over_median_yardstick"] = (summary[key]["mean"] * section["table"]["truth_vs_truth"][key]
                                                      / spread[key]["median"])
    return {"model": section["model"], "n": section["n"], "replicates": rows, "summary": summary,
            "statistics_within_bar": passes, "bar": section["table"]["bar"], "yardstick_spread": spread}


def yardstick_spread(real_a: dict, real_b: dict, keys, n_splits: int = YARDSTICK_SPLITS, seed: int = 0) -> dict:
    """How the yardstick W(A, B) of two held-out real samples moves with the split that made them.

    The sources of A and B (both never trained on) are pooled and split again at random into samples
    of A's and B's sizes, ``n_splits`` times: per statistic, the W of this split (``split``), the
    median, 16th and 84th percentiles of the re-splits' W and the share of them below this split's.
    The radio table divides by one split's W; a split whose W is low inflates every ratio on that
    statistic.
    """
    from lensforge.pipeline.evaluation.metrics import wasserstein_table

    n_a = len(next(iter(real_a.values())))
    pooled = {k: np.concatenate([np.asarray(real_a[k], float), np.asarray(real_b[k], float)]) for k in keys}
    n = len(pooled[next(iter(keys))])
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in keys}
    for _ in range(n_splits):
        order = rng.permutation(n)
        first = {k: v[order[:n_a]] for k, v in pooled.items()}
        second = {k: v[order[n_a:]] for k, v in pooled.items()}
        for k, w in wasserstein_table(first, second, keys).items():
            draws[k].append(w)
    split = wasserstein_table(real_a, real_b, keys)
    out = {}
    for k in keys:
        w = np.asarray(draws[k])
        low, median, high = np.percentile(w, [16, 50, 84])
        out[k] = {"split": float(split[k]), "median": float(median), "p16": float(low), "p84": float(high),
                  "share_below_split": float(np.mean(w < split[k]))}
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.realism import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--radio-model", type=Path, default=DEFAULT_MODEL_DIR,
                        help="trained radio generator (realism.py's radio section trains one)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="processes for statmorph")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("error: --seeds must be >= 1")
    if not (args.radio_model / "meta.json").is_file():
        raise SystemExit(f"error: {args.radio_model}: no trained radio generator (run benchmarks/realism.py first)")

    from benchmarks.provenance import provenance

    info = provenance(None if argv is None else [__file__, *argv])
    began = time.perf_counter()
    payload = seed_ratios(args.radio_model, args.seeds, args.workers)
    payload["provenance"] = info
    payload["seconds"] = time.perf_counter() - began
    from benchmarks.realism_replicates import write_and_print
    from lensforge.pipeline.evaluation.report import jsonable

    write_and_print(jsonable(payload), args.out)


if __name__ == "__main__":
    main()
