"""Data keys: prove a caller's key (client KEK or KMS) and unwrap the index's data key.

A key that already opened an exact wrapped data key is recognised by its SHA-256, and
KMS answers are kept per wrapped key: both in memory only, like the data keys themselves.
"""

from __future__ import annotations

import base64
import hashlib

from ..codec import crypto
from ..errors import CipherVecError, InvalidRequest, Unauthorized
from ..names import new_id
from ..ports import KeyWrapper
from .manifest import Envelope

_PROOFS = 4096  # remembered (wrapped key, key hash) pairs before the table is cleared


class KeyRing:
    """Unwraps data keys for index heads; wraps fresh ones at create."""

    def __init__(self, key_wrapper: KeyWrapper | None = None) -> None:
        self.key_wrapper = key_wrapper
        self._kms_deks: dict[bytes, bytes] = {}
        self._proven: dict[tuple[bytes, bytes], bytes] = {}

    @staticmethod
    def kms_context(tenant: str, name: str) -> dict[str, str]:
        return {"purpose": "ciphervec-dek", "tenant": tenant, "index": name}

    def seal_for_job(self, kek: bytes, context: dict[str, str]) -> str:
        """A client key sealed under KMS (base64) for an asynchronous job, bound to ``context``:
        it never travels in clear to the function that runs the job."""
        if self.key_wrapper is None:
            raise CipherVecError("asynchronous jobs on client-key indexes need KMS to seal the key")
        return base64.b64encode(self.key_wrapper.wrap("jobs", kek, context)).decode()

    def open_for_job(self, sealed: str, context: dict[str, str]) -> bytes:
        """The client key ``seal_for_job`` sealed, opened with the same ``context``."""
        if self.key_wrapper is None:
            raise CipherVecError("this function has no KMS to open the job's key")
        return self.key_wrapper.unwrap("jobs", base64.b64decode(sealed), context)

    def envelope(
        self, tenant: str, name: str, dek: bytes, kek: bytes | None, kms_name: str | None
    ) -> Envelope:
        """A new head envelope wrapping ``dek`` under exactly one of ``kek`` and ``kms_name``."""
        if (kek is None) == (kms_name is None):
            raise InvalidRequest("give exactly one of index_key and kms_name")
        if kek is not None:
            return Envelope(new_id(), 1, "client", crypto.wrap_data_key(kek, dek, tenant, name))
        if self.key_wrapper is None:
            raise InvalidRequest("kms_name given, but this server has no KMS configured")
        assert kms_name is not None
        wrapped = self.key_wrapper.wrap(kms_name, dek, self.kms_context(tenant, name))
        return Envelope(new_id(), 1, "kms", wrapped, kms_name=kms_name)

    def unwrap(self, tenant: str, name: str, env: Envelope, kek: bytes | None) -> bytes:
        """The data key of ``env``, proving ``kek`` (or asking KMS for server-managed keys)."""
        if kek is not None and env.key_mode == "client":
            proof = (env.wrapped_dek, hashlib.sha256(kek).digest())
            cached = self._proven.get(proof)
            if cached is None:
                cached = self._unwrap_uncached(tenant, name, env, kek)
                if len(self._proven) > _PROOFS:
                    self._proven.clear()
                self._proven[proof] = cached
            return cached
        return self._unwrap_uncached(tenant, name, env, kek)

    def _unwrap_uncached(self, tenant: str, name: str, env: Envelope, kek: bytes | None) -> bytes:
        if env.key_mode == "kms":
            if self.key_wrapper is None or env.kms_name is None:
                raise InvalidRequest("this index uses a server-managed key, but no KMS is configured")
            cached = self._kms_deks.get(env.wrapped_dek)
            if cached is None:
                cached = self.key_wrapper.unwrap(
                    env.kms_name, env.wrapped_dek, self.kms_context(tenant, name)
                )
                self._kms_deks[env.wrapped_dek] = cached
            return cached
        if kek is None:
            raise Unauthorized("index_key is required for this index")
        return crypto.unwrap_data_key(kek, env.wrapped_dek, tenant, name)
