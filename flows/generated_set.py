"""A *generated* training set: the VAE-GAN draws the galaxies, GalSim lenses and observes them.

``generated_set_flow`` writes ``<run>/generated/<name>.zarr`` with exactly the schema of the
simulated store (``lensforge.catalogs.schema``), one Dask task per chunk calling
:func:`lensforge.pipeline.generative.generate.generate_stamps`: ring partners share their latent, noise fields are
paired, and every stamp carries its counterfactuals at g ± dg (dg = 0.01 unless the
configuration sets ``simulation.counterfactual_delta_g``), so the shear validation harness
runs on it as on a simulated store. Then the truth catalogue ``<name>_truth.{fits,parquet}``
and, last, the provenance sidecar ``<name>.json`` (config, seed, model checksum, code revision,
package versions, store checksum): its presence means the set is complete.

The run's ``config.yaml`` and ``manifest.json`` are left alone (a generated set is an extra
product of a finished run). Interrupted sets resume chunk by chunk (progress markers under
``<run>/.progress/generate-<name>/``); a set generated with another model, temperature or
configuration is refused unless ``overwrite`` is asked for. The same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from tqdm.auto import tqdm

from lensforge.errors import InputError, ModelError
from lensforge.flows.tasks import TASK_OPTIONS, worth_retrying
from lensforge.layout import GENERATED_SET_EXECUTION_ONLY, RunLayout, science_settings, store_sidecars
from lensforge.pipeline.config import RunConfig, build_config
from lensforge.pipeline.generative import check_generated_config
from lensforge.pipeline.stamps.simulate import chunk_ranges

DEFAULT_SET_NAME = "calibration"
DEFAULT_DELTA_G = 0.01  # the metacalibration step: this set exists for shear calibration
SOURCE = "generator"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Store attributes that must agree before an existing store is resumed.
_IDENTITY = ("source", "run_seed", "generator_model_sha256", "temperature", "config_sha256")


# -- paths, configuration, device ------------------------------------------------------


def generated_store_path(config: RunConfig, name: str = DEFAULT_SET_NAME) -> Path:
    """``<run>/generated/<name>.zarr``; ``name`` is a plain name (``.zarr`` optional), else ``InputError``."""
    stem = name[:-len(".zarr")] if name.endswith(".zarr") else name
    if not _NAME.match(stem) or stem.endswith("_truth"):
        raise InputError(f"generated set name {name!r}: expected letters, digits, '_', '.', '-' (at most 64, "
                         f"not ending in _truth); it is written to {RunLayout(config.run_dir).generated_dir}", name)
    return RunLayout(config.run_dir).generated_store(stem)


def generated_set_config(config: RunConfig, n_objects: int | None = None) -> RunConfig:
    """The configuration a generated set is drawn with: ``n_objects`` stamps and always counterfactuals.

    ``simulation.counterfactual_delta_g`` keeps its value when set, else becomes ``DEFAULT_DELTA_G``.
    """
    check_generated_config(config)
    simulation = config.simulation
    update: dict[str, Any] = {}
    if simulation.counterfactual_delta_g is None:
        update["counterfactual_delta_g"] = DEFAULT_DELTA_G
    if n_objects is not None:
        update["n_objects"] = n_objects
    values = config.to_dict()
    values["simulation"].update(update)
    return build_config(values)


def generation_device(config: RunConfig) -> str:
    """Where the decoder runs: the CPU unless ``train.device`` names a device ("auto" stays on the CPU).

    The CPU is the default so that a set's bytes do not depend on whether the machine has a GPU.
    """
    return "cpu" if config.train.device.strip().lower() == "auto" else config.train.device


def progress_stage(store: str | Path) -> str:
    """The progress-marker stage of a generated store (:meth:`lensforge.layout.RunLayout.progress`):
    ``generate-<name>``."""
    return f"generate-{Path(store).stem}"


def config_digest(config: RunConfig) -> str:
    """SHA-256 of the settings that decide a generated set's pixels (not where or how fast it runs)."""
    values = science_settings(config.to_dict(), GENERATED_SET_EXECUTION_ONLY)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _model_dir_label(config: RunConfig, model_dir: Path) -> str:
    """The model directory relative to the run directory where it lies inside it (so bytes do not depend on
    where the run lives), else absolute."""
    resolved = model_dir.resolve()
    try:
        return resolved.relative_to(config.run_dir.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


@functools.cache
def load_generator(model_dir: str, device: str, weights_sha256: str):
    """(model, meta) of the checkpoint in ``model_dir``, loaded once per process (Dask worker).

    Keyed on the weights' sha256 too, so a worker that outlives a retraining (an external Dask
    scheduler) loads the new model; ``ModelError`` if the checkpoint no longer has that checksum.
    """
    from lensforge.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(Path(model_dir), device=device)
    if meta["weights_sha256"] != weights_sha256:
        raise ModelError(f"{model_dir}: the model changed while the set was generated (sha256 "
                         f"{meta['weights_sha256'][:12]}..., expected {weights_sha256[:12]}...); rerun", model_dir)
    return model, meta


# -- tasks ------------------------------------------------------------------------------


@task(name="create-generated-store", **TASK_OPTIONS)
def create_generated_store_task(config: RunConfig, store: str, attrs: dict[str, Any], overwrite: bool = False) -> str:
    """Create the empty store (or reopen an interrupted one with the same identity); clear stale markers."""
    from lensforge.catalogs.store import create_store

    cfg = config
    path = Path(store)
    markers = RunLayout(cfg.run_dir).progress(progress_stage(path)).directory
    if path.exists():
        existing = _existing_attrs(path)
        if overwrite:
            shutil.rmtree(path)
        else:
            differing = [key for key in _IDENTITY if existing.get(key) != attrs.get(key)]
            if differing:
                raise InputError(f"{path}: a generated set with other {', '.join(differing)} already exists; "
                                 "choose another name or pass --overwrite", str(path))
    if not path.exists():
        shutil.rmtree(markers, ignore_errors=True)  # markers of a removed store would skip unwritten chunks
    store_sidecars(path)[1].unlink(missing_ok=True)  # the sidecar comes last: without it the set is incomplete
    simulation = cfg.simulation
    create_store(path, simulation.n_objects, cfg.survey.stamp_size, simulation.chunk_size,
                 include_noiseless=simulation.store_noiseless, attrs=attrs,
                 counterfactual_delta_g=simulation.counterfactual_delta_g)
    return str(path)


def _existing_attrs(path: Path) -> dict[str, Any]:
    import zarr

    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is reported the same way
        raise InputError(f"{path}: exists but is not a Zarr store; remove it or choose another name", str(path)) \
            from None
    if attrs.get("source") != SOURCE:
        raise InputError(f"{path}: exists but is not a generated lensforge set; remove it or choose another name",
                         str(path))
    return attrs


@task(name="generate-chunk", retries=1, retry_condition_fn=worth_retrying, **TASK_OPTIONS)
def generate_chunk_task(config: RunConfig, store: str, model_dir: str, model_sha256: str, temperature: float,
                        start: int, stop: int) -> dict[str, Any]:
    """Generate objects ``start..stop-1`` with the model in ``model_dir`` into ``store`` (skipped if done)."""
    from lensforge.pipeline.generative.generate import generate_stamps

    def produce():
        device = generation_device(config)
        model, _ = load_generator(model_dir, device, model_sha256)
        return generate_stamps(model, config, start, stop, temperature=temperature, device=device)

    progress = RunLayout(config.run_dir).progress(progress_stage(store))
    batch = progress.run(start, stop, produce, lambda stamps: stamps.write(store))
    return {"start": start, "stop": stop, "seconds": 0.0 if batch is None else batch.seconds,
            "skipped": batch is None}


@task(name="finish-generated-set", **TASK_OPTIONS)
def finish_generated_set_task(config: RunConfig, store: str, provenance: dict[str, Any]) -> dict[str, str]:
    """Consolidate the store, write the truth catalogue beside it and, last, the provenance sidecar."""
    from lensforge.atomic import atomic_write_text
    from lensforge.catalogs.manifest import code_revision, package_versions, sha256_of
    from lensforge.catalogs.truth import write_store_truth_catalogue

    cfg = config
    path = Path(store)
    # FITS header keys: at most 8 characters.
    meta = {"RUNNAME": cfg.name, "RUNSEED": cfg.seed, "PIXSCALE": cfg.survey.pixel_scale_arcsec, "SOURCE": SOURCE,
            "MODELSHA": provenance["model"]["weights_sha256"], "TEMPERAT": provenance["temperature"]}
    truth_stem, sidecar = store_sidecars(path)
    truth = write_store_truth_catalogue(path, truth_stem.parent, meta, stem=truth_stem.name)
    products = {path.name: sha256_of(path), **{p.name: sha256_of(p) for p in truth.values()}}
    document = {"lensforge_generated_set_version": 1, "store": path.name, "n_objects": cfg.simulation.n_objects,
                "seed": cfg.seed, **provenance, "config": cfg.to_dict(), "code_revision": code_revision(),
                "package_versions": package_versions(), "store_sha256": products[path.name], "products": products}
    atomic_write_text(sidecar, json.dumps(document, indent=2) + "\n")
    return {"sidecar": str(sidecar), "store_sha256": products[path.name], **{fmt: str(p) for fmt, p in truth.items()}}


# -- the flow ---------------------------------------------------------------------------


@flow(name="lensforge-generate-trainset")
def generated_set_flow(config: RunConfig, store: str, model_dir: str, temperature: float = 1.0, progress: bool = True,
                       overwrite: bool = False) -> dict[str, Any]:
    """Generate a training set of ``simulation.n_objects`` stamps with the model in ``model_dir`` into ``store``.

    ``config`` is the run's configuration; the set is drawn with :func:`generated_set_config`
    (counterfactuals always on). Returns the store path, object and chunk counts, timings, the
    store's sha256 and the paths of the truth catalogue and sidecar.
    """
    from lensforge.models.checkpoint import load_checkpoint  # torch: only where a model is used

    began = time.perf_counter()
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}", temperature)
    cfg = config = generated_set_config(config)
    _, meta = load_checkpoint(Path(model_dir))  # fails early (ModelError) on a missing or damaged model
    sha = meta["weights_sha256"]
    attrs = {"run_name": cfg.name, "run_seed": cfg.seed, "pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec,
             "source": SOURCE, "generator_model_sha256": sha,
             "generator_model_dir": _model_dir_label(cfg, Path(model_dir)), "temperature": float(temperature),
             "config_sha256": config_digest(cfg)}
    store = create_generated_store_task(config, str(store), attrs, overwrite)
    ranges = chunk_ranges(cfg.simulation.n_objects, cfg.simulation.chunk_size)
    futures = [generate_chunk_task.submit(config, store, str(model_dir), sha, float(temperature), start, stop)
               for start, stop in ranges]
    summaries = []
    with tqdm(total=cfg.simulation.n_objects, desc="generate", unit="stamp", disable=not progress) as bar:
        for future in as_completed(futures):
            summary = future.result()
            summaries.append(summary)
            bar.update(summary["stop"] - summary["start"])
    provenance = {"source": SOURCE, "temperature": float(temperature),
                  "model": {"dir": attrs["generator_model_dir"], "weights_sha256": sha, "step": meta.get("step")},
                  "counterfactual_delta_g": cfg.simulation.counterfactual_delta_g,
                  "device": generation_device(cfg), "config_sha256": attrs["config_sha256"]}
    products = finish_generated_set_task(config, store, provenance)
    return {"store": store, "n_objects": cfg.simulation.n_objects, "seconds": time.perf_counter() - began,
            "task_seconds": sum(s["seconds"] for s in summaries), "chunks": len(summaries),
            "chunks_skipped": sum(s["skipped"] for s in summaries), **products}


def run_generated_set(config: RunConfig, store: str | Path, model_dir: str | Path, temperature: float = 1.0,
                      progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run :func:`generated_set_flow` on the configured Dask runner, without touching the run's config or manifest."""
    from lensforge.flows.cluster import flow_runtime

    with flow_runtime(config.dask) as runner:
        return generated_set_flow.with_options(task_runner=runner)(
            config, str(store), str(model_dir), temperature=temperature, progress=progress,
            overwrite=overwrite)
