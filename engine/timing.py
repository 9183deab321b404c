"""Where a request's time goes: named stages (auth, store, crypto, decode, search, embed)
timed on the request's thread, and ``io``: the time it waits for objects read or written
by helper threads in parallel (their store, crypto and decode together) — for
Server-Timing, metrics and the request log; and what the process did: counted events
(cache hits and misses, rows, bytes, trainings, merges)."""

from __future__ import annotations

import threading
import time
from collections import Counter

STAGES = ("auth", "store", "crypto", "decode", "search", "embed", "io")
_local = threading.local()
_events: Counter[str] = Counter()
_events_lock = threading.Lock()


def event(name: str, n: int = 1) -> None:
    """Count ``n`` of a process-wide event (from any thread, in or out of a request)."""
    with _events_lock:
        _events[name] += n


def count(**n: int) -> None:
    """Count several events at once (one lock for all of them)."""
    with _events_lock:
        _events.update(n)


def events() -> dict[str, int]:
    """Every event counted so far in this process."""
    with _events_lock:
        return dict(_events)


def begin() -> None:
    """Start timing this thread's request."""
    _local.spent = {}


def end() -> dict[str, float]:
    """Stop timing; seconds spent in each stage (stages not entered are absent)."""
    spent: dict[str, float] = getattr(_local, "spent", None) or {}
    _local.spent = None
    return spent


class stage:  # noqa: N801 - used as a function: ``with stage("store"): ...``
    """Count the time inside as ``name`` (outside a request, or inside another stage of the
    same request, it counts nothing: stages never overlap). A class rather than a
    generator-based context manager: it is entered several times per request."""

    __slots__ = ("name", "spent", "started")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        spent = getattr(_local, "spent", None)
        if spent is None or getattr(_local, "inside", False):
            self.spent = None
            return
        _local.inside = True
        self.spent = spent
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = self.spent
        if spent is not None:
            _local.inside = False
            spent[self.name] = spent.get(self.name, 0.0) + time.perf_counter() - self.started
