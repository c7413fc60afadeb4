"""A registry of versioned model checkpoints: list, show, promote, resolve.

A registry is a directory (a run's ``models/``) whose sub-directories are model versions
written by :func:`lensforge.models.train.train` / :func:`lensforge.models.checkpoint.save_checkpoint`::

    models/
      v001/        weights.safetensors, meta.json, settings.json, losses.csv, [metrics.json]
      v001-vae/    an ablation (objective in its settings, or the ``-vae`` / ``-gan`` suffix)
      PROMOTED     {"version", "weights_sha256", "promoted_utc", "previous"}: the version in use

Promotion is the gate: :func:`promote` fully loads the checkpoint (sha256 of the weights
against ``meta.json``, safetensors parse, tensor shapes) and refuses an unfinished training
before writing ``PROMOTED`` atomically. :func:`resolve_version` is what reprocessing calls:
the named version, else the promoted one, and in both cases the weights must still hash to
what was recorded; it never guesses a default. Every failure is a one-line
:class:`~lensforge.errors.ModelError` naming the file or listing the valid versions.

Layering: imports ``catalogs`` and ``models`` only.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lensforge.atomic import atomic_write_text
from lensforge.errors import ModelError
from lensforge.models.checkpoint import META_FILE, WEIGHTS_FILE, _read_meta, load_checkpoint
from lensforge.models.objectives import OBJECTIVES

PROMOTED_FILE = "PROMOTED"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"
METRICS_FORMAT = "lensforge-model-metrics"
PROMOTE_COMMAND = "lensforge models promote VERSION"
# A version is a plain directory name of the registry (v001, v001-vae, ...): never a path.
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
# Training settings shown in a record's summary (the full set is in show_model).
SUMMARY_KEYS = ("steps", "batch_size", "learning_rate", "objective", "seed", "device")


class RegistryWarning(UserWarning):
    """A directory in a registry looks like a checkpoint but cannot be read; it is skipped."""


@dataclass(frozen=True)
class ModelRecord:
    """One model version of a registry.

    Attributes:
        version: directory name, e.g. ``"v001"`` or ``"v001-vae"``.
        path: the model directory.
        weights_sha256: sha256 of ``weights.safetensors`` as recorded in ``meta.json``.
        created: when the weights were written, ISO 8601 UTC (``meta.json`` ``created_utc``
            when present, else the weights file's modification time).
        objective: "hybrid", "vae" or "gan" (training settings, else the name suffix); None if unknown.
        step: optimiser step of this checkpoint (``meta.json``); None if not recorded.
        train_summary: a few training settings (:data:`SUMMARY_KEYS`), empty if not recorded.
        data_sha256: checksum of the training arrays (:func:`lensforge.models.train.data_checksum`), or None.
        metrics: evaluation metrics (``metrics.json``, else given by the caller), or None.
        metrics_source: where ``metrics`` came from (``"metrics.json"`` or the caller's label), or None.
        promoted: whether ``PROMOTED`` names this version.
    """

    version: str
    path: Path
    weights_sha256: str
    created: str
    objective: str | None
    step: int | None
    train_summary: dict[str, Any]
    data_sha256: str | None
    metrics: dict[str, Any] | None
    metrics_source: str | None
    promoted: bool

    @property
    def complete(self) -> bool:
        """True unless the checkpoint is known to stop before its training's last step."""
        steps = self.train_summary.get("steps")
        return self.step is None or steps is None or self.step >= steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the path as a string, plus ``complete``)."""
        return dict(asdict(self), path=str(self.path), complete=self.complete)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version_key(name: str) -> tuple:
    """Natural order: v2 < v10, and v001 < v001-gan < v001-vae < v002."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def _read_json(path: Path, what: str) -> dict | None:
    """A JSON object from ``path``; None when absent; ModelError when unreadable or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{what} {path} is not valid JSON: {err}", str(path)) from err
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} must hold a JSON object, got {type(data).__name__}", str(path))
    return data


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def weights_sha256(model_dir: Path) -> str:
    """sha256 (hex) of ``model_dir/weights.safetensors``, read in 1 MiB blocks; ModelError if missing."""
    path = Path(model_dir) / WEIGHTS_FILE
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise ModelError(f"checkpoint weights {path} are missing", str(path)) from None
    except OSError as err:
        raise ModelError(f"cannot read checkpoint weights {path}: {err.strerror or err}", str(path)) from None
    return digest.hexdigest()


def _verify_weights(model_dir: Path, expected: str, against: str = META_FILE) -> None:
    """ModelError unless the weights in ``model_dir`` hash to ``expected``."""
    found = weights_sha256(model_dir)
    if found != expected:
        raise ModelError(
            f"{Path(model_dir) / WEIGHTS_FILE} sha256 {found[:12]}... does not match {against} "
            f"({str(expected)[:12]}...): tampered with or corrupted", str(model_dir))


def _check_root(models_root: Path) -> Path:
    models_root = Path(models_root)
    if not models_root.is_dir():
        raise ModelError(f"no model registry at {models_root}: train a model first (`lensforge train`)",
                         str(models_root))
    return models_root


def is_plain_version(name: object) -> bool:
    """Whether ``name`` can be a version of a registry: a plain directory name, no path (``..``, ``/``)."""
    return isinstance(name, str) and VERSION_NAME.fullmatch(name) is not None and ".." not in name


def _inside(models_root: Path, model_dir: Path) -> bool:
    """Whether ``model_dir`` (symlinks resolved) is a direct sub-directory of the registry."""
    return model_dir.resolve().parent == models_root.resolve()


def _candidate_dirs(models_root: Path) -> list[Path]:
    """Sub-directories holding a ``meta.json`` or weights (others, e.g. a training before its first checkpoint, are not
    versions)."""
    return [p for p in models_root.iterdir()
            if p.is_dir() and is_plain_version(p.name) and _inside(models_root, p)
            and ((p / META_FILE).exists() or (p / WEIGHTS_FILE).exists())]


def _objective(version: str, settings: dict | None, meta: dict) -> str | None:
    for source in (settings or {}, meta):
        objective = (source.get("train_settings") or {}).get("objective")
        if objective:
            return str(objective)
    suffix = version.rsplit("-", 1)[1] if "-" in version else None
    if suffix in OBJECTIVES:
        return suffix
    return "hybrid" if re.fullmatch(r"v\d+", version) else None


def read_metrics(model_dir: Path, weights_sha: str | None = None) -> dict[str, Any] | None:
    """The metrics recorded by :func:`record_metrics` in ``model_dir``, or None.

    Metrics recorded for other weights (a retrained model) are stale: a :class:`RegistryWarning`
    is issued and None returned.
    """
    path = Path(model_dir) / METRICS_FILE
    data = _read_json(path, "model metrics")
    if data is None:
        return None
    if data.get("format") != METRICS_FORMAT or not isinstance(data.get("metrics"), dict):
        raise ModelError(f"{path} is not a {METRICS_FORMAT} file", str(path))
    if weights_sha is not None and data.get("weights_sha256") != weights_sha:
        warnings.warn(f"{path} was recorded for other weights; ignoring it (record the metrics again)",
                      RegistryWarning, stacklevel=2)
        return None
    return data["metrics"]


def record_metrics(model_dir: Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` (JSON-able) to ``model_dir/metrics.json`` atomically, tied to the current weights.

    Returns:
        The path written. The file holds ``format``, ``weights_sha256`` (of the weights now on
        disk, checked against ``meta.json``), ``recorded_utc`` and ``metrics``.

    Raises:
        ModelError: not a readable checkpoint, or weights that do not match ``meta.json``.
    """
    model_dir = Path(model_dir)
    meta = _read_meta(model_dir / META_FILE)
    _verify_weights(model_dir, meta.get("weights_sha256"))
    record = {"format": METRICS_FORMAT, "weights_sha256": meta["weights_sha256"], "recorded_utc": _utc_now(),
              "metrics": dict(metrics)}
    try:
        text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ModelError(f"metrics for {model_dir} are not JSON-able: {err}", str(model_dir)) from None
    atomic_write_text(model_dir / METRICS_FILE, text)
    return model_dir / METRICS_FILE


def _record(model_dir: Path, promoted: str | None, metrics: Mapping[str, Any] | None,
            metrics_source: str) -> ModelRecord:
    """The record of one version; ModelError if its checkpoint files are missing or foreign (weights not hashed)."""
    meta = _read_meta(model_dir / META_FILE)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"checkpoint weights {weights} are missing", str(weights))
    settings = _read_json(model_dir / SETTINGS_FILE, "training settings")
    train_settings = dict((settings or {}).get("train_settings") or meta.get("train_settings") or {})
    sha = str(meta.get("weights_sha256"))
    own = read_metrics(model_dir, sha)
    given = None if metrics is None else metrics.get(model_dir.name)
    created = meta.get("created_utc") or datetime.fromtimestamp(weights.stat().st_mtime, UTC).isoformat(
        timespec="seconds")
    return ModelRecord(
        version=model_dir.name, path=model_dir, weights_sha256=sha, created=str(created),
        objective=_objective(model_dir.name, settings, meta),
        step=int(meta["step"]) if meta.get("step") is not None else None,
        train_summary={k: train_settings[k] for k in SUMMARY_KEYS if k in train_settings},
        data_sha256=(settings or {}).get("data_sha256") or meta.get("data_sha256"),
        metrics=own if own is not None else (dict(given) if given is not None else None),
        metrics_source=METRICS_FILE if own is not None else (metrics_source if given is not None else None),
        promoted=model_dir.name == promoted,
    )


def promoted_version(models_root: Path) -> str | None:
    """The version ``PROMOTED`` names, or None when nothing is promoted; ModelError if the file is damaged."""
    record = _read_promoted(Path(models_root))
    return None if record is None else record["version"]


def _read_promoted(models_root: Path) -> dict | None:
    path = models_root / PROMOTED_FILE
    record = _read_json(path, "promotion record")
    if record is not None and not (isinstance(record.get("version"), str)
                                   and isinstance(record.get("weights_sha256"), str)):
        raise ModelError(f"promotion record {path} lacks version / weights_sha256; promote again "
                         f"(`{PROMOTE_COMMAND}`)", str(path))
    if record is not None and not is_plain_version(record["version"]):
        raise ModelError(f"promotion record {path} names version {record['version']!r:.80}, not a version "
                         f"directory of {models_root}; promote again (`{PROMOTE_COMMAND}`)", str(path))
    return record


def list_models(models_root: Path, metrics: Mapping[str, Mapping[str, Any]] | None = None,
                metrics_source: str = "caller") -> list[ModelRecord]:
    """Every readable model version in ``models_root``, in natural version order.

    Args:
        models_root: the registry directory (a run's ``models/``).
        metrics: optional metrics by version, used where a version has no ``metrics.json``.
        metrics_source: label recorded in :attr:`ModelRecord.metrics_source` for ``metrics``.

    Directories without ``meta.json`` and weights are not versions and are passed over; a
    damaged or foreign checkpoint is skipped with a :class:`RegistryWarning`. Weights are not
    hashed here (see :func:`resolve_version` and :func:`promote`).

    Raises:
        ModelError: ``models_root`` is not a directory, or ``PROMOTED`` is damaged.
    """
    models_root = _check_root(models_root)
    promoted = promoted_version(models_root)
    records = []
    for model_dir in sorted(_candidate_dirs(models_root), key=lambda p: _version_key(p.name)):
        try:
            records.append(_record(model_dir, promoted, metrics, metrics_source))
        except ModelError as err:
            warnings.warn(f"skipping {model_dir.name}: {err}", RegistryWarning, stacklevel=2)
    return records


def _version_dir(models_root: Path, version: str) -> Path:
    """``models_root/version`` if it is a version directory; else ModelError listing the valid versions."""
    models_root = _check_root(models_root)
    if is_plain_version(version):
        candidate = models_root / version
        if candidate in _candidate_dirs(models_root):
            return candidate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegistryWarning)
        try:
            valid = [r.version for r in list_models(models_root)]
        except ModelError:  # a damaged PROMOTED: the versions are still the directories
            valid = sorted((p.name for p in _candidate_dirs(models_root)), key=_version_key)
    hint = ", ".join(valid) if valid else "none (train one with `lensforge train`)"
    raise ModelError(f"unknown model version {version!r} in {models_root}; valid versions: {hint}", version)


def show_model(models_root: Path, version: str, metrics: Mapping[str, Mapping[str, Any]] | None = None,
               metrics_source: str = "caller") -> dict[str, Any]:
    """Everything known about one version, JSON-ready.

    Returns:
        ``{"record": ModelRecord.to_dict(), "meta": meta.json, "settings": settings.json or None,
        "metrics": ..., "metrics_source": ..., "files": [names in the model directory]}``.

    Raises:
        ModelError: unknown version (the message lists the valid ones) or an unreadable checkpoint.
    """
    model_dir = _version_dir(models_root, version)
    record = _record(model_dir, promoted_version(model_dir.parent), metrics, metrics_source)
    return {
        "record": record.to_dict(),
        "meta": _read_meta(model_dir / META_FILE),
        "settings": _read_json(model_dir / SETTINGS_FILE, "training settings"),
        "metrics": record.metrics,
        "metrics_source": record.metrics_source,
        "files": sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")),
    }


def promote(models_root: Path, version: str, allow_incomplete: bool = False) -> Path:
    """Make ``version`` the one reprocessing uses: verify it, then write ``PROMOTED`` atomically.

    The checkpoint is loaded on the CPU (:func:`~lensforge.models.checkpoint.load_checkpoint`: sha256 of
    the weights against ``meta.json``, safetensors parse, tensor names and shapes), so only a
    usable model is promoted. ``PROMOTED`` holds ``version``, ``weights_sha256``,
    ``promoted_utc`` and ``previous`` (the version promoted before, or None).

    Args:
        models_root: the registry directory.
        version: the version to promote.
        allow_incomplete: promote a checkpoint of an unfinished training (step < steps).

    Returns:
        The path of ``PROMOTED``.

    Raises:
        ModelError: unknown version (valid ones listed), a checkpoint that fails to load or is
            tampered with, or an unfinished training without ``allow_incomplete``.
    """
    model_dir = _version_dir(models_root, version)
    models_root = model_dir.parent
    _, meta = load_checkpoint(model_dir, device="cpu")
    record = _record(model_dir, None, None, "caller")
    if not record.complete and not allow_incomplete:
        raise ModelError(f"{version} is a checkpoint at step {record.step} of {record.train_summary['steps']} "
                         "(training unfinished); finish it with `lensforge train` or allow an incomplete one",
                         version)
    previous = _read_promoted(models_root)
    path = models_root / PROMOTED_FILE
    _write_json(path, {"version": version, "weights_sha256": meta["weights_sha256"], "promoted_utc": _utc_now(),
                       "previous": None if previous is None else previous["version"]})
    return path


def resolve_version(models_root: Path, version: str | None = None) -> Path:
    """The model directory reprocessing must use: ``version`` if given, else the promoted one.

    The weights are hashed and must match ``meta.json``; for the promoted version they must
    also still be the weights that were promoted (a retrained or replaced model must be
    promoted again). There is no implicit default.

    Returns:
        The model directory (load it with :func:`~lensforge.models.checkpoint.load_checkpoint`).

    Raises:
        ModelError: unknown version (valid ones listed), nothing promoted (the message lists the
            versions and the promote command), or weights that do not match their record.
    """
    models_root = _check_root(models_root)
    if version is not None:
        model_dir = _version_dir(models_root, version)
        _verify_weights(model_dir, _read_meta(model_dir / META_FILE).get("weights_sha256"))
        return model_dir
    promoted = _read_promoted(models_root)
    if promoted is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegistryWarning)
            valid = [r.version for r in list_models(models_root)]
        raise ModelError(f"no promoted model in {models_root} (versions: {', '.join(valid) or 'none'}); "
                         f"promote one with `{PROMOTE_COMMAND}` or name a version", str(models_root))
    name = promoted["version"]
    model_dir = models_root / name
    if not (model_dir / META_FILE).is_file() or not _inside(models_root, model_dir):
        raise ModelError(f"promoted version {name!r} is missing from {models_root} (or not inside it); promote another "
                         f"(`{PROMOTE_COMMAND}`)", name)
    meta = _read_meta(model_dir / META_FILE)
    if meta.get("weights_sha256") != promoted["weights_sha256"]:
        raise ModelError(f"{model_dir} changed since it was promoted (meta.json sha256 "
                         f"{str(meta.get('weights_sha256'))[:12]}..., promoted {promoted['weights_sha256'][:12]}...); "
                         f"promote it again (`{PROMOTE_COMMAND}`)", name)
    _verify_weights(model_dir, promoted["weights_sha256"], against=PROMOTED_FILE)
    return model_dir
