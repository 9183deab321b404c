"""Brute-force throttling: failed attempts are counted per key (an API key and index, or a
client address), and a key with too many in a window is refused for a while (429 with
Retry-After) before anything is checked. Per process, in memory, bounded; with a DynamoDB
table (``SharedFailureThrottle``) the failures of every container count together."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from decimal import Decimal
from typing import Any

from . import aws

log = logging.getLogger("ciphervec.throttle")


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
                self._lock(key, now + self.lock_seconds)
                times.clear()
            self._failures[key] = times  # most recent last
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def _lock(self, key: Hashable, until: float) -> None:
        self._locked[key] = max(until, self._locked.get(key, 0.0))


class SharedFailureThrottle(FailureThrottle):
    """``FailureThrottle`` whose failures also count in a DynamoDB table, one item per key
    and fixed window, so that Lambda containers count together: a container that records a
    failure past the shared limit locks the key here too (each other container lets at most
    one more failure through before it learns of the lock). Items hold an HMAC-SHA-256 of
    the key under ``secret`` (never an address, key id or index name: without the secret not
    even an IPv4 address can be found by trying them all), a count and a time to live. A
    table that cannot be reached leaves the per-process count in force."""

    def __init__(self, table: str, client: Any = None, secret: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_name = table
        self._client = client
        self._secret = secret.encode()
        self.wall: Callable[[], float] = time.time  # windows shared between hosts: wall time

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else aws.client("dynamodb")

    def item_key(self, key: Hashable) -> str:
        return hmac.new(self._secret, repr(key).encode(), hashlib.sha256).hexdigest()

    def failed(self, key: Hashable) -> None:
        super().failed(key)
        try:
            count = self._count(key)
        except Exception as exc:  # the table is an addition: the local count still holds
            log.warning("shared throttle table unavailable: %s", type(exc).__name__)
            return
        if count > self.limit:
            with self._guard:
                self._lock(key, self.clock() + self.lock_seconds)

    def _count(self, key: Hashable) -> int:
        """Add one failure to the key's current shared window; its count so far."""
        now = self.wall()
        window = int(now // self.window)
        got = self.client.update_item(
            TableName=self.table_name,
            Key={"k": {"S": f"{self.item_key(key)}:{window}"}},
            UpdateExpression="ADD n :one SET expires = :expires",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":expires": {"N": str(int(now + self.window + self.lock_seconds + 60))},
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(Decimal(got["Attributes"]["n"]["N"]))
