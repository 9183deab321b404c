"""Load job records: the public status and the sealed checkpoint of one file's load into one
index, stored at ``<tenant root>.loads/<job_id>`` (``.loads`` can never be an escaped index
name) and updated by compare-and-swap, so two workers never both advance one job.

The record is JSON: a plaintext ``status`` (state, counts, times, refused row numbers —
never a value) and a ``sealed`` checkpoint (source, file dimension, reader options, staged
segment names, read position, why rows were refused) encrypted under the index's data key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..codec.crypto import IndexCipher
from ..errors import CorruptObject, LostLease, NotFound
from ..names import tenant_root
from ..ports import BlobNotFound, StoreConflict
from .heads import Head, Heads

ACTIVE = ("queued", "running", "paused", "committing")
DONE = ("succeeded", "failed")
LEASE_SECONDS = 120.0  # a running job not checkpointed for this long may be taken over
ABANDON_SECONDS = 86400.0  # staged segments of a job idle this long are swept


def job_id(tenant: str, index_name: str, location: str, version: str) -> str:
    """A job's id: the same file (location and version/ETag) into the same index, the same job."""
    digest = hashlib.sha256("\0".join((tenant, index_name, location, version)).encode())
    return digest.hexdigest()[:32]


def loads_root(prefix: str, tenant: str) -> str:
    return f"{tenant_root(prefix, tenant)}.loads/"


@dataclass
class LoadJob:
    """One file being loaded into one index: its public status and its sealed checkpoint."""

    job_id: str
    index_name: str
    state: str = "queued"
    created: float = 0.0
    started: float | None = None
    updated: float = 0.0
    finished: float | None = None
    seconds: float = 0.0  # working time over every invocation
    invocations: int = 0
    rows_read: int = 0
    rows_loaded: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    refused: int = 0
    refused_rows: list[int] = field(default_factory=list)  # the first few; why is sealed
    error: str | None = None
    index_count: int | None = None
    training_triggered: bool = False
    rewrite_triggered: bool = False  # an interrupted re-encryption marked again by the commit
    owner: str | None = None
    # sealed: never in the plaintext status
    source: str = ""
    dimension: int | None = None  # the file's, when the index had none
    version: str = ""  # the file's ETag (or size and mtime) when the job began
    options: dict[str, Any] = field(default_factory=dict)  # reader options (Parquet column names)
    staged: list[list[Any]] = field(default_factory=list)  # [name, rows]
    position: dict[str, Any] = field(default_factory=dict)
    reasons: list[dict[str, Any]] = field(default_factory=list)  # {"row", "reason"}: may name columns
    etag: str = ""  # the record's store tag as last read or written (not stored)

    _SEALED = ("source", "dimension", "version", "options", "staged", "position", "reasons")

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/loads/{job_id}`` and the result file say."""
        out = {
            "job_id": self.job_id,
            "index_name": self.index_name,
            "status": self.state,
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_refused": self.refused,
            # Why, when the checkpoint was opened (the index key, or a kms index); else rows only.
            "refused": self.reasons or [{"row": r} for r in self.refused_rows],
            "bytes_read": self.bytes_read,
            "bytes_total": self.bytes_total,
            "progress": round(self.bytes_read / self.bytes_total, 4) if self.bytes_total else None,
            "seconds": round(self.seconds, 3),
            "invocations": self.invocations,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "index_count": self.index_count,
            "training_triggered": self.training_triggered,
            "error": self.error,
        }
        if self.seconds and self.rows_read:
            out["rows_per_second"] = round(self.rows_read / self.seconds)
        return out

    def to_bytes(self, seal: Callable[[bytes], bytes] | None) -> bytes:
        public = {
            k: v
            for k, v in self.__dict__.items()
            if k not in self._SEALED and k != "etag" and not k.startswith("_")
        }
        secret = json.dumps({k: getattr(self, k) for k in self._SEALED}).encode()
        sealed = base64.b64encode(seal(secret)).decode() if seal else None
        return json.dumps({"v": 1, "status": public, "sealed": sealed}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, etag: str, unseal: Callable[[bytes], bytes] | None) -> LoadJob:
        data = json.loads(raw)
        job = cls(**data["status"])
        job.etag = etag
        if unseal is not None and data.get("sealed"):
            secret = json.loads(unseal(base64.b64decode(data["sealed"])))
            for k in cls._SEALED:
                if k in secret:
                    setattr(job, k, secret[k])
        return job


class Jobs:
    """Job records of batch loads, updated by compare-and-swap."""

    def __init__(self, heads: Heads, clock: Callable[[], float] = time.time) -> None:
        self.heads = heads
        self.clock = clock

    def _key(self, tenant: str, job: str) -> str:
        if not job or not all(c in "0123456789abcdef" for c in job) or len(job) != 32:
            raise NotFound("load job not found")
        return loads_root(self.heads.prefix, tenant) + job

    @staticmethod
    def _name(job: str) -> str:
        return f"load@{job}"

    def read(self, tenant: str, job: str, head: Head | None = None) -> LoadJob:
        """The job record; with ``head`` its sealed checkpoint is opened too. A checkpoint
        the index's keys no longer open (sealed before a rotation with ``reencrypt`` and
        not resealed) leaves the public part, and a job that was still to run failed."""
        try:
            got = self.heads.store.get(self._key(tenant, job))
        except BlobNotFound:
            raise NotFound("load job not found") from None
        assert got is not None
        unseal = (lambda b: head.cipher.decrypt(self._name(job), b)) if head is not None else None
        try:
            return LoadJob.from_bytes(got[0], got[1], unseal)
        except CorruptObject:
            record = LoadJob.from_bytes(got[0], got[1], None)
            if record.state in ACTIVE:
                record.state = "failed"
                record.error = (
                    "its checkpoint is sealed under a data key the index no longer has (a key "
                    "rotation with reencrypt): load the file again under a new name or version"
                )
            return record

    def reseal(self, tenant: str, index_name: str, head: Head, old_keys: list[bytes]) -> int:
        """Seal again, under the current data key, the checkpoints of this index's load jobs
        that one of ``old_keys`` opens (a re-encryption); returns how many."""
        done = 0
        for key in list(self.heads.store.list(loads_root(self.heads.prefix, tenant))):
            job = key.rsplit("/", 1)[1]
            try:
                got = self.heads.store.get(key)
            except BlobNotFound:
                continue
            assert got is not None
            data = json.loads(got[0])
            if data["status"].get("index_name") != index_name or not data.get("sealed"):
                continue
            sealed, name = base64.b64decode(data["sealed"]), self._name(job)
            plain = None
            for dek in old_keys:
                with contextlib.suppress(CorruptObject):
                    plain = IndexCipher(dek, tenant, index_name).decrypt(name, sealed)
                    break
            if plain is None:
                continue  # under the current key already, or another incarnation's
            data["sealed"] = base64.b64encode(head.cipher.encrypt(name, plain)).decode()
            with contextlib.suppress(StoreConflict):  # rewritten meanwhile: by a holder of the current key
                self.heads.store.put_if_match(key, json.dumps(data).encode(), got[1])
                done += 1
        return done

    def create(self, tenant: str, job: LoadJob, head: Head) -> tuple[LoadJob, bool]:
        """Record ``job`` unless a record exists; returns the record and whether it is new."""
        job.created = job.updated = self.clock()
        try:
            job.etag = self.heads.store.put_if_absent(self._key(tenant, job.job_id), self._bytes(job, head))
            return job, True
        except StoreConflict:
            return self.read(tenant, job.job_id, head), False

    def save(self, tenant: str, job: LoadJob, head: Head) -> None:
        job.updated = self.clock()
        try:
            key = self._key(tenant, job.job_id)
            job.etag = self.heads.store.put_if_match(key, self._bytes(job, head), job.etag)
        except (StoreConflict, BlobNotFound):
            raise LostLease("another worker took this load job over") from None

    def _bytes(self, job: LoadJob, head: Head) -> bytes:
        return job.to_bytes(lambda b: head.cipher.encrypt(self._name(job.job_id), b))

    def staging(self, head: Head, now: float) -> bool:
        """Whether a load into this index has staged rows it may still commit: objects under
        ``load/<job>/`` the head does not name yet, of a job that ``keeps`` them (one list,
        and one record read per such job)."""
        named = {s.name for s in head.body.segments} | {r["name"] for r in head.body.retired}
        jobs = {
            key[len(head.root) :].split("/")[1]
            for key in self.heads.store.list(head.root + "load/")
            if key[len(head.root) :] not in named
        }
        return any(self.keeps(head.tenant, job, now) for job in jobs)

    def keeps(self, tenant: str, job: str, now: float) -> bool:
        """Whether the staged segments of ``job`` must be kept (the job may still commit)."""
        try:
            record = self.read(tenant, job)
        except NotFound:
            return False
        if record.state == "committing":
            return True  # its segments are, or are about to be, in the head
        return record.state in ACTIVE and now - record.updated < ABANDON_SECONDS


def new_owner() -> str:
    """A token naming one worker's claim on a job."""
    return os.urandom(8).hex()
