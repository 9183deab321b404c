"""Batch loads: a file's rows checked, sealed into staged segments while they stream in, and
made visible by one head commit; the job record (``jobs``) checkpoints the work between
invocations. Staged segments are named ``load/<job_id>/<id>``; the commit appends them to
the head in file order (so a later duplicate id wins), once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..arrays import blas
from ..codec.segment import Segment
from ..errors import BadSource, CipherVecError, LoadBusy
from ..memory.prefetch import prefetched
from ..model import value_bound
from ..names import new_id
from ..store.heads import Head, Heads
from ..store.jobs import ABANDON_SECONDS, DONE, LEASE_SECONDS, Jobs, LoadJob
from ..store.transactions import CommitLoad, JobRules
from .chunks import Chunk, ChunkSource, checked, guarded

MAX_REASONS = 10
WRITERS = 2  # staged segments being sealed and written at once


class Loader:
    """Runs load jobs: check, stage, checkpoint, commit once."""

    def __init__(self, heads: Heads, jobs: Jobs, rules: Callable[[], JobRules]) -> None:
        self.heads = heads
        self.jobs = jobs
        self.rules = rules  # what a commit makes due, as of its moment

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
        read: ChunkSource,
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
                blas.one_thread(),  # the staging threads are the parallelism
                ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="ciphervec-stage") as pool,
                prefetched(guarded(read(dict(job.position), dimension))) as chunks,
            ):
                try:
                    for chunk in chunks:
                        if dimension is None and chunk.vectors is not None and chunk.vectors.ndim == 2:
                            dimension = int(chunk.vectors.shape[1]) or None
                        seg, bad = checked(chunk, dimension or 0, value_bound(head.precision))
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
            return self.fail(head, job, "the file has rows that cannot be loaded; nothing was loaded")
        if job.state != "committing":  # from here on the job is never started over
            job.state = "committing"
            self.jobs.save(head.tenant, job, head)
        return self._commit(head, job, t0, counted)

    def _stage(self, head: Head, job_id: str, seg: Segment) -> str:
        """Seal and write one staged segment; returns its name."""
        name = f"load/{job_id}/{new_id()}"
        self.heads.write_rows(head, name, seg)
        return name

    def fail(self, head: Head, job: LoadJob, error: str) -> LoadJob:
        """End ``job`` as failed with ``error``; what it staged is deleted."""
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
        staged = tuple((str(name), int(rows)) for name, rows in job.staged)
        dimension = int(head.body.config.get("dimension") or 0) or job.dimension or 0
        present = set(self._staged_objects(head, job.job_id))
        done_before = bool(staged) and not all(name in present for name, _ in staged)
        op = CommitLoad(job.job_id, staged, dimension, done_before, self.rules())
        try:
            done = self.heads.commit(head, op).outcome
        except CipherVecError as exc:
            if exc.status >= 500:
                raise  # contention and faults: the job stays resumable
            return self.fail(head, job, exc.detail)
        job.state, job.finished, job.owner = "succeeded", self.jobs.clock(), None
        job.rows_loaded = sum(rows for _, rows in staged)
        job.index_count, job.training_triggered = done.count, done.due.training
        job.rewrite_triggered = done.due.rewrite
        job.seconds = counted + time.perf_counter() - t0
        self.jobs.save(head.tenant, job, head)
        return job

    def _staged_objects(self, head: Head, job_id: str) -> list[str]:
        prefix = f"{head.root}load/{job_id}/"
        return [key[len(head.root) :] for key in self.heads.store.list(prefix)]


def _ready(future: Future[Any] | None) -> bool:
    return future is None or future.done()
