"""OpenIndex: one index opened with its key proved once, and what a holder of it may do (the
batch-load steps so far; LanceDB's table handle is the model), so callers outside the engine
never hold a head or reach into the service's parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .ports import JobQueue
from .store.jobs import LEASE_SECONDS, LoadJob
from .usecases.chunks import ChunkSource

if TYPE_CHECKING:
    from .service import IndexService
    from .store.heads import Head


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
        model = self._head.body.config.get("embedding_model")
        return str(model) if model else None

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
        """Queue what a load's commit made due, as after any upsert (``IndexService.queue_due``)."""
        if job.state != "succeeded":
            return []
        return self._service.queue_due(
            self.tenant,
            self.name,
            self._kek,
            queue,
            training=job.training_triggered,
            merge=self._service.merge_due(self.tenant, self.name),
            rewrite=job.rewrite_triggered,
        )


def wants_worker(job: LoadJob, now: float) -> bool:
    """Whether a load job wants a worker: queued, paused, or running or committing with its
    lease run out (its worker is gone)."""
    stale = now - job.updated >= LEASE_SECONDS
    return job.state in ("queued", "paused") or (job.state in ("running", "committing") and stale)
