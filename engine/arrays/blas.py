"""BLAS settings: the kernels faiss's OpenBLAS runs, and one BLAS thread while a pool of our
own threads is the parallelism (loads, training writes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# OpenBLAS kernel sets by the CPU features they need, best first (names OpenBLAS 0.3.15 knows).
KERNELS = (
    ("SkylakeX", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}),
    ("Haswell", {"avx2", "fma"}),
    ("SandyBridge", {"avx"}),
)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where it does not)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def kernel_for(flags: set[str]) -> str | None:
    """The best OpenBLAS kernel set a CPU of these features runs (None: leave it to OpenBLAS)."""
    return next((name for name, needs in KERNELS if needs <= flags), None)


@contextmanager
def kernels_named(flags: set[str] | None = None) -> Iterator[str | None]:
    """Inside this block, ``OPENBLAS_CORETYPE`` names the kernels for this CPU's features
    (unless it is set already): load faiss here, and the OpenBLAS its wheel bundles runs them.

    That copy (0.3.15 in faiss-cpu 1.15.1, the newest wheel) knows CPUs by model number,
    and one it does not know falls back to its generic SSE3 kernels ("Prescott"; OpenBLAS
    issue 4267, fixed in 0.3.25): on this box's Xeon, placing 1,000 rows in their nearest of 4,096 lists took
    100 ms on one thread instead of 22, and k-means ran 4x slower. The variable is
    OpenBLAS's only way to name the kernels, read once as it loads; numpy's newer OpenBLAS,
    loaded already, keeps its own choice. Kernels are picked from the flags the CPU
    reports, so none it lacks is run; the variable is taken back after the block, so
    processes started later choose for themselves.
    """
    given = os.environ.get("OPENBLAS_CORETYPE")
    if given:
        yield given
        return
    name = kernel_for(cpu_flags() if flags is None else flags)
    if name is None:
        yield None
        return
    os.environ["OPENBLAS_CORETYPE"] = name
    try:
        yield name
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)


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
