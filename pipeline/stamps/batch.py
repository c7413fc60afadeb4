"""``StampBatch``: the self-checking hand-off between the simulate stage and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensforge.catalogs.schema import COUNTERFACTUAL_SHIFTS, LABEL_ARRAYS
from lensforge.catalogs.store import write_objects
from lensforge.errors import InputError


@dataclass
class StampBatch:
    """Stamps of objects ``start .. start + len(images) - 1``.

    images, noiseless, psf: float32 (n, ny, nx) [adu; psf sums to 1]; masks: uint8
    (n, ny, nx) bitmask; weights: float32 (n, ny, nx) inverse variance [adu^-2], 0 on
    masked pixels; counterfactuals: float32 (n, 4, ny, nx) [adu] or None; labels:
    name → (n,) array, exactly the schema's label names; visibilities: complex64 (n, n_cells) [Jy]
    and visibility_weights: float32 (n, n_cells) [Jy^-2] of radio stamps, or None.
    """

    start: int
    images: np.ndarray
    masks: np.ndarray
    psf: np.ndarray
    labels: dict[str, np.ndarray]
    noiseless: np.ndarray | None = None
    counterfactuals: np.ndarray | None = None
    weights: np.ndarray | None = None
    visibilities: np.ndarray | None = None
    visibility_weights: np.ndarray | None = None
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.weights is None:
            self.weights = inverse_variance_weights(self.masks, self.labels["noise_sigma"])
        if self.images.ndim != 3:
            raise InputError(f"StampBatch.images must be (n, ny, nx), got shape {self.images.shape}",
                             self.images.shape)
        for name in ("masks", "psf", "noiseless", "weights"):
            array = getattr(self, name)
            if array is not None and array.shape != self.images.shape:
                raise InputError(f"StampBatch.{name} has shape {array.shape}, images {self.images.shape}",
                                 array.shape)
        if set(self.labels) != set(LABEL_ARRAYS):
            raise InputError(f"StampBatch.labels must have exactly {sorted(LABEL_ARRAYS)}", sorted(self.labels))
        if self.counterfactuals is not None and self.counterfactuals.shape != (
                n, len(COUNTERFACTUAL_SHIFTS), *self.images.shape[1:]):
            raise InputError(f"StampBatch.counterfactuals has shape {self.counterfactuals.shape}, expected "
                             f"({n}, {len(COUNTERFACTUAL_SHIFTS)}, ny, nx)", self.counterfactuals.shape)
        if (self.visibilities is None) != (self.visibility_weights is None) or (
                self.visibilities is not None and (len(self.visibilities) != n
                                                   or self.visibility_weights.shape != self.visibilities.shape)):
            raise InputError("StampBatch.visibilities and visibility_weights must both be (n, n_cells) or both None",
                             None if self.visibilities is None else self.visibilities.shape)
        wrong = [k for k, v in self.labels.items() if len(v) != n]
        if wrong:
            raise InputError(f"StampBatch labels {wrong} do not have {n} rows", wrong)

    def __len__(self) -> int:
        return len(self.images)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Store array name → values."""
        arrays = {"images": self.images, "masks": self.masks, "psf": self.psf, "weights": self.weights,
                  **self.labels}
        if self.noiseless is not None:
            arrays["noiseless"] = self.noiseless
        if self.counterfactuals is not None:
            arrays["counterfactuals"] = self.counterfactuals
        if self.visibilities is not None:
            arrays["visibilities"] = self.visibilities
            arrays["visibility_weights"] = self.visibility_weights
        return arrays

    def write(self, store_path: str | Path) -> None:
        """Write this batch into its object range of the store."""
        write_objects(store_path, self.start, self.to_arrays())


def inverse_variance_weights(masks: np.ndarray, noise_sigma: np.ndarray) -> np.ndarray:
    """Per-pixel weights [adu^-2]: ``1 / sigma^2`` of each stamp on good pixels, 0 where ``masks`` != 0."""
    sigma = np.asarray(noise_sigma, dtype=np.float64)
    inverse_variance = np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0) ** 2, 0.0).astype(np.float32)
    # Filled in float32 directly: a float64 cube would write twice the bytes and then need another
    # full pass to cast them, a noticeable share of a chunk's simulation time.
    weights = np.zeros(np.shape(masks), dtype=np.float32)
    np.copyto(weights, inverse_variance[:, None, None], where=np.asarray(masks) == 0)
    return weights
