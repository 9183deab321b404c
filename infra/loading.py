"""Where batch loads run: in-process worker threads (``ciphervec serve``, the CLI) or
IngestFunction behind an SQS queue (Lambda). Both start a job from a source, then claim and
advance it; a job that outlasts its worker is continued by the next one.

A client ``index_key`` never travels in clear: on SQS it is sealed under KMS with a context
that binds tenant, index and job.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.embedding import model_spec
from ..engine.errors import Forbidden, InvalidRequest, LoadBusy, LostLease
from ..engine.service import IndexService
from ..engine.store.jobs import LoadJob, job_id, new_owner
from ..engine.usecases.chunks import ChunkSource, embedded
from . import aws, formats
from .sources import open_source, split_s3

log = logging.getLogger("ciphervec.loading")


@dataclass
class Target:
    tenant: str
    index_name: str
    kek: bytes | None


def check_source(source: str, tenant: str, allowed: tuple[str, ...], load_bucket: str) -> None:
    """API loads read only from allowed places, and in the load bucket only under the tenant."""
    if not source.startswith("s3://"):
        raise InvalidRequest("source must be an s3:// URI")
    bucket, key = split_s3(source)
    if allowed and not any(source.startswith(p) for p in allowed):
        raise Forbidden("this server does not load from that location")
    if load_bucket and bucket == load_bucket and not key.startswith(f"{tenant}/"):
        raise Forbidden("files in the load bucket load only into their own tenant's indexes")


def start(
    service: IndexService,
    target: Target,
    source: str,
    *,
    s3: Any = None,
    options: dict[str, Any] | None = None,
) -> tuple[LoadJob, bool]:
    """Record the job that loads ``source`` into the target index (queued), or find the one
    already recorded for the same file; returns it and whether it is new."""
    index = service.open(target.tenant, target.index_name, target.kek)
    src = open_source(source, s3)
    options = {k: v for k, v in (options or {}).items() if v}  # no options and empty ones: one job
    job = LoadJob(
        # The index's uid too (a re-created index loads the same file anew), and the reader
        # options (other column names read the same file differently).
        job_id(
            target.tenant,
            target.index_name,
            f"{index.uid}:{src.location}:{json.dumps(options or {}, sort_keys=True)}",
            src.version,
        ),
        target.index_name,
        bytes_total=src.size,
        source=src.location,
        version=src.version,
        options=dict(options or {}),
    )
    return index.submit_load(job)


def _embedding(read: ChunkSource, embed: Callable[[list[str]], Any]) -> ChunkSource:
    """``read`` with each chunk's rows that have contents and no vector embedded."""
    return lambda pos, dim: (embedded(chunk, embed) for chunk in read(pos, dim))


def work(
    service: IndexService,
    target: Target,
    job: str,
    *,
    s3: Any = None,
    embedder: Any = None,
    owner: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[LoadJob], None] = lambda job: None,
    trainer: Any = None,
) -> LoadJob:
    """Claim job ``job`` and advance it to its end or until ``should_stop()``; a load that
    commits may queue training through ``trainer``."""
    index = service.open(target.tenant, target.index_name, target.kek)
    record = index.claim_load(job, owner or new_owner())
    if record.state in ("succeeded", "failed"):
        return record
    src = open_source(record.source, s3)
    if src.version != record.version:
        return index.fail_load(record, "the file changed since the load began; load it again")
    columns = formats.Columns(**record.options.get("columns", {}))
    read = formats.reader(src, columns, record.options.get("rows"))
    model = index.embedding_model
    if model:  # rows that come with contents and no vector are embedded on the way in
        if embedder is None or model_spec(model).name not in {m.name for m in embedder.available()}:
            return index.fail_load(
                record, f"the embedding model {model} is not installed where this load runs"
            )
        read = _embedding(read, lambda texts: embedder.encode(model, texts))
    done = index.run_load(record, read, should_stop=should_stop, progress=progress)
    if trainer is not None:  # what its commit made due, as after any upsert
        index.queue_after_load(done, trainer)
    return done


class LocalLoads:
    """Worker threads that run load jobs in this process (``ciphervec serve``)."""

    def __init__(
        self, service: IndexService, trainer: Any, workers: int = 1, s3: Any = None, embedder: Any = None
    ) -> None:
        self.service = service
        self.trainer = trainer
        self.s3 = s3
        self.embedder = embedder
        self.workers = workers
        self._queue: queue.Queue[tuple[Target, str]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def enqueue(self, target: Target, job: str) -> None:
        self._queue.put((target, job))
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) < self.workers:
                worker = threading.Thread(target=self._work, name="ciphervec-load", daemon=True)
                self._threads.append(worker)
                worker.start()

    def _work(self) -> None:
        while True:
            try:
                target, job = self._queue.get(timeout=30)
            except queue.Empty:
                return
            try:
                work(self.service, target, job, s3=self.s3, trainer=self.trainer, embedder=self.embedder)
            except (LoadBusy, LostLease):
                pass  # another worker has it
            except Exception as exc:  # the job record keeps its checkpoint; the log says what
                log.warning("a load job stopped: %s", type(exc).__name__)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the queued jobs are done (tests, CLI)."""
        for worker in list(self._threads):
            worker.join(timeout)


class QueueLoads:
    """Sends load jobs to IngestFunction's SQS queue; a client key goes sealed under KMS."""

    MESSAGE = "ciphervec-load"

    def __init__(self, service: IndexService, queue_url: str, client: Any = None) -> None:
        self.service = service
        self.queue_url = queue_url
        self._client = client

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else aws.client("sqs")

    @staticmethod
    def _context(target: Target, job: str) -> dict[str, str]:
        return {
            "purpose": "ciphervec-load-job",
            "tenant": target.tenant,
            "index": target.index_name,
            "job": job,
        }

    def message(self, target: Target, job: str, result_to: dict[str, str] | None = None) -> dict[str, Any]:
        sealed = None
        if target.kek is not None:
            sealed = self.service.seal_for_job(target.kek, self._context(target, job))
        return {
            "kind": self.MESSAGE,
            "tenant": target.tenant,
            "index_name": target.index_name,
            "job_id": job,
            "sealed_key": sealed,
            "result_to": result_to,
        }

    def open(self, message: dict[str, Any]) -> tuple[Target, str]:
        """The target and job of a message ``message()`` made."""
        target = Target(message["tenant"], message["index_name"], None)
        job = str(message["job_id"])
        if message.get("sealed_key"):
            target.kek = self.service.open_for_job(message["sealed_key"], self._context(target, job))
        return target, job

    def send(self, message: dict[str, Any]) -> None:
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(message))

    def enqueue(self, target: Target, job: str) -> None:
        self.send(self.message(target, job))
