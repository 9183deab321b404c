"""In-process key store (tests, throwaway servers)."""

from __future__ import annotations

import copy
import threading

from . import KeyRecord


class MemoryKeyStore:
    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._lock = threading.Lock()

    def put(self, record: KeyRecord) -> None:
        with self._lock:
            self._records[record.key_id] = copy.deepcopy(record)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            rec = self._records.get(key_id)
            return copy.deepcopy(rec) if rec else None

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._records.values() if tenant in (None, r.tenant)]
