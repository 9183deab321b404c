"""JSON-file key store (local default). Mode 0600; writes under an exclusive lock and
an atomic rename, so several local processes can share it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..locking import exclusive
from . import KeyRecord


class FileKeyStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return dict(data.get("keys", {}))

    def put(self, record: KeyRecord) -> None:
        with exclusive(self.path.with_name(self.path.name + ".lock")):
            keys = self._read()
            keys[record.key_id] = record.to_item()
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": 1, "keys": keys}, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def get(self, key_id: str) -> KeyRecord | None:
        item = self._read().get(key_id)
        return KeyRecord.from_item(item) if item else None

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        records = [KeyRecord.from_item(v) for v in self._read().values()]
        return [r for r in records if tenant in (None, r.tenant)]
