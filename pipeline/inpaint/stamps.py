"""In-painting stage: fill the store's masked pixels with a method chosen by name.

Methods register in ``INPAINTERS`` (``model``: the VAE-GAN posterior mean with a
per-pixel standard deviation; ``biharmonic``: scikit-image's classical baseline;
``interpolate``: astropy's ``interpolate_replace_nans`` with a Gaussian kernel; ``symmetric``: each
masked pixel takes its point mirror about the stamp's galaxy where that is known, biharmonic
elsewhere, :mod:`lensforge.pipeline.inpaint.symmetry`).
Known pixels are never altered: every method's output is re-composited with the
original on unmasked pixels before it is written. In-painting a store resumes after a
crash chunk by chunk (see :func:`inpaint_store`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from lensforge.catalogs.store import add_image_array, chunk_stored, finalize_store, open_store, write_objects
from lensforge.errors import ConfigError, InputError
from lensforge.layout import ChunkProgress, RunLayout, remove_partial_writes
from lensforge.models.baselines import inpaint_biharmonic, inpaint_interpolate_nans
from lensforge.pipeline.config import RunConfig
from lensforge.pipeline.rundir import require_store
from lensforge.pipeline.stamps.simulate import chunk_ranges

if TYPE_CHECKING:  # torch is imported only by the model method, not by every caller of the baselines
    from lensforge.models.vaegan import VAEGAN

# name → f(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size) -> (mean, std or None)
Inpainter = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def _model_method(images, masks, noise_sigma, model: VAEGAN | None, n_samples: int, seed: int, first_index: int,
                  batch_size: int):
    if model is None:
        raise ConfigError("in-painting method 'model' needs a trained model", None)
    from lensforge.models.inpaint import inpaint_with_model

    device = next(model.parameters()).device
    return inpaint_with_model(model, images, masks, noise_sigma, n_samples=n_samples, seed=seed, device=device,
                              first_index=first_index, batch_size=batch_size)


def _biharmonic_method(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size):
    return inpaint_biharmonic(images, masks), None


def _interpolate_method(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size):
    return inpaint_interpolate_nans(images, masks), None


def _symmetric_method(images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size):
    from lensforge.pipeline.inpaint.symmetry import point_symmetric_fill

    return point_symmetric_fill(images, masks, inpaint_biharmonic(images, masks))[0], None


@functools.lru_cache(maxsize=2)
def _image_inpainter(model_dir: str | None):
    from lensforge.models.image_inpainter import load_image_inpainter

    return load_image_inpainter(model_dir)


def inpaint_with_image_inpainter(images: np.ndarray, masks: np.ndarray, noise_sigma: np.ndarray,
                                 model_dir: str | Path | None = None, batch_size: int = 256,
                                 symmetrise: bool = True, point_symmetric: bool = False) -> np.ndarray:
    """Fill the masked pixels of (N, H, W) background-subtracted stamps with the image in-painter.

    The in-painter of :mod:`lensforge.models.image_inpainter` (``model_dir`` None: the shipped
    weights) at its prior's mean latent, so deterministic: each stamp in units of its own
    ``noise_sigma`` [image units] (the stamps' sky is 0), the model's start fill plus the network's
    correction. Stamps whose sides are not multiples of the network's 16 are mirror-padded. With
    ``symmetrise`` (square stamps) the fill is the mean over the 8 turns and flips of the stamp.
    With ``point_symmetric`` a masked pixel whose mirror about the galaxy's centroid is known takes
    the mirror's value instead, and the network fills the rest
    (:func:`~lensforge.pipeline.inpaint.symmetry.point_symmetric_fill`: for stamps centred on one
    galaxy, it keeps the shear response).

    Returns:
        (N, H, W) float32 filled stamps; known pixels are the input's.
    """
    from lensforge.models.image_inpainter import DOWNSAMPLE, predict_windows, start_fill_of

    model, _ = _image_inpainter(None if model_dir is None else str(model_dir))
    images = np.asarray(images)
    hole = np.asarray(masks) != 0
    n, height, width = images.shape
    symmetrise = symmetrise and height == width
    sigma = np.asarray(noise_sigma, np.float64).reshape(n, 1, 1)
    filled = images.astype(np.float32, copy=True)
    holed = np.flatnonzero(hole.any(axis=(1, 2)))  # stamps without a hole pass through
    x = np.where(hole[holed], 0.0, images[holed] / sigma[holed]).astype(np.float32)
    pad = ((0, 0), (0, -height % DOWNSAMPLE), (0, -width % DOWNSAMPLE))
    x, padded_hole = np.pad(x, pad, mode="reflect"), np.pad(hole[holed], pad, mode="reflect")
    # The mean over the 8 turns and flips of the square (D4): the fill then has no preferred axis, as a
    # shear measurement needs; the network itself is not equivariant. The biharmonic start is (its solve
    # is symmetric), so it is computed once per batch and turned with the stamps.
    transforms = D4 if symmetrise else D4[:1]  # D4[0] is the identity
    for start in range(0, len(holed), batch_size):
        batch = slice(start, start + batch_size)
        start_fill = start_fill_of(x[batch], padded_hole[batch], model.settings.start_fill)
        means = []
        for turns, flip in transforms:
            forward = functools.partial(_d4, turns=turns, flip=flip)
            out, _ = predict_windows(model, forward(x[batch]), forward(padded_hole[batch]), None,
                                     start_fill=None if start_fill is None else forward(start_fill))
            means.append(_d4(out, turns=turns, flip=flip, inverse=True))
        mean = np.mean(means, axis=0)
        rows = holed[batch]
        filled[rows] = np.where(hole[rows], mean[:, :height, :width] * sigma[rows], images[rows])
    if point_symmetric:
        from lensforge.pipeline.inpaint.symmetry import point_symmetric_fill

        filled[holed] = point_symmetric_fill(images[holed], hole[holed], filled[holed])[0]
    return filled


D4 = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def _d4(stack: np.ndarray, turns: int, flip: bool, inverse: bool = False) -> np.ndarray:
    """(B, H, W) turned by ``turns`` quarter turns after an optional left-right flip (or the inverse)."""
    if not inverse:
        stack = stack[:, :, ::-1] if flip else stack
        return np.ascontiguousarray(np.rot90(stack, turns, axes=(1, 2)))
    stack = np.rot90(stack, -turns, axes=(1, 2))
    return np.ascontiguousarray(stack[:, :, ::-1] if flip else stack)


INPAINTERS: dict[str, Inpainter] = {"model": _model_method, "biharmonic": _biharmonic_method,
                                    "interpolate": _interpolate_method, "symmetric": _symmetric_method}


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




def inpainting_key(model: VAEGAN, n_samples: int, seed: int, batch_size: int, model_sha256: str | None) -> str:
    """What decides the bytes of an in-painting: model weights, draws, seed, batching and device kind."""
    digest = hashlib.sha256()
    if model_sha256 is None:  # no checkpoint checksum given: hash the weights themselves
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(model_sha256.encode())
    device = next(model.parameters()).device.type
    digest.update(json.dumps([n_samples, seed, batch_size, device]).encode())
    return digest.hexdigest()[:24]


INPAINT_ARRAYS = ("inpainted", "inpainted_std")


def inpaint_markers(store_path: str | Path, key: str) -> ChunkProgress:
    """The per-chunk done markers of the in-painting ``key`` of ``store_path`` (beside the store)."""
    return RunLayout.of_store(store_path).inpaint_progress(store_path, key)


def inpainting_complete(group) -> bool:
    """Whether an open store holds a finished in-painting (``inpainted`` with ``complete`` true)."""
    return "inpainted" in group and bool(group["inpainted"].attrs.get("complete", False))


def inpaint_store(store_path: str | Path, model: VAEGAN, n_samples: int, seed: int, batch_size: int,
                  progress: bool = True, model_sha256: str | None = None) -> int:
    """Write ``inpainted`` and ``inpainted_std`` for every object of the store; returns objects done.

    ``model_sha256`` (the checkpoint's weights checksum) is recorded in both arrays' attributes:
    the provenance of every pixel the model touched.

    Resumable: each Zarr chunk, once written, gets a done marker (:func:`inpaint_markers`, keyed by
    :func:`inpainting_key`), and a rerun of the same in-painting skips the marked chunks; chunks are
    computed from the object index alone, so the finished arrays hold the bytes of an uninterrupted
    run. Markers of any other in-painting of this store (another model, seed, ...) are dropped first,
    so that one redoes every chunk. Both arrays carry ``complete: false`` until the last chunk is
    written; only then is it set true and the store's metadata consolidated. A store whose
    ``noise_sigma`` is not all finite and > 0 (an unfinished simulation) is refused untouched.
    """
    store_path = Path(store_path)
    # The in-painting arrays are this stage's to (re)write: a lost chunk of them is redone below.
    group = open_store(store_path, mode="r+", rewriting=INPAINT_ARRAYS)
    n_objects = group["images"].shape[0]
    # Refuse an unfinished store (labels still NaN) before touching anything in it.
    sigma = np.asarray(group["noise_sigma"][:], dtype=np.float64)
    unusable = int(np.count_nonzero(~(np.isfinite(sigma) & (sigma > 0))))
    if unusable:
        raise InputError(f"{store_path}: noise_sigma is missing or not > 0 for {unusable} of {n_objects} stamps "
                         "(an unfinished simulation?); nothing was written", str(store_path))
    key = inpainting_key(model, n_samples, seed, batch_size, model_sha256)
    markers = inpaint_markers(store_path, key)
    fresh = not all(name in group for name in ("inpainted", "inpainted_std"))
    for other in markers.directory.parent.glob("*"):
        if (other != markers.directory or fresh) and other.is_dir():  # markers only ever describe the arrays present
            shutil.rmtree(other)
    remove_partial_writes(store_path)  # temporaries of chunk writes a killed run left behind
    attrs = {"model_sha256": model_sha256, "n_samples": n_samples, "seed": seed}
    for name in ("inpainted", "inpainted_std"):
        add_image_array(store_path, name)
        group = open_store(store_path, mode="r+", rewriting=INPAINT_ARRAYS)
        group[name].attrs.update({**attrs, "complete": False})
    ranges = chunk_ranges(n_objects, group["images"].chunks[0])
    for start, stop in ranges:
        if markers.is_done(start, stop) and not all(chunk_stored(group, name, start) for name in INPAINT_ARRAYS):
            markers.marker(start, stop).unlink()  # it vouches for data that is gone (deleted): redo the chunk

    def inpaint_chunk(start: int, stop: int) -> dict[str, np.ndarray]:
        images = np.asarray(group["images"][start:stop])
        masks = np.asarray(group["masks"][start:stop])
        noise_sigma = np.asarray(group["noise_sigma"][start:stop])
        mean, std = inpaint_arrays("model", images, masks, noise_sigma, model, n_samples, seed, start, batch_size)
        return {"inpainted": mean, "inpainted_std": std}

    for start, stop in tqdm(ranges, desc="in-paint", unit="chunk", disable=not progress):
        markers.run(start, stop, lambda: inpaint_chunk(start, stop),  # noqa: B023 - called at once
                    lambda arrays: write_objects(store_path, start, arrays))  # noqa: B023
    for name in ("inpainted", "inpainted_std"):
        group[name].attrs["complete"] = True
    finalize_store(store_path)
    return n_objects


def stamp_inpainter(method: str, model: VAEGAN | None = None, n_samples: int = 8, seed: int = 0,
                    batch_size: int = 256):
    """An in-painting method as the stamp in-painter of :func:`lensforge.pipeline.inpaint.images.inpaint_tile`.

    Window ``k`` of a tile draws its posterior samples from (seed, k), like object ``k`` of a store.
    """
    if method not in INPAINTERS:
        raise ConfigError(f"unknown in-painting method {method!r}; valid: {sorted(INPAINTERS)}", method)

    def inpaint_windows(images, masks, noise_sigma, first_index):
        return inpaint_arrays(method, images, masks, noise_sigma, model, n_samples, seed, first_index, batch_size)

    return inpaint_windows


def inpaint_stage(config: RunConfig, progress: bool = True) -> dict[str, object]:
    """The in-paint stage of a run: the registry's model (:func:`inpainting_model_dir`) fills the run's
    store, then the run's manifest (if the run is complete) is re-checksummed, so a standalone
    in-painting never leaves a stale store checksum. Returns the model directory and the count.
    """
    from lensforge.catalogs.manifest import refresh_manifest
    from lensforge.models.checkpoint import META_FILE, load_checkpoint
    from lensforge.pipeline.generative.training import inpainting_model_dir

    store = require_store(config)
    chosen = inpainting_model_dir(config)
    if not (chosen / META_FILE).is_file():
        raise InputError(f"{chosen}: no trained model; run `lensforge train` first", str(chosen))
    model, meta = load_checkpoint(chosen, device=config.train.device)
    count = inpaint_store(store, model, config.inpaint.n_samples, config.seed, config.inpaint.batch_size,
                          progress=progress, model_sha256=meta["weights_sha256"])
    refresh_manifest(config.run_dir, "inpaint")
    return {"model_dir": str(chosen), "inpainted": count, "store": str(store)}
