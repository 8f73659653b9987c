"""Keep freed tensor memory in the process on Linux/glibc (an opt-in shell setting).

PyTorch's CPU allocator hands every tensor to ``malloc``; glibc serves blocks above a
(dynamic) threshold with fresh ``mmap`` pages and returns them on free, so a training
step that allocates the same large tensors every time page-faults on all of them. Raising
the mmap and trim thresholds keeps that memory in the heap for reuse: fewer page faults,
steadier step times. The CLI and the benchmarks call :func:`keep_freed_memory` at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit systems


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True if applied (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global _applied
    _applied = bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
    )
    return _applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _applied


_applied = False
