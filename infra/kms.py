"""KeyWrapper adapters for server-managed index keys (``kms_name``).

* ``LocalKeyWrapper`` — development only: one random 32-byte master key per name in a
  local directory (files mode 0600); AES-256-GCM with the context as associated data.
* ``AwsKmsWrapper`` — AWS KMS ``Encrypt``/``Decrypt`` with an encryption context.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..engine.errors import InvalidRequest, WrongKey
from . import aws

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")


def _aad(context: dict[str, str]) -> bytes:
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


class LocalKeyWrapper:
    """Master keys as files under ``root`` — for laptops and tests, not production."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def _master(self, name: str, create: bool) -> bytes:
        if not _NAME.match(name):
            raise InvalidRequest("kms_name may use letters, digits, '.', '_' and '-' only")
        path = self.root / f"{name}.key"
        if not path.exists():
            if not create:
                raise WrongKey(f"no server-managed key named {name!r}")
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path.read_bytes()
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
                fh.flush()
                os.fsync(fh.fileno())
        return path.read_bytes()

    def wrap(self, key_name: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._master(key_name, True)).encrypt(nonce, plaintext, _aad(context))

    def unwrap(self, key_name: str, blob: bytes, context: dict[str, str]) -> bytes:
        try:
            return AESGCM(self._master(key_name, False)).decrypt(blob[:12], blob[12:], _aad(context))
        except (InvalidTag, ValueError):
            raise WrongKey("the server-managed key does not open this index") from None


class AwsKmsWrapper:
    """AWS KMS. ``key_ids`` maps ``kms_name`` to a key id, ARN or alias."""

    def __init__(self, key_ids: dict[str, str] | None = None, client: Any = None) -> None:
        self.key_ids = dict(key_ids or {})
        self._client = client

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else aws.client("kms")

    def _key_id(self, name: str) -> str:
        if self.key_ids:
            if name not in self.key_ids:
                raise InvalidRequest("unknown kms_name: this server has no KMS key by that name")
            return self.key_ids[name]
        return name

    def wrap(self, key_name: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        try:
            resp = self.client.encrypt(
                KeyId=self._key_id(key_name), Plaintext=plaintext, EncryptionContext=context
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "NotFoundException",
                "DisabledException",
            ):
                raise InvalidRequest(f"KMS key for {key_name!r} is not usable") from exc
            raise
        return bytes(resp["CiphertextBlob"])

    def unwrap(self, key_name: str, blob: bytes, context: dict[str, str]) -> bytes:
        try:
            resp = self.client.decrypt(
                CiphertextBlob=blob, EncryptionContext=context, KeyId=self._key_id(key_name)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "InvalidCiphertextException",
                "IncorrectKeyException",
            ):
                raise WrongKey("the server-managed key does not open this index") from exc
            raise
        return bytes(resp["Plaintext"])


def open_key_wrapper(uri: str, key_ids: dict[str, str] | None = None) -> Any:
    if uri.startswith("local://"):
        return LocalKeyWrapper(uri[len("local://") :])
    if uri == "aws":
        return AwsKmsWrapper(key_ids)
    if uri in ("", "none"):
        return None
    raise ValueError(f"unsupported CIPHERVEC_KMS {uri!r}; use local://DIR or aws")
