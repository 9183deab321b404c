"""Keep a long-running process's resident memory close to what it holds (glibc only).

Request bodies and segment buffers are a few MB each: under glibc's dynamic mmap
threshold they land on the heap and, once freed, stay resident as fragments. A fixed
1 MiB threshold sends such buffers to mmap (returned to the OS on free), and
``release()`` trims what the heap still keeps after large operations (training).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ciphervec.memory")

_M_MMAP_THRESHOLD = -3
_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if not name:
            return None
        try:
            lib = ctypes.CDLL(name)
            lib.mallopt  # noqa: B018 - probe: glibc only
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def tune(mmap_threshold: int = 1 << 20) -> bool:
    """Fix the mmap threshold (call once at start-up). False where not glibc."""
    lib = _glibc()
    if lib is None:
        return False
    ok = bool(lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    log.debug("malloc mmap threshold %d: %s", mmap_threshold, ok)
    return ok


def release() -> None:
    """Return free heap memory to the OS."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
