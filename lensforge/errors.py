"""Exception types shared by every lensforge layer.

They live in the bottom layer (``catalogs``) so that ``models``, ``pipeline`` and
``flows`` can all raise and catch them without importing upward. Each subclasses
the matching built-in, keeps the offending value, and pickles, so an error raised
on a Dask worker arrives intact in the flow (GalSim ``galsim/errors.py`` style).
"""

from __future__ import annotations


class LensforgeError(Exception):
    """Base of all lensforge errors; the CLI prints ``str(err)`` on one line and exits 2."""

    def __init__(self, message: str, value: object = None):
        super().__init__(message, value)
        self.message = message
        self.value = value

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.value))


class ConfigError(LensforgeError, ValueError):
    """A configuration key or value is invalid (names the key and what was expected)."""


class InputError(LensforgeError, ValueError):
    """An input file or array (FITS, Zarr store, catalogue) is missing, damaged or of the wrong form."""


class ModelError(LensforgeError, RuntimeError):
    """A model checkpoint is missing, tampered with, foreign, or incompatible with the data."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` (a message or an exception) on one line: whitespace runs folded to one space, and at
    most ``limit`` characters (``...`` marks a cut). Errors reach users as one line; third-party
    messages (torch, zarr, yaml) often span many."""
    folded = " ".join(str(text).split())
    return folded if limit is None or len(folded) <= limit else folded[:limit - 3] + "..."
