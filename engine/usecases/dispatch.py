"""Background jobs of indexes, as the service offers them: queueing what a commit made due,
giving back the mark of a job that could not be queued, taking up jobs a dead process had
marked, and what training-status shows of the trainings under way."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..errors import CipherVecError
from ..names import unescape
from ..ports import BlobStore, JobQueue
from ..store.heads import Heads
from ..store.manifest import Envelope
from ..store.transactions import JobRules, TakeOrphans, TrainingStage
from ..timing import event
from .maintenance import Maintenance
from .rekey import Rekeyer

log = logging.getLogger("ciphervec.service")


class Dispatch:
    """The service's background-job desk (see the module docstring)."""

    def __init__(
        self,
        store: BlobStore,
        heads: Heads,
        maintenance: Maintenance,
        rekeyer: Rekeyer,
        rules: Callable[[], JobRules],
        envelopes: Callable[[str], dict[str, Envelope]],
    ) -> None:
        self.store = store
        self.heads = heads
        self.maintenance = maintenance
        self.rekeyer = rekeyer
        self.rules = rules
        self.envelopes = envelopes

    def orphaned_jobs(self) -> list[tuple[str, str, str, str]]:
        """``(tenant, name, key_mode, kind)`` of every index whose head marks a training or a
        re-encryption (kind ``train`` / ``reencrypt``) nobody is doing any more (its process
        died, or the mark went stale): to be queued again."""
        out: list[tuple[str, str, str, str]] = []
        rules = self.rules()
        for key in self.store.list(self.heads.prefix):
            parts = key[len(self.heads.prefix) :].split("/")
            if len(parts) != 3 or parts[2] != "head":
                continue
            tenant, name = unescape(parts[0]), unescape(parts[1])
            try:
                env = self.heads.envelope(tenant, name)
            except CipherVecError:
                continue
            out.extend((tenant, name, env.key_mode, kind) for kind in rules.orphans(env))
        return out

    def recover(self, tenant: str, name: str, kek: bytes | None) -> list[str]:
        """Take up the jobs of this index that a process which died had marked: each is
        marked again as this worker's and returned (``train``, ``reencrypt``) for the caller
        to queue. Any request that proves the key calls it, so a client-key index whose
        writes are done still gets its training. Free when the held head marks nothing."""
        held = self.heads.held((tenant, name))
        rules = self.rules()
        if held is None or not rules.orphans(held.envelope, held.body):
            return []
        head = self.heads.open(tenant, name, kek)  # proves the key, whatever the caller did
        taken = self.heads.commit(head, TakeOrphans(rules)).outcome
        if taken:
            event("jobs_recovered", len(taken))
        return taken

    def release(self, tenant: str, name: str, kek: bytes | None, kind: str) -> None:
        """Give back the mark of a job (``train``, ``reencrypt``) that could not be queued,
        so the next write or request queues it again."""
        if kind == "train":
            with contextlib.suppress(CipherVecError):
                self.maintenance.set_training(tenant, name, kek, None)
        elif kind == "reencrypt":
            self.rekeyer.unmark(tenant, name, kek)  # quiet by itself

    def queue_due(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        queue: JobQueue,
        *,
        training: bool = False,
        merge: bool = False,
        rewrite: bool = False,
    ) -> list[str]:
        """Queue what a commit made due (a training, else a merge; a re-encryption) and return
        the kinds queued. A job the queue refuses gives its mark back, so the next write or
        request queues it again; the write that made it due stays acknowledged either way."""
        kinds = (["train"] if training else ["merge"] if merge else []) + (["reencrypt"] if rewrite else [])
        queued = []
        for kind in kinds:
            try:
                queue.enqueue(tenant, name, kek, kind=kind)
            except Exception as exc:  # an async invoke, say: the port's failure is not the write's
                log.warning("could not queue the %s job of an index: %s", kind, type(exc).__name__)
                event("jobs_not_queued")
                try:
                    self.release(tenant, name, kek, kind)
                except Exception as again:  # a store fault: the mark goes stale in its time
                    log.warning("could not give back the %s mark: %s", kind, type(again).__name__)
                continue
            queued.append(kind)
        return queued

    def training_indexes(self, tenant: str) -> list[tuple[str, str]]:
        """``(name, state)`` of this tenant's indexes queued or running training."""
        return [(name, str(mark["state"])) for name, mark in self.training_progress(tenant).items()]

    def training_progress(self, tenant: str) -> dict[str, dict[str, Any]]:
        """This tenant's indexes queued or running training, each with its state, since when,
        and for a running one the stage it has reached (``transactions.TrainingStage``)."""
        out = {}
        for name, env in self.envelopes(tenant).items():  # each head read once
            if self.maintenance.training_active(env):
                assert env.training is not None
                mark = env.training
                shown = {"state": str(mark.get("state")), "since": mark.get("since")}
                if "stage" in mark:
                    steps = len(TrainingStage.STAGES)
                    shown |= {"stage": mark["stage"], "step": mark.get("step"), "steps": steps}
                    shown["stage_since"] = mark.get("stage_at")
                out[name] = shown
        return out
