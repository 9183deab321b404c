"""Read-ahead: a background thread keeps the next items of an iterator ready, a bounded
number at a time, so reading the next chunk of a file overlaps the work on this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


@contextmanager
def prefetched(source: Iterable[T], depth: int = 1) -> Iterator[Iterator[T]]:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead; its errors
    are raised where the item would have been. Leaving the block stops the thread."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        items = iter(source)
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(_END)
        except BaseException as exc:  # handed to the consumer
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="ciphervec-read-ahead", daemon=True)
    worker.start()

    def consume() -> Iterator[T]:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                continue
        worker.join()
