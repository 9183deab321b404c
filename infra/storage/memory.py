"""In-process BlobStore: the fake at every test level, and ``memory://`` for throwaway use."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from ...engine.ports import BlobNotFound, StoreConflict


class MemoryStore:
    """A dict with the conditional-write semantics of S3."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._tags = itertools.count(1)

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        with self._lock:
            if key not in self._data:
                raise BlobNotFound(key)
            data, etag = self._data[key]
        if if_none_match is not None and if_none_match == etag:
            return None
        return data, etag

    def put_if_absent(self, key: str, data: bytes) -> str:
        with self._lock:
            if key in self._data:
                raise StoreConflict(key)
            etag = str(next(self._tags))
            self._data[key] = (bytes(data), etag)
            return etag

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        with self._lock:
            if key not in self._data:
                raise BlobNotFound(key)
            if self._data[key][1] != etag:
                raise StoreConflict(key)
            new = str(next(self._tags))
            self._data[key] = (bytes(data), new)
            return new

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._data if k.startswith(prefix))
        yield from keys

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every stored object (tests scan these for leaked plaintext)."""
        with self._lock:
            snapshot = [(k, v[0]) for k, v in self._data.items()]
        yield from snapshot
