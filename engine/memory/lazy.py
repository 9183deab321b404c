"""Lazy IVF lists: read a run's list objects in parallel and apply them to a partial state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ..codec import run, segment
from ..codec.segment import Segment
from ..store.heads import Head, Heads
from ..timing import stage
from .state import Builder

# Parallel reads of a run's list objects (S3 GETs are latency-bound) when a caller waits;
# the background fill reads with fewer threads, in small batches, so that the requests it
# shares the cores with stay fast.
READERS = 16
FILL_READERS = 2
RUN_BATCH = 256  # lists of a run read at once when it loads whole
FILL_BATCH = 4

Fetched = list[tuple[str, int, Segment]]  # (run name, list number, rows)


def fetch_lists(
    heads: Heads, head: Head, lists: list[tuple[str, int]], readers: int = READERS, held: str | None = None
) -> Fetched:
    """Read, decrypt and decode ``(run name, list)`` objects, in parallel; rows holding codes
    of the ranges named ``held`` (``Layout.held``) come as those codes, not decoded."""

    def fetch(item: tuple[str, int]) -> tuple[str, int, Segment]:
        name, k = item
        return name, k, segment.decode(heads.read(head, run.list_name(name, k)), held)

    if len(lists) <= 1:
        return [fetch(item) for item in lists]
    with stage("io"), ThreadPoolExecutor(max_workers=min(readers, len(lists))) as pool:
        return list(pool.map(fetch, lists))


class InFlight:
    """The list objects being read right now, by any caller in this container: a caller that
    wants a list another is reading (a query racing the background fill of a cold index)
    waits for that read instead of reading the object again, and reads it itself only if
    that read fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[tuple[object, ...], Future[tuple[str, int, Segment]]] = {}

    def fetch(
        self,
        heads: Heads,
        head: Head,
        lists: list[tuple[str, int]],
        readers: int = READERS,
        held: str | None = None,
    ) -> Fetched:
        """``fetch_lists``, sharing reads in flight (all of one index read with one ``held``)."""
        mine: list[tuple[tuple[str, int], tuple[object, ...], Future[tuple[str, int, Segment]]]] = []
        theirs: list[tuple[tuple[str, int], Future[tuple[str, int, Segment]]]] = []
        with self._lock:
            for item in lists:
                key: tuple[object, ...] = (head.key, head.envelope.uid, *item)
                read = self._reads.get(key)
                if read is None:
                    read = self._reads[key] = Future()
                    mine.append((item, key, read))
                else:
                    theirs.append((item, read))
        try:
            got = fetch_lists(heads, head, [item for item, _, _ in mine], readers, held)
        except BaseException as exc:
            for _, _, read in mine:
                read.set_exception(exc)
            raise
        else:
            for (_, _, read), result in zip(mine, got, strict=True):
                read.set_result(result)
        finally:
            with self._lock:
                for _, key, _ in mine:
                    self._reads.pop(key, None)
        for item, read in theirs:
            try:
                got.append(read.result())
            except Exception:  # their read failed: try it once more here
                got += fetch_lists(heads, head, [item], readers, held)
        return got


def read_run(
    heads: Heads, head: Head, name: str, batch: int = RUN_BATCH, held: str | None = None
) -> Iterator[tuple[int, Segment]]:
    """Every non-empty list of a run, as ``(list number, rows)``, read ``batch`` lists at a
    time as the caller takes them (a whole run at once would be every row decoded)."""
    lists = heads.read_directory(head, name).lists()
    for lo in range(0, len(lists), batch):
        for _, k, rows in fetch_lists(heads, head, [(name, k) for k in lists[lo : lo + batch]], held=held):
            yield k, rows


def apply_lists(builder: Builder, got: Fetched) -> None:
    """Apply fetched lists of the builder's partial runs that it has not loaded yet."""
    assert builder.runs is not None
    for name, k, rows in got:
        run_ = next((r for r in builder.runs if r.name == name), None)
        if run_ is not None:
            builder.apply_list(run_, k, rows)
