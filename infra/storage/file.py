"""``file://PATH``: a local directory with the guarantees the commit protocol needs.

* ``put_if_absent``: write a temporary file, fsync, then ``os.link`` it into place —
  the link fails atomically if the name exists, even across processes.
* ``put_if_match``: under an exclusive ``fcntl`` lock on ``<key>.lock``, compare the
  current tag, write a temporary file, fsync, ``os.replace`` (atomic), fsync the folder.
* The tag of a small object (up to 64 KiB: heads) is a BLAKE2b digest of its bytes; sealed
  objects carry a fresh random nonce, so every write of a head has a new tag (inode or
  mtime tags could repeat within a clock tick). Large objects are immutable segments that
  are never compared-and-swapped; hashing megabytes per write would only cost time, so
  their tag is the digest of their size and first 64 KiB, which holds the random nonce.

Several processes may share one directory safely.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ...engine.errors import StorageFull
from ...engine.ports import BlobNotFound, StoreConflict
from ...engine.store.workers import alive
from ..locking import exclusive

_TMP = ".tmp-"


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that named this temporary file (``.tmp-<name>.<pid>.<hex>``) runs."""
    try:
        pid = int(temp_name.rsplit(".", 2)[-2])
    except (IndexError, ValueError):
        return True  # not ours to judge: the age rule decides
    return pid == os.getpid() or alive(pid)


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # the disk refuses writes: 507, not a bug
_LOCK = ".lock"


_HASHED = 64 * 1024


def _tag(data: bytes) -> str:
    if len(data) <= _HASHED:
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    digest = hashlib.blake2b(memoryview(data)[:_HASHED], digest_size=16)
    digest.update(len(data).to_bytes(8, "little"))
    return digest.hexdigest()


class FileStore:
    """A BlobStore on a local filesystem directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        # Keys read conditionally before: (inode, size, mtime) → tag. Every write replaces a
        # file by a rename or link (a new inode), so an unchanged stat means unchanged content.
        self._seen: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._revalidated: dict[str, str] = {}  # key -> path of keys read conditionally (heads)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[-1].endswith(_LOCK):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """``data`` in a fresh temporary file next to ``path``, on disk; nothing is left
        behind when that fails, and a full or read-only disk is a ``StorageFull``."""
        tmp = path.with_name(f"{_TMP}{path.name}.{os.getpid()}.{os.urandom(6).hex()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno in _FULL:
                raise StorageFull(
                    f"the index store cannot take writes ({errno.errorcode.get(exc.errno or 0, 'full')}); "
                    "reads keep working, retry later"
                ) from None
            raise
        return tmp

    def sweep_temps(self, older_than: float = 3600.0) -> int:
        """Remove temporary files a killed process left: those of a process that no longer
        runs, and any older than ``older_than`` seconds (a live writer's file is younger);
        returns how many."""
        now, removed = time.time(), 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if not name.startswith(_TMP):
                    continue
                full = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    if not _writer_alive(name) or now - os.stat(full).st_mtime >= older_than:
                        os.unlink(full)
                        removed += 1
        return removed

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        known = self._revalidated.get(key) if if_none_match is not None else None
        if known is not None:
            path = known
        elif if_none_match is None:
            path = str(self._path(key))
        else:  # a head: read again on every request
            path = self._revalidated.setdefault(key, str(self._path(key)))
        try:
            if if_none_match is not None:  # unchanged file, known tag: no read, no hash
                st = os.stat(path)
                if self._seen.get(key) == ((st.st_ino, st.st_size, st.st_mtime_ns), if_none_match):
                    return None
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        tag = _tag(data)
        if if_none_match is not None:  # a key revalidated once will be again
            self._seen[key] = ((st.st_ino, st.st_size, st.st_mtime_ns), tag)
        return None if tag == if_none_match else (data, tag)

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise StoreConflict(key) from None
        finally:
            tmp.unlink()
        self._fsync_dir(path.parent)
        return _tag(data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        with exclusive(path.with_name(path.name + _LOCK)):
            try:
                current = _tag(path.read_bytes())
            except FileNotFoundError:
                raise BlobNotFound(key) from None
            if current != etag:
                raise StoreConflict(key)
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            self._fsync_dir(path.parent)
            return _tag(data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + _LOCK).unlink()

    def list(self, prefix: str) -> Iterator[str]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*[p for p in base.split("/") if p])
        if not start.is_dir():
            return
        found = []
        for dirpath, _, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in files:
                if f.startswith(_TMP) or f.endswith(_LOCK):
                    continue
                key = f if rel == "." else f"{rel}/{f}"
                if key.startswith(prefix):
                    found.append(key)
        yield from sorted(found)
