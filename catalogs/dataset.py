"""Downstream import of a lensforge training set: ``catalogs.open(path)``.

One object gives everything a shear-measurement or ML user needs without glue code:
the Zarr store (schema checked on open), the truth catalogue as an astropy Table with
units (and as pandas / pyarrow), the run's manifest, an xarray view and a torch
``Dataset`` of (image, mask, labels) read lazily chunk by chunk.

    from lensforge import catalogs
    ts = catalogs.open("runs/demo/trainset.zarr")
    ts.truth["g1"].unit, len(ts), ts.manifest["seed"]
    loader = torch.utils.data.DataLoader(ts.torch_dataset(labels=("g1", "g2")), batch_size=64)
    radio = ts.visibilities([0, 1])  # radio stamps with radio.stamp_visibilities: uv cells, V, weights
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from lensforge.catalogs.manifest import read_manifest
from lensforge.catalogs.schema import IMAGE_ARRAYS, LABEL_ARRAYS, SCHEMA_VERSION
from lensforge.catalogs.store import open_store, read_labels
from lensforge.catalogs.truth import labels_table
from lensforge.errors import InputError
from lensforge.layout import RunLayout, store_sidecars


class TrainingSet:
    """A lensforge training set opened for reading (see :func:`open_trainset`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.store = open_store(self.path)  # raises InputError for a foreign, damaged or other-version store
        self.schema_version = SCHEMA_VERSION
        self._truth: Table | None = None

    def __len__(self) -> int:
        return int(self.store["images"].shape[0])

    def __repr__(self) -> str:
        return f"TrainingSet({str(self.path)!r}, {len(self)} objects, arrays={self.arrays})"

    @property
    def arrays(self) -> list[str]:
        """Image-like arrays present in the store (``images``, ``masks``, ``psf``, optional ones)."""
        return [name for name in IMAGE_ARRAYS if name in self.store]

    @property
    def run_dir(self) -> Path:
        """The run directory the store lives in."""
        return RunLayout.of_store(self.path).root

    @property
    def truth(self) -> Table:
        """The truth catalogue (astropy Table, units in the column metadata), read from the store's labels."""
        if self._truth is None:
            self._truth = labels_table(read_labels(self.store), meta={"store": str(self.path)})
        return self._truth

    def to_pandas(self):
        """The truth catalogue as a pandas DataFrame (units in ``DataFrame.attrs["units"]``)."""
        frame = self.truth.to_pandas()
        frame.attrs["units"] = {name: str(self.truth[name].unit or "") for name in self.truth.colnames}
        return frame

    def to_arrow(self):
        """The truth catalogue as a pyarrow Table; each field's metadata holds its unit and description."""
        import pyarrow as pa

        fields, columns = [], []
        for name in self.truth.colnames:
            column = np.asarray(self.truth[name])
            fields.append(pa.field(name, pa.from_numpy_dtype(column.dtype),
                                   metadata={"unit": str(self.truth[name].unit or ""),
                                             "description": LABEL_ARRAYS[name].description}))
            columns.append(pa.array(column))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))

    @property
    def manifest(self) -> dict[str, Any] | None:
        """The provenance of the store, or None when it is incomplete.

        A run's store: the run's ``manifest.json`` (config, seed, versions, checksums). A generated
        set ``<name>.zarr``: the ``<name>.json`` written beside it when the set was complete.
        """
        if RunLayout.of_store(self.path).manifest.is_file():
            return read_manifest(self.run_dir)
        sidecar = store_sidecars(self.path)[1]
        if sidecar.is_file():
            try:
                return json.loads(sidecar.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(f"{sidecar}: provenance is not valid JSON", str(sidecar)) from None
        return None

    def visibilities(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """The visibilities of a radio set (``radio.stamp_visibilities``) for objects ``indices`` (default all).

        Returns ``uv_wavelengths`` (n_cells, 2) [wavelengths] of the uv cells (conjugate cells implicit),
        ``samples_per_cell`` (n_cells,) and ``n_samples`` of the track, ``visibilities`` (n, n_cells)
        complex64 [Jy] (each cell's mean, thermal noise included) and ``weights`` (n, n_cells) float32
        [Jy^-2] (inverse variance per real and imaginary part). The stamp's image is their naturally
        weighted dirty image (``lensforge.pipeline.radio.stamp_visibilities.StampVisibilities.dirty``).
        """
        if "visibilities" not in self.store:
            raise InputError(f"{self.path}: no visibilities (radio stamps simulated with radio.stamp_visibilities "
                             "have them)", str(self.path))
        array, attrs = self.store["visibilities"], self.store["visibilities"].attrs
        select = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
        return {"uv_wavelengths": np.asarray(attrs["uv_wavelengths"], dtype=np.float64),
                "samples_per_cell": np.asarray(attrs["samples_per_cell"], dtype=np.int64),
                "n_samples": int(attrs["n_samples"]),
                "visibilities": array.oindex[select, :], "weights": self.store["visibility_weights"].oindex[select, :]}

    def xarray(self):
        """An ``xarray.Dataset`` view (dask-backed, lazy) with the documented dimension names."""
        import xarray as xr

        return xr.open_zarr(self.path, consolidated=True, zarr_format=3)

    def torch_dataset(self, images: str = "images", labels: Sequence[str] = ("g1", "g2"),
                      indices: Sequence[int] | None = None):
        """A torch ``Dataset`` of (image [1, ny, nx] float32, mask [1, ny, nx] bool, labels float32).

        ``images`` may be ``"noiseless"`` or ``"inpainted"`` where present. Reads one Zarr chunk at a
        time and keeps the last one: iterate in order (or shuffle within chunks) for speed.
        """
        unknown = [name for name in labels if name not in LABEL_ARRAYS]
        if unknown:
            raise InputError(f"unknown labels {unknown}; valid: {sorted(LABEL_ARRAYS)}", unknown)
        if images not in self.store:
            raise InputError(f"{self.path}: no array {images!r}; present: {self.arrays}", images)
        return _torch_training_set_class()(self, images, tuple(labels), indices)


@functools.cache
def _torch_training_set_class() -> type:
    """The torch Dataset class, built on first use: opening a store must not pay torch's import."""
    from torch.utils.data import Dataset

    return type("TorchTrainingSet", (_ChunkedStamps, Dataset), {})


class _ChunkedStamps:
    """Stamps of one store array read a Zarr chunk at a time (the torch Dataset protocol)."""

    def __init__(self, training_set: TrainingSet, images: str, labels: tuple[str, ...],
                 indices: Sequence[int] | None):
        self.images, self.masks = training_set.store[images], training_set.store["masks"]
        self.labels = np.stack([np.asarray(training_set.store[name][:], dtype=np.float32) for name in labels],
                               axis=1)
        self.indices = np.arange(len(training_set)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.chunk = int(self.images.chunks[0])
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _chunk_of(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start = index // self.chunk * self.chunk
        if self._cached is None or self._cached[0] != start:
            stop = start + self.chunk
            self._cached = (start, np.asarray(self.images[start:stop]), np.asarray(self.masks[start:stop]))
        return self._cached[1], self._cached[2]

    def __getitem__(self, item: int):
        import torch

        index = int(self.indices[item])
        images, masks = self._chunk_of(index)
        row = index % self.chunk
        return (torch.from_numpy(images[row][None].astype(np.float32)), torch.from_numpy(masks[row][None] != 0),
                torch.from_numpy(self.labels[index]))


def open_trainset(path: str | Path) -> TrainingSet:
    """Open a lensforge training set (Zarr v3) for reading; ``InputError`` names what is wrong."""
    return TrainingSet(path)
