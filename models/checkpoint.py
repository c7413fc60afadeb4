"""Save and load VAE-GAN checkpoints as ``weights.safetensors`` + ``meta.json``. Never pickle.

Layout of a model directory::

    weights.safetensors   state_dict tensors (CPU, contiguous), safetensors format
    meta.json             format, format_version, model_class, model_settings,
                          weights_sha256, torch_version, plus caller-supplied fields

Loading checks, in order, that the files exist, that ``meta.json`` is ours and of a
version we read, that the weights' sha256 matches (tampering / partial copies), that
safetensors can parse them, and that the tensor names and shapes match the model the
settings describe. Every failure is a one-line :class:`~lensforge.errors.ModelError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch

from lensforge.atomic import atomic_write_bytes, atomic_write_text
from lensforge.errors import ModelError, one_line
from lensforge.models.device import resolve_device
from lensforge.models.vaegan import VAEGAN, ModelSettings

CHECKPOINT_FORMAT = "lensforge-vaegan"
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"


def _one_line(err: BaseException) -> str:
    # torch's load_state_dict errors span many lines (one per missing or unexpected tensor).
    return one_line(str(err) or type(err).__name__, 200)


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


def update_meta(model_dir: str | Path, fields: dict) -> None:
    """Merge JSON-able ``fields`` into a checkpoint's ``meta.json``, atomically (after training: e.g. the
    uncertainty calibration); the format fields and the weights' checksum cannot change this way."""
    meta = read_meta(model_dir)
    fixed = {"format", "format_version", "model_class", "model_settings", "weights_sha256", "torch_version"}
    if fixed & set(fields):
        raise ModelError(f"update_meta cannot change {sorted(fixed & set(fields))}", sorted(fields))
    meta.update(fields)
    write_json_atomic(Path(model_dir) / META_FILE, meta)


def read_meta(model_dir: str | Path) -> dict:
    """A checkpoint's ``meta.json`` (format checked; ``ModelError`` otherwise) without loading its weights."""
    return _read_meta(Path(model_dir) / META_FILE)


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise ModelError(f"checkpoint metadata {meta_path} is missing", str(meta_path))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"checkpoint metadata {meta_path} is not valid JSON: {_one_line(err)}",
                         str(meta_path)) from err
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
        device: where to put the model (see :func:`lensforge.models.device.resolve_device`).

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
        raise ModelError(f"{meta_path} has invalid model_settings: {_one_line(err)}", str(meta_path)) from err

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
        raise ModelError(f"{weights_path} is not a readable safetensors file: {_one_line(err)}",
                         str(weights_path)) from err

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
    # Brightness-binned factors on the in-painting std (lensforge.models.uncertainty), where fitted.
    model.uncertainty_calibration = meta.get("uncertainty_calibration")
    return model.to(resolve_device(device)).eval(), meta


# -- full training state, for exact resume ---------------------------------------------

STATE_FORMAT = "lensforge-training-state"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_META_FILE = "training_state.json"


def save_training_state(
    out_dir: Path,
    step: int,
    model: VAEGAN,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    meta: dict,
) -> None:
    """Write everything a resumed run needs to continue bit for bit after ``step``.

    ``training_state.safetensors`` holds the model's tensors (discriminator included),
    each optimiser's per-parameter state and each random generator's state;
    ``training_state.json`` holds ``step``, the caller's ``meta`` (settings, data checksum)
    and the tensors' sha256. Tensors first, JSON last (both atomic): the JSON that
    names a step only exists once that step's tensors are complete.
    """
    tensors = {f"model/{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for opt_name, optimizer in optimizers.items():
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optimizer/{opt_name}/{index}/{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    for gen_name, generator in generators.items():
        tensors[f"rng/{gen_name}"] = generator.get_state().contiguous()
    blob = safetensors.torch.save(tensors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / STATE_TENSORS_FILE, blob)
    record = dict(meta, format=STATE_FORMAT, step=int(step), state_sha256=hashlib.sha256(blob).hexdigest())
    write_json_atomic(out_dir / STATE_META_FILE, record)


def read_training_state_meta(out_dir: Path) -> dict | None:
    """``training_state.json`` of ``out_dir``, or None when there is none; a damaged one raises ModelError."""
    path = Path(out_dir) / STATE_META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"training state {path} is not valid JSON: {_one_line(err)}", str(path)) from err
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise ModelError(f"{path} is not a {STATE_FORMAT} file", str(path))
    return meta


def load_training_state(
    out_dir: Path,
    model: VAEGAN,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
) -> dict:
    """Restore what :func:`save_training_state` wrote into live objects; returns the JSON record.

    Raises:
        ModelError: missing, damaged or tampered state, or tensors that do not fit.
    """
    out_dir = Path(out_dir)
    meta = read_training_state_meta(out_dir)
    if meta is None:
        raise ModelError(f"no training state in {out_dir} to resume from", str(out_dir))
    path = out_dir / STATE_TENSORS_FILE
    if not path.is_file():
        raise ModelError(f"training state tensors {path} are missing", str(path))
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("state_sha256"):
        raise ModelError(f"{path} does not match {STATE_META_FILE}: tampered with or corrupted", str(path))
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise ModelError(f"{path} is not a readable safetensors file: {_one_line(err)}", str(path)) from err

    device = next(model.parameters()).device
    model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_state, strict=True)
        for opt_name, optimizer in optimizers.items():
            prefix = f"optimizer/{opt_name}/"
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith(prefix):
                    index, name = key[len(prefix):].split("/", 1)
                    # Adam keeps its step counter on the CPU and its moments next to the parameters.
                    state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
            optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        for gen_name, generator in generators.items():
            generator.set_state(tensors[f"rng/{gen_name}"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise ModelError(f"{path} does not fit this model and optimiser: {_one_line(err)}", str(path)) from err
    return meta


# Fewer optimiser steps than this and a VAE-GAN has not left its first blurry mode: its samples and
# in-paintings are near-identical blobs (a 50-step model draws 40 copies of one galaxy).
MIN_USEFUL_STEPS = 500


def undertrained_message(model_dir: str | Path, meta: dict, min_steps: int = MIN_USEFUL_STEPS) -> str | None:
    """One line (no prefix) saying that the checkpoint in ``model_dir`` is undertrained, or None.

    Undertrained: its ``meta.json`` step is below ``min_steps``, or below its own training's
    ``train_settings.steps`` (a checkpoint taken midway). A checkpoint without a step is not judged.
    """
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    settings = meta.get("train_settings")
    planned = settings.get("steps") if isinstance(settings, dict) else None
    if step < min_steps:
        why = f"only {step} training steps (fewer than {min_steps})"
    elif isinstance(planned, int) and step < planned:
        why = f"a checkpoint at step {step} of its training's {planned}"
    else:
        return None
    return (f"model {model_dir} is {why}: its samples and in-paintings are likely blurry or near-identical; "
            "train longer (train.steps) before trusting them")
