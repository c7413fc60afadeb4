"""Save and load VAE-GAN checkpoints as ``weights.safetensors`` + ``meta.json``. Never pickle.

Layout of a model directory::

    weights.safetensors   state_dict tensors (CPU, contiguous), safetensors format
    meta.json             format, format_version, model_class, model_settings,
                          weights_sha256, torch_version, plus caller-supplied fields

Loading checks, in order, that the files exist, that ``meta.json`` is ours and of a
version we read, that the weights' sha256 matches (tampering / partial copies), that
safetensors can parse them, and that the tensor names and shapes match the model the
settings describe. Every failure is a one-line :class:`~catalogs.errors.ModelError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch

from catalogs.atomic import atomic_write_bytes, atomic_write_text
from catalogs.errors import ModelError
from models.device import resolve_device
from models.vaegan import VAEGAN, ModelSettings

CHECKPOINT_FORMAT = "lensforge-vaegan"
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"


def write_json_atomic(path: Path, data: dict) -> None:
    """Pretty-printed JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(model: VAEGAN, out_dir: Path, extra_meta: dict | None = None) -> Path:
    """Write ``weights.safetensors`` and ``meta.json`` for ``model`` into ``out_dir``.

    Args:
        model: the model; its tensors are copied to contiguous CPU tensors.
        out_dir: model directory, created if needed. Existing files are replaced.
        extra_meta: JSON-able fields merged into ``meta.json`` (e.g. training step);
            they cannot override the format fields.

    Returns:
        The model directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    blob = safetensors.torch.save(tensors)
    meta = dict(extra_meta or {})
    meta.update(
        format=CHECKPOINT_FORMAT,
        format_version=CHECKPOINT_FORMAT_VERSION,
        model_class=type(model).__name__,
        model_settings=model.settings.to_dict(),
        weights_sha256=hashlib.sha256(blob).hexdigest(),
        torch_version=torch.__version__,
    )
    # Weights first, then the meta that vouches for them: a crash in between leaves a
    # sha256 mismatch that load_checkpoint reports, never a silently wrong model.
    atomic_write_bytes(out_dir / WEIGHTS_FILE, blob)
    write_json_atomic(out_dir / META_FILE, meta)
    return out_dir


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise ModelError(f"checkpoint metadata {meta_path} is missing", str(meta_path))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"checkpoint metadata {meta_path} is not valid JSON: {err}", str(meta_path)) from err
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(
            f"{meta_path} is not a {CHECKPOINT_FORMAT} checkpoint (format {found!r}): foreign checkpoint",
            str(meta_path),
        )
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ModelError(
            f"{meta_path} has format_version {meta.get('format_version')!r}; "
            f"this lensforge reads version {CHECKPOINT_FORMAT_VERSION}",
            str(meta_path),
        )
    if meta.get("model_class") != VAEGAN.__name__:
        raise ModelError(
            f"{meta_path} holds a {meta.get('model_class')!r}, expected {VAEGAN.__name__!r}", str(meta_path)
        )
    return meta


def load_checkpoint(model_dir: Path, device: str | torch.device = "cpu") -> tuple[VAEGAN, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        model_dir: the model directory.
        device: where to put the model (see :func:`models.device.resolve_device`).

    Returns:
        (model in eval mode on ``device``, the ``meta.json`` dict).

    Raises:
        ModelError: missing directory/files, foreign or unsupported metadata, sha256
            mismatch, unparsable weights, or tensors that do not fit the model.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist", str(model_dir))
    meta_path, weights_path = model_dir / META_FILE, model_dir / WEIGHTS_FILE
    meta = _read_meta(meta_path)
    try:
        settings = ModelSettings.from_dict(meta.get("model_settings") or {})
    except (ModelError, TypeError, ValueError) as err:
        raise ModelError(f"{meta_path} has invalid model_settings: {err}", str(meta_path)) from err

    if not weights_path.is_file():
        raise ModelError(f"checkpoint weights {weights_path} are missing", str(weights_path))
    # Hash and parse the same bytes, so the file cannot change between check and use.
    blob = weights_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("weights_sha256"):
        raise ModelError(
            f"{weights_path} sha256 {digest[:12]}... does not match meta.json: tampered with or corrupted",
            str(weights_path),
        )
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as err:  # safetensors raises its own SafetensorError and others
        raise ModelError(f"{weights_path} is not a readable safetensors file: {err}", str(weights_path)) from err

    model = VAEGAN(settings)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{weights_path} does not fit the model: missing tensors {missing[:5]}, unexpected {unexpected[:5]}",
            str(weights_path),
        )
    misshaped = [k for k in expected if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if misshaped:
        k = misshaped[0]
        raise ModelError(
            f"{weights_path} tensor {k!r} has shape {tuple(tensors[k].shape)}, model expects "
            f"{tuple(expected[k].shape)} ({len(misshaped)} mis-shaped)",
            str(weights_path),
        )
    model.load_state_dict(tensors, strict=True)
    return model.to(resolve_device(device)).eval(), meta
