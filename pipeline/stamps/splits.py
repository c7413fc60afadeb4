"""Train / validation / test split of a store, by object index and whole ring pairs.

The training stage fits on objects ``[0, first)``; the held-out objects ``[first, n)``
(``first = split_index``) are never seen in training. The ``split`` label records it per
object: the first half of the held-out objects (rounded to whole pairs) is ``validation``,
the rest ``test``, so downstream users can select either without recomputing the cut.
"""

from __future__ import annotations

import numpy as np

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}  # the ``split`` label (lensforge.catalogs.schema.SPLIT_NAMES)


def split_index(n_objects: int, validation_fraction: float) -> int:
    """First held-out object: ``n_objects * (1 - fraction)`` rounded down to an even index (ring pairs)."""
    first = int(n_objects * (1.0 - validation_fraction))
    first -= first % 2
    return max(2, min(first, n_objects)) if n_objects >= 2 else n_objects


def split_codes(object_ids: np.ndarray, n_objects: int, validation_fraction: float) -> np.ndarray:
    """The ``split`` label (int8: 0 train, 1 validation, 2 test) of each object index."""
    first = split_index(n_objects, validation_fraction)
    held_out = n_objects - first
    first_test = first + 2 * ((held_out + 2) // 4)  # half of the held-out pairs, rounded up
    ids = np.asarray(object_ids, dtype=np.int64)
    codes = np.where(ids < first, SPLIT_CODES["train"],
                     np.where(ids < first_test, SPLIT_CODES["validation"], SPLIT_CODES["test"]))
    return codes.astype(np.int8)
