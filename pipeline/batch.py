"""``StampBatch``: the self-checking hand-off between the simulate stage and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalogs.errors import InputError
from catalogs.schema import LABEL_ARRAYS
from catalogs.store import write_objects


@dataclass
class StampBatch:
    """Stamps of objects ``start .. start + len(images) - 1``.

    images, noiseless, psf: float32 (n, ny, nx) [adu; psf sums to 1]; masks: uint8
    (n, ny, nx) bitmask; labels: name → (n,) array, exactly the schema's label names.
    """

    start: int
    images: np.ndarray
    masks: np.ndarray
    psf: np.ndarray
    labels: dict[str, np.ndarray]
    noiseless: np.ndarray | None = None
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 3:
            raise InputError(f"StampBatch.images must be (n, ny, nx), got shape {self.images.shape}",
                             self.images.shape)
        for name in ("masks", "psf", "noiseless"):
            array = getattr(self, name)
            if array is not None and array.shape != self.images.shape:
                raise InputError(f"StampBatch.{name} has shape {array.shape}, images {self.images.shape}",
                                 array.shape)
        if set(self.labels) != set(LABEL_ARRAYS):
            raise InputError(f"StampBatch.labels must have exactly {sorted(LABEL_ARRAYS)}", sorted(self.labels))
        wrong = [k for k, v in self.labels.items() if len(v) != n]
        if wrong:
            raise InputError(f"StampBatch labels {wrong} do not have {n} rows", wrong)

    def __len__(self) -> int:
        return len(self.images)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Store array name → values."""
        arrays = {"images": self.images, "masks": self.masks, "psf": self.psf, **self.labels}
        if self.noiseless is not None:
            arrays["noiseless"] = self.noiseless
        return arrays

    def write(self, store_path: str | Path) -> None:
        """Write this batch into its object range of the store."""
        write_objects(store_path, self.start, self.to_arrays())
