"""One runner per operation: the CLI command, the Prefect task and the deployment all call these.

Each runner is a plain function of a :class:`~lensforge.pipeline.config.RunConfig` (plus the
few arguments that are not configuration) that validates its input, does the whole operation
and returns a JSON-able summary. ``lensforge <command>`` (:mod:`lensforge.flows.cli`) prints the
summary, the deployment flow (:mod:`lensforge.flows.deployments`) logs it; neither does any work
of its own, so the two cannot drift apart.

Runners of in-process stages (train, in-paint, evaluate) are the pipeline's own stage functions;
the others start the Prefect runtime and the Dask cluster the configuration names
(:func:`lensforge.flows.cluster.flow_runtime`) and run a flow on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lensforge.errors import InputError
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import run_layout

# Each runner imports its stage where it runs: a command pays only for its own science stack (torch,
# matplotlib, photutils take seconds to import), and bad input fails before any of it loads.

def warn(message: str) -> None:
    """One ``lensforge: warning: ...`` line on stderr (the runners' only output: the result is returned)."""
    import typer

    from lensforge.errors import one_line

    typer.echo(f"lensforge: warning: {one_line(message)}", err=True)


def warn_if_undertrained(model_dir: str | Path) -> None:
    """Warn (one line) when the checkpoint in ``model_dir`` is about to be used for sampling, in-painting or
    generation but was trained for too few steps (:func:`lensforge.models.checkpoint.undertrained_message`)."""
    from lensforge.models.checkpoint import read_meta, undertrained_message

    message = undertrained_message(model_dir, read_meta(model_dir))
    if message:
        warn(message)


__all__ = ["evaluate", "generate_trainset", "inpaint", "reprocess", "run", "simulate", "tiles", "train",
           "validate_shear"]


def simulate(config: RunConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Simulate the run's training set (store + truth catalogue + manifest) on Dask; resumes."""
    from lensforge.flows.run import run_with_dask, runs_in_process, simulate_flow, simulate_in_process
    from lensforge.pipeline.stamps.simulate import check_simulation

    check_simulation(config)  # before the run directory, the store or a task exists
    if runs_in_process(config):
        return {"run_dir": str(config.run_dir), **simulate_in_process(config, overwrite, progress)}
    return {"run_dir": str(config.run_dir), **run_with_dask(simulate_flow, config, overwrite, progress)}


def run(config: RunConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """The whole flow: simulate → mask → store + catalogue → train → in-paint → report → manifest."""
    from lensforge.flows.run import run_flow, run_with_dask
    from lensforge.pipeline.stamps.simulate import check_simulation

    check_simulation(config)
    return {"run_dir": str(config.run_dir), **run_with_dask(run_flow, config, overwrite, progress)}


def train(config: RunConfig, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train the VAE-GAN (``train.objective``) on the run's store; resumes from its last checkpoint."""
    from lensforge.pipeline.generative.training import train_stage

    result = train_stage(config, progress=progress, resume=resume)
    return {"run_dir": str(config.run_dir), "model_dir": str(result.out_dir), "steps": result.steps,
            "seconds": result.seconds, "final_losses": result.final_losses}


def inpaint(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """In-paint the run's store with the registry's model and re-checksum the run's manifest."""
    from lensforge.pipeline.inpaint.stamps import inpaint_stage

    result = inpaint_stage(config, progress=progress)
    warn_if_undertrained(result["model_dir"])  # after the store passed its checks: the model was used
    return {"run_dir": str(config.run_dir), **result}


def evaluate(config: RunConfig, generation: bool = True) -> dict[str, Any]:
    """Evaluate the run's models on held-out stamps: ``report/evaluation.json`` (its path under ``"path"``)
    and figures."""
    from lensforge.pipeline.evaluation.report import evaluate_stage

    return {**evaluate_stage(config, generation=generation), "path": str(run_layout(config).report_json)}


def tiles(config: RunConfig, tile_ids: list[int], overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Render survey tiles ``tile_ids`` (FITS, truth, detections, report) on Dask, then the manifest."""
    from lensforge.flows.run import run_with_dask
    from lensforge.flows.tiles import tiles_flow

    if config.tile.population != "parametric":
        from lensforge.pipeline.tiles.render import check_cosmos_catalog

        # A missing, empty or malformed catalogue: one line now, before a run directory or cluster exists.
        check_cosmos_catalog(config)
    return {"run_dir": str(config.run_dir),
            **run_with_dask(tiles_flow, config, overwrite, progress, tile_ids=list(tile_ids))}


def validate_shear(config: RunConfig, store: str | Path | None = None,
                   methods: tuple[str, ...] = ("REGAUSS", "KSB", "FOURIER_QUAD"), variants: list[str] | None = None,
                   label: str | None = None, bootstrap: int = 200, progress: bool = True) -> dict[str, Any]:
    """Shear calibration of a store (default: the run's): m and c per method and variant, report files.

    ``variants`` defaults to raw, none, biharmonic and, where a model or a finished in-painting
    exists, model. With a trained model the counterfactuals are in-painted too (the model
    variant's own response); without one the store's ``inpainted`` array is measured as it is.
    """
    from lensforge.catalogs.schema import LABEL_ARRAYS
    from lensforge.catalogs.store import open_store
    from lensforge.flows.shear_validation import run_validation
    from lensforge.limits import check_memory
    from lensforge.pipeline.generative.training import inpainting_model_dir
    from lensforge.pipeline.inpaint.stamps import inpainting_complete
    from lensforge.pipeline.shear.validation import VARIANTS
    from lensforge.pipeline.stamps.simulate import TASK_OVERHEAD_BYTES

    path = Path(store) if store else run_layout(config).store
    group = open_store(path)  # one-line InputError for a missing, foreign or damaged store
    n_objects, chunk = int(group["images"].shape[0]), int(group["images"].chunks[0])
    # Held at once: every label and per-object measurement in the flow, a task per chunk, and a chunk
    # (stamps, counterfactuals, in-paintings) per local worker.
    per_object = 8 * (len(LABEL_ARRAYS) + 6 * len(methods) * len(VARIANTS))  # labels; e1, e2, R (2x2) each
    stamp = int(group["images"].shape[1]) * int(group["images"].shape[2]) * 4 * 12
    in_flight = config.dask.n_workers * config.dask.threads_per_worker if config.dask.address is None else 1
    check_memory(n_objects * per_object + -(-n_objects // chunk) * TASK_OVERHEAD_BYTES + in_flight * chunk * stamp,
                 f"validate-shear of {path} ({n_objects} objects)", config.limits.memory_budget_gb)
    model_dir = inpainting_model_dir(config)
    chosen_model = model_dir if model_dir.is_dir() else None
    if variants is None:
        variants = ["raw", "none", "biharmonic"] + (["model"] if chosen_model or inpainting_complete(group) else [])
    elif "model" in variants and chosen_model is None and not inpainting_complete(group):
        raise InputError(f"variant 'model': {path} has no inpainted array and {model_dir} no model; "
                         "run `lensforge train` / `lensforge inpaint` first", str(path))
    report = run_validation(config, path, [m.upper() for m in methods], list(variants),
                            label or path.name.removesuffix(".zarr"), chosen_model, bootstrap, progress=progress)
    if chosen_model is not None and "model" in variants and not inpainting_complete(group):
        warn_if_undertrained(chosen_model)
    for line in report.get("warnings", []):
        warn(line)
    return {**report, "variants": list(variants)}


def reprocess(config: RunConfig, source: str | None = None, output: str | Path | None = None,
              method: str = "biharmonic", model_version: str | None = None, max_concurrent: int = 8,
              tiles_per_task: int = 64, progress: bool = True, mask: str | None = None,
              thin_holes: str = "auto") -> dict[str, Any]:
    """Reprocess survey tiles or one's own FITS images (default: the run's ``tiles/`` into its
    ``reprocessed/``); resumable.

    ``method``: biharmonic, interpolate, model or auto; ``model_version``: the image in-painter's
    directory or a version of the run's ``inpainters/`` (default: the shipped one); ``mask``: a mask
    file for a single image; ``thin_holes``: auto or network (``ReprocessSettings.thin_holes``).
    Failed tiles are rows of the summary, not errors, and so are the one-line ``warning`` of tiles
    outside the in-painting model's training domain (also listed under ``"warnings"``): the caller
    decides what they mean.
    """
    from lensforge.flows.tile_batch import SUMMARY_NAME

    layout = run_layout(config)
    source = str(source or layout.tiles_dir)
    output = Path(output or layout.reprocessed_dir)
    summary = run_reprocess(config, source, output, method, model_version, max_concurrent, tiles_per_task,
                            progress=progress, mask=mask, thin_holes=thin_holes)
    return {**summary, "output": str(output), "summary_path": str(output / SUMMARY_NAME)}


def generate_trainset(config: RunConfig, n_objects: int | None = None, name: str = "calibration",
                      temperature: float = 1.0, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """A generated training set ``<run>/generated/<name>.zarr`` (the store schema, counterfactuals) drawn
    by the run's model; leaves the run's own products and manifest alone."""
    from lensforge.flows.generated_set import generated_set_config, generated_store_path, run_generated_set
    from lensforge.pipeline.stamps.simulate import check_simulation

    config = generated_set_config(config, n_objects)
    if not temperature > 0:
        raise InputError(f"--temperature must be > 0, got {temperature}", temperature)
    check_simulation(config, "--n" if n_objects is not None else "simulation.n_objects")
    store = generated_store_path(config, name)
    model_dir = generator_dir(config)
    result = run_generated_set(config, store, model_dir, temperature=temperature, progress=progress,
                               overwrite=overwrite)
    warn_if_undertrained(model_dir)
    return result


def generator_dir(config: RunConfig) -> Path:
    """The run's generator (the in-painting model of the registry); ``InputError`` when nothing was trained."""
    from lensforge.pipeline.generative.training import inpainting_model_dir

    directory = inpainting_model_dir(config)
    if not directory.is_dir():
        raise InputError(f"{directory}: no trained model; run `lensforge train` first", str(directory))
    return directory


def run_reprocess(config: RunConfig, source: str, output: str | Path, method: str = "biharmonic",
                  model_version: str | None = None, max_concurrent: int = 8, tiles_per_task: int = 64,
                  progress: bool = True, mask: str | None = None, thin_holes: str = "auto") -> dict[str, Any]:
    """Reprocess the tiles under ``source`` into ``output`` on ``config``'s Dask cluster (``lensforge reprocess``).

    ``method``: biharmonic, interpolate, model (the image in-painter of :func:`resolve_inpainter`:
    the shipped weights, or ``model_version``) or auto (the model inside its training domain, else
    biharmonic). ``mask``: a mask file for a single-image ``source``. ``thin_holes``: ``auto`` or
    ``network`` (:class:`~lensforge.pipeline.tiles.reprocess.ReprocessSettings`). The default PSF FWHM (pixels;
    used when a tile's headers declare no beam or PSF) and the detection threshold come from
    ``config``'s survey and detect sections. Returns the summary (also written to
    ``<output>/reprocess_summary.json``); failed tiles are rows, not errors.
    """
    from lensforge.errors import ConfigError
    from lensforge.flows.in_process import configured_prefect_api
    from lensforge.flows.tile_batch import (
        check_batch,
        check_mask_option,
        reprocess_in_process,
        resolve_inpainter,
        settings_dict,
    )
    from lensforge.pipeline.tiles.reprocess import METHODS, MODEL_METHODS, THIN_HOLES, ReprocessSettings

    if method not in METHODS:
        raise ConfigError(f"method {method!r}: valid methods are {', '.join(METHODS)}", method)
    if thin_holes not in THIN_HOLES:
        raise ConfigError(f"--thin-holes {thin_holes!r}: valid choices are {', '.join(THIN_HOLES)}", thin_holes)
    urls = check_batch(source, output)
    mask = check_mask_option(source, urls, mask)
    chosen = str(resolve_inpainter(config, model_version)) if method in MODEL_METHODS else None
    settings = ReprocessSettings(method=method,
                                 psf_fwhm_pixels=config.survey.psf_fwhm_arcsec / config.survey.pixel_scale_arcsec,
                                 threshold_nsigma=config.detect.threshold_nsigma, thin_holes=thin_holes)
    if len(urls) == 1 and not config.dask.address and config.dask.jobqueue is None and not configured_prefect_api():
        # One tile: its work is less than a Prefect server's and a cluster's start-up; do it here.
        return reprocess_in_process(source, str(output), settings_dict(settings), chosen, progress=progress,
                                    memory_budget_gb=config.limits.memory_budget_gb, mask=mask)
    from lensforge.flows.cluster import flow_runtime
    from lensforge.flows.reprocess import reprocess_flow

    with flow_runtime(config.dask, preload=["lensforge.flows.worker_preload"]) as runner:
        return reprocess_flow.with_options(task_runner=runner)(source, str(output), settings_dict(settings), chosen,
                                                               max_concurrent, tiles_per_task, progress=progress,
                                                               memory_budget_gb=config.limits.memory_budget_gb,
                                                               mask=mask)
