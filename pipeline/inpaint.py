"""In-painting stage: fill the store's masked pixels with a method chosen by name.

Methods register in ``INPAINTERS`` (``model``: the VAE-GAN posterior mean with a
per-pixel standard deviation; ``biharmonic``: scikit-image's classical baseline;
``interpolate``: astropy's ``interpolate_replace_nans`` with a Gaussian kernel).
Known pixels are never altered: every method's output is re-composited with the
original on unmasked pixels before it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from catalogs.errors import ConfigError
from catalogs.store import add_image_array, finalize_store, open_store, write_objects
from models.baselines import inpaint_biharmonic, inpaint_interpolate_nans
from pipeline.simulate import chunk_ranges

if TYPE_CHECKING:  # torch is imported only by the model method, not by every caller of the baselines
    from models.vaegan import VAEGAN

# name → f(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size) -> (mean, std or None)
Inpainter = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def _model_method(images, masks, noise_sigma, model: VAEGAN | None, n_samples: int, seed: int, first_index: int,
                  batch_size: int):
    if model is None:
        raise ConfigError("in-painting method 'model' needs a trained model", None)
    from models.inpaint import inpaint_with_model

    device = next(model.parameters()).device
    return inpaint_with_model(model, images, masks, noise_sigma, n_samples=n_samples, seed=seed, device=device,
                              first_index=first_index, batch_size=batch_size)


def _biharmonic_method(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size):
    return inpaint_biharmonic(images, masks), None


def _interpolate_method(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size):
    return inpaint_interpolate_nans(images, masks), None


INPAINTERS: dict[str, Inpainter] = {"model": _model_method, "biharmonic": _biharmonic_method,
                                    "interpolate": _interpolate_method}


def inpaint_arrays(method: str, images: np.ndarray, masks: np.ndarray, noise_sigma: np.ndarray,
                   model: VAEGAN | None = None, n_samples: int = 8, seed: int = 0,
                   start_index: int = 0, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """In-paint (n, ny, nx) ``images`` where ``masks`` != 0; known pixels are returned bit-identical.

    ``seed`` and ``start_index`` make the model's posterior draws depend only on the
    object index, not on the chunking.
    """
    try:
        inpainter = INPAINTERS[method]
    except KeyError:
        raise ConfigError(f"unknown in-painting method {method!r}; valid: {sorted(INPAINTERS)}", method) from None
    mean, std = inpainter(images, masks, noise_sigma, model, n_samples, seed, start_index, batch_size)
    known = masks == 0
    mean = np.where(known, images, mean).astype(np.float32)
    if std is not None:
        std = np.where(known, np.float32(0), std).astype(np.float32)
    return mean, std


def inpaint_store(store_path: str | Path, model: VAEGAN, n_samples: int, seed: int, batch_size: int,
                  progress: bool = True, model_sha256: str | None = None) -> int:
    """Write ``inpainted`` and ``inpainted_std`` for every object of the store; returns objects done.

    ``model_sha256`` (the checkpoint's weights checksum) is recorded in both arrays' attributes:
    the provenance of every pixel the model touched.
    """
    group = open_store(store_path, mode="r+")
    n_objects = group["images"].shape[0]
    for name in ("inpainted", "inpainted_std"):
        add_image_array(store_path, name)
        group = open_store(store_path, mode="r+")
        group[name].attrs.update({"model_sha256": model_sha256, "n_samples": n_samples, "seed": seed})
    ranges = chunk_ranges(n_objects, group["images"].chunks[0])
    for start, stop in tqdm(ranges, desc="in-paint", unit="chunk", disable=not progress):
        images = np.asarray(group["images"][start:stop])
        masks = np.asarray(group["masks"][start:stop])
        noise_sigma = np.asarray(group["noise_sigma"][start:stop])
        mean, std = inpaint_arrays("model", images, masks, noise_sigma, model, n_samples, seed, start, batch_size)
        write_objects(store_path, start, {"inpainted": mean, "inpainted_std": std})
    finalize_store(store_path)
    return n_objects


def stamp_inpainter(method: str, model: VAEGAN | None = None, n_samples: int = 8, seed: int = 0,
                    batch_size: int = 256):
    """An in-painting method as the stamp in-painter of :func:`pipeline.tile_inpaint.inpaint_tile`.

    Window ``k`` of a tile draws its posterior samples from (seed, k), like object ``k`` of a store.
    """
    if method not in INPAINTERS:
        raise ConfigError(f"unknown in-painting method {method!r}; valid: {sorted(INPAINTERS)}", method)

    def inpaint_windows(images, masks, noise_sigma, first_index):
        return inpaint_arrays(method, images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size)

    return inpaint_windows
