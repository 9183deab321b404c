"""Keep a process fast under load and its resident memory close to what it holds when idle
(glibc only).

Request bodies and segment buffers are a few MB each. Sent to mmap (a low mmap threshold),
each one is fresh pages the kernel must fault in and zero on first touch, and unmaps on
free: on this 2-core VM that was ~0.5 s of CPU per 50,000 ingested vectors (a third of an
upsert's cost) and page faults inside faiss's searches too. So buffers up to 64 MiB come
from the heap, which keeps (up to 128 MiB of) freed memory for the next request instead of
returning it at once; ``release()`` returns it — after large operations (training), and
from ``ciphervec serve`` once it has been idle for a couple of seconds — so a process that
has settled holds what its indexes hold, not the peak of its last burst of requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ciphervec.memory")

_M_TRIM_THRESHOLD = -1
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


def tune(mmap_threshold: int = 64 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Fix the mmap and trim thresholds (call once at start-up). False where not glibc."""
    lib = _glibc()
    if lib is None:
        return False
    ok = bool(lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        lib.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    log.debug("malloc mmap threshold %d, trim threshold %d: %s", mmap_threshold, trim_threshold, ok)
    return ok


def release() -> None:
    """Return free heap memory to the OS."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
