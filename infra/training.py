"""Where training runs: an in-process worker (local server) or an async Lambda invoke.

Both answer the same three questions: run this explicit train (waiting up to a budget),
queue an automatic one, and what is training now.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..engine.errors import CipherVecError, IndexNotFound
from ..engine.model import JobResult
from ..engine.service import IndexService
from . import aws, memory

log = logging.getLogger("ciphervec.training")


@dataclass
class IndexJob:
    """A background job on one index: its training, a merge of its write-ahead tail, or the
    rewrite of its objects under a new data key (``kind``)."""

    tenant: str
    index_name: str
    kek: bytes | None
    params: dict[str, Any] = field(default_factory=dict)
    future: Future[JobResult] = field(default_factory=Future)
    # or "merge": fold the write-ahead tail into two segments; or "reencrypt": rewrite the
    # objects still sealed under an older data key (after ``rotate_key`` with ``reencrypt``)
    kind: str = "train"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.index_name, self.kind)


def run_job(service: IndexService, job: IndexJob, until: float | None = None) -> JobResult:
    """Train (marking the index as training, and always clearing the mark), or merge;
    ``until``: the time this worker stops for sure (a Lambda invocation's deadline), after
    which the mark no longer holds auto-training back."""
    if job.kind == "merge":
        merged = service.merge_tail(job.tenant, job.index_name, job.kek)
        return JobResult("merge", f"merged {merged} write-ahead segments")
    if job.kind == "reencrypt":
        rewritten = service.rewrite(job.tenant, job.index_name, job.kek, until)
        return JobResult("reencrypt", f"rewrote {rewritten} objects under the new data key")
    try:
        service.set_training(job.tenant, job.index_name, job.kek, "running", until)
        result = service.train(job.tenant, job.index_name, job.kek, **job.params)
        memory.release()  # training's temporaries are large; give them back
        return JobResult("train", result.message, result)
    except BaseException:
        with contextlib.suppress(CipherVecError):
            service.set_training(job.tenant, job.index_name, job.kek, None)
        raise


class _Runner(abc.ABC):
    """``ports.JobRunner``'s ``run`` over a trainer's ``train(job, wait_seconds)``."""

    @abc.abstractmethod
    def train(self, job: IndexJob, wait_seconds: float) -> JobResult | None:
        """Run ``job``; ``None`` when it is still running after ``wait_seconds``."""

    def run(
        self,
        tenant: str,
        index_name: str,
        kek: bytes | None,
        kind: str = "train",
        params: dict[str, Any] | None = None,
        wait_seconds: float = 0.0,
    ) -> JobResult | None:
        """``ports.JobRunner``: the job, waited for up to ``wait_seconds``."""
        return self.train(IndexJob(tenant, index_name, kek, dict(params or {}), kind=kind), wait_seconds)


class LocalTrainer(_Runner):
    """One background thread trains queued indexes one at a time."""

    def __init__(self, service: IndexService) -> None:
        self.service = service
        self._queue: queue.Queue[IndexJob] = queue.Queue()
        self._pending: list[tuple[str, str, str]] = []
        self._current: tuple[str, str, str] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ciphervec-train", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                self._pending.remove(job.key)
                self._current = job.key
            try:
                job.future.set_result(run_job(self.service, job))
                if job.kind == "reencrypt":
                    self._sweep_later(job)
            except BaseException as exc:  # reported through the future / the log
                if not isinstance(exc, IndexNotFound):
                    log.warning("%s job of an index failed: %s", job.kind, type(exc).__name__)
                job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._current = None

    def _sweep_later(self, job: IndexJob) -> None:
        """After a rewrite: queue it once more when its old objects are past the grace
        period, so that the sweep frees the old data key without waiting for a write."""
        try:
            delay = self.service.sweep_delay(job.tenant, job.index_name, job.kek)
        except CipherVecError:
            return
        if delay is not None:
            timer = threading.Timer(
                delay + 1.0, self.enqueue, (job.tenant, job.index_name, job.kek), {"kind": "reencrypt"}
            )
            timer.daemon = True
            timer.start()

    def submit(self, job: IndexJob) -> IndexJob:
        with self._lock:
            self._pending.append(job.key)
        self._queue.put(job)
        self._ensure_worker()
        return job

    def train(self, job: IndexJob, wait_seconds: float) -> JobResult | None:
        """Run an explicit train; ``None`` when it is still running after the budget."""
        self.submit(job)
        try:
            return job.future.result(timeout=wait_seconds)
        except TimeoutError:
            return None

    def enqueue(self, tenant: str, index_name: str, kek: bytes | None, kind: str = "train") -> None:
        job = IndexJob(tenant, index_name, kek, kind=kind)
        with self._lock:
            if job.key in self._pending or self._current == job.key:
                return
        self.submit(job)

    def status(self, tenant: str) -> dict[str, Any]:
        with self._lock:
            current = self._current if self._current and self._current[2] == "train" else None
            queued = [n for t, n, kind in self._pending if t == tenant and kind == "train"]
            running = bool(self._thread and self._thread.is_alive())
        return {
            "currently_training": current[1] if current and current[0] == tenant else None,
            "queued_indexes": queued,
            "worker_running": running,
        }


class LambdaTrainer(_Runner):
    """Explicit trains run inline when they fit the budget; the rest go to TrainFunction.

    The async payload never carries a plaintext key: a client ``index_key`` is sealed
    with KMS (context binds tenant and index) and opened by TrainFunction.
    """

    # Rough CPU throughput of faiss k-means in Lambda, in float multiply-adds per second.
    FLOPS = 4e9

    def __init__(self, service: IndexService, function_name: str, client: Any = None) -> None:
        self.service = service
        self.function_name = function_name
        self._client = client

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else aws.client("lambda")

    def _context(self, tenant: str, index_name: str) -> dict[str, str]:
        return {"purpose": "ciphervec-train-job", "tenant": tenant, "index": index_name}

    def seal(self, tenant: str, index_name: str, kek: bytes | None) -> str | None:
        if kek is None:
            return None
        return self.service.seal_for_job(kek, self._context(tenant, index_name))

    def open(self, payload: dict[str, Any]) -> IndexJob:
        sealed = payload.get("sealed_key")
        context = self._context(payload["tenant"], payload["index_name"])
        kek = self.service.open_for_job(sealed, context) if sealed else None
        params = payload.get("params") or {}
        return IndexJob(
            payload["tenant"], payload["index_name"], kek, params, kind=payload.get("kind", "train")
        )

    def _invoke(self, job: IndexJob) -> None:
        payload = {
            "tenant": job.tenant,
            "index_name": job.index_name,
            "sealed_key": self.seal(job.tenant, job.index_name, job.kek),
            "params": job.params,
            "kind": job.kind,
        }
        self.client.invoke(
            FunctionName=self.function_name,
            InvocationType="Event",
            Payload=json.dumps(payload).encode(),
        )

    def train(self, job: IndexJob, wait_seconds: float) -> JobResult | None:
        if job.kind == "reencrypt":  # always TrainFunction: its size is no guide to its time here
            self._invoke(job)
            return None
        # sized from the head: this container need not load the index to hand it on
        index = self.service.open(job.tenant, job.index_name, job.kek)
        rows, dim = index.estimated_rows, index.dimension
        lists = job.params.get("n_lists") or max(1, int(rows**0.5))
        sample = min(rows, 256 * lists)
        seconds = sample * dim * lists * min(job.params.get("max_iters", 25), 25) / self.FLOPS
        if seconds + rows * dim * 2e-9 < wait_seconds:
            return run_job(self.service, job)
        self.service.set_training(job.tenant, job.index_name, job.kek, "queued")
        self._invoke(job)
        return None

    def enqueue(self, tenant: str, index_name: str, kek: bytes | None, kind: str = "train") -> None:
        self._invoke(IndexJob(tenant, index_name, kek, kind=kind))

    def status(self, tenant: str) -> dict[str, Any]:
        return {"currently_training": None, "queued_indexes": [], "worker_running": True}


def worker_pid() -> int:
    return os.getpid()
