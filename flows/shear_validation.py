"""Prefect flow behind ``lensforge validate-shear``: one task per store chunk on Dask, then the fit.

Each ``measure-shear-chunk`` task reads one Zarr chunk, in-paints and measures it and
returns a few floats per object, so the flow's memory does not grow with the store. The
report (JSON + PNGs) goes to ``<run>/report/shear_validation_<label>.*``; the run's own
products and manifest are left as they are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.futures import as_completed
from tqdm.auto import tqdm

from lensforge.atomic import atomic_write_text
from lensforge.catalogs.manifest import code_revision, package_versions
from lensforge.catalogs.store import open_store, read_labels
from lensforge.flows.cluster import flow_runtime
from lensforge.flows.tasks import TASK_OPTIONS, cached_model, worth_retrying
from lensforge.layout import RunLayout
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.inpaint.stamps import inpainting_complete
from lensforge.pipeline.shear.validation import (
    check_request,
    inpainting_uncertainty,
    measure_chunk,
    plot_bias_summary,
    plot_validation,
    validation_report,
)
from lensforge.pipeline.stamps.simulate import chunk_ranges


@task(name="measure-shear-chunk", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def measure_chunk_task(store: str, start: int, stop: int, methods: list[str], variants: list[str],
                       model_dir: str | None, n_samples: int, seed: int) -> tuple[int, dict[str, np.ndarray]]:
    """Shapes and responses of objects ``start..stop-1`` (see ``lensforge.pipeline.shear.validation.measure_chunk``)."""
    model = cached_model(model_dir)[0] if model_dir else None
    return start, measure_chunk(store, start, stop, methods, variants, model=model, n_samples=n_samples, seed=seed)


def _provenance(config: RunConfig, store: Path, model_checksums: dict[str, str]) -> dict[str, Any]:
    """What the report was computed from: store, its checksum in the run manifest, models, code, packages."""
    manifest_path = RunLayout.of_store(store).manifest
    store_checksum = None
    if manifest_path.is_file():
        store_checksum = json.loads(manifest_path.read_text()).get("products", {}).get(store.name)
    return {"store": str(store), "store_sha256_in_manifest": store_checksum, "model_sha256": model_checksums,
            "config": config.to_dict(), "seed": config.seed, "code_revision": code_revision(),
            "package_versions": package_versions()}


@flow(name="lensforge-validate-shear")
def validate_shear_flow(config: RunConfig, store: str, methods: list[str], variants: list[str], label: str,
                        model_dir: str | None = None, n_bootstrap: int = 200, progress: bool = True) -> dict[str, Any]:
    """Measure every chunk of ``store`` in parallel, fit m and c, write the JSON report and figures."""
    cfg = config
    began = time.perf_counter()
    group = open_store(store)
    n_objects, chunk = int(group["images"].shape[0]), int(group["images"].chunks[0])
    futures = [measure_chunk_task.submit(store, a, b, methods, variants, model_dir, cfg.inpaint.n_samples, cfg.seed)
               for a, b in chunk_ranges(n_objects, chunk)]
    parts: dict[int, dict[str, np.ndarray]] = {}
    with tqdm(total=n_objects, desc="validate-shear", unit="stamp", disable=not progress) as bar:
        for future in as_completed(futures):
            start, values = future.result()
            parts[start] = values
            bar.update(len(next(iter(values.values()))))
    measurements = {key: np.concatenate([parts[s][key] for s in sorted(parts)]) for key in parts[0]}
    labels = read_labels(group)
    flagged = measurements.pop("interpolated_centre")
    report = validation_report(labels, measurements, methods, variants, n_bootstrap=n_bootstrap, seed=cfg.seed)
    if set(variants) - {"raw", "none"} and flagged.any() and not flagged.all():
        report["centre_not_inpainted"] = centre_not_inpainted(labels, measurements, methods, variants, flagged,
                                                              n_bootstrap, cfg.seed)
    if "model" in variants:
        report["inpainting_uncertainty"] = inpainting_uncertainty(store)
    models = {}
    if inpainting_complete(group) and "model_sha256" in group["inpainted"].attrs:
        models["inpainting"] = group["inpainted"].attrs["model_sha256"]
    elif model_dir and "model" in variants:
        from lensforge.models.checkpoint import read_meta

        models["inpainting"] = read_meta(model_dir)["weights_sha256"]
    if "generator_model_sha256" in group.attrs:
        models["generator"] = group.attrs["generator_model_sha256"]
    if any(variant.startswith("image_model") for variant in variants):
        from lensforge.models.image_inpainter import read_card

        models["image_inpainter"] = read_card(None)["weights_sha256"]  # the shipped weights these variants use
    report["provenance"] = _provenance(cfg, Path(store), models)

    layout = RunLayout(cfg.run_dir)
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    figures = [plot_bias_summary(report, layout.shear_report(label, "_summary.png"))]
    for method in methods:
        figures.append(plot_validation(labels, measurements, report, method, "raw",
                                       layout.shear_report(label, f"_{method}.png")))
    report["figures"] = [path.name for path in figures]
    # No timestamp or timing inside: the same inputs give the same bytes.
    path = layout.shear_report(label, ".json")
    atomic_write_text(path, json.dumps(report, indent=2, default=float) + "\n")
    return {**report, "path": str(path), "seconds": time.perf_counter() - began}


def centre_not_inpainted(labels, measurements, methods: list[str], variants: list[str], flagged: np.ndarray,
                         n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Each variant's paired shift of m and c on the stamps whose centre is not in-painted.

    ``flagged`` (:func:`~lensforge.pipeline.inpaint.symmetry.interpolated_centre`, one PSF FWHM)
    marks the stamps a shear catalogue cuts, as it cuts LSST's ``interpolatedCenter``; the flag
    depends on the mask alone, so the cut does not bias m.
    """
    subset = validation_report(labels, measurements, methods, variants, n_bootstrap=n_bootstrap, seed=seed,
                               exclude=flagged)
    return {"description": "only the stamps with no masked pixel within one PSF FWHM of the stamp centre, "
                           "and their ring partners",
            "n_flagged": int(np.count_nonzero(flagged)),
            "methods": {method: {"n_pairs_used": entry["n_pairs_used"],
                                 **{variant: {"shift": entry[variant]["shift"]}
                                    for variant in variants if variant != "raw" and "shift" in entry[variant]}}
                        for method, entry in subset["methods"].items()}}


def run_validation(config: RunConfig, store: Path, methods: list[str], variants: list[str], label: str,
                   model_dir: Path | None, n_bootstrap: int, progress: bool) -> dict[str, Any]:
    """Run ``validate_shear_flow`` on the configured Dask cluster (the run directory is not touched)."""
    check_request(methods, variants)
    with flow_runtime(config.dask) as runner:
        return validate_shear_flow.with_options(task_runner=runner)(
            config, str(store), methods, variants, label,
            model_dir=str(model_dir) if model_dir else None, n_bootstrap=n_bootstrap, progress=progress)
