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
