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

from .arrays.backend import Backend, select
from .codec import crypto
from .errors import (
    IndexExists,
    IndexNotFound,
)
from .handle import OpenIndex, wants_worker
from .memory.cache import StateCache
from .model import (
    IndexConfig,
    RowBatch,
    TrainResult,
    UpsertResult,
    check_index_name,
)
from .names import unescape
from .ports import BlobStore, JobQueue, KeyWrapper, StoreConflict
from .store.heads import Heads
from .store.jobs import Jobs, LoadJob
from .store.keys import KeyRing
from .store.manifest import Envelope, HeadBody, RetryPolicy, seal_head
from .store.transactions import JobRules, MarkDeleting
from .timing import stage
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
        "heads",
        "keys",
        "loader",
        "maintenance",
        "merge_tail",
        "orphaned_jobs",
        "recover",
        "release",
        "reader",
        "rekeyer",
        "rewrite",
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
        self.reader = Reader(self.cache, self.backend, max_filter_scan=max_filter_scan)
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
        # maintenance
        self.set_training = self.maintenance.set_training
        self.train: Callable[..., TrainResult] = self.maintenance.train
        self.merge_tail = self.maintenance.merge_tail
        self.sweep = self.maintenance.sweep
        self.rewrite = self.rekeyer.rewrite
        # background jobs
        self.dispatch = Dispatch(
            self.store, self.heads, self.maintenance, self.rekeyer, self.rules, self.envelopes
        )
        self.orphaned_jobs = self.dispatch.orphaned_jobs
        self.recover = self.dispatch.recover
        self.release = self.dispatch.release
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
        return self.open(tenant, name, kek).describe()

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
        """``OpenIndex.rotate_key``."""
        return self.open(tenant, name, kek).rotate_key(new_kek, new_kms_name, kms_name, reencrypt)

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
        return sorted(self.envelopes(tenant))

    def envelopes(self, tenant: str) -> dict[str, Envelope]:
        """Each of the tenant's indexes (not being deleted) with its plaintext envelope: one
        listing and one head read per index, no key proved."""
        root = self.heads.tenant_root(tenant)
        out = {}
        for key in self.store.list(root):
            part, _, leaf = key[len(root) :].partition("/")
            if leaf != "head":
                continue
            name = unescape(part)
            try:
                env = self.heads.envelope(tenant, name)
            except IndexNotFound:
                continue  # deleted since it was listed
            if not env.deleting:
                out[name] = env
        return out

    def rules(self) -> JobRules:
        """What makes a training or a re-encryption due, as of now, and who marks it."""
        m, r = self.maintenance, self.rekeyer
        return JobRules(m.clock(), m.worker, r.worker, m.train_threshold, r.retire_grace)

    def open(self, tenant: str, name: str, kek: bytes | None) -> OpenIndex:
        """The index, its key proved once, as a handle for the steps that follow."""
        return OpenIndex(self, self.heads.open(tenant, name, kek), kek)

    def take_up(self, tenant: str, name: str, kek: bytes | None, queue: JobQueue) -> list[str]:
        """Take up and queue the jobs a dead process left marked on this index (free when the
        held head marks none; ``Dispatch.recover``); returns the kinds queued."""
        kinds = self.recover(tenant, name, kek)
        if not kinds:
            return []
        training, rewrite = "train" in kinds, "reencrypt" in kinds
        return self.dispatch.queue_due(tenant, name, kek, queue, training=training, rewrite=rewrite)

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

    # -- one call per request, for callers that hold no handle (the CLI, tests) ------------
    # Each opens the index (its key proved) and does one thing: ``OpenIndex`` has the rest.
    def upsert(self, tenant: str, name: str, kek: bytes | None, batch: RowBatch) -> UpsertResult:
        return self.open(tenant, name, kek).upsert(batch)

    def delete_vectors(self, tenant: str, name: str, kek: bytes | None, ids: list[str]) -> int:
        return self.open(tenant, name, kek).delete(ids)

    def num_vectors(self, tenant: str, name: str, kek: bytes | None) -> int:
        return self.open(tenant, name, kek).num_vectors()

    def list_ids(self, tenant: str, name: str, kek: bytes | None) -> list[str]:
        return self.open(tenant, name, kek).list_ids()

    def get(self, tenant: str, name: str, kek: bytes | None, ids: list[str], include: list[str]) -> list[Any]:
        return self.open(tenant, name, kek).get(ids, include)

    def query(self, tenant: str, name: str, kek: bytes | None, queries: Any, **options: Any) -> list[Any]:
        return self.open(tenant, name, kek).query(queries, **options)

    def text_query(self, tenant: str, name: str, kek: bytes | None, text: Any, **options: Any) -> list[Any]:
        return self.open(tenant, name, kek).text_query(text, **options)

    def hybrid_query(
        self, tenant: str, name: str, kek: bytes | None, queries: Any, text: Any, **options: Any
    ) -> list[Any]:
        return self.open(tenant, name, kek).hybrid_query(queries, text, **options)

    def search(
        self, tenant: str, name: str, kek: bytes | None, queries: Any, text: Any, **options: Any
    ) -> list[Any]:
        return self.open(tenant, name, kek).search(queries, text, **options)

    def query_metadata(
        self, tenant: str, name: str, kek: bytes | None, filters: Any, **options: Any
    ) -> list[str]:
        return self.open(tenant, name, kek).query_metadata(filters, **options)
