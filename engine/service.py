"""IndexService: the use cases the handlers call, as one thin facade over the engine's parts.

Every call opens the index head (``heads``: a conditional GET when warm) and proves the
caller's key (``keys``). Writes go through ``writes`` (sealed segment, head CAS, adopted by
this container's cache) and are acknowledged only after the CAS; reads go through ``reads``
over the ``cache`` of decrypted states; ``maintenance`` trains, merges and sweeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from .arrays.backend import Backend, select
from .arrays.text import TextConfig
from .codec import crypto
from .codec.segment import Segment
from .errors import (
    IndexBusy,
    IndexExists,
    IndexNotFound,
    Unauthorized,
    ValidationFailed,
)
from .handle import OpenIndex, wants_worker
from .memory.cache import StateCache
from .model import (
    MAX_VALUE,
    IndexConfig,
    JobResult,
    Rotation,
    RowBatch,
    TrainResult,
    UpsertResult,
    check_index_name,
    value_bound,
)
from .names import unescape
from .ports import BlobStore, JobRunner, KeyWrapper, StoreConflict
from .store.heads import Heads
from .store.jobs import Jobs, LoadJob
from .store.keys import KeyRing
from .store.manifest import HeadBody, RetryPolicy, seal_head
from .store.transactions import JobRules, MarkDeleting, Rewrap, check_dimension
from .timing import event, stage
from .usecases import policy as field_policy
from .usecases.dispatch import Dispatch
from .usecases.loads import Loader
from .usecases.maintenance import Maintenance
from .usecases.reads import Reader
from .usecases.rekey import Rekeyer
from .usecases.writes import Writer

log = logging.getLogger("ciphervec.service")


class IndexService:
    """The use cases of ciphervec over a ``BlobStore``."""

    # Settings live in the parts (``heads.retry``, ``maintenance.merge_at``, ...): setting a
    # name the facade does not have fails loudly instead of changing nothing.
    __slots__ = (
        "backend",
        "cache",
        "dispatch",
        "get",
        "heads",
        "keys",
        "list_ids",
        "loader",
        "maintenance",
        "merge_tail",
        "num_vectors",
        "orphaned_jobs",
        "query",
        "query_metadata",
        "queue_due",
        "recover",
        "release",
        "text_query",
        "hybrid_query",
        "reader",
        "rekeyer",
        "rewrite",
        "search",
        "set_training",
        "store",
        "sweep",
        "train",
        "train_threshold",
        "training_indexes",
        "training_progress",
        "writer",
    )

    def __init__(
        self,
        store: BlobStore,
        key_wrapper: KeyWrapper | None = None,
        *,
        prefix: str = "",
        train_threshold: int = 65536,
        backend: Backend | None = None,
        retry: RetryPolicy | None = None,
        cache_bytes: int = 8 << 30,
        retire_grace_seconds: float = 900.0,
        merge_at: int = 256,
        lazy_rows: int = 50_000,
        max_filter_scan: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.backend = backend or select("auto")
        self.train_threshold = train_threshold
        self.keys = KeyRing(key_wrapper)
        self.heads = Heads(store, self.keys, prefix, retry)
        self.cache = StateCache(self.heads, self.backend, cache_bytes=cache_bytes, lazy_rows=lazy_rows)
        self.heads.on_forget = self.cache.drop
        self.writer = Writer(self.heads, self.cache)
        self.reader = Reader(self.heads, self.cache, self.backend, max_filter_scan=max_filter_scan)
        self.maintenance = Maintenance(
            self.heads,
            self.cache,
            self.writer,
            self.backend,
            train_threshold=train_threshold,
            retire_grace_seconds=retire_grace_seconds,
            merge_at=merge_at,
            clock=clock,
        )
        self.loader = Loader(self.heads, Jobs(self.heads, clock), self.rules)
        self.maintenance.keeps_staged = self.loader.jobs.keeps
        self.rekeyer = Rekeyer(
            self.heads,
            self.cache,
            self.keys,
            self.loader.jobs,
            self.maintenance.sweep,
            retire_grace_seconds,
            clock,
        )
        # reads
        self.num_vectors = self.reader.num_vectors
        self.list_ids = self.reader.list_ids
        self.get = self.reader.get
        self.query = self.reader.query
        self.query_metadata = self.reader.query_metadata
        self.text_query = self.reader.text_query
        self.hybrid_query = self.reader.hybrid_query
        self.search = self.reader.search
        # maintenance
        self.set_training = self.maintenance.set_training
        self.train: Callable[..., TrainResult] = self.maintenance.train
        self.merge_tail = self.maintenance.merge_tail
        self.sweep = self.maintenance.sweep
        self.rewrite = self.rekeyer.rewrite
        # background jobs
        self.dispatch = Dispatch(
            self.store, self.heads, self.maintenance, self.rekeyer, self.rules, self.list_indexes
        )
        self.orphaned_jobs = self.dispatch.orphaned_jobs
        self.recover = self.dispatch.recover
        self.release = self.dispatch.release
        self.queue_due = self.dispatch.queue_due
        self.training_indexes = self.dispatch.training_indexes
        self.training_progress = self.dispatch.training_progress

    # -- index lifecycle -------------------------------------------------------------
    def create_index(
        self,
        tenant: str,
        name: str,
        config: IndexConfig,
        *,
        kek: bytes | None = None,
        kms_name: str | None = None,
    ) -> None:
        check_index_name(name)
        with stage("crypto"):
            dek = crypto.new_data_key()
            env = self.keys.envelope(tenant, name, dek, kek, kms_name)
            sealed = seal_head(env, HeadBody(asdict(config)), crypto.IndexCipher(dek, tenant, name))
        try:
            with stage("store"):
                self.store.put_if_absent(self.heads.root(tenant, name) + "head", sealed)
        except StoreConflict:
            raise IndexExists(f"Index '{name}' already exists") from None
        self.heads.forget((tenant, name))

    def describe(self, tenant: str, name: str, kek: bytes | None) -> dict[str, Any]:
        head = self.heads.open(tenant, name, kek)
        cfg, cent = head.body.config, head.body.centroids
        n_lists = cent.n_lists if cent else 1
        legacy = dict(cfg.get("index_config") or {})
        kind = cfg.get("index_type", "ivfflat")
        legacy.update({"type": kind, "index_type": kind, "dimension": cfg["dimension"]})
        legacy.update({"n_lists": n_lists, "metric": cfg["metric"]})
        return {
            "index_name": name,
            "is_trained": cent is not None,
            "dimension": int(cfg["dimension"]),
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
                "rewriting": self.rekeyer.active(head.envelope),
            },
        }

    def rotate_key(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
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
        head = self.heads.open(tenant, name, kek)  # proves the current key
        if kms_name is not None and kms_name != head.envelope.kms_name:
            raise Unauthorized("kms_name does not open this index")
        if reencrypt:
            if self.loader.jobs.staging(head, self.maintenance.clock()):
                raise IndexBusy(
                    "a batch load into this index is in progress: its staged rows are sealed under "
                    "the current data key; rotate with reencrypt once it has ended"
                )
            return self.rekeyer.rotate(head, new_kek, new_kms_name)
        fresh = self.keys.envelope(tenant, name, head.dek, new_kek, new_kms_name)
        self.heads.commit(head, Rewrap(fresh.key_mode, fresh.wrapped_dek, fresh.kms_name))
        return fresh.key_mode

    def rotate(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
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
        mode = self.rotate_key(tenant, name, kek, new_kek, new_kms_name, kms_name, reencrypt)
        if not reencrypt:
            return Rotation(mode)
        try:
            result = runner.run(tenant, name, new_kek, kind="reencrypt", wait_seconds=wait_seconds)
        except Exception as exc:
            log.warning("rewrite after a key rotation failed: %s", type(exc).__name__)
            event("jobs_not_queued")
            self.release(tenant, name, new_kek, "reencrypt")
            return Rotation(mode, "retry")
        return Rotation(mode, "running" if result is None else "done")

    def train_now(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        runner: JobRunner,
        params: dict[str, Any],
        wait_seconds: float,
    ) -> JobResult | None:
        """An explicit training, run by ``runner`` while the caller waits up to
        ``wait_seconds`` (``None``: it goes on in the background). The key is proved and the
        index found first, so those errors come from here, not from the worker."""
        self.describe(tenant, name, kek)
        return runner.run(tenant, name, kek, kind="train", params=params, wait_seconds=wait_seconds)

    def embedding_model(self, tenant: str, name: str, kek: bytes | None) -> str | None:
        """The model that embeds this index's contents and text queries, if it has one."""
        return self.heads.open(tenant, name, kek).body.config.get("embedding_model")

    def delete_index(self, tenant: str, name: str, kek: bytes | None) -> None:
        """Mark the head as being deleted (404 for readers, writers refused), delete every
        object, then the head: a delete that fails part-way leaves an index that is gone
        for everyone and that the next delete finishes."""
        head = self.heads.open(tenant, name, kek, deleting=True)
        if not head.envelope.deleting:
            self.heads.commit(head, MarkDeleting())
        self.heads.forget(head.key)
        for key in list(self.store.list(head.root)):
            if key != head.root + "head":
                self.store.delete(key)
        self.store.delete(head.root + "head")
        self.heads.forget(head.key)

    def list_indexes(self, tenant: str) -> list[str]:
        """The tenant's index names, without those being deleted (their heads say so)."""
        root = self.heads.tenant_root(tenant)
        names = []
        for key in self.store.list(root):
            part, _, leaf = key[len(root) :].partition("/")
            if leaf == "head":
                names.append(unescape(part))
        return sorted(n for n in names if not self._being_deleted(tenant, n))

    def _being_deleted(self, tenant: str, name: str) -> bool:
        try:
            return self.heads.envelope(tenant, name).deleting
        except IndexNotFound:
            return True  # deleted since it was listed

    def rules(self) -> JobRules:
        """What makes a training or a re-encryption due, as of now, and who marks it."""
        m, r = self.maintenance, self.rekeyer
        return JobRules(m.clock(), m.worker, r.worker, m.train_threshold, r.retire_grace)

    def open(self, tenant: str, name: str, kek: bytes | None) -> OpenIndex:
        """The index, its key proved once, as a handle for the steps that follow."""
        return OpenIndex(self, self.heads.open(tenant, name, kek), kek)

    def key_mode(self, tenant: str, name: str) -> str:
        """``client`` or ``kms``: who holds the index's key, read without proving any key."""
        return self.heads.envelope(tenant, name).key_mode

    def load_job(self, tenant: str, job_id: str) -> LoadJob:
        """A load job's public record (its checkpoint stays sealed: ``OpenIndex.read_load``)."""
        return self.loader.jobs.read(tenant, job_id)

    def load_wants_worker(self, job: LoadJob) -> bool:
        """Whether a load job wants a worker now (queued, paused, or its worker's lease ran out)."""
        return wants_worker(job, self.loader.jobs.clock())

    def seal_for_job(self, kek: bytes, context: dict[str, str]) -> str:
        """A client key sealed for a queued job's payload (KMS, bound to ``context``)."""
        return self.keys.seal_for_job(kek, context)

    def open_for_job(self, sealed: str, context: dict[str, str]) -> bytes:
        """What ``seal_for_job`` sealed, opened by the worker that runs the job."""
        return self.keys.open_for_job(sealed, context)

    def sweep_delay(self, tenant: str, name: str, kek: bytes | None) -> float | None:
        """Seconds until the objects still under an old data key may be swept (None: none left)."""
        return self.rekeyer.sweep_delay(tenant, name, kek)

    def merge_due(self, tenant: str, name: str) -> bool:
        """The index's write-ahead tail, as of the head this container holds, is long enough
        to merge in the background."""
        return self.maintenance.merge_due(self.heads.held((tenant, name)))

    # -- writes ----------------------------------------------------------------------
    def upsert(self, tenant: str, name: str, kek: bytes | None, batch: RowBatch) -> UpsertResult:
        head = self.heads.open(tenant, name, kek)
        snap = self.cache.snapshot(head, full=False)
        check_dimension(int(head.body.config["dimension"]), batch.dimension)
        bound = value_bound(head.precision)
        if bound < MAX_VALUE and float(np.abs(batch.vectors).max(initial=0)) > bound:
            raise ValidationFailed(
                f"a {head.precision} index stores values within ±{bound:g}", ("body", "vectors")
            )
        fresh = snap.count_new(batch.ids)
        # A partial state counts its unloaded lists whole (an estimate either way).
        estimate = snap.live + fresh + (snap.partial.unloaded_rows() if snap.partial else 0)
        seg = Segment("upsert", batch.ids, batch.vectors, batch.metadata, batch.contents)
        rules = self.rules()
        done = self.writer.segment(head, seg, dimension=batch.dimension, estimate=estimate, rules=rules)
        event("rows_written", len(batch.ids))
        due = done.outcome  # (a training to queue, an interrupted re-encryption to queue again)
        merge_due = self.maintenance.merge_due(done.head)
        n = len(batch.ids)
        return UpsertResult(n, estimate, due.training, self.train_threshold, merge_due, due.rewrite)

    def delete_vectors(self, tenant: str, name: str, kek: bytes | None, ids: list[str]) -> int:
        if any(not isinstance(i, str) for i in ids):
            raise ValidationFailed("ids must be strings", ("body", "ids"))
        head = self.heads.open(tenant, name, kek)
        if ids:
            self.writer.segment(head, Segment("delete", list(ids)))
            event("rows_deleted", len(ids))
        return len(ids)
