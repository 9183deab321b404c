"""API keys: records, stores (file, DynamoDB) and the authenticator.

An API key is ``cv_<key id>_<secret>``. Stores keep only SHA-256(secret) with the
tenant, role, optional index scope and timestamps; lookup is by key id, comparison in
constant time, results cached for ``cache_seconds`` in the container.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...engine.errors import Forbidden, InvalidRequest, Unauthorized

ROLES = ("admin", "write", "read")
PERMISSIONS = ("read", "write")
_ROLE_RIGHTS = {"admin": {"admin", "write", "read"}, "write": {"write", "read"}, "read": {"read"}}
_KEY = re.compile(r"^cv_([0-9a-f]{16})_([0-9a-f]{64})\Z")
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class KeyRecord:
    """What a store keeps about one API key (never the secret itself)."""

    key_id: str
    secret_hash: str
    tenant: str
    role: str  # admin | write | read | user
    index_name: str | None = None
    permissions: list[str] = field(default_factory=list)
    created_at: float = 0.0
    revoked_at: float | None = None
    label: str = ""

    def to_item(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> KeyRecord:
        fields: dict[str, Any] = {k: item.get(k) for k in cls.__dataclass_fields__ if k in item}
        return cls(**fields)


@dataclass(frozen=True)
class Principal:
    """Who is calling: tenant, rights and optional index scope."""

    tenant: str
    rights: frozenset[str]
    key_id: str
    index_name: str | None = None

    def require(self, right: str, index_name: str | None = None) -> None:
        if right not in self.rights:
            raise Forbidden(f"this API key lacks the '{right}' permission")
        if self.index_name is not None and index_name is not None and index_name != self.index_name:
            raise Forbidden("this API key is limited to another index")


_ROOT = Principal("default", frozenset(_ROLE_RIGHTS["admin"]), "root")


class KeyStore(Protocol):
    def put(self, record: KeyRecord) -> None: ...
    def get(self, key_id: str) -> KeyRecord | None: ...
    def list(self, tenant: str | None = None) -> list[KeyRecord]: ...


def open_keystore(uri: str, *, dynamodb_client: Any = None) -> KeyStore:
    if uri.startswith("file://"):
        from .file import FileKeyStore

        return FileKeyStore(uri[len("file://") :])
    if uri.startswith("dynamodb://"):
        from .dynamodb import DynamoKeyStore

        return DynamoKeyStore(uri[len("dynamodb://") :], client=dynamodb_client)
    if uri.startswith("memory://"):
        from .memory import MemoryKeyStore

        return MemoryKeyStore()
    raise ValueError(f"unsupported key store URI {uri!r}; use file://PATH or dynamodb://TABLE")


class Authenticator:
    """Turns an ``X-API-Key`` into a ``Principal``; creates and revokes keys."""

    def __init__(
        self,
        store: KeyStore,
        *,
        root_key: str | None = None,
        enabled: bool = True,
        cache_seconds: float = 60.0,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.root_key = root_key or None
        self.enabled = enabled
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, api_key: str | None) -> Principal:
        if not self.enabled:
            return Principal("default", frozenset(_ROLE_RIGHTS["admin"]), "auth-disabled")
        if not api_key:
            raise Unauthorized("API key is required")
        if self.root_key and hmac.compare_digest(api_key.encode(), self.root_key.encode()):
            return _ROOT
        match = _KEY.match(api_key)
        if not match:
            raise Unauthorized("Invalid API key")
        key_id, secret = match.groups()
        record = self._lookup(key_id)
        if (
            record is None
            or record.revoked_at is not None
            or not hmac.compare_digest(record.secret_hash, hash_secret(secret))
        ):
            raise Unauthorized("Invalid API key")
        if record.role == "user":
            rights = frozenset(record.permissions)
        else:
            rights = frozenset(_ROLE_RIGHTS[record.role])
        return Principal(record.tenant, rights, record.key_id, record.index_name)

    def _lookup(self, key_id: str) -> KeyRecord | None:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        record = self.store.get(key_id)
        with self._lock:
            self._cache[key_id] = (now, record)
        return record

    def create_key(
        self,
        tenant: str,
        role: str,
        *,
        index_name: str | None = None,
        permissions: list[str] | None = None,
        label: str = "",
    ) -> tuple[str, KeyRecord]:
        """Mint a key; returns ``(api_key, record)``. The key is shown exactly once."""
        if not _TENANT.match(tenant):
            raise InvalidRequest("tenant may use letters, digits, '_' and '-' (1-64 chars)")
        if role not in (*ROLES, "user"):
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
        perms = sorted(set(permissions or []))
        if role == "user" and (not perms or any(p not in PERMISSIONS for p in perms)):
            raise InvalidRequest("permissions must be a non-empty subset of ['read', 'write']")
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        record = KeyRecord(
            key_id, hash_secret(secret), tenant, role, index_name, perms, self.clock(), None, label
        )
        self.store.put(record)
        return f"cv_{key_id}_{secret}", record

    def revoke(self, key_id: str) -> KeyRecord | None:
        record = self.store.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record.revoked_at = self.clock()
            self.store.put(record)
        with self._lock:
            self._cache.pop(key_id, None)
        return record
