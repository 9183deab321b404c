"""The ports the engine needs from the outside world, and their error types.

Adapters live in ``ciphervec.infra``; the memory store is the fake at every test level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .model import JobResult


class StoreError(Exception):
    """Base of storage failures an adapter translates vendor errors into."""


class BlobNotFound(StoreError):
    """The object does not exist."""


class StoreConflict(StoreError):
    """A conditional write lost the race (S3 412 or 409, an existing file, a changed tag)."""


class BlobStore(Protocol):
    """A flat key → bytes store with the two conditional writes the commit protocol needs.

    Keys are ``/``-separated paths. ``etag`` is an opaque version tag.
    """

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """Return ``(data, etag)``; ``None`` when ``if_none_match`` equals the current tag.

        Raises ``BlobNotFound`` when the object is absent.
        """
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create ``key``; raise ``StoreConflict`` if it exists. Returns the new etag."""
        ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace ``key`` only if its tag is still ``etag``; else ``StoreConflict``."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key starting with ``prefix``."""
        ...


class JobQueue(Protocol):
    """Where the background jobs of an index go (an in-process worker, or TrainFunction):
    ``kind`` is ``train``, ``merge`` or ``reencrypt``."""

    def enqueue(self, tenant: str, index_name: str, kek: bytes | None, kind: str = "train") -> None: ...


class JobRunner(JobQueue, Protocol):
    """A job queue that can also run a job while its caller waits (an explicit train, the
    rewrite after a rotation): the result when it ends within ``wait_seconds``, else
    ``None`` while it goes on in the background."""

    def run(
        self,
        tenant: str,
        index_name: str,
        kek: bytes | None,
        kind: str = "train",
        params: dict[str, Any] | None = None,
        wait_seconds: float = 0.0,
    ) -> JobResult | None: ...


class KeyWrapper(Protocol):
    """Server-managed key encryption (AWS KMS in production, a local key file otherwise)."""

    def wrap(self, key_name: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt a small secret under the named master key, bound to ``context``."""
        ...

    def unwrap(self, key_name: str, blob: bytes, context: dict[str, str]) -> bytes:
        """Decrypt what ``wrap`` produced; raise ``WrongKey`` when it does not open."""
        ...
