"""Pick the torch device a model runs on.

Every entry point (training, in-painting, sampling) takes a device *name* and resolves
it here, so "auto" means the same thing everywhere and a missing GPU fails with one
clear :class:`~lensforge.errors.ModelError` instead of a deep CUDA traceback.
"""

from __future__ import annotations

import torch

from lensforge.errors import ModelError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks ``cuda`` when a GPU is visible and ``cpu`` otherwise.

    Raises:
        ModelError: CUDA was requested but is not available, the GPU index does not
            exist, or the name is not a device torch knows.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"unknown device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'", name) from err
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModelError(f"unsupported device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'", name)
    if not torch.cuda.is_available():
        raise ModelError(f"device {name!r} requested but CUDA is not available", name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist", name)
    return device
