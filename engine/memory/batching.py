"""Concurrent single-vector queries on one index become one batch search.

While fewer searches run than there are slots (one per core), a query runs at once: an
idle server adds no wait. Otherwise it queues; each running search, once done, takes the
queued queries that can share a search (same index, ``top_k``, ``n_probes`` and filter)
and runs them as one batch — faiss answers a batch for a fraction of the per-query cost,
and a batch is what feeds a GPU — then hands each its own rows.

The queue waiting longest is served first (serving the longest queue first starved queries
of a snapshot that writes had since replaced: p99 of 5 s under a mixed load). A batch runs
on the newest snapshot any of its queries was given (``version``: the last sequence number
applied, then the order of creation): every write a query must see is in it, and writes
acknowledged while it waited may be too. Creation order alone is not enough: a reader that
opened an older head just before a merge renamed the segments syncs a fresh snapshot from
that head, later in creation than a writer's snapshot that already holds its newest write.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

MAX_BATCH = 64

Hits = list[Any]  # one (rows, distances) pair per query
Search = Callable[[list[Any]], Hits]  # query vectors (1, d) each → their hits, in order


@dataclass
class _Waiting:
    vector: Any
    done: threading.Event = field(default_factory=threading.Event)
    hits: Any = None
    error: BaseException | None = None


class Batcher:
    """Gathers concurrent searches that can share one batch."""

    def __init__(self, slots: int | None = None) -> None:
        self.slots = slots or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._running = 0
        self._queues: dict[Hashable, list[_Waiting]] = {}  # in the order they began waiting
        self._searches: dict[Hashable, tuple[Any, Search]] = {}  # the newest version's search
        self.batches = 0  # searches that served more than one query (for tests and metrics)

    def search(self, key: Hashable, vector: Any, run: Search, version: Any = 0, scan: bool = False) -> Any:
        """The hits of ``vector`` (one query, shape (1, d)); ``run`` searches a list of them
        over a snapshot of ``version``. Queries with equal ``key`` may be answered by one
        call of the ``run`` of the newest version among them. A ``scan`` (an exact search
        over every row) runs alone: it is bound by memory bandwidth, so a second scan at
        the same time only halves the speed of both, where a bigger batch costs almost
        nothing more (mixed load on 20k untrained rows: 150 -> 210 queries/s)."""
        with self._lock:
            if self._running >= (1 if scan else self.slots):
                waiting = _Waiting(vector)
                self._queues.setdefault(key, []).append(waiting)
                newest = self._searches.get(key)
                if newest is None or version > newest[0]:
                    self._searches[key] = (version, run)
            else:
                waiting = None
                self._running += 1
        if waiting is not None:
            waiting.done.wait()
            if waiting.error is not None:
                raise waiting.error
            return waiting.hits
        try:
            return run([vector])[0]
        finally:
            self._serve_queued()

    def _serve_queued(self) -> None:
        """Run what queued while this slot was busy, batch by batch, then free the slot."""
        while True:
            with self._lock:
                if not self._queues:
                    self._running -= 1
                    return
                key = next(iter(self._queues))  # waiting longest
                queue = self._queues.pop(key)
                batch, rest = queue[:MAX_BATCH], queue[MAX_BATCH:]
                run = self._searches[key][1]
                if rest:
                    self._queues[key] = rest  # behind the others now: they waited longer
                else:
                    del self._searches[key]
            if len(batch) > 1:
                self.batches += 1
            try:
                for waiting, hits in zip(batch, run([w.vector for w in batch]), strict=True):
                    waiting.hits = hits
            except BaseException as exc:  # each waiting query reports it to its caller
                for waiting in batch:
                    waiting.error = exc
            for waiting in batch:
                waiting.done.set()
