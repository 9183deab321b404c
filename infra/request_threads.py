"""The request threads of ``ciphervec serve``: a job goes to the thread idle the shortest
time (its caches are warmest), and answers its client itself."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("ciphervec.server")


class Workers:
    """Threads that run requests. A job goes to the thread that became idle last (its
    caches are the warmest; one client is served by one thread), or waits in a queue when
    every thread is busy. No futures: a job answers its client itself."""

    def __init__(self, threads: int) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._queued: deque[Callable[[], None]] = deque()
        for n in range(threads):
            worker = _Worker(self)
            self._idle.append(worker)
            threading.Thread(target=worker.run, name=f"ciphervec-request-{n}", daemon=True).start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if not self._idle:
                self._queued.append(job)
                return
            worker = self._idle.pop()
        worker.job = job
        worker.wake.release()

    def _next(self, worker: _Worker) -> Callable[[], None] | None:
        """The next queued job for ``worker``, or ``None`` (and ``worker`` is idle again)."""
        with self._lock:
            if self._queued:
                return self._queued.popleft()
            self._idle.append(worker)
            return None


class _Worker:
    __slots__ = ("pool", "wake", "job")

    def __init__(self, pool: Workers) -> None:
        self.pool = pool
        self.wake = threading.Lock()
        self.wake.acquire()  # released when there is a job
        self.job: Callable[[], None] | None = None

    def run(self) -> None:
        while True:
            self.wake.acquire()
            job = self.job
            while job is not None:
                try:
                    job()
                except Exception:  # a job answers its own errors; the thread must not die
                    log.exception("request job failed")
                job = self.pool._next(self)
