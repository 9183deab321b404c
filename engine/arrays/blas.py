"""One BLAS thread while a pool of our own threads is the parallelism (loads, training writes)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_held = 0
_limit: Any = None


@contextmanager
def one_thread() -> Iterator[None]:
    """Hold the process's BLAS thread pools to one thread inside this block.

    A load encodes in several staging threads at once, and a training's write pass decodes
    lists in sixteen, each a BLAS product per chunk (TurboQuant's rotation). With OpenBLAS's
    own threads under each of them, the cores were oversubscribed and its idle threads spun:
    a 1M-row tq8 ``ciphervec load`` took 25 CPU-s and 14.7 s at two BLAS threads, 21 CPU-s
    and 13.3 s at one; an out-of-core training of those rows 140 CPU-s against 117. The limit is the
    process's (BLAS has no per-thread setting), so it is counted: the first block to enter
    sets it, the last to leave restores what was there.
    """
    global _held, _limit
    with _lock:
        if _held == 0:
            from threadpoolctl import threadpool_limits

            _limit = threadpool_limits(limits=1, user_api="blas")
        _held += 1
    try:
        yield
    finally:
        with _lock:
            _held -= 1
            if _held == 0 and _limit is not None:
                _limit.restore_original_limits()
                _limit = None
