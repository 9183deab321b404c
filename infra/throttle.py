"""Brute-force throttling: failed attempts are counted per key (an API key and index, or a
client address), and a key with too many in a window is refused for a while (429 with
Retry-After) before anything is checked. Per process, in memory, bounded."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable


class FailureThrottle:
    """At most ``limit`` failures per key within ``window`` seconds; one more locks the key
    for ``lock_seconds``. Other keys are never affected."""

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        lock_seconds: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.lock_seconds, self.max_keys = limit, window, lock_seconds, max_keys
        self.clock = clock
        self._failures: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._locked: dict[Hashable, float] = {}
        self._guard = threading.Lock()

    def retry_after(self, key: Hashable) -> int:
        """Seconds ``key`` stays refused (0: not refused)."""
        with self._guard:
            until = self._locked.get(key)
            if until is None:
                return 0
            left = until - self.clock()
            if left <= 0:
                del self._locked[key]
                return 0
            return max(1, int(left + 0.999))

    def failed(self, key: Hashable) -> None:
        """Count one failure of ``key``; past the limit it is locked."""
        now = self.clock()
        with self._guard:
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) > self.limit:
                self._locked[key] = now + self.lock_seconds
                times.clear()
            self._failures[key] = times  # most recent last
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
