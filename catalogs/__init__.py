"""lensforge products: training-set schema, Zarr store, truth catalogue, manifest, export.

``lensforge.catalogs.open(path)`` opens a training set for downstream use (see ``lensforge.catalogs.dataset``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainingSet", "open", "open_trainset"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): importing the package should not pay for zarr and astropy.
    if name in __all__:
        from lensforge.catalogs import dataset

        return {"TrainingSet": dataset.TrainingSet, "open": dataset.open_trainset,
                "open_trainset": dataset.open_trainset}[name]
    raise AttributeError(f"module 'lensforge.catalogs' has no attribute {name!r}")
