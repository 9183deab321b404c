"""IndexService: the use cases (create, upsert, query, get, delete, train, ...).

Every call re-reads the index head (a conditional GET when warm), proves the caller's
key by unwrapping the data key, brings the in-memory state up to the head by applying
any segments it has not seen, and only then reads or writes. Writes follow the commit
protocol of ``manifest.commit`` and are acknowledged only after the head CAS succeeded.

Cold reads of a trained index are lazy: a query on a container that has not loaded the
index reads the head, the centroids, the runs' directories and only the IVF lists it
probes (one object each); the remaining lists are filled in by a background thread, and
any call that needs every row (get, filters, training, ...) completes the load first.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from . import crypto, kmeans, run, segment
from .backend import Backend, select
from .errors import (
    CipherVecError,
    Contention,
    IndexExists,
    IndexNotFound,
    InvalidRequest,
    TrainingFailed,
    Unauthorized,
    ValidationFailed,
)
from .filters import Column, compile_filter, compile_mask, lookup
from .manifest import (
    Centroids,
    Envelope,
    HeadBody,
    RetryPolicy,
    SegmentRef,
    commit,
    open_body,
    parse_envelope,
    seal_head,
)
from .model import IndexConfig, RowBatch, TrainResult, UpsertResult, check_index_name
from .ports import BlobNotFound, BlobStore, KeyWrapper, StoreConflict
from .search import knn, normalize
from .segment import Segment
from .state import IndexState, Partial, PartialRun, unit_norm

TRAINING_STALE_SECONDS = 3600.0
# Parallel reads of a run's list objects (S3 GETs are latency-bound) when a caller waits;
# the background fill reads with fewer threads, in small batches, so that the requests it
# shares the GIL and the index lock with stay fast.
_READERS = 16
_FILL_READERS = 2
_FILL_BATCH = 4

log = logging.getLogger("ciphervec.service")


def new_id() -> str:
    """Time-ordered unique object id: 16 hex digits of nanoseconds + 16 random."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


@dataclass
class _Head:
    """A verified, decrypted head as of one read."""

    tenant: str
    name: str
    root: str
    etag: str
    envelope: Envelope
    body: HeadBody
    cipher: crypto.IndexCipher
    dek: bytes


class IndexService:
    """The use cases of ciphervec over a ``BlobStore``."""

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key_wrapper = key_wrapper
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.train_threshold = train_threshold
        self.backend = backend or select("auto")
        self.retry = retry or RetryPolicy()
        self.cache_bytes = cache_bytes
        self.retire_grace = retire_grace_seconds
        self.merge_at = merge_at
        self.lazy_rows = lazy_rows
        self.clock = clock
        self._heads: dict[tuple[str, str], _Head] = {}
        self._kms_deks: dict[bytes, bytes] = {}
        self._proven: dict[tuple[bytes, bytes], bytes] = {}
        self._states: OrderedDict[tuple[str, str], tuple[str, IndexState, list[str]]] = OrderedDict()
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._commit_locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._fillers: dict[tuple[str, str], threading.Thread] = {}

    # -- paths and locks ---------------------------------------------------------
    def _tenant_root(self, tenant: str) -> str:
        return f"{self.prefix}{_escape(tenant)}/"

    def _root(self, tenant: str, name: str) -> str:
        return f"{self._tenant_root(tenant)}{_escape(name)}/"

    def _lock(self, key: tuple[str, str], table: dict[Any, Any], factory: Any) -> Any:
        with self._guard:
            if key not in table:
                table[key] = factory()
            return table[key]

    # -- keys ----------------------------------------------------------------------
    def _kms_context(self, tenant: str, name: str) -> dict[str, str]:
        return {"purpose": "ciphervec-dek", "tenant": tenant, "index": name}

    def _unwrap(self, tenant: str, name: str, env: Envelope, kek: bytes | None) -> bytes:
        """The data key of ``env``, proving ``kek`` (or asking KMS for server-managed keys).

        A key that already opened this exact wrapped data key is recognised by its SHA-256
        (kept in memory only, like the data keys themselves), saving an AEAD per request.
        """
        if kek is not None and env.key_mode == "client":
            proof = (env.wrapped_dek, hashlib.sha256(kek).digest())
            cached = self._proven.get(proof)
            if cached is None:
                cached = self._unwrap_uncached(tenant, name, env, kek)
                if len(self._proven) > 4096:
                    self._proven.clear()
                self._proven[proof] = cached
            return cached
        return self._unwrap_uncached(tenant, name, env, kek)

    def _unwrap_uncached(self, tenant: str, name: str, env: Envelope, kek: bytes | None) -> bytes:
        if env.key_mode == "kms":
            if self.key_wrapper is None or env.kms_name is None:
                raise InvalidRequest("this index uses a server-managed key, but no KMS is configured")
            cached = self._kms_deks.get(env.wrapped_dek)
            if cached is None:
                cached = self.key_wrapper.unwrap(
                    env.kms_name, env.wrapped_dek, self._kms_context(tenant, name)
                )
                self._kms_deks[env.wrapped_dek] = cached
            return cached
        if kek is None:
            raise Unauthorized("index_key is required for this index")
        return crypto.unwrap_data_key(kek, env.wrapped_dek, tenant, name)

    # -- opening -------------------------------------------------------------------
    def _open(self, tenant: str, name: str, kek: bytes | None) -> _Head:
        """Read the head (cheaply when unchanged) and prove the caller's key."""
        check_index_name(name)
        key = (tenant, name)
        root = self._root(tenant, name)
        cached = self._heads.get(key)
        try:
            got = self.store.get(root + "head", if_none_match=cached.etag if cached else None)
        except BlobNotFound:
            self._forget(key)
            raise IndexNotFound(f"Index '{name}' not found") from None
        if got is None and cached is not None:
            dek = self._unwrap(tenant, name, cached.envelope, kek)
            if dek != cached.dek:  # pragma: no cover - AEAD already rejects other keys
                raise Unauthorized("index_key does not open this index")
            return cached
        assert got is not None
        raw, etag = got
        env, sealed = parse_envelope(raw)
        dek = self._unwrap(tenant, name, env, kek)
        cipher = crypto.IndexCipher(dek, tenant, name)
        head = _Head(tenant, name, root, etag, env, open_body(env, sealed, cipher), cipher, dek)
        self._heads[key] = head
        return head

    def _forget(self, key: tuple[str, str]) -> None:
        self._heads.pop(key, None)
        with self._guard:
            self._states.pop(key, None)

    def _read_object(self, head: _Head, name: str) -> bytes:
        try:
            got = self.store.get(head.root + name)
        except BlobNotFound:
            raise IndexNotFound(f"object {name!r} of index '{head.name}' is missing") from None
        assert got is not None
        return head.cipher.decrypt(name, got[0])

    def _read_centroids(self, head: _Head, name: str) -> np.ndarray:
        return np.load(io.BytesIO(self._read_object(head, name)), allow_pickle=False)

    def _write_object(self, head: _Head, name: str, plaintext: bytes) -> None:
        self.store.put_if_absent(head.root + name, head.cipher.encrypt(name, plaintext))

    def _assigner(self, metric: str, centroids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def assign(x: np.ndarray) -> np.ndarray:
            space = normalize(x) if metric == "cosine" else x
            return self.backend.nearest(space, centroids, 1)[:, 0]

        return assign

    def _sync(self, head: _Head, full: bool = True) -> IndexState:
        """Bring the cached state up to ``head``; with ``full``, load every row (a partial
        state loads its missing lists now)."""
        state = self._sync_rows(head, full)
        if full and state.partial is not None:
            self._load_lists(head, state, state.partial.missing())
        return state

    def _sync_rows(self, head: _Head, full: bool) -> IndexState:
        """Apply new segments to the cached state, or rebuild it (lazily when allowed)."""
        key = (head.tenant, head.name)
        with self._guard:
            entry = self._states.get(key)
            if entry is not None:
                self._states.move_to_end(key)
        if entry is not None and entry[0] == head.envelope.uid and entry[1].synced_etag == head.etag:
            return entry[1]  # already at this head: the common case of a read
        names = [s.name for s in head.body.segments]
        if (
            entry is not None
            and entry[0] == head.envelope.uid
            and len(entry[2]) > len(names)
            and entry[2][: len(names)] == names
        ):
            return entry[1]  # another request already applied a newer head
        if entry is not None and entry[0] == head.envelope.uid and names[: len(entry[2])] == entry[2]:
            uid, state, applied = entry
        else:
            state, applied = self._fresh_state(head, full)
        todo = head.body.segments[len(applied) :]
        lazy = state.partial is not None  # runs open by their directory; lists come later

        def read(ref: SegmentRef) -> Any:
            if ref.kind != "run":
                return self._read_object(head, ref.name)
            return self._read_directory(head, ref.name) if lazy else self._read_run(head, ref.name)

        if todo:
            with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
                for ref, got in zip(todo, pool.map(read, todo), strict=True):
                    if isinstance(got, bytes):
                        state.apply(segment.decode(got), ref.seq)
                    elif isinstance(got, run.Directory):
                        state.open_run(ref.name, ref.seq, got)
                    else:
                        for k, rows in got:
                            state.apply(rows, ref.seq, ivf_list=k)
                    applied.append(ref.name)
        if state.partial is not None and not state.partial.missing():
            state.partial = None
        cent = head.body.centroids
        if (cent.name if cent else None) != state.centroids_name:
            if cent is None:
                state.set_centroids(None, None)
            else:
                arr = self._read_centroids(head, cent.name)
                state.set_centroids(cent.name, arr)
        if state.n_rows > 4096 and state.dead_fraction > 0.5 and state.partial is None:
            state.compact()  # overwrites and deletes: drop dead rows from memory
        state.synced_etag = head.etag
        with self._guard:
            self._states[key] = (head.envelope.uid, state, applied)
            self._states.move_to_end(key)
            self._evict()
        return state

    def _fresh_state(self, head: _Head, full: bool) -> tuple[IndexState, list[str]]:
        """An empty state for ``head``; a trained index whose base is a run gets its
        centroids first (rows keep the run's lists) and, unless ``full``, opens its runs
        lazily: only their directories are read, lists come later."""
        cfg, cent, refs = head.body.config, head.body.centroids, head.body.segments
        state = IndexState(int(cfg["dimension"]), cfg.get("storage_precision", "float32"), cfg["metric"])
        if cent is None or not refs or refs[0].kind != "run":
            return state, []
        arr = self._read_centroids(head, cent.name)
        state.set_centroids(cent.name, arr)
        if not full and self.lazy_rows and sum(r.rows for r in refs if r.kind == "run") >= self.lazy_rows:
            state.partial = Partial()  # runs below open lazily
        return state, []

    def _read_directory(self, head: _Head, name: str) -> run.Directory:
        return run.Directory.from_json(self._read_object(head, name), name)

    def _read_run(self, head: _Head, name: str) -> list[tuple[int, Segment]]:
        """Every non-empty list of a run, as ``(list number, rows)``."""
        lists = self._fetch_lists(head, [(name, k) for k in self._read_directory(head, name).lists()])
        return [(k, rows) for _, k, rows in lists]

    def _fetch_lists(
        self, head: _Head, lists: list[tuple[str, int]], readers: int = _READERS
    ) -> list[tuple[str, int, Segment]]:
        """Read, decrypt and decode ``(run name, list)`` objects, in parallel."""

        def fetch(item: tuple[str, int]) -> tuple[str, int, Segment]:
            name, k = item
            return name, k, segment.decode(self._read_object(head, run.list_name(name, k)))

        if len(lists) <= 1:
            return [fetch(item) for item in lists]
        with ThreadPoolExecutor(max_workers=min(readers, len(lists))) as pool:
            return list(pool.map(fetch, lists))

    def _apply_lists(self, state: IndexState, partial: Partial, got: list[tuple[str, int, Segment]]) -> None:
        runs = {r.name: r for r in partial.runs}
        for name, k, rows in got:
            if state.partial is partial and k not in runs[name].loaded:
                state.apply_list(runs[name], k, rows)

    def _load_lists(self, head: _Head, state: IndexState, todo: list[tuple[PartialRun, int]]) -> None:
        """Load lists of a partial state (caller holds the index lock)."""
        partial = state.partial
        if partial is None or not todo:
            return
        self._apply_lists(state, partial, self._fetch_lists(head, [(r.name, k) for r, k in todo]))

    def _fill_later(self, head: _Head, state: IndexState) -> None:
        """Load the rest of a partial state in a background thread, a few lists at a time,
        taking the index lock only to apply what was read."""
        key = (head.tenant, head.name)
        with self._guard:
            running = self._fillers.get(key)
            if running is not None and running.is_alive():
                return
            worker = threading.Thread(
                target=self._fill, args=(head, state), name="ciphervec-fill", daemon=True
            )
            self._fillers[key] = worker
        worker.start()

    def _fill(self, head: _Head, state: IndexState) -> None:
        key = (head.tenant, head.name)
        lock = self._lock(key, self._locks, threading.RLock)
        started = time.perf_counter()
        while True:
            with lock:
                entry = self._states.get(key)
                partial = state.partial
                if entry is None or entry[1] is not state or partial is None:
                    break
                todo = [(r.name, k) for r, k in partial.missing()[:_FILL_BATCH]]
            try:
                got = self._fetch_lists(head, todo, _FILL_READERS)
            except Exception as exc:  # the next full read reports it to its caller
                log.warning("background load of index lists stopped: %s", type(exc).__name__)
                return
            with lock:
                self._apply_lists(state, partial, got)
                if state.partial is None:
                    with self._guard:
                        self._evict()
        log.debug("index lists loaded in the background in %.2f s", time.perf_counter() - started)

    def _evict(self) -> None:
        total = sum(s.nbytes() for _, s, _ in self._states.values())
        while total > self.cache_bytes and len(self._states) > 1:
            _, (_, state, _) = self._states.popitem(last=False)
            total -= state.nbytes()

    def _state(
        self, tenant: str, name: str, kek: bytes | None, full: bool = True
    ) -> tuple[_Head, IndexState, Any]:
        """Open, lock and sync; the caller holds the returned lock while reading.
        ``full=False`` accepts a partial state (the caller loads the lists it needs)."""
        head = self._open(tenant, name, kek)
        lock = self._lock((tenant, name), self._locks, threading.RLock)
        lock.acquire()
        try:
            return head, self._sync(head, full), lock
        except BaseException:
            lock.release()
            raise

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
        if (kek is None) == (kms_name is None):
            raise InvalidRequest("give exactly one of index_key and kms_name")
        dek = crypto.new_data_key()
        if kek is not None:
            env = Envelope(new_id(), 1, "client", crypto.wrap_data_key(kek, dek, tenant, name))
        else:
            if self.key_wrapper is None:
                raise InvalidRequest("kms_name given, but this server has no KMS configured")
            assert kms_name is not None
            wrapped = self.key_wrapper.wrap(kms_name, dek, self._kms_context(tenant, name))
            env = Envelope(new_id(), 1, "kms", wrapped, kms_name=kms_name)
        body = HeadBody(config=asdict(config))
        cipher = crypto.IndexCipher(dek, tenant, name)
        root = self._root(tenant, name)
        try:
            self.store.put_if_absent(root + "head", seal_head(env, body, cipher))
        except StoreConflict:
            raise IndexExists(f"Index '{name}' already exists") from None
        self._forget((tenant, name))

    def describe(self, tenant: str, name: str, kek: bytes | None) -> dict[str, Any]:
        head = self._open(tenant, name, kek)
        cfg, cent = head.body.config, head.body.centroids
        n_lists = cent.n_lists if cent else 1
        legacy = dict(cfg.get("index_config") or {})
        legacy.update({"type": cfg.get("index_type", "ivfflat"), "dimension": cfg["dimension"]})
        legacy.update({"n_lists": n_lists, "metric": cfg["metric"]})
        return {
            "index_name": name,
            "is_trained": cent is not None,
            "dimension": int(cfg["dimension"]),
            "metric": cfg["metric"],
            "n_lists": n_lists,
            "n_probes": cent.auto_n_probes if cent else 1,
            "storage_precision": cfg.get("storage_precision", "float32"),
            "metadata_schema": cfg.get("metadata_schema") or {},
            "bm25": None,
            "index_type": cfg.get("index_type", "ivfflat"),
            "index_config": legacy,
        }

    def _envelope(self, tenant: str, name: str) -> Envelope:
        check_index_name(name)
        try:
            got = self.store.get(self._root(tenant, name) + "head")
        except BlobNotFound:
            raise IndexNotFound(f"Index '{name}' not found") from None
        assert got is not None
        return parse_envelope(got[0])[0]

    def delete_index(self, tenant: str, name: str, kek: bytes | None) -> None:
        head = self._open(tenant, name, kek)
        self.store.delete(head.root + "head")
        self._forget((tenant, name))
        for key in list(self.store.list(head.root)):
            self.store.delete(key)

    def list_indexes(self, tenant: str) -> list[str]:
        root = self._tenant_root(tenant)
        names = []
        for key in self.store.list(root):
            rest = key[len(root) :]
            part, _, leaf = rest.partition("/")
            if leaf == "head":
                names.append(unquote(part))
        return sorted(names)

    def training_indexes(self, tenant: str) -> list[tuple[str, str]]:
        """``(name, state)`` of this tenant's indexes queued or running training."""
        out = []
        for name in self.list_indexes(tenant):
            try:
                env = self._envelope(tenant, name)
            except CipherVecError:
                continue
            if self._training_active(env):
                assert env.training is not None
                out.append((name, str(env.training.get("state"))))
        return out

    def _training_active(self, env: Envelope) -> bool:
        t = env.training
        return bool(t) and self.clock() - float(t.get("since", 0)) < TRAINING_STALE_SECONDS  # type: ignore[union-attr]

    # -- writes ----------------------------------------------------------------------
    def _commit(self, head: _Head, mutate: Callable[[Envelope, HeadBody], Any]) -> Any:
        key = (head.tenant, head.name)
        with self._lock(key, self._commit_locks, threading.Lock):
            held = self._heads.get(key)
            known = (held.envelope, held.body, held.etag) if held is not None else None
            env, body, outcome, etag = commit(
                self.store, head.root + "head", head.cipher, mutate, self.retry, head.envelope.uid, known
            )
        self._heads[key] = _Head(head.tenant, head.name, head.root, etag, env, body, head.cipher, head.dek)
        return outcome

    def _write_segment(
        self, head: _Head, seg: Segment, mutate: Callable[[Envelope, HeadBody, int], Any]
    ) -> Any:
        """Write ``seg`` immutably, then commit it to the head; clean up if the commit fails."""
        name = f"seg/{new_id()}"
        precision = head.body.config.get("storage_precision", "float32")
        self._write_object(head, name, segment.encode(seg, precision))

        def add(env: Envelope, body: HeadBody) -> Any:
            seq = body.next_seq
            outcome = mutate(env, body, seq)
            body.next_seq += 1
            body.segments.append(SegmentRef(name, seq, seg.kind, len(seg)))
            return outcome

        try:
            outcome = self._commit(head, add)
        except BaseException:
            self.store.delete(head.root + name)
            raise
        self._adopt(head, name, seg, precision)
        return outcome

    def _adopt(self, head: _Head, name: str, seg: Segment, precision: str) -> None:
        """Apply a segment this container just committed, when its state is right before it,
        so the next request does not read it back from the store."""
        key = (head.tenant, head.name)
        committed = self._heads.get(key)
        if committed is None:
            return
        refs = committed.body.segments
        with self._lock(key, self._locks, threading.RLock):
            entry = self._states.get(key)
            if entry is None or entry[0] != committed.envelope.uid or not refs or refs[-1].name != name:
                return
            _, state, applied = entry
            if len(refs) != len(applied) + 1 or [r.name for r in refs[:-1]] != applied:
                return
            if precision == "float16" and seg.vectors is not None:
                rounded = seg.vectors.astype(np.float16).astype(np.float32)
                seg = Segment(seg.kind, seg.ids, rounded, seg.metadata, seg.contents)
            state.apply(seg, refs[-1].seq)
            applied.append(name)
            state.synced_etag = committed.etag

    def upsert(self, tenant: str, name: str, kek: bytes | None, batch: RowBatch) -> UpsertResult:
        head, state, lock = self._state(tenant, name, kek, full=False)
        try:
            known = int(head.body.config["dimension"])
            if known and known != batch.dimension:
                raise ValidationFailed(
                    f"vector dimension {batch.dimension} does not match the index dimension {known}",
                    ("body", "vectors"),
                )
            fresh = len(set(batch.ids).difference(state.pos))
            # A partial state counts its unloaded lists whole (an estimate either way).
            estimate = state.live + fresh + (state.partial.unloaded_rows() if state.partial else 0)
        finally:
            lock.release()
        seg = Segment("upsert", batch.ids, batch.vectors, batch.metadata, batch.contents)

        def mutate(env: Envelope, body: HeadBody, seq: int) -> bool:
            dim = int(body.config["dimension"])
            if dim and dim != batch.dimension:
                raise ValidationFailed(
                    f"vector dimension {batch.dimension} does not match the index dimension {dim}",
                    ("body", "vectors"),
                )
            body.config["dimension"] = batch.dimension
            return self._maybe_queue_training(env, body, estimate)

        triggered = self._write_segment(head, seg, mutate)
        committed = self._heads.get((tenant, name))
        merge_due = committed is not None and len(_merge_run(committed.body.segments)) >= self.merge_at
        return UpsertResult(len(batch.ids), estimate, bool(triggered), self.train_threshold, merge_due)

    def _maybe_queue_training(self, env: Envelope, body: HeadBody, count: int) -> bool:
        if count <= self.train_threshold or self._training_active(env):
            return False
        cent = body.centroids
        if cent is not None and kmeans.auto_n_lists(count) <= cent.n_lists:
            return False
        env.training = {"state": "queued", "since": self.clock(), "count": count}
        return True

    def delete_vectors(self, tenant: str, name: str, kek: bytes | None, ids: list[str]) -> int:
        if any(not isinstance(i, str) for i in ids):
            raise ValidationFailed("ids must be strings", ("body", "ids"))
        head = self._open(tenant, name, kek)
        if ids:
            self._write_segment(head, Segment("delete", list(ids)), lambda env, body, seq: None)
        return len(ids)

    # -- reads -----------------------------------------------------------------------
    def num_vectors(self, tenant: str, name: str, kek: bytes | None) -> int:
        _, state, lock = self._state(tenant, name, kek)
        try:
            return state.live
        finally:
            lock.release()

    def list_ids(self, tenant: str, name: str, kek: bytes | None) -> list[str]:
        _, state, lock = self._state(tenant, name, kek)
        try:
            return [state.ids[r] for r in state.live_rows().tolist()]
        finally:
            lock.release()

    def get(
        self, tenant: str, name: str, kek: bytes | None, ids: list[str], include: list[str]
    ) -> list[dict[str, Any]]:
        _, state, lock = self._state(tenant, name, kek)
        try:
            found = [(i, state.pos[i]) for i in ids if i in state.pos]
            vectors = state.rows([r for _, r in found]).tolist() if "vector" in include else []
            out = []
            for n, (i, row) in enumerate(found):
                item: dict[str, Any] = {"id": i}
                if "vector" in include:
                    item["vector"] = vectors[n]
                if "contents" in include:
                    item["contents"] = state.contents[row] or ""
                if "metadata" in include:
                    item["metadata"] = state.metadata[row] or {}
                out.append(item)
            return out
        finally:
            lock.release()

    def _filter_mask(self, state: IndexState, filters: Any) -> np.ndarray | None:
        if not filters:
            return None
        key = ("filter", json.dumps(filters, sort_keys=True, default=str))

        def column(path: tuple[str, ...]) -> Column:
            return state.cached(
                ("column", path), lambda: Column([lookup(m, list(path)) for m in state.metadata])
            )

        return state.cached(key, lambda: compile_mask(filters)(column, state.n_rows))

    def query(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        queries: np.ndarray,
        *,
        top_k: int = 100,
        n_probes: int | None = None,
        filters: Any = None,
        include: list[str] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Nearest neighbours for each row of ``queries`` (float32 ``(m, d)``)."""
        if filters:
            compile_filter(filters)  # 400 on a bad filter before touching the index
        if not np.isfinite(queries).all():
            raise ValidationFailed("query vectors must not contain NaN or Inf", ("body", "query_vectors"))
        include = include or []
        # Without filters a query needs only the lists it probes: a cold state stays partial.
        head, state, lock = self._state(tenant, name, kek, full=bool(filters))
        try:
            dim = int(head.body.config["dimension"])
            if dim and queries.shape[1] != dim:
                raise ValidationFailed(
                    f"query dimension {queries.shape[1]} does not match the index dimension {dim}",
                    ("body", "query_vectors"),
                )
            if (state.live == 0 and state.partial is None) or not dim:
                return [[] for _ in range(len(queries))]
            metric = head.body.config["metric"]
            mask = self._filter_mask(state, filters)
            cent = head.body.centroids
            probes = n_probes or (cent.auto_n_probes if cent else 1)
            if cent is not None:
                probes = max(1, min(probes, cent.n_lists))
                # A selective filter leaves few rows: visit every list, i.e. scan them all.
                if mask is not None and int(mask.sum()) <= max(4096, 8 * top_k):
                    probes = cent.n_lists
            if state.partial is not None:
                ann = state.searchable(self.backend)
                space = normalize(queries) if metric == "cosine" else queries
                probed = ann.quantizer.search(np.ascontiguousarray(space, dtype=np.float32), probes)[1]
                self._load_lists(head, state, state.partial.missing(probed[probed >= 0].ravel()))
            hits = knn(state, queries, top_k, metric, probes, mask, self.backend)
            return [self._shape(state, rows, dist, include) for rows, dist in hits]
        finally:
            lock.release()
            if state.partial is not None:
                self._fill_later(head, state)

    @staticmethod
    def _shape(
        state: IndexState, rows: np.ndarray, dist: np.ndarray, include: list[str]
    ) -> list[dict[str, Any]]:
        out = []
        vectors = state.rows(rows).tolist() if "vector" in include else []
        for n, (row, d) in enumerate(zip(rows.tolist(), dist.tolist(), strict=True)):
            item: dict[str, Any] = {"id": state.ids[row]}
            if "distance" in include:
                item["distance"] = float(d)
            if "metadata" in include:
                item["metadata"] = state.metadata[row] or {}
            if "vector" in include:
                item["vector"] = vectors[n]
            if "contents" in include:
                item["contents"] = state.contents[row] or ""
            out.append(item)
        return out

    def query_metadata(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        filters: Any,
        *,
        top_k: int | None = None,
        order_by: str | None = None,
        ascending: bool = True,
    ) -> list[str]:
        compile_filter(filters)
        _, state, lock = self._state(tenant, name, kek)
        try:
            rows = state.live_rows()
            mask = self._filter_mask(state, filters)
            if mask is not None:
                rows = rows[mask[rows]]
            ids = [state.ids[r] for r in rows.tolist()]
            if order_by:
                path = order_by.split(".")
                keyed = [
                    (_sort_key(state.metadata[r], path), i) for r, i in zip(rows.tolist(), ids, strict=True)
                ]
                present = sorted(
                    (k for k in keyed if k[0] is not None),
                    key=lambda k: k[0],
                    reverse=not ascending,
                )
                ids = [i for _, i in present] + [i for k, i in keyed if k is None]
            return ids if top_k is None else ids[:top_k]
        finally:
            lock.release()

    # -- training ----------------------------------------------------------------------
    def set_training(self, tenant: str, name: str, kek: bytes | None, state: str | None) -> None:
        """Record ``queued``/``running``/``None`` in the head so every container sees it."""
        head = self._open(tenant, name, kek)

        def mark(env: Envelope, body: HeadBody) -> None:
            env.training = {"state": state, "since": self.clock()} if state else None

        self._commit(head, mark)

    def train(
        self,
        tenant: str,
        name: str,
        kek: bytes | None,
        *,
        n_lists: int | None = None,
        max_iters: int = kmeans.DEFAULT_ITERATIONS,
        tolerance: float = 1e-6,
    ) -> TrainResult:
        """Train (or retrain) IVF centroids and compact all segments into one snapshot."""
        head, state, lock = self._state(tenant, name, kek)
        try:
            metric = head.body.config["metric"]
            live = state.live_rows()
            count = len(live)
            hint = (head.body.config.get("index_config") or {}).get("n_lists")
            lists = int(n_lists or hint or kmeans.auto_n_lists(count))
            if lists < 1:
                raise InvalidRequest("n_lists must be at least 1")
            if count < max(2 * lists, 2):
                self.set_training(tenant, name, kek, None)
                return TrainResult(
                    False,
                    f"Index '{name}' has {count} vectors; training {lists} lists needs at least "
                    f"{max(2 * lists, 2)}. Queries stay exact.",
                )
            snap = state.snapshot()  # every live row, in row order
            assert snap.vectors is not None
            vectors = snap.vectors
            applied = list(self._states[(tenant, name)][2])
            seq = state.applied_seq
            dimension, precision = state.dimension, state.precision
        finally:
            lock.release()
        del state  # the rows live on in ``snap`` until the new state holds them
        try:
            centroids = kmeans.train_centroids(
                self.backend, vectors, lists, metric, max_iters=max_iters, tolerance=tolerance
            )
            labels = self._assigner(metric, centroids)(vectors)
            probes, recall = kmeans.choose_n_probes(self.backend, vectors, labels, centroids, metric)
        except CipherVecError:
            raise
        except Exception as exc:
            raise TrainingFailed(f"training failed: {type(exc).__name__}") from exc
        cent_name, snap_name = f"run/{new_id()}", f"run/{new_id()}"
        buf = io.BytesIO()
        np.save(buf, centroids, allow_pickle=False)
        self._write_object(head, cent_name, buf.getvalue())
        precision = head.body.config.get("storage_precision", "float32")
        try:
            self._write_run(head, snap_name, snap, labels, lists, precision)
        except BaseException:
            self._delete_all(head, [cent_name])
            raise
        written = [cent_name, snap_name]
        now = self.clock()

        def swap(env: Envelope, body: HeadBody) -> None:
            older = [s for s in body.segments if s.seq <= seq]
            if [s.name for s in older] != applied:
                raise Contention("the index was compacted concurrently; train again")
            retired = [s.name for s in older] + ([body.centroids.name] if body.centroids else [])
            body.retired.extend({"name": r, "at": now} for r in retired)
            body.segments = [SegmentRef(snap_name, seq, "run", len(snap))] + [
                s for s in body.segments if s.seq > seq
            ]
            body.centroids = Centroids(cent_name, lists, probes, len(snap), now, round(recall, 4))
            env.training = None

        try:
            self._commit(head, swap)
        except BaseException:
            self._delete_all(head, written)
            raise
        self._adopt_run(head, snap_name, cent_name, centroids, snap, labels, seq, dimension, precision)
        self.sweep(tenant, name, kek)
        return TrainResult(True, f"Index '{name}' trained successfully", lists, probes, recall)

    def _write_run(
        self, head: _Head, name: str, rows: Segment, labels: np.ndarray, n_lists: int, precision: str
    ) -> None:
        """Write ``rows`` as run ``name``: one object per non-empty list (in parallel), then
        the directory. On failure nothing of it is left behind."""
        assert rows.vectors is not None
        unit = head.body.config["metric"] != "cosine" or unit_norm(rows.vectors)
        members = run.group(rows, labels, n_lists)
        directory = run.Directory(n_lists, tuple(len(m) for m in members), unit, precision)

        def put(k: int) -> None:
            part = rows.take(members[k])
            self._write_object(head, run.list_name(name, k), segment.encode(part, precision))

        try:
            with ThreadPoolExecutor(max_workers=_READERS) as pool:
                list(pool.map(put, directory.lists()))
            self._write_object(head, name, directory.to_json())
        except BaseException:
            self._delete_all(head, [name])
            raise

    def _delete_all(self, head: _Head, names: list[str]) -> None:
        """Delete objects; a run's name takes its list objects with it."""
        for obj in names:
            if obj.startswith("run/") and "-" not in obj:
                for key in list(self.store.list(f"{head.root}{obj}-")):
                    self.store.delete(key)
            self.store.delete(head.root + obj)

    def _adopt_run(
        self,
        head: _Head,
        run_name: str,
        cent_name: str,
        centroids: np.ndarray,
        snap: Segment,
        labels: np.ndarray,
        seq: int,
        dimension: int,
        precision: str,
    ) -> None:
        """Replace this container's state with the rows just trained (the run's content),
        instead of reading the run back from the store; later segments apply as usual."""
        key = (head.tenant, head.name)
        committed = self._heads.get(key)
        if committed is None or not committed.body.segments or committed.body.segments[0].name != run_name:
            return
        with self._lock(key, self._locks, threading.RLock):
            with self._guard:
                self._states.pop(key, None)  # release the old rows before building the new
            state = IndexState(dimension, precision, committed.body.config["metric"])
            state.set_centroids(cent_name, centroids)
            state.apply(snap, seq, ivf_list=labels)
            with self._guard:
                self._states[key] = (committed.envelope.uid, state, [run_name])

    def merge_tail(self, tenant: str, name: str, kek: bytes | None) -> int:
        """Merge the newest stretch of write-ahead segments (see ``_merge_run``) into one
        upsert segment and one tombstone segment; returns how many segments were merged.
        In a trained index the upserts become a run grouped by the current IVF lists, so
        a cold container reads only the probed lists of it too.

        Keeps the head short and cold loads few objects between trainings. The merged
        objects hold the stretch's net effect (last write per id wins; ids whose last write
        is a delete become tombstones, which may still shadow older rows).
        """
        head = self._open(tenant, name, kek)
        refs = head.body.segments
        tail = _merge_run(refs)
        if len(tail) < max(self.merge_at, 2):
            return 0
        base = [r.name for r in refs[: len(refs) - len(tail)]]
        latest: dict[str, tuple[Segment, int] | None] = {}
        for ref in tail:
            seg = segment.decode(self._read_object(head, ref.name))
            if seg.kind == "delete":
                latest.update(dict.fromkeys(seg.ids))
            else:
                latest.update((i, (seg, j)) for j, i in enumerate(seg.ids))
        live = [(i, v) for i, v in latest.items() if v is not None]
        cent = head.body.centroids
        merged: list[tuple[str, Segment]] = []
        tombstones = [i for i, v in latest.items() if v is None]
        if tombstones:
            merged.append((f"seg/{new_id()}", Segment("delete", tombstones)))
        if live:
            rows = [seg.vectors[j] for _, (seg, j) in live if seg.vectors is not None]
            meta = [seg.metadata[j] if seg.metadata else None for _, (seg, j) in live]
            text = [seg.contents[j] if seg.contents else None for _, (seg, j) in live]
            up = Segment(
                "upsert",
                [i for i, _ in live],
                np.vstack(rows),
                meta if any(m is not None for m in meta) else None,
                text if any(t is not None for t in text) else None,
            )
            merged.append((f"{'run' if cent else 'seg'}/{new_id()}", up))
        precision = head.body.config.get("storage_precision", "float32")
        try:
            for obj, seg in merged:
                if obj.startswith("run/"):
                    assert cent is not None and seg.vectors is not None
                    arr = self._read_centroids(head, cent.name)
                    labels = self._assigner(head.body.config["metric"], arr)(seg.vectors)
                    self._write_run(head, obj, seg, labels, cent.n_lists, precision)
                else:
                    self._write_object(head, obj, segment.encode(seg, precision))
        except BaseException:
            self._delete_all(head, [obj for obj, _ in merged])
            raise
        tail_names = [r.name for r in tail]
        last_seq = tail[-1].seq
        now = self.clock()

        def swap(env: Envelope, body: HeadBody) -> None:
            names = [s.name for s in body.segments]
            if names[: len(base) + len(tail_names)] != base + tail_names or (
                (body.centroids.name if body.centroids else None) != (cent.name if cent else None)
            ):
                raise Contention("the index was compacted concurrently")
            body.segments = (
                body.segments[: len(base)]
                + [
                    SegmentRef(obj, last_seq, "run" if obj.startswith("run/") else seg.kind, len(seg))
                    for obj, seg in merged
                ]
                + body.segments[len(base) + len(tail_names) :]
            )
            body.retired.extend({"name": n, "at": now} for n in tail_names)

        try:
            self._commit(head, swap)
        except BaseException:
            self._delete_all(head, [obj for obj, _ in merged])
            raise
        key = (tenant, name)
        with self._lock(key, self._locks, threading.RLock):  # same rows: just rename what was applied
            entry = self._states.get(key)
            if entry is not None and entry[2][: len(base) + len(tail_names)] == base + tail_names:
                entry[2][len(base) : len(base) + len(tail_names)] = [obj for obj, _ in merged]
        return len(tail)

    def sweep(self, tenant: str, name: str, kek: bytes | None) -> int:
        """Delete retired objects past the grace period, and old uncommitted orphans."""
        head = self._open(tenant, name, kek)
        now = self.clock()
        due = [r["name"] for r in head.body.retired if now - r["at"] >= self.retire_grace]
        live = {s.name for s in head.body.segments}
        if head.body.centroids:
            live.add(head.body.centroids.name)
        retired = {r["name"] for r in head.body.retired}
        orphans = []
        for key in self.store.list(head.root):
            obj = key[len(head.root) :]
            if obj == "head" or run.base_name(obj) in live or run.base_name(obj) in retired:
                continue
            born = int(obj.split("/")[-1][:16], 16) / 1e9 if "/" in obj else now
            if now - born >= self.retire_grace:
                orphans.append(obj)
        if due:

            def drop(env: Envelope, body: HeadBody) -> None:
                body.retired = [r for r in body.retired if r["name"] not in due]

            self._commit(head, drop)
        self._delete_all(head, due + orphans)
        return len(due) + len(orphans)


_SMALL_SEGMENT_ROWS = 8192


def _merge_run(refs: list[SegmentRef]) -> list[SegmentRef]:
    """The newest write-ahead segments worth merging, size-tiered like an LSM tree: walking
    back from the newest, ordinary writes (up to 8,192 rows) always join; a bigger one (an
    earlier merge's output) joins only once all newer rows together reach its size. Each
    row is then rewritten O(log n) times, not once per merge."""
    run: list[SegmentRef] = []
    total = 0
    for ref in reversed(refs):
        if ref.kind in ("snapshot", "run") or (ref.rows > max(total, _SMALL_SEGMENT_ROWS)):
            break
        run.insert(0, ref)
        total += ref.rows
    return run


def _escape(name: str) -> str:
    """One path component: percent-encoded, never ``.`` or ``..``."""
    escaped = quote(name, safe="")
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped


def _sort_key(item: dict[str, Any] | None, path: list[str]) -> Any:
    value = lookup(item, path)
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return None
