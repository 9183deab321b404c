"""All of ciphervec's cryptography: the key hierarchy and object sealing.

Key hierarchy
-------------
* KEK — the client's 32-byte ``index_key`` (or a KMS-held key for server-managed
  indexes). Never stored, never logged.
* DEK — a random 32-byte data key made at create time, stored in the index head only
  wrapped under the KEK (``wrap_data_key``).
* Object keys — one per stored object, ``HKDF-SHA256(DEK, salt=OBJECT_SALT, info=name)``.

Wrapped data key layout (64 bytes)::

    0   4   magic  b"CVK1"
    4   12  nonce  (random)
    16  48  AES-256-GCM(KEK, nonce, DEK, aad) = 32-byte ciphertext || 16-byte tag
    aad = b"ciphervec/dek/v1" 0x00 tenant 0x00 index_name          (UTF-8)

Sealed object layout (28 + len(plaintext) bytes)::

    0   4   magic  b"CVO1"  (format version 1)
    4   12  nonce  (random, fresh per call)
    16  n   ciphertext
    16+n 16 GCM tag
    aad = b"ciphervec/obj/v1" 0x00 tenant 0x00 index_name 0x00 object_name

After a rotation with ``reencrypt`` the head names a new DEK; objects not yet rewritten
stay sealed under the old one, which the sealed head body keeps (``HeadBody.old_keys``)
until nothing names them: ``IndexCipher`` opens those with it (``legacy``) and seals
everything new under the current DEK.

A wrong KEK fails the DEK's tag → ``WrongKey``. A flipped bit, truncation, or an object
copied to another name, index or tenant fails the object's tag → ``CorruptObject``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CorruptObject, InvalidRequest, WrongKey
from ..names import base_name

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEK_MAGIC = b"CVK1"
OBJECT_MAGIC = b"CVO1"
WRAPPED_DEK_BYTES = len(DEK_MAGIC) + NONCE_BYTES + KEY_BYTES + TAG_BYTES
OBJECT_OVERHEAD = len(OBJECT_MAGIC) + NONCE_BYTES + TAG_BYTES
OBJECT_SALT = b"ciphervec/hkdf/v1"


def parse_index_key(hex_key: str) -> bytes:
    """Decode a 64-hex-digit ``index_key`` (either case) into 32 bytes, else 400."""
    if not isinstance(hex_key, str) or len(hex_key) != 2 * KEY_BYTES:
        raise InvalidRequest("index_key must be 32 bytes encoded as 64 hex characters")
    try:
        return bytes.fromhex(hex_key)
    except ValueError:
        raise InvalidRequest("index_key must be 32 bytes encoded as 64 hex characters") from None


def new_data_key() -> bytes:
    """A fresh random 32-byte data key."""
    return os.urandom(KEY_BYTES)


def _context(*parts: str) -> bytes:
    return b"\x00".join(p.encode("utf-8") for p in parts)


def wrap_data_key(kek: bytes, dek: bytes, tenant: str, index_name: str) -> bytes:
    """Wrap ``dek`` under ``kek``, bound to the tenant and index name."""
    _check_key(kek)
    _check_key(dek)
    nonce = os.urandom(NONCE_BYTES)
    aad = _context("ciphervec/dek/v1", tenant, index_name)
    return DEK_MAGIC + nonce + AESGCM(kek).encrypt(nonce, dek, aad)


def unwrap_data_key(kek: bytes, wrapped: bytes, tenant: str, index_name: str) -> bytes:
    """Recover the data key; any failure means the key does not open this index."""
    _check_key(kek)
    if len(wrapped) != WRAPPED_DEK_BYTES or not wrapped.startswith(DEK_MAGIC):
        raise CorruptObject("wrapped data key has an unknown layout")
    nonce = wrapped[4 : 4 + NONCE_BYTES]
    aad = _context("ciphervec/dek/v1", tenant, index_name)
    try:
        return AESGCM(kek).decrypt(nonce, wrapped[4 + NONCE_BYTES :], aad)
    except InvalidTag:
        raise WrongKey("index_key does not open this index") from None


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError("keys must be exactly 32 bytes")


class IndexCipher:
    """Seals and opens the objects of one index. Two verbs: ``encrypt`` and ``decrypt``."""

    def __init__(
        self, dek: bytes, tenant: str, index_name: str, legacy: Mapping[str, bytes] | None = None
    ) -> None:
        _check_key(dek)
        self._dek = bytes(dek)
        self._tenant = tenant
        self._index = index_name
        # object (or run) name -> the older data key it is still sealed under
        self._legacy = dict(legacy or {})

    def with_legacy(self, legacy: Mapping[str, bytes]) -> IndexCipher:
        """The same current key, opening the objects named in ``legacy`` with their old keys."""
        return IndexCipher(self._dek, self._tenant, self._index, legacy)

    def _object_key(self, name: str, dek: bytes | None = None) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=OBJECT_SALT, info=name.encode())
        return AESGCM(hkdf.derive(dek or self._dek))

    def _aad(self, name: str) -> bytes:
        return _context("ciphervec/obj/v1", self._tenant, self._index, name)

    def encrypt(self, name: str, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` as the object called ``name`` (sealed in place behind its header:
        objects run to hundreds of MB, and each extra copy of them costs)."""
        nonce = os.urandom(NONCE_BYTES)
        aead = self._object_key(name)
        if not hasattr(aead, "encrypt_into"):  # cryptography before encrypt_into
            return OBJECT_MAGIC + nonce + aead.encrypt(nonce, plaintext, self._aad(name))
        head = len(OBJECT_MAGIC) + NONCE_BYTES
        out = bytearray(head + len(plaintext) + TAG_BYTES)
        out[:head] = OBJECT_MAGIC + nonce
        aead.encrypt_into(nonce, plaintext, self._aad(name), memoryview(out)[head:])
        return out  # type: ignore[return-value]  # bytes-like; no caller mutates it

    def decrypt(self, name: str, blob: bytes) -> bytes:
        """Open the object called ``name``; tampering or a swap raises ``CorruptObject``."""
        if len(blob) < OBJECT_OVERHEAD or not blob.startswith(OBJECT_MAGIC):
            raise CorruptObject(f"object {name!r} is truncated or has an unknown layout")
        nonce = blob[4 : 4 + NONCE_BYTES]
        try:
            dek = self._legacy.get(base_name(name)) if self._legacy else None
            aead = self._object_key(name, dek)
            return aead.decrypt(nonce, memoryview(blob)[4 + NONCE_BYTES :], self._aad(name))
        except InvalidTag:
            raise CorruptObject(f"object {name!r} failed authentication") from None
