"""One error tree for the whole engine.

Every class carries the HTTP status the edge answers with; ``handlers/`` maps them in one
place and never matches on message text.
"""

from __future__ import annotations


class CipherVecError(Exception):
    """Base of every error the engine raises on purpose."""

    status = 500

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail or self.__class__.__name__


class InvalidRequest(CipherVecError):
    """The request is well-formed JSON but asks for something impossible (400)."""

    status = 400


class ValidationFailed(CipherVecError):
    """The payload fails validation: dimensions, counts, encodings, ranges (422)."""

    status = 422

    def __init__(self, detail: str = "", loc: tuple[str | int, ...] = ("body",)) -> None:
        super().__init__(detail)
        self.loc = loc


class Unauthorized(CipherVecError):
    """Missing or unknown API key (401)."""

    status = 401


class KeyRotated(Unauthorized):
    """The index's data key was replaced (a rotation with ``reencrypt``) after this request
    opened the index: what it wrote is sealed under the old key and is not committed (401)."""


class WrongKey(Unauthorized):
    """The ``index_key`` does not open this index (401); detected by AEAD authentication."""


class Forbidden(CipherVecError):
    """The API key is valid but lacks the permission for this call (403)."""

    status = 403


class IndexNotFound(CipherVecError):
    """No such index in the caller's tenant (404)."""

    status = 404


class NotFound(CipherVecError):
    """Some other addressed thing (a user, a route) does not exist (404)."""

    status = 404


class IndexExists(CipherVecError):
    """An index of that name already exists (409)."""

    status = 409


class PayloadTooLarge(CipherVecError):
    """A request or response exceeds a configured or platform size limit (413)."""

    status = 413


class RetryLater(CipherVecError):
    """A refusal that passes: the answer carries ``Retry-After`` (seconds)."""

    default_retry = 1

    def __init__(self, detail: str = "", retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = self.default_retry if retry_after is None else retry_after


class Contention(RetryLater):
    """Concurrent writers kept winning the head; retry later (503 + Retry-After)."""

    status = 503


class TooManyFailures(RetryLater):
    """Too many failed attempts with this API key on this index, or from this address (429 +
    Retry-After)."""

    status = 429
    default_retry = 60


class StorageFull(RetryLater):
    """The store cannot take writes now: disk full, quota, read-only (507 + Retry-After).
    Reads keep working."""

    status = 507
    default_retry = 30


class CorruptObject(CipherVecError):
    """A stored object failed authentication under the right key: tampered or swapped (500)."""

    status = 500


class TrainingFailed(CipherVecError):
    """An explicit training call could not complete (500)."""

    status = 500


class BadSource(CipherVecError):
    """The file cannot be read as the format it claims (422)."""

    status = 422


class IndexBusy(CipherVecError):
    """The index is doing work that must end first (409)."""

    status = 409


class LoadBusy(CipherVecError):
    """Another worker holds this job's lease (409)."""

    status = 409


class LostLease(CipherVecError):
    """Another worker took this job over while it ran (409)."""

    status = 409


class ModelUnavailable(RetryLater):
    """The index's embedding model is not installed on this server (503 + Retry-After)."""

    status = 503
    default_retry = 30
