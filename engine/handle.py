"""OpenIndex: one index opened with its key proved once per request, and everything a holder
of it may do — read, search, write, queue what a write made due, batch-load (LanceDB's table
handle is the model) — so callers outside the engine never hold a head, never repeat
``(tenant, name, key)``, and never reach into the service's parts."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from .arrays.text import TextConfig
from .codec.segment import Segment
from .errors import IndexBusy, Unauthorized, ValidationFailed
from .model import MAX_VALUE, JobResult, Rotation, RowBatch, UpsertResult, value_bound
from .ports import JobQueue, JobRunner
from .store.jobs import LEASE_SECONDS, LoadJob
from .store.transactions import Rewrap, check_dimension, estimate
from .timing import event
from .usecases import policy as field_policy
from .usecases.chunks import ChunkSource
from .usecases.reads import Reader

if TYPE_CHECKING:
    from .service import IndexService
    from .store.heads import Head

log = logging.getLogger("ciphervec.service")


P = ParamSpec("P")
R = TypeVar("R")


def _on_head(method: Callable[Concatenate[Reader, Head, P], R]) -> Callable[Concatenate[OpenIndex, P], R]:
    """A read use case as a method of the handle: the reader called with the head it holds
    (the same parameters after that, checked by mypy)."""

    name = method.__name__

    @functools.wraps(method)
    def call(self: OpenIndex, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[Concatenate[Head, P], R] = getattr(self._service.reader, name)
        return bound(self._head, *args, **kwargs)

    return call


class OpenIndex:
    """An index as of the head read when it was opened (``IndexService.open``)."""

    def __init__(self, service: IndexService, head: Head, kek: bytes | None) -> None:
        self._service = service
        self._head = head
        self._kek = kek  # the key that opened it, for the jobs it queues (sealed on the way)

    @property
    def tenant(self) -> str:
        return self._head.tenant

    @property
    def name(self) -> str:
        return self._head.name

    @property
    def uid(self) -> str:
        """This incarnation of the index (a re-created index has another)."""
        return self._head.envelope.uid

    @property
    def embedding_model(self) -> str | None:
        """The model that embeds this index's contents and text queries, if it has one."""
        model = self._head.body.config.get("embedding_model")
        return str(model) if model else None

    @property
    def dimension(self) -> int:
        return int(self._head.body.config["dimension"])

    @property
    def estimated_rows(self) -> int:
        """Rows the index holds, read from its head without loading a row (an upper bound:
        overwrites and deletes since the last merge or training are not taken off)."""
        return estimate(self._head.body)

    def describe(self) -> dict[str, Any]:
        """The index's configuration, training and key-rotation state (``/indexes/describe``)."""
        head, service = self._head, self._service
        cfg, cent = head.body.config, head.body.centroids
        n_lists = cent.n_lists if cent else 1
        legacy = dict(cfg.get("index_config") or {})
        kind = cfg.get("index_type", "ivfflat")
        legacy.update({"type": kind, "index_type": kind, "dimension": cfg["dimension"]})
        legacy.update({"n_lists": n_lists, "metric": cfg["metric"]})
        return {
            "index_name": self.name,
            "is_trained": cent is not None,
            "dimension": self.dimension,
            "metric": cfg["metric"],
            "n_lists": n_lists,
            "n_probes": cent.auto_n_probes if cent else 1,
            "storage_precision": head.precision,
            "metadata_schema": field_policy.of(cfg),
            "bm25": text.describe() if (text := TextConfig.of(cfg)) else None,
            "index_type": kind,
            "embedding_model": cfg.get("embedding_model"),
            "index_config": legacy,
            "key_rotation": {
                "objects_under_old_keys": head.body.stale_objects(),
                "old_keys_held": len(head.body.old_keys),
                "rewriting": service.rekeyer.active(head.envelope),
            },
        }

    # -- reads (``usecases.reads``: each bound to this handle's head) --------------------
    num_vectors = _on_head(Reader.num_vectors)
    list_ids = _on_head(Reader.list_ids)
    get = _on_head(Reader.get)
    query = _on_head(Reader.query)
    text_query = _on_head(Reader.text_query)
    hybrid_query = _on_head(Reader.hybrid_query)
    search = _on_head(Reader.search)
    query_metadata = _on_head(Reader.query_metadata)

    # -- writes (``usecases.writes``) -----------------------------------------------------
    def upsert(self, batch: RowBatch) -> UpsertResult:
        """Commit ``batch`` (acknowledged once the head CAS succeeds) and say what it made due."""
        head, service = self._head, self._service
        snap = service.cache.snapshot(head, full=False)
        check_dimension(self.dimension, batch.dimension)
        bound = value_bound(head.precision)
        if bound < MAX_VALUE and float(np.abs(batch.vectors).max(initial=0)) > bound:
            raise ValidationFailed(
                f"a {head.precision} index stores values within ±{bound:g}", ("body", "vectors")
            )
        fresh = snap.count_new(batch.ids)
        # A partial state counts its unloaded lists whole (an estimate either way).
        estimate = snap.live + fresh + (snap.partial.unloaded_rows() if snap.partial else 0)
        seg = Segment("upsert", batch.ids, batch.vectors, batch.metadata, batch.contents)
        rules = service.rules()
        done = service.writer.segment(head, seg, dimension=batch.dimension, estimate=estimate, rules=rules)
        event("rows_written", len(batch.ids))
        due = done.outcome  # (a training to queue, an interrupted re-encryption to queue again)
        merge_due = service.maintenance.merge_due(done.head)
        n, threshold = len(batch.ids), service.train_threshold
        return UpsertResult(n, estimate, due.training, threshold, merge_due, due.rewrite)

    def delete(self, ids: list[str]) -> int:
        """Delete ``ids`` (those not in the index count too, as in CyborgDB); returns how many."""
        if any(not isinstance(i, str) for i in ids):
            raise ValidationFailed("ids must be strings", ("body", "ids"))
        if ids:
            self._service.writer.segment(self._head, Segment("delete", list(ids)))
            event("rows_deleted", len(ids))
        return len(ids)

    # -- keys and training -----------------------------------------------------------------
    def rotate_key(
        self,
        new_kek: bytes | None,
        new_kms_name: str | None,
        kms_name: str | None = None,
        reencrypt: bool = False,
    ) -> str:
        """Wrap the index's data key under a new key — a client key or a KMS key name, either
        way round — in one head compare-and-swap: nothing else is rewritten, and the old key
        stops opening the index as soon as it commits. With ``reencrypt`` the index gets a
        new data key instead and its objects are then rewritten under it (``rewrite``, run
        as a job: see ``rekey``). Returns the new key mode."""
        head, service = self._head, self._service
        if kms_name is not None and kms_name != head.envelope.kms_name:
            raise Unauthorized("kms_name does not open this index")
        if reencrypt:
            if service.loader.jobs.staging(head, service.maintenance.clock()):
                raise IndexBusy(
                    "a batch load into this index is in progress: its staged rows are sealed under "
                    "the current data key; rotate with reencrypt once it has ended"
                )
            return service.rekeyer.rotate(head, new_kek, new_kms_name)
        fresh = service.keys.envelope(self.tenant, self.name, head.dek, new_kek, new_kms_name)
        service.heads.commit(head, Rewrap(fresh.key_mode, fresh.wrapped_dek, fresh.kms_name))
        return fresh.key_mode

    def rotate(
        self,
        new_kek: bytes | None,
        new_kms_name: str | None,
        runner: JobRunner,
        *,
        kms_name: str | None = None,
        reencrypt: bool = False,
        wait_seconds: float = 0.0,
    ) -> Rotation:
        """``rotate_key``, and with ``reencrypt`` the rewrite under the new data key run by
        ``runner`` while the caller waits up to ``wait_seconds``. The rotation stands whatever
        the rewrite does: a runner that cannot start it gives the mark back, so the next
        request on the index queues it again."""
        mode = self.rotate_key(new_kek, new_kms_name, kms_name, reencrypt)
        if not reencrypt:
            return Rotation(mode)
        try:
            result = runner.run(self.tenant, self.name, new_kek, kind="reencrypt", wait_seconds=wait_seconds)
        except Exception as exc:
            log.warning("rewrite after a key rotation failed: %s", type(exc).__name__)
            event("jobs_not_queued")
            try:
                self._service.release(self.tenant, self.name, new_kek, "reencrypt")
            except Exception as again:  # a store fault: the mark goes stale in its time
                log.warning("could not give back the reencrypt mark: %s", type(again).__name__)
            return Rotation(mode, "retry")
        return Rotation(mode, "running" if result is None else "done")

    def train(self, runner: JobRunner, params: dict[str, Any], wait_seconds: float) -> JobResult | None:
        """An explicit training, run by ``runner`` while the caller waits up to
        ``wait_seconds`` (``None``: it goes on in the background). The key was proved and the
        index found when it was opened, so those errors never come from the worker."""
        return runner.run(
            self.tenant, self.name, self._kek, kind="train", params=params, wait_seconds=wait_seconds
        )

    # -- jobs ---------------------------------------------------------------------------
    def queue_after_upsert(self, result: UpsertResult, queue: JobQueue) -> list[str]:
        """Queue what an upsert made due (a training, else a merge; a re-encryption); a job
        the queue refuses gives its mark back and the write stays acknowledged."""
        return self._queue(queue, result.training_triggered, result.merge_due, result.rewrite_due)

    def _queue(self, queue: JobQueue, training: bool, merge: bool, rewrite: bool) -> list[str]:
        """``Dispatch.queue_due`` for this index, under the key that opened it."""
        dispatch = self._service.dispatch
        return dispatch.queue_due(
            self.tenant, self.name, self._kek, queue, training=training, merge=merge, rewrite=rewrite
        )

    # -- batch loads ---------------------------------------------------------------------
    def submit_load(self, job: LoadJob) -> tuple[LoadJob, bool]:
        """Record a load job (queued) unless the same one is recorded; returns it and whether new."""
        return self._service.loader.submit(self._head, job)

    def claim_load(self, job_id: str, owner: str) -> LoadJob:
        """Take the job for ``owner`` (its checkpoint opened), unless another worker's lease holds."""
        return self._service.loader.claim(self._head, job_id, owner)

    def run_load(
        self,
        job: LoadJob,
        read: ChunkSource,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[LoadJob], None] = lambda job: None,
    ) -> LoadJob:
        """Advance a claimed job to its end or until ``should_stop()`` (``Loader.run``)."""
        return self._service.loader.run(self._head, job, read, should_stop=should_stop, progress=progress)

    def fail_load(self, job: LoadJob, error: str) -> LoadJob:
        """End ``job`` as failed with ``error``; what it staged is deleted."""
        return self._service.loader.fail(self._head, job, error)

    def read_load(self, job_id: str) -> LoadJob:
        """The job record with its sealed checkpoint opened (why rows were refused)."""
        return self._service.loader.jobs.read(self.tenant, job_id, self._head)

    def queue_after_load(self, job: LoadJob, queue: JobQueue) -> list[str]:
        """Queue what a load's commit made due, as after any upsert (``queue_after_upsert``)."""
        if job.state != "succeeded":
            return []
        merge = self._service.merge_due(self.tenant, self.name)
        return self._queue(queue, job.training_triggered, merge, job.rewrite_triggered)


def wants_worker(job: LoadJob, now: float) -> bool:
    """Whether a load job wants a worker: queued, paused, or running or committing with its
    lease run out (its worker is gone)."""
    stale = now - job.updated >= LEASE_SECONDS
    return job.state in ("queued", "paused") or (job.state in ("running", "committing") and stale)
