"""The run directory: layout, effective config, per-chunk progress markers.

``<out>/<name>/`` holds ``config.yaml`` (effective), ``trainset.zarr/``,
``catalogs/truth.{fits,parquet}``, ``models/<version>/``, ``report/`` and
``manifest.json``, written last: its presence means the run is complete. A rerun
with the same configuration resumes (finished chunks are skipped); a different
configuration in the same directory is refused unless ``overwrite`` is asked for.
A process killed mid-write leaves at most temporary files (every product, every Zarr
chunk, every marker is written to a temporary name and renamed); a resume removes them
(:func:`remove_partial_writes`) so the finished directory holds exactly the bytes of an
uninterrupted run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from catalogs.atomic import atomic_write_text
from catalogs.errors import ConfigError, InputError
from catalogs.manifest import MANIFEST_NAME
from pipeline.config import RunConfig, build_config

CONFIG_NAME = "config.yaml"
STORE_NAME = "trainset.zarr"
PROGRESS_DIR = ".progress"


def store_path(config: RunConfig) -> Path:
    """The run's Zarr training set."""
    return config.run_dir / STORE_NAME


def catalog_dir(config: RunConfig) -> Path:
    """Directory of the truth catalogues."""
    return config.run_dir / "catalogs"


def report_dir(config: RunConfig) -> Path:
    """Directory of the report products."""
    return config.run_dir / "report"


def prepare_run_dir(config: RunConfig, overwrite: bool = False) -> Path:
    """Create (or reopen for resume) the run directory and write ``config.yaml``.

    Removes any old manifest first, so an interrupted rerun is visibly incomplete, and the
    temporary files of writes a killed run left half-done (:func:`remove_partial_writes`).
    """
    run_dir = config.run_dir
    saved = run_dir / CONFIG_NAME
    try:
        if saved.exists() and not overwrite:
            try:
                previous = build_config(yaml.safe_load(saved.read_text(encoding="utf-8")), str(saved))
            except (ConfigError, yaml.YAMLError):
                previous = None
            if previous is None or _science(previous) != _science(config):
                raise ConfigError(f"{run_dir}: holds a run with a different configuration; "
                                  "choose another name or pass --overwrite", str(run_dir))
        elif overwrite and run_dir.exists():
            if not (saved.exists() or (run_dir / STORE_NAME).exists()):
                raise ConfigError(f"{run_dir}: exists but is not a lensforge run; --overwrite will not delete it",
                                  str(run_dir))
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / MANIFEST_NAME).unlink(missing_ok=True)
        remove_partial_writes(run_dir)
        atomic_write_text(saved, config.to_yaml())
    except OSError as err:
        raise InputError(f"{run_dir}: cannot prepare the run directory ({err.strerror or err})", str(run_dir)) from None
    return run_dir


# Settings that say where and how fast a run goes, not what it produces: a resume may change them.
REPORT_JSON = "evaluation.json"
REPORT_FIGURES = ("inpainting.png", "samples.png", "statistics.png")
_EXECUTION_ONLY = ("out_dir", "dask", "evaluate")


def _science(config: RunConfig) -> dict:
    values = config.to_dict()
    for key in _EXECUTION_ONLY:
        values.pop(key)
    values["train"].pop("device")
    return values


def chunk_marker(directory: str | Path, start: int, stop: int) -> Path:
    """Marker file, in ``directory``, that objects ``start..stop-1`` are completely written."""
    return Path(directory) / f"{start:010d}-{stop:010d}.done"


def marker_path(config: RunConfig, stage: str, start: int, stop: int) -> Path:
    """Marker that objects ``start..stop-1`` of ``stage`` are completely written."""
    return chunk_marker(config.run_dir / PROGRESS_DIR / stage, start, stop)


def mark_done(config: RunConfig, stage: str, start: int, stop: int) -> None:
    """Record a finished chunk (written after its data, so a marker never outlives lost data)."""
    atomic_write_text(marker_path(config, stage, start, stop), "")


def is_done(config: RunConfig, stage: str, start: int, stop: int) -> bool:
    """Whether the chunk was finished by an earlier (possibly interrupted) run."""
    return marker_path(config, stage, start, stop).exists()


# Temporary names of interrupted writes: zarr's LocalStore writes ``<key>.<uuid4 hex>.partial`` and
# renames it onto ``<key>``; ``catalogs.atomic`` writes ``.<name>.<mkstemp suffix>.tmp`` beside ``<name>``.
_PARTIAL_WRITE = re.compile(r"(.+\.[0-9a-f]{32}\.partial|\..+\.[A-Za-z0-9_]{8}\.tmp)")


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed midway left under ``directory``; return them.

    The file a write was replacing is untouched (the rename never happened), and a chunk whose
    write was lost has no marker, so a resume rewrites it. Without this, a stray temporary file
    would change the directory's manifest checksum. Call it only while nothing else writes there.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [path for path in directory.rglob("*") if _PARTIAL_WRITE.fullmatch(path.name) and path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
