"""How far the realism ratios of the parametric-trained generator move between independent samples.

``benchmarks/realism.py`` scores a generator with one independent real sample B (another seed of the
population) and one generated sample at B's draws: each ratio W(A, generated) / W(A, B) then rests on
one draw of the yardstick W(A, B), itself a small, noisy distance. This script keeps the held-out
sample A and the trained generator of a finished default run and repeats B and the generated sample
with ``--replicates`` independent seeds (``independent_config`` offsets 1, 2, ...; offset 1 is the one
``realism.py`` reports), so each statistic's ratio gets a mean, a spread and a standard error.

    python benchmarks/realism_replicates.py [--optical-run benchmarks/runs/realism/optical] [--replicates 5]

Writes ``docs/results/realism_replicates.json`` with its provenance (~1.5 min per replicate on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results" / "realism_replicates.json"
DEFAULT_RUN = ROOT / "benchmarks" / "runs" / "realism" / "optical"


def ratio_summary(rows: list[dict], keys) -> dict:
    """Mean, sd, standard error and range over replicates (``rows[i]["ratio"][key]``) of each statistic.

    Where every row also has its yardstick (``rows[i]["truth_vs_truth"][key]``, W(A, B) of that draw of
    B), the pooled ratio too: sum over replicates of W(A, generated) over sum of W(A, B), the ratio of
    the mean distances, with its jackknife error over replicates. The mean of the ratios is biased
    upwards by the yardstick's own noise (a small W(A, B) in one draw inflates that draw's ratio more
    than a large one deflates another's); the pooled ratio is not, to first order.
    """
    values = {k: np.array([r["ratio"][k] for r in rows], dtype=np.float64) for k in keys}
    summary = {k: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                   "standard_error": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"),
                   "min": float(v.min()), "max": float(v.max())} for k, v in values.items()}
    if rows and all("truth_vs_truth" in r for r in rows):
        for k, ratio in values.items():
            yardstick = np.array([r["truth_vs_truth"][k] for r in rows], dtype=np.float64)
            summary[k].update(pooled_ratio(ratio * yardstick, yardstick))
    return summary


def pooled_ratio(candidate: np.ndarray, yardstick: np.ndarray) -> dict:
    """``sum(candidate) / sum(yardstick)`` over replicates and its jackknife standard error (NaN for one)."""
    pooled = float(candidate.sum() / yardstick.sum())
    n = len(candidate)
    if n < 2:
        return {"pooled": pooled, "pooled_standard_error": float("nan")}
    leave_one_out = (candidate.sum() - candidate) / (yardstick.sum() - yardstick)
    error = np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    return {"pooled": pooled, "pooled_standard_error": float(error)}


def write_and_print(payload: dict, out: Path) -> None:
    """Write ``payload`` as JSON to ``out`` and print its summary, a line per statistic."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for key, s in payload["summary"].items():
        pooled = f", pooled {s['pooled']:.2f} ± {s['pooled_standard_error']:.2f}" if "pooled" in s else ""
        print(f"{key:22s} mean {s['mean']:.2f} ± {s['standard_error']:.2f} (sd {s['sd']:.2f}, "
              f"{s['min']:.2f}-{s['max']:.2f}){pooled}")
    print(f"wrote {out}")


def replicate_ratios(run_dir: Path, replicates: int, workers: int) -> dict:
    """Per replicate (seed offset), the generator's ratio on each realism statistic, and their summary."""
    from benchmarks.realism import load_optical_run
    from lensforge.pipeline.evaluation.generation import independent_config
    from lensforge.pipeline.evaluation.realism import REALISM_KEYS, generation_realism

    config, model, truth = load_optical_run(run_dir)
    rows = []
    for offset in range(1, replicates + 1):
        began = time.perf_counter()
        table, _ = generation_realism(independent_config(config, offset), truth, model, config.evaluate.n_generate,
                                      workers)
        ratio = table["candidates"]["generator"]["ratio"]
        rows.append({"seed_offset": offset, "ratio": ratio, "truth_vs_truth": table["truth_vs_truth"],
                     "seconds": time.perf_counter() - began})
        print(f"replicate {offset}: " + ", ".join(f"{k} {ratio[k]:.2f}" for k in REALISM_KEYS), flush=True)
    summary = ratio_summary(rows, REALISM_KEYS)
    return {"run": {"dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
                    "population": config.population.kind, "train_steps": config.train.steps,
                    "kl_weight": config.train.kl_weight},
            "n": len(truth["images"]), "replicates": rows, "summary": summary, "bar": table["bar"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optical-run", type=Path, default=DEFAULT_RUN,
                        help="finished default `lensforge run` (realism.py's optical section makes one)")
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="processes for statmorph")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.replicates < 1:
        raise SystemExit("error: --replicates must be >= 1")
    if not (args.optical_run / "config.yaml").is_file():
        raise SystemExit(f"error: {args.optical_run}: no finished run (run benchmarks/realism.py first)")

    from benchmarks.provenance import provenance

    info = provenance(None if argv is None else [__file__, *argv])
    began = time.perf_counter()
    payload = replicate_ratios(args.optical_run, args.replicates, args.workers)
    payload["provenance"] = info
    payload["seconds"] = time.perf_counter() - began
    write_and_print(payload, args.out)


if __name__ == "__main__":
    main()
