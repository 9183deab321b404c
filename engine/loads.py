"""Batch loads: a file's rows checked, sealed into staged segments while they stream in, and
made visible by one head commit; a job record checkpoints the work between invocations.

A job's record lives at ``<tenant root>.loads/<job_id>`` (``.loads`` can never be an escaped
index name). It is JSON: a plaintext ``status`` (state, counts, timings, refusal reasons —
row numbers and what was wrong, never a value) and a ``sealed`` checkpoint (the source, the
staged segment names, the read position) encrypted under the index's data key. Updates are
compare-and-swap, so two workers never both advance one job. Staged segments are named
``load/<job_id>/<id>``; the commit appends them to the head in file order (so a later
duplicate id wins) and records the job id in the head, which makes the commit happen once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import segment
from .errors import CipherVecError, NotFound, ValidationFailed
from .heads import Head, Heads
from .manifest import Envelope, HeadBody, SegmentRef
from .names import new_id, tenant_root
from .ports import BlobNotFound, StoreConflict
from .prefetch import prefetched
from .segment import Segment

ACTIVE = ("queued", "running", "paused", "committing")
DONE = ("succeeded", "failed")
LEASE_SECONDS = 120.0  # a running job not checkpointed for this long may be taken over
ABANDON_SECONDS = 86400.0  # staged segments of a job idle this long are swept
MAX_REASONS = 10
KEEP_LOADS = 64  # job ids remembered in the head
WRITERS = 2  # staged segments being sealed and written at once


class BadSource(CipherVecError):
    """The file cannot be read as the format it claims (422)."""

    status = 422


class LoadBusy(CipherVecError):
    """Another worker holds this job's lease (409)."""

    status = 409


class LostLease(CipherVecError):
    """Another worker took this job over while it ran (409)."""

    status = 409


def job_id(tenant: str, index_name: str, location: str, version: str) -> str:
    """A job's id: the same file (location and version/ETag) into the same index, the same job."""
    digest = hashlib.sha256("\0".join((tenant, index_name, location, version)).encode())
    return digest.hexdigest()[:32]


def loads_root(prefix: str, tenant: str) -> str:
    return f"{tenant_root(prefix, tenant)}.loads/"


@dataclass
class Chunk:
    """Rows read from a file, not yet checked. ``vectors`` is ``(n, d)`` when every row had
    ``d`` numbers, else None and the reader's findings are in ``bad``."""

    first_row: int
    ids: list[Any]
    vectors: np.ndarray | None
    metadata: list[Any] | None = None
    contents: list[Any] | None = None
    bad: list[tuple[int, str]] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)  # where the next chunk starts
    bytes_read: int = 0  # of the file, up to the end of this chunk

    def __len__(self) -> int:
        return len(self.ids)


def check(chunk: Chunk, dimension: int) -> tuple[Segment | None, list[tuple[int, str]]]:
    """The chunk's rows as an upsert segment, or the rows refused and why (file row numbers)."""
    bad = list(chunk.bad)
    n, first = len(chunk), chunk.first_row
    vectors = chunk.vectors
    if vectors is not None:
        if vectors.ndim != 2 or vectors.shape[0] != n:
            bad.append((first, "the vector column does not have one vector per row"))
        elif vectors.shape[1] == 0:
            bad.extend((first + r, "vector is empty") for r in range(n))
        elif vectors.shape[1] != dimension:
            bad.extend(
                (first + r, f"vector has {vectors.shape[1]} values; the index dimension is {dimension}")
                for r in range(n)
            )
        else:
            vectors = np.asarray(vectors, dtype=np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(vectors).all(axis=1)
            bad.extend((first + int(r), "vector has NaN or Inf values") for r in np.flatnonzero(~finite))
    bad.extend((first + r, "id is not a non-empty string") for r, i in enumerate(chunk.ids) if not _is_id(i))
    metadata = None
    if chunk.metadata is not None:
        metadata = []
        for r, m in enumerate(chunk.metadata):
            value, reason = _metadata(m)
            if reason:
                bad.append((first + r, reason))
            metadata.append(value)
    if chunk.contents is not None:
        bad.extend(
            (first + r, "contents is not a string")
            for r, c in enumerate(chunk.contents)
            if c is not None and not isinstance(c, str)
        )
    if bad or vectors is None:
        return None, sorted(set(bad)) or [(first, "rows have no vectors")]
    contents = [c or None for c in chunk.contents] if chunk.contents is not None else None
    return Segment("upsert", list(chunk.ids), vectors, _none_if_empty(metadata), _none_if_empty(contents)), []


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _metadata(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    if value is None or value == "":
        return None, None
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None, "metadata is not valid JSON"
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, "metadata is not a JSON object"
    try:  # NaN/Inf or other values JSON cannot carry
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None, "metadata holds a value JSON cannot represent"
    return value or None, None


def _none_if_empty(values: list[Any] | None) -> list[Any] | None:
    return values if values is not None and any(v is not None for v in values) else None


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
        """The job record; with ``head`` its sealed checkpoint is opened too."""
        try:
            got = self.heads.store.get(self._key(tenant, job))
        except BlobNotFound:
            raise NotFound("load job not found") from None
        assert got is not None
        unseal = (lambda b: head.cipher.decrypt(self._name(job), b)) if head is not None else None
        return LoadJob.from_bytes(got[0], got[1], unseal)

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

    def keeps(self, tenant: str, job: str, now: float) -> bool:
        """Whether the staged segments of ``job`` must be kept (the job may still commit)."""
        try:
            record = self.read(tenant, job)
        except NotFound:
            return False
        if record.state == "committing":
            return True  # its segments are, or are about to be, in the head
        return record.state in ACTIVE and now - record.updated < ABANDON_SECONDS


Reader = Callable[[dict[str, Any], int | None], Iterable[Chunk]]
QueueTraining = Callable[[Envelope, HeadBody, int], bool]


class Loader:
    """Runs load jobs: check, stage, checkpoint, commit once."""

    def __init__(self, heads: Heads, jobs: Jobs, queue_training: QueueTraining) -> None:
        self.heads = heads
        self.jobs = jobs
        self.queue_training = queue_training

    def submit(self, head: Head, job: LoadJob) -> tuple[LoadJob, bool]:
        """Record a job (queued) unless the same one is recorded; returns it and whether new."""
        return self.jobs.create(head.tenant, job, head)

    def claim(self, head: Head, job_id: str, owner: str) -> LoadJob:
        """Take the job's lease: it is ours to advance until we stop or it goes stale."""
        job = self.jobs.read(head.tenant, job_id, head)
        if job.state in DONE:
            return job
        now = self.jobs.clock()
        if (
            job.state in ("running", "committing")
            and job.owner != owner
            and now - job.updated < LEASE_SECONDS
        ):
            raise LoadBusy("this load job is running elsewhere")
        # Idle for a day before its commit: the sweep took its staged segments, so it starts
        # over. A job that reached its commit never does (the sweep keeps what it staged).
        if job.state in ("queued", "running", "paused") and now - job.updated >= ABANDON_SECONDS:
            job.staged, job.position, job.rows_read, job.bytes_read = [], {}, 0, 0
            job.refused, job.reasons, job.refused_rows, job.seconds = 0, [], [], 0.0
            job.dimension = None
        job.state = "committing" if job.state == "committing" else "running"
        job.owner = owner
        job.started = job.started or now
        job.invocations += 1
        self.jobs.save(head.tenant, job, head)
        return job

    def run(
        self,
        head: Head,
        job: LoadJob,
        read: Reader,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[LoadJob], None] = lambda job: None,
    ) -> LoadJob:
        """Advance a claimed job to its end, or until ``should_stop()`` (state ``paused``,
        checkpointed; run it again to continue). Refused rows fail the job and stage nothing;
        the read goes on to count them. Storage faults propagate with the checkpoint intact."""
        if job.state in DONE:
            return job
        # The index's dimension, else the one the file's first rows set (kept in the checkpoint,
        # so a resumed job holds every later chunk to it too).
        dimension = int(head.body.config.get("dimension") or 0) or job.dimension or None
        t0 = time.perf_counter()
        counted = job.seconds
        # Reading the next chunk (a read-ahead thread), sealing and writing this one, and the
        # writes of the one before overlap; outcomes are recorded in file order, each chunk
        # only once its write is acknowledged, so a checkpoint never runs past a lost write.
        inflight: deque[tuple[Future[str] | None, Chunk, int, list[tuple[int, str]]]] = deque()
        stopped = False
        refusing = job.refused > 0

        def settle(wait: bool) -> None:
            nonlocal stopped
            while inflight and (wait or _ready(inflight[0][0])):
                future, chunk, rows, bad = inflight[0]
                name = future.result() if future is not None else None  # raises: stays unrecorded
                inflight.popleft()
                if name is not None:
                    job.staged.append([name, rows])
                job.rows_read += len(chunk)
                if bad:
                    job.refused += len({r for r, _ in bad})
                    room = max(MAX_REASONS - len(job.reasons), 0)
                    job.reasons.extend({"row": r, "reason": why} for r, why in bad[:room])
                    job.refused_rows = [int(r["row"]) for r in job.reasons]
                job.position = dict(chunk.position)
                job.bytes_read = chunk.bytes_read
                job.dimension = dimension
                job.seconds = counted + time.perf_counter() - t0
                self.jobs.save(head.tenant, job, head)
                progress(job)
                stopped = stopped or should_stop()
                wait = False

        def record_what_was_written() -> None:
            """On the way out of a failure: record, in order, the chunks whose writes went
            through, up to the first that did not."""
            try:
                while inflight:
                    settle(True)
            except BaseException:  # noqa: S110 - the original error is the one that matters
                pass

        try:
            with (
                ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="ciphervec-stage") as pool,
                prefetched(_guarded(read(dict(job.position), dimension))) as chunks,
            ):
                try:
                    for chunk in chunks:
                        if dimension is None and chunk.vectors is not None and chunk.vectors.ndim == 2:
                            dimension = int(chunk.vectors.shape[1]) or None
                        seg, bad = _checked(chunk, dimension or 0)
                        future = None
                        if bad:
                            refusing = True
                        elif seg is not None and not refusing:
                            future = pool.submit(self._stage, head, job.job_id, seg)
                        inflight.append((future, chunk, len(seg) if seg is not None else 0, bad))
                        while len(inflight) > WRITERS:
                            settle(True)
                        settle(False)
                        if stopped:
                            break
                except BaseException:
                    record_what_was_written()
                    raise
                while inflight:
                    settle(True)
            if stopped:
                job.state, job.owner = "paused", None
                self.jobs.save(head.tenant, job, head)
                return job
        except BadSource as exc:
            job.refused = max(job.refused, 1)
            job.reasons.append({"row": job.rows_read, "reason": exc.detail})
            job.refused_rows.append(job.rows_read)
        except KeyboardInterrupt:
            job.state, job.owner = "paused", None
            job.seconds = counted + time.perf_counter() - t0
            self.jobs.save(head.tenant, job, head)
            raise
        job.seconds = counted + time.perf_counter() - t0
        if job.refused:
            return self._fail(head, job, "the file has rows that cannot be loaded; nothing was loaded")
        if job.state != "committing":  # from here on the job is never started over
            job.state = "committing"
            self.jobs.save(head.tenant, job, head)
        return self._commit(head, job, t0, counted)

    def _stage(self, head: Head, job_id: str, seg: Segment) -> str:
        """Seal and write one staged segment; returns its name."""
        name = f"load/{job_id}/{new_id()}"
        self.heads.write(head, name, segment.encode(seg, head.precision))
        return name

    def _fail(self, head: Head, job: LoadJob, error: str) -> LoadJob:
        staged = [name for name, _ in job.staged]
        job.state, job.error, job.finished, job.owner = "failed", error, self.jobs.clock(), None
        job.staged = []
        self.jobs.save(head.tenant, job, head)
        self.heads.delete_all(head, staged)
        return job

    def _commit(self, head: Head, job: LoadJob, t0: float, counted: float) -> LoadJob:
        """Make the staged segments visible with one head commit — once: a job whose commit
        went through before its record said so (a worker lost in between) is recognised by
        its id among the head's recent loads, by its segment names in the head, or by its
        staged objects being gone (merged, retired and swept after that commit)."""
        staged = [(str(name), int(rows)) for name, rows in job.staged]
        dimension = int(head.body.config.get("dimension") or 0) or job.dimension
        present = set(self._staged_objects(head, job.job_id))
        done_before = bool(staged) and not all(name in present for name, _ in staged)

        def mutate(env: Envelope, body: HeadBody) -> tuple[bool, bool, int]:
            named = {s.name for s in body.segments} | {r["name"] for r in body.retired}
            if done_before or job.job_id in body.loads or any(name in named for name, _ in staged):
                return False, False, _estimate(body)
            known = int(body.config.get("dimension") or 0)
            if staged and known and dimension and known != dimension:
                raise ValidationFailed(f"the index dimension changed to {known} during the load")
            if staged and not known and dimension:
                body.config["dimension"] = dimension
            for name, rows in staged:
                body.segments.append(SegmentRef(name, body.next_seq, "upsert", rows))
                body.next_seq += 1
            body.loads = [*body.loads, job.job_id][-KEEP_LOADS:]
            count = _estimate(body)
            return True, bool(staged) and self.queue_training(env, body, count), count

        try:
            _, triggered, count = self.heads.commit(head, mutate)
        except CipherVecError as exc:
            if exc.status >= 500:
                raise  # contention and faults: the job stays resumable
            return self._fail(head, job, exc.detail)
        job.state, job.finished, job.owner = "succeeded", self.jobs.clock(), None
        job.rows_loaded = sum(rows for _, rows in staged)
        job.index_count, job.training_triggered = count, bool(triggered)
        job.seconds = counted + time.perf_counter() - t0
        self.jobs.save(head.tenant, job, head)
        return job

    def _staged_objects(self, head: Head, job_id: str) -> list[str]:
        prefix = f"{head.root}load/{job_id}/"
        return [key[len(head.root) :] for key in self.heads.store.list(prefix)]


def transient(exc: BaseException) -> bool:
    """A fault of the network or the disk, worth retrying (not a property of the file): OS
    errors other than the plain ones pyarrow raises for corrupt data, and AWS client errors."""
    if isinstance(exc, OSError):
        return type(exc) is not OSError and not type(exc).__module__.startswith("pyarrow")
    return type(exc).__module__.split(".")[0] in ("botocore", "urllib3", "s3transfer")


def _guarded(chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """``chunks``, with whatever a file can make a reader raise turned into ``BadSource``;
    faults worth a retry pass through."""
    items = iter(chunks)
    while True:
        try:
            chunk = next(items)
        except StopIteration:
            return
        except (CipherVecError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if transient(exc):
                raise
            raise BadSource(f"the file could not be read ({type(exc).__name__})") from None
        yield chunk


def _checked(chunk: Chunk, dimension: int) -> tuple[Segment | None, list[tuple[int, str]]]:
    try:
        return check(chunk, dimension)
    except Exception as exc:  # check is pure: whatever it raises, the rows are to blame
        return None, [(chunk.first_row, f"rows could not be read ({type(exc).__name__})")]


def _ready(future: Future[Any] | None) -> bool:
    return future is None or future.done()


def _estimate(body: HeadBody) -> int:
    """Rows the index holds, from its head alone: rows written since the last merge or training
    that overwrite an id are counted twice, deletes not subtracted (an upper bound)."""
    return sum(s.rows for s in body.segments if s.kind != "delete")


def new_owner() -> str:
    """A token naming one worker's claim on a job."""
    return os.urandom(8).hex()
