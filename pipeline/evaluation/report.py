"""The evaluation report of a run: ``report/evaluation.json`` and its figures.

Files (in ``<run>/report/``):

* ``evaluation.json``: in-painting metrics per method with the model / best-classical
  ratios, uncertainty calibration, and (unless disabled) generation metrics per model
  with the temperature sweep;
* ``inpainting.png``: truth / masked / each method / each model's std;
* ``samples.png``: generated galaxies from the same latents at several temperatures;
* ``statistics.png``: histograms of the galaxy statistics, truth vs generated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lensforge.atomic import atomic_write_text
from lensforge.layout import INPAINTING_FIGURE, REPORT_JSON, SAMPLES_FIGURE, STATISTICS_FIGURE, RunLayout
from lensforge.models.inpaint import sample_galaxies
from lensforge.models.normalize import from_model_space
from lensforge.models.vaegan import VAEGAN
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.evaluation.figures import inpainting_figure, samples_figure, statistics_figure
from lensforge.pipeline.evaluation.generation import SHAPE_KEYS, evaluate_generation
from lensforge.pipeline.evaluation.inpainting import evaluate_inpainting, inpainting_methods, validation_stamps
from lensforge.pipeline.evaluation.metrics import MORPHOLOGY_KEYS
from lensforge.pipeline.rundir import require_store
from lensforge.pipeline.stamps.splits import split_index
from lensforge.seeding import Stream, stream_root


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples and arrays as lists, keys as strings and NaN/inf
    as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    return value


def write_report(config: RunConfig, store_path: str | Path, report_dir: str | Path, models: dict[str, VAEGAN],
                 generation: bool = True) -> dict[str, Any]:
    """Evaluate ``models`` (name -> model; "vaegan" = the hybrid) on the run's held-out stamps; write the report.

    Returns the JSON written to ``evaluation.json`` (NaN written as null).
    """
    began = time.perf_counter()
    settings = config.evaluate
    report_dir = Path(report_dir)
    first = split_index(config.simulation.n_objects, config.train.validation_fraction)
    data = validation_stamps(store_path, first, settings.n_inpaint)
    report: dict[str, Any] = {"first_validation_object": first, "models": sorted(models)}
    if len(data["index"]):
        inpainters = {k: m for k, m in models.items() if k != "gan"}  # the GAN-only ablation has no encoder
        results = inpainting_methods(data, inpainters, config.inpaint.n_samples, config.seed)
        report["inpainting"] = evaluate_inpainting(config, data, results)
        inpainting_figure(report_dir / INPAINTING_FIGURE, data, results)
    else:
        report["inpainting"] = {"n_stamps": 0, "note": "no masked validation stamps"}

    if generation and models:
        truth = validation_stamps(store_path, first, settings.n_generate, masked_only=False)
        metrics, _ = evaluate_generation(config, truth, models, settings.n_generate, settings.n_morphology,
                                         tuple(settings.temperatures), workers=settings.workers)
        stats = metrics.pop("_stats", None)
        report["generation"] = metrics
        keys = SHAPE_KEYS + (MORPHOLOGY_KEYS if settings.n_morphology > 1 else ()) + ("high_frequency_power",)
        if stats is not None:
            statistics_figure(report_dir / STATISTICS_FIGURE, stats, keys)
        if "vaegan" in models:
            samples_figure(report_dir / SAMPLES_FIGURE, _temperature_grids(models["vaegan"], config))
    report["seconds"] = time.perf_counter() - began
    report = jsonable(report)
    atomic_write_text(report_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    return report


def _temperature_grids(model: VAEGAN, config: RunConfig, n_show: int = 10) -> dict[str, np.ndarray]:
    """The same latents at each temperature, decoded to observed noiseless stamps (ADU at unit noise)."""
    seed = stream_root(config.seed, Stream.LATENT)
    grids = {}
    for temperature in config.evaluate.temperatures:
        stamps = sample_galaxies(model, n_show, temperature=temperature, seed=seed, first_index=10**9)
        grids[f"T = {temperature:g}"] = from_model_space(stamps, np.ones(n_show))
    return grids


def evaluate_stage(config: RunConfig, generation: bool = True) -> dict[str, Any]:
    """The evaluate stage of a run: every trained model of the run (hybrid and ablations) on the
    held-out stamps; writes ``report/evaluation.json`` and its figures and returns the report
    (as written to ``report/evaluation.json``). ``InputError`` without a store or a trained model."""
    from lensforge.errors import InputError
    from lensforge.pipeline.generative.training import load_models

    store = require_store(config)
    models = load_models(config)
    layout = RunLayout(config.run_dir)
    if not models:
        raise InputError(f"{layout.models_dir}: no trained model; run `lensforge train` first")
    return write_report(config, store, layout.report_dir, models, generation=generation)
