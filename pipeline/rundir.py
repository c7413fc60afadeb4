"""Opening a run directory for a configuration: create it, or reopen it to resume.

The tree itself is :class:`lensforge.layout.RunLayout`; this module ties it to a
:class:`~lensforge.pipeline.config.RunConfig`. A rerun with the same configuration resumes (finished
chunks are skipped); a different configuration in the same directory is refused unless
``overwrite`` is asked for. A process killed mid-write leaves at most temporary files (every
product, every Zarr chunk, every marker is written to a temporary name and renamed); a resume
removes them, so the finished directory holds exactly the bytes of an uninterrupted run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lensforge.atomic import atomic_write_text
from lensforge.errors import ConfigError, InputError
from lensforge.layout import RunLayout, remove_partial_writes, science_settings
from lensforge.pipeline.config import RunConfig, build_config


def run_layout(config: RunConfig) -> RunLayout:
    """The run directory tree of ``config`` (``<out_dir>/<name>/``)."""
    return RunLayout(config.run_dir)


def store_path(config: RunConfig) -> Path:
    """The run's Zarr training set."""
    return run_layout(config).store


def prepare_run_dir(config: RunConfig, overwrite: bool = False) -> Path:
    """Create (or reopen for resume) the run directory and write ``config.yaml``.

    Removes any old manifest first, so an interrupted rerun is visibly incomplete, and the
    temporary files of writes a killed run left half-done (:func:`lensforge.layout.remove_partial_writes`).
    """
    layout = run_layout(config)
    run_dir, saved = layout.root, layout.config_file
    try:
        if saved.exists() and not overwrite:
            try:
                previous = build_config(yaml.safe_load(saved.read_text(encoding="utf-8")), str(saved))
            except (ConfigError, yaml.YAMLError):
                previous = None
            if previous is None or science_settings(previous.to_dict()) != science_settings(config.to_dict()):
                raise ConfigError(f"{run_dir}: holds a run with a different configuration; "
                                  "choose another name or pass --overwrite", str(run_dir))
        elif overwrite and run_dir.exists():
            if not (saved.exists() or layout.store.exists()):
                raise ConfigError(f"{run_dir}: exists but is not a lensforge run; --overwrite will not delete it",
                                  str(run_dir))
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        layout.manifest.unlink(missing_ok=True)
        remove_partial_writes(run_dir)
        atomic_write_text(saved, config.to_yaml())
    except OSError as err:
        raise InputError(f"{run_dir}: cannot prepare the run directory ({err.strerror or err})", str(run_dir)) from None
    return run_dir


def require_store(config: RunConfig) -> Path:
    """The run's store; ``InputError`` naming the command to run first when it does not exist."""
    path = store_path(config)
    if not path.exists():
        raise InputError(f"{path}: no training set; run `lensforge simulate` with the same configuration first",
                         str(path))
    return path
