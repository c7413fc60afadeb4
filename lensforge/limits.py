"""The memory budget: every input is sized before it is read or allocated.

A hostile or mistaken input (a compressed FITS of 30000² pixels, ``simulation.n_objects`` of a
trillion, a symlink to ``/dev/zero``) must fail in one line before it eats the machine, not after.
Callers compute what an operation would hold in memory from headers and counts alone and call
:func:`check_memory`; the budget is the run's ``limits.memory_budget_gb`` (default 4 GB).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lensforge.errors import InputError

DEFAULT_MEMORY_BUDGET_GB = 4.0
BUDGET_SETTING = "limits.memory_budget_gb"


class MemoryBudgetError(InputError):
    """An input would need more memory than the budget allows."""


def check_memory(nbytes: float, what: str, budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> None:
    """``MemoryBudgetError`` when ``what`` would hold ``nbytes`` bytes, more than ``budget_gb`` GB.

    Args:
        nbytes: bytes the operation would allocate, computed from headers or counts.
        what: what is being sized, as the user named it (a file, a setting).
        budget_gb: the budget [GB, 1e9 bytes].
    """
    if nbytes > budget_gb * 1e9:
        raise MemoryBudgetError(f"{what}: needs {nbytes / 1e9:.3g} GB, over the memory budget of {budget_gb:g} GB "
                                f"(raise {BUDGET_SETTING} if the machine has it)", what)


def check_regular_file(path: str | Path, what: str | None = None) -> Path:
    """``InputError`` unless ``path`` (after symlinks) is a regular file: FIFOs, devices and sockets
    would block or never end when read."""
    path = Path(path)
    label = what or str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{label}: no such file", str(path)) from None
    except OSError as err:
        raise InputError(f"{label}: cannot read ({err.strerror or err})", str(path)) from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{label}: not a regular file (a FIFO, device or socket cannot be read as data)", str(path))
    return path


# glibc's malloc: blocks above M_MMAP_THRESHOLD are mapped afresh on every allocation, and free memory at
# the heap's top above M_TRIM_THRESHOLD is handed back to the kernel. Batched torch rendering allocates and
# frees tens of MB of intermediates per batch, so by default every batch page-faults its memory in again,
# and two threads faulting at once serialise on the kernel's page-table lock: measured on 2 cores, the torch
# renderer ran 1550-1620 stamps/s with the defaults and 2000-2160 with these values. What the process keeps
# is bounded by the trim threshold (256 MB), well inside the 4 GB budget.
_MMAP_THRESHOLD_BYTES = 64 << 20
_TRIM_THRESHOLD_BYTES = 256 << 20
_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 64 MB from its heap and to keep up to 256 MB of freed heap for
    reuse (process-wide, once). Returns whether it applied (False off glibc, e.g. macOS or musl)."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    _allocator_tuned = bool(mallopt(m_mmap_threshold, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(m_trim_threshold, _TRIM_THRESHOLD_BYTES))
    return _allocator_tuned
