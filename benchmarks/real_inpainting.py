"""The image in-painter on real and simulated test images it never saw, against biharmonic and astropy.

    python benchmarks/real_inpainting.py --model runs/inpainter-v1
    python benchmarks/real_inpainting.py --model /tmp/inp_smoke --first-n 10 --out /tmp/ri.json --figures /tmp/ri

Test sets (none of them trained on, nor used for calibration):

* ``first_test``: the FIRST test split (:func:`lensforge.pipeline.datasets.corpus.load_first`,
  ``split="test"``; ~218 real VLA radio galaxies, 150x150, Jy/beam), each with its own noise sigma
  (robust sigma of its outer frame);
* one group per survey preset of :data:`~lensforge.pipeline.datasets.corpus.PRESETS`: 512x512
  simulated tiles of run seeds 301-308 (training used 101 and 102, the calibration 201); the
  tile's own defects (``bad``) are hidden too and never scored;
* ``cosmos_mosaic``: the 100 real COSMOS HST/ACS stamps pasted on one image
  (:func:`~lensforge.pipeline.datasets.corpus.cosmos_mosaic`, gap noise seeded by ``--seed``);
* ``cosmos_stamps``: each COSMOS stamp on its own, with its own noise sigma; stamps with a side
  under 32 pixels are skipped (their number is in the JSON).

Holes: :func:`~lensforge.pipeline.datasets.corpus.evaluation_mask` (seed ``--seed``), steered
onto the signal ((image - median) / noise sigma, as ``lensforge evaluate-inpainting`` draws them);
each image has its own mask stream ``index`` (FIRST: its position in the split; simulated tiles:
10000 + 100 x preset position + seed slot; COSMOS: 20000 for the mosaic, 20001 + catalogue row
for the stamps), so a subset (``--first-n``) keeps the masks of the full run.

Methods: ``model`` (the image in-painter of ``--model``, the shipped weights without it),
``biharmonic`` (scikit-image) and ``interpolate`` (astropy), scored by
:func:`lensforge.pipeline.evaluation.image_inpainting.evaluate_cases`. The JSON has the keys of
``lensforge evaluate-inpainting``'s report (``groups``, ``overall``, ``per_image``, ``settings``,
``provenance``) plus ``model`` (weights sha256, training time), ``test_sets``, ``done_when`` (the
issue's targets per group, measured value and pass/fail) and ``figures``. ``--record-card`` writes
the headline metrics into the model directory's ``model_card.json`` under ``"metrics"``.
README's ``real_inpainting`` section is rendered from ``docs/results/real_inpainting.json`` by
``benchmarks/publish.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

RESULTS = ROOT / "docs" / "results" / "real_inpainting.json"
FIGURES = ROOT / "docs" / "figures"
FIRST_PNG = "real_inpainting_first.png"
COSMOS_PNG = "real_inpainting_cosmos.png"

METHODS = ("model", "biharmonic", "interpolate")
SIM_SIZE = 512
SIM_SEEDS = tuple(range(301, 309))  # training: 101, 102; calibration: 201. Eight tiles: two held 3-20 masked sources
MIN_STAMP_PIXELS = 32
FIRST_GROUP, MOSAIC_GROUP, STAMPS_GROUP = "first_test", "cosmos_mosaic", "cosmos_stamps"
# Mask stream indices (evaluation_mask(shape, seed, index)): one per image, disjoint between test sets.
SIM_INDEX0, MOSAIC_INDEX, STAMP_INDEX0 = 10000, 20000, 20001

# The targets, per group: model / biharmonic ratios and the 1-sigma coverage of the model's std.
TARGETS: dict[str, dict[str, Any]] = {
    "source_rmse_ratio": {"max": 0.7, "what": "masked source-pixel RMSE, model / biharmonic"},
    "sky_rmse_ratio": {"max": 1.05, "what": "masked sky-pixel RMSE, model / biharmonic"},
    "aperture_flux_error_ratio": {"max": 0.7, "what": "RMS aperture-flux error, model / biharmonic"},
    "coverage_1sigma_source": {"range": [0.60, 0.76],
                               "what": "1-sigma coverage of the model std, source pixels (those of photutils "
                                       "segments of the truth; see coverage_floor)"},
    "coverage_1sigma": {"range": [0.60, 0.76], "what": "1-sigma coverage of the model std, all masked pixels"},
}
# The issue asks the sky ratio "on every image": checked when the per-image rows are at hand.
WORST_IMAGE_SKY_TARGET = {"max": 1.05, "what": "masked sky-pixel RMSE, model / biharmonic, on the group's worst image"}
COSMOS_GROUPS = (MOSAIC_GROUP, STAMPS_GROUP)  # reported, not required (real HST noise is drizzle-correlated)


# --- the test cases ---------------------------------------------------------------------------------

def _signal(image: np.ndarray, bad: np.ndarray | None, sigma: float) -> np.ndarray:
    """(image - median of the good pixels) / sigma, 0 on bad pixels: where evaluation_mask aims holes."""
    good = np.ones(image.shape, bool) if bad is None else ~bad
    return np.where(good, (image - np.median(image[good])) / sigma, 0.0)


def masked_source_light(truth: np.ndarray, mask: np.ndarray, bad: np.ndarray | None, sigma: float) -> float:
    """Masked source light in noise sigmas, as the evaluation defines it: the sum of (truth - background)
    over scored pixels more than 3 sigma above the background (median of the unhidden pixels)."""
    from lensforge.pipeline.evaluation.image_inpainting import SOURCE_THRESHOLD_SIGMA

    bad = np.zeros(truth.shape, bool) if bad is None else bad
    truth = np.where(bad, 0.0, truth.astype(np.float32).astype(np.float64))
    hidden = mask | bad
    background = float(np.median(truth[~hidden])) if (~hidden).any() else 0.0
    residual = truth - background
    source = mask & ~bad & (residual > SOURCE_THRESHOLD_SIGMA * sigma)
    return float(residual[source].sum() / sigma)


@dataclass
class TestSets:
    cases: list  # Case objects, in evaluation order
    light: dict[str, float]  # case name -> masked source light (FIRST and COSMOS stamps: example choice)
    description: dict[str, Any]


def build_cases(seed: int, first_n: int | None, presets: list[str], cosmos_n: int | None,
                progress: bool = True) -> TestSets:
    """Every test case (see the module docstring), their masked source light and what they are."""
    from tqdm.auto import tqdm

    from lensforge.pipeline.datasets import corpus
    from lensforge.pipeline.evaluation.image_inpainting import Case

    cases: list[Case] = []
    light: dict[str, float] = {}
    began = time.perf_counter()

    real = corpus.load_first("test")
    n_first = len(real) if first_n is None else min(first_n, len(real))
    for i in range(n_first):
        image = real.images[i].astype(np.float64)
        sigma = float(real.noise_sigma[i])
        mask = corpus.evaluation_mask(image.shape, seed, i, signal=_signal(image, None, sigma))
        name = f"first/{real.names[i]}"
        cases.append(Case(name, image, mask, sigma, group=FIRST_GROUP))
        light[name] = masked_source_light(image, mask, None, sigma)

    sims = [(p, s) for p in presets for s in SIM_SEEDS]
    for preset, sim_seed in tqdm(sims, disable=not progress, desc="simulated tiles", unit="tile"):
        sim = corpus.simulated_image(preset, SIM_SIZE, sim_seed)
        index = SIM_INDEX0 + 100 * corpus.PRESETS.index(preset) + SIM_SEEDS.index(sim_seed)
        image = sim.image.astype(np.float64)
        mask = corpus.evaluation_mask(image.shape, seed, index, signal=_signal(image, sim.bad, sim.noise_sigma))
        cases.append(Case(f"{preset}/seed{sim_seed}", image, mask, sim.noise_sigma, bad=sim.bad, group=preset))

    stamps = corpus.load_cosmos_real()
    mosaic, mosaic_sigma = corpus.cosmos_mosaic(stamps, seed=seed)
    mosaic = mosaic.astype(np.float64)
    mask = corpus.evaluation_mask(mosaic.shape, seed, MOSAIC_INDEX, signal=_signal(mosaic, None, mosaic_sigma))
    cases.append(Case("cosmos/mosaic", mosaic, mask, mosaic_sigma, group=MOSAIC_GROUP))
    kept = skipped = 0
    for k, (stamp, sigma) in enumerate(stamps):
        if min(stamp.shape) < MIN_STAMP_PIXELS:
            skipped += 1
            continue
        if cosmos_n is not None and kept >= cosmos_n:
            continue
        image = stamp.astype(np.float64)
        mask = corpus.evaluation_mask(image.shape, seed, STAMP_INDEX0 + k, signal=_signal(image, None, sigma))
        name = f"cosmos/stamp{k:03d}"
        cases.append(Case(name, image, mask, float(sigma), group=STAMPS_GROUP))
        light[name] = masked_source_light(image, mask, None, float(sigma))
        kept += 1

    complete = first_n is None or n_first == len(real)
    complete = complete and list(presets) == list(corpus.PRESETS) and cosmos_n is None
    description = {
        "complete": complete,
        FIRST_GROUP: {"what": "FIRST test split (sha256 of the source name >= 0.8), real VLA radio galaxies",
                      "n_images": n_first, "n_in_split": len(real), "shape": list(real.images.shape[1:]),
                      "unit": real.unit, "noise": "robust sigma (MAD) of each image's outer 15 pixels",
                      "noise_sigma_median": float(np.median(real.noise_sigma[:n_first])) if n_first else None,
                      "mask_index": "position in the split"},
        "simulated": {"presets": list(presets), "seeds": list(SIM_SEEDS), "size_pixels": SIM_SIZE,
                      "groups": "one per preset", "bad": "the tile's own defects: hidden, never scored",
                      "mask_index": f"{SIM_INDEX0} + 100 x preset position in corpus.PRESETS + seed slot"},
        "cosmos": {"what": "the 100 real HST/ACS F814W COSMOS stamps (load_cosmos_real)",
                   "n_stamps": len(stamps), MOSAIC_GROUP: {"shape": list(mosaic.shape), "noise_sigma": mosaic_sigma,
                                                           "gap_noise_seed": seed, "mask_index": MOSAIC_INDEX},
                   STAMPS_GROUP: {"n_images": kept, "n_skipped_smaller_than_min": skipped,
                                  "min_side_pixels": MIN_STAMP_PIXELS,
                                  "mask_index": f"{STAMP_INDEX0} + catalogue row",
                                  "limited_to": cosmos_n}},
        "mask": {"function": "lensforge.pipeline.datasets.corpus.evaluation_mask", "seed": seed,
                 "signal": "(image - median of the good pixels) / noise sigma"},
        "build_seconds": time.perf_counter() - began,
    }
    return TestSets(cases, light, description)


# --- targets and the card ---------------------------------------------------------------------------

def _check(value: float | None, target: dict[str, Any]) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if "max" in target:
        return value <= target["max"]
    low, high = target["range"]
    return low <= value <= high


RATIO_CHECKS = {"source_rmse_ratio": "rmse_source", "sky_rmse_ratio": "rmse_sky",
                "aperture_flux_error_ratio": "aperture_flux_error_rms"}  # check -> the evaluation's ratio key


def headline(block: dict[str, Any]) -> dict[str, float | None]:
    """The targeted numbers of one group's block: model / biharmonic ratios and the model's coverage."""
    ratios = block.get("ratios_vs_biharmonic", {}).get("model", {})
    model = block.get("methods", {}).get("model", {})
    return {**{check: ratios.get(ratio_key) for check, ratio_key in RATIO_CHECKS.items()},
            "coverage_1sigma_source": model.get("coverage_1sigma_source_segment"),
            "coverage_1sigma": model.get("coverage_1sigma")}


def visible_sources(block: dict[str, Any]) -> dict[str, float | None]:
    """The same numbers over the sources that show outside the holes (not targets: what can be in-painted).

    A source the holes hide whole cannot be known to be there; its pixels are in the targets above
    but not here (``visible_source`` of :mod:`lensforge.pipeline.evaluation.image_inpainting`).
    """
    ratios = block.get("ratios_vs_biharmonic", {}).get("model", {})
    model = block.get("methods", {}).get("model", {})
    return {"source_rmse_ratio": ratios.get("rmse_visible_source"),
            "aperture_flux_error_ratio": ratios.get("aperture_flux_error_rms_visible"),
            "coverage_1sigma_source": model.get("coverage_1sigma_visible_source"),
            "source_pixel_share": (model["n_visible_source_pixels"] / model["n_source_pixels"]
                                   if model.get("n_source_pixels") and "n_visible_source_pixels" in model else None)}


def sky_ratio_by_image(per_image: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """Per group, each image's model / biharmonic sky-pixel RMSE (images with sky pixels), worst first."""
    out: dict[str, list[tuple[str, float]]] = {}
    for row in per_image:
        model, base = row["methods"].get("model", {}), row["methods"].get("biharmonic", {})
        if model.get("rmse_sky") is not None and base.get("rmse_sky"):
            ratio = model["rmse_sky"] / base["rmse_sky"]  # a NaN fill must fail the check, not slip through it
            out.setdefault(row["group"], []).append((row["name"], ratio if math.isfinite(ratio) else math.inf))
    return {group: sorted(rows, key=lambda item: -item[1]) for group, rows in out.items()}


def done_when(groups: dict[str, Any], per_image: list[dict[str, Any]] | None = None,
              floor: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each group's targets: value, target and pass; required for FIRST and the simulated presets.

    With ``per_image`` (the evaluation's rows) the sky ratio is also checked on each group's worst
    image (``sky_rmse_ratio_worst_image``), and the images above the bar are listed.

    Source coverage is judged on the pixels of source segments. Pixels picked by their own noisy
    value (truth above 3 sigma) are reported beside it (``coverage_1sigma_source_above_3sigma``) with
    ``floor`` (:func:`~lensforge.pipeline.evaluation.image_inpainting.coverage_floor`): what a
    predictor that knows the noiseless sky reaches on each set. It is below 0.60 on the pixels
    above 3 sigma of several groups, so no method could meet the range there.
    """
    targets = TARGETS if per_image is None else {**TARGETS, "sky_rmse_ratio_worst_image": WORST_IMAGE_SKY_TARGET}
    by_image = sky_ratio_by_image(per_image or [])
    out: dict[str, Any] = {"targets": targets, "required_groups": [], "groups": {}}
    for group, block in groups.items():
        required = group not in COSMOS_GROUPS
        values = headline(block)
        images = by_image.get(group, [])
        values["sky_rmse_ratio_worst_image"] = images[0][1] if images else None
        checks = {key: {"value": values[key], **{k: v for k, v in targets[key].items() if k != "what"},
                        "pass": _check(values[key], targets[key])} for key in targets}
        intervals = block.get("ratio_intervals_vs_biharmonic", {}).get("model", {})
        for key, ratio_key in RATIO_CHECKS.items():  # how far the ratio moves with the images drawn
            checks[key]["interval_68"] = intervals.get(ratio_key)
        model = block.get("methods", {}).get("model", {})
        out["groups"][group] = {"required": required, "checks": checks,
                                "all_pass": all(c["pass"] for c in checks.values()),
                                "visible_sources": visible_sources(block),
                                "coverage_1sigma_source_above_3sigma": model.get("coverage_1sigma_source"),
                                "coverage_floor": (floor or {}).get(group)}
        if per_image is not None:
            out["groups"][group]["sky_worse_than_bar"] = [
                {"name": name, "sky_rmse_ratio": ratio} for name, ratio in images
                if ratio > WORST_IMAGE_SKY_TARGET["max"]]
        if required:
            out["required_groups"].append(group)
    out["known_pixel_violations"] = {method: sum(block["methods"].get(method, {}).get("known_pixel_violations", 0)
                                                 for block in groups.values())
                                     for method in dict.fromkeys(m for b in groups.values() for m in b["methods"])}
    required = [out["groups"][g]["all_pass"] for g in out["required_groups"]]
    out["n_required_groups_passing"] = sum(required)
    out["all_required_pass"] = bool(required) and all(required)
    return out


def card_metrics(result: dict[str, Any], out_path: Path) -> dict[str, Any]:
    """The ``metrics`` entry of a model card: per group, RMSEs of each method, ratios and coverage."""
    p = result["provenance"]
    groups = {}
    for group, block in result["groups"].items():
        methods = block["methods"]
        groups[group] = {
            "n_images": block["n_images"],
            "rmse_source": {m: methods[m]["rmse_source"] for m in methods},
            "rmse_sky": {m: methods[m]["rmse_sky"] for m in methods},
            **headline(block),
            "targets_met": result["done_when"]["groups"][group]["all_pass"],
        }
    try:
        source = out_path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        source = str(out_path)
    return {"source": source, "command": p["command"], "commit": p["commit"], "dirty": p["dirty"],
            "date_utc": p["date_utc"], "complete_test_sets": result["test_sets"]["complete"],
            "units": "masked-pixel RMSE in noise sigma of each image; ratios model / biharmonic; coverage: share "
                     "of masked pixels with |truth - mean| <= std",
            "groups": groups, "all_required_targets_met": result["done_when"]["all_required_pass"]}


def record_card(model_dir: Path, metrics: dict[str, Any], weights_sha256: str) -> Path:
    """Write ``metrics`` into ``model_dir/model_card.json`` in place (atomically); the weights and their
    sha256 stay as they are. Refuses when the weights changed since they were evaluated."""
    from lensforge.atomic import atomic_write_text
    from lensforge.errors import ModelError
    from lensforge.models.image_inpainter import CARD_FILE, WEIGHTS_FILE, read_card

    card = read_card(model_dir)
    digest = hashlib.sha256((Path(model_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()
    if card.get("weights_sha256") != weights_sha256 or digest != weights_sha256:
        raise ModelError(f"{model_dir}: the weights or their card changed during the evaluation; not recording",
                         model_dir)
    card["metrics"] = metrics
    return atomic_write_text(Path(model_dir) / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")


# --- figures ------------------------------------------------------------------------------------------

def pick_example(light: dict[str, float], prefix: str) -> str | None:
    """The case of ``prefix`` with the most masked source light (ties: the first name in sort order)."""
    names = sorted(name for name in light if name.startswith(prefix))
    return max(names, key=lambda name: light[name]) if names else None


def plot_example(case, inpainters: dict[str, Any], out_png: Path, title: str) -> None:
    """One row: data, data with holes, model fill, biharmonic fill, model std, |residual| / sigma of each."""
    from lensforge.pipeline.evaluation.image_inpainting import plot_examples

    image = np.array(case.truth, dtype=np.float32)
    image[case.hidden] = np.nan
    fills = {}
    for method in ("model", "biharmonic"):
        if method in inpainters:
            fills[method] = inpainters[method](image.copy(), case.hidden.copy(), case.noise_sigma)
    plot_examples([case], {case.name: fills}, out_png, title)


# --- the run ------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    header = (f"{'group':<14} {'method':<12} {'images':>6} {'source':>7} {'sky':>7} {'flux':>7} {'cov1':>5} "
              f"{'cov1src':>7} {'src/bh':>7} {'sky/bh':>7} {'flux/bh':>7} {'targets':>8}")
    lines = [header, "-" * len(header)]
    for group, block in result["groups"].items():
        check = result["done_when"]["groups"][group]
        for method, m in block["methods"].items():
            r = block["ratios_vs_biharmonic"].get(method, {})
            verdict = ""
            if method == "model":
                verdict = ("met" if check["all_pass"] else
                           f"{sum(c['pass'] for c in check['checks'].values())}/{len(check['checks'])}")
                verdict += "" if check["required"] else "*"
            lines.append(f"{group[:14]:<14} {method[:12]:<12} {m['n_images']:>6} {_fmt(m['rmse_source']):>7} "
                         f"{_fmt(m['rmse_sky']):>7} {_fmt(m['aperture_flux_error_rms']):>7} "
                         f"{_fmt(m['coverage_1sigma'], 2):>5} {_fmt(m['coverage_1sigma_source_segment'], 2):>7} "
                         f"{_fmt(r.get('rmse_source'), 2):>7} {_fmt(r.get('rmse_sky'), 2):>7} "
                         f"{_fmt(r.get('aperture_flux_error_rms'), 2):>7} {verdict:>8}")
    lines.append("RMSE in noise sigma over masked source / sky pixels; flux: RMS aperture-flux error "
                 "[sigma sqrt(npix)]; cov1 / cov1src: share within 1 std, all / source-segment pixels; "
                 "x/bh: ratio to biharmonic; targets: met or "
                 "passed/5 (* reported only)")
    return "\n".join(lines)


PER_IMAGE_DIGITS = 5  # significant digits of the per-image rows (the pooled metrics keep full precision)


def _rounded(value: Any, digits: int = PER_IMAGE_DIGITS) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def results_text(payload: dict[str, Any]) -> str:
    """The results JSON: indented, except ``per_image``, one row per line with rounded numbers (a few
    hundred rows: a diff shows which images changed, and the file stays a few hundred KB)."""
    marker = "__per_image_rows__"
    text = json.dumps({**payload, "per_image": marker}, indent=2, allow_nan=False)
    rows = ",\n    ".join(json.dumps(_rounded(row), allow_nan=False) for row in payload["per_image"])
    return text.replace(json.dumps(marker), "[\n    " + rows + "\n  ]" if rows else "[]", 1) + "\n"


def _relative(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="image in-painter directory (default: the shipped weights)")
    parser.add_argument("--first-n", type=int, default=None, help="only the first N FIRST test images")
    parser.add_argument("--presets", default=None,
                        help="comma-separated simulated presets (default: every one of corpus.PRESETS)")
    parser.add_argument("--cosmos-n", type=int, default=None, help="only the first N COSMOS stamps on their own")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {_relative(RESULTS)})")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="folder of the two example PNGs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test holes and of the mosaic's gap noise")
    parser.add_argument("--device", default="auto", help="device of the model: auto, cpu, cuda, cuda:N")
    parser.add_argument("--record-card", action="store_true",
                        help="write the headline metrics into the model directory's model_card.json")
    parser.add_argument("--ship", action="store_true",
                        help="allow --record-card on the shipped weights' card (package data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from benchmarks.provenance import provenance
    from lensforge.errors import InputError
    from lensforge.models.image_inpainter import SHIPPED_DIR, WEIGHTS_FILE, load_image_inpainter
    from lensforge.pipeline.datasets import corpus
    from lensforge.pipeline.evaluation.image_inpainting import coverage_floor, evaluate_cases
    from lensforge.pipeline.inpaint.images import image_inpainter

    presets = (list(corpus.PRESETS) if args.presets is None
               else [p.strip() for p in args.presets.split(",") if p.strip()])
    unknown = [p for p in presets if p not in corpus.PRESETS]
    if unknown:
        raise InputError(f"unknown preset {unknown[0]!r}; valid: {', '.join(corpus.PRESETS)}", unknown[0])
    model_dir = SHIPPED_DIR if args.model is None else args.model
    if args.record_card and Path(model_dir).resolve().is_relative_to(SHIPPED_DIR.resolve()) and not args.ship:
        raise InputError(f"--record-card on {model_dir} (the shipped weights' card) needs --ship", str(model_dir))
    info = provenance(None if argv is None else [__file__, *argv])
    began = time.perf_counter()

    model, card = load_image_inpainter(args.model, device=args.device)
    weights_sha256 = card["weights_sha256"]
    parameter = next(iter(model.parameters()), None)
    training = card.get("training") or {}
    model_info = {"path": _relative(model_dir), "shipped": args.model is None, "weights_sha256": weights_sha256,
                  "weights_bytes": (Path(model_dir) / WEIGHTS_FILE).stat().st_size,
                  "device": None if parameter is None else str(parameter.device),
                  "training_seconds": training.get("seconds"), "training_total_seconds": training.get("total_seconds"),
                  "training_device": training.get("device"),
                  "training_steps": (training.get("settings") or {}).get("steps"),
                  "settings": card.get("settings"), "calibration_split": (card.get("calibration") or {}).get("split")}
    inpainters = {method: image_inpainter(method, model, card) if method == "model" else image_inpainter(method)
                  for method in METHODS}

    sets = build_cases(args.seed, args.first_n, presets, args.cosmos_n, progress=not args.quiet)
    evaluated = time.perf_counter()
    result = evaluate_cases(sets.cases, inpainters, progress=not args.quiet, keep_examples=0)
    evaluate_seconds = time.perf_counter() - evaluated

    args.figures.mkdir(parents=True, exist_ok=True)
    by_name = {case.name: case for case in sets.cases}
    figures: dict[str, str] = {}
    examples: dict[str, str] = {}
    for key, prefix, png, title in (
            ("first", "first/", FIRST_PNG, "FIRST test-split radio galaxy (real VLA, never trained on)"),
            ("cosmos", "cosmos/stamp", COSMOS_PNG, "COSMOS galaxy (real HST/ACS F814W, never trained on)")):
        name = pick_example(sets.light, prefix)
        if name is None:
            continue
        plot_example(by_name[name], inpainters, args.figures / png,
                     f"{title}: {name.split('/', 1)[1]}, the test image with the most masked source light")
        figures[key] = _relative(args.figures / png)
        examples[key] = name

    payload: dict[str, Any] = dict(result)
    payload["settings"] = {**payload["settings"], "per_image_significant_digits": PER_IMAGE_DIGITS}
    payload["provenance"] = {**info, "methods": list(METHODS), "seed": args.seed, "model": model_info["path"],
                             "weights_sha256": weights_sha256, "figures": list(figures.values()),
                             "wall_seconds": time.perf_counter() - began}
    payload["model"] = model_info
    payload["test_sets"] = sets.description
    payload["done_when"] = done_when(result["groups"], result["per_image"], coverage_floor(sets.cases, args.seed))
    payload["figures"] = figures
    payload["examples"] = {key: {"name": name, "masked_source_light_sigma": sets.light[name]}
                           for key, name in examples.items()}
    payload["timings"] = {"build_seconds": sets.description["build_seconds"], "evaluate_seconds": evaluate_seconds,
                          "wall_seconds": payload["provenance"]["wall_seconds"]}

    from lensforge.atomic import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, results_text(payload))
    if args.record_card:
        record_card(Path(model_dir), card_metrics(payload, args.out), weights_sha256)
    print(table(payload))
    print(f"done_when: {payload['done_when']['n_required_groups_passing']} of "
          f"{len(payload['done_when']['required_groups'])} required groups meet every target")
    print(f"results: {args.out}; figures: {', '.join(figures.values()) or 'none'}; "
          f"{payload['timings']['wall_seconds']:.0f} s")
    return payload


if __name__ == "__main__":
    from lensforge.errors import LensforgeError

    try:
        main()
    except LensforgeError as err:  # missing data or model, bad arguments: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
