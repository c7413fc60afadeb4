"""Process-wide memory settings of lensforge.limits."""

import platform

import pytest

from lensforge.limits import keep_freed_memory


def test_keep_freed_memory_applies_once_on_glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
