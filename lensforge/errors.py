"""Exception types shared by every lensforge layer.

They live in the bottom layer (``catalogs``) so that ``models``, ``pipeline`` and
``flows`` can all raise and catch them without importing upward. Each subclasses
the matching built-in, keeps the offending value, and pickles, so an error raised
on a Dask worker arrives intact in the flow (GalSim ``galsim/errors.py`` style).
"""

from __future__ import annotations

import errno
import os


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


_RESOURCE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
MEMORY_SETTING = "limits.memory_budget_gb"


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception it wraps (``__cause__``, ``__context__``, exception groups), each once."""
    seen: list[BaseException] = []
    pending = [err]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]
    return seen


def _path_in_traceback(err: BaseException) -> str | None:
    """The innermost file path a frame of ``err``'s traceback was working on (a write without a file name)."""
    tb, found = err.__traceback__, None
    while tb is not None:
        for name in ("path", "tmp", "file_path", "filename", "fn", "target", "dest", "store_path"):
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, os.PathLike) or (isinstance(value, str) and value.startswith(os.sep)):
                found = os.fspath(value)
                break
        tb = tb.tb_next
    return found


def resource_error_message(err: BaseException, fallback_path: str | os.PathLike | None = None) -> str | None:
    """One line for a resource error anywhere in ``err``'s chain (a full disk, a permission, a read-only
    file system: naming the path; memory: naming the budget setting), or None when it is not one.

    Dask, Prefect and zarr wrap the ``OSError`` they hit; the chain is walked to find it. Without a
    file name in the error or its traceback, ``fallback_path`` (the run directory) is named.
    """
    for current in _chain(err):
        if isinstance(current, OSError) and current.errno in _RESOURCE_ERRNOS:
            path = current.filename or _path_in_traceback(current)
            # An error raised on a Dask worker arrives without its frames' variables: name the directory
            # the command writes to.
            where = f": {os.fspath(path)}" if path else f" under {os.fspath(fallback_path)}" if fallback_path else ""
            if current.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "free some space and rerun the same command to resume"
            else:
                hint = "fix the permissions or choose another directory (--out), then rerun"
            return f"{_RESOURCE_ERRNOS[current.errno]}{where}; {hint}"
        if isinstance(current, MemoryError):
            return (f"out of memory ({one_line(current, 120) or 'MemoryError'}); lower {MEMORY_SETTING} "
                    "(or the batch and chunk sizes) and rerun the same command to resume")
    return None
