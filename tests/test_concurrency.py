"""Queries racing writes, training, merges and lazy loads on one index (threads): every query
sees one consistent snapshot, acknowledged writes are visible to later queries, nothing
deadlocks."""

import os
import threading
import time

import numpy as np
import pytest

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.errors import Contention
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND, clustered

D = 16
M = 8  # rows per batch: a batch is upserted, and deleted, as one write
KEK = os.urandom(32)


def spot(b: int) -> np.ndarray:
    """Batch ``b``'s place: far from the base rows and from every other batch."""
    rng = np.random.default_rng(1000 + b)
    direction = rng.standard_normal(D).astype(np.float32)
    return (40.0 + b) * direction / np.linalg.norm(direction)


def batch_rows(b: int) -> RowBatch:
    ids = [f"b{b}-{j}" for j in range(M)]
    jitter = np.random.default_rng(b).standard_normal((M, D)).astype(np.float32) * 1e-3
    return RowBatch(ids, spot(b) + jitter, [{"batch": b}] * M, None)


def seen(svc: IndexService, b: int) -> int:
    """How many rows of batch ``b`` one query finds near its place."""
    hits = svc.query("t", "i", KEK, spot(b)[None, :], top_k=M, n_probes=10**6, include=["distance"])[0]
    return sum(1 for h in hits if h["id"].startswith(f"b{b}-") and h["distance"] < 0.1)


def started(errors: list[str], target, *args) -> threading.Thread:
    """A running thread whose exception, if any, becomes a test failure."""

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"{target.__name__} raised {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def service(store, **kw):
    return IndexService(
        store,
        backend=select(BACKEND),
        train_threshold=10**9,
        retry=RetryPolicy(attempts=50, sleep=lambda s: time.sleep(0.001)),
        **kw,
    )


@pytest.mark.parametrize("trained", [False, True])
def test_queries_see_whole_batches_while_writers_train_and_merge(trained):
    store = MemoryStore()
    svc = service(store, merge_at=4)
    svc.create_index("t", "i", IndexConfig(), kek=KEK)
    base = clustered(3000, D, seed=3)
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(len(base))], base))
    if trained:
        svc.train("t", "i", KEK, n_lists=16)
    stop = threading.Event()
    errors: list[str] = []
    acked: set[int] = set()  # batches whose upsert was acknowledged and not deleted since
    deleted: set[int] = set()
    guard = threading.Lock()

    def writer(first: int) -> None:
        b = first
        while not stop.is_set():
            svc.upsert("t", "i", KEK, batch_rows(b))
            with guard:
                acked.add(b)
            if seen(svc, b) != M:  # read-your-writes
                errors.append(f"batch {b} missing right after its upsert")
            if b % 3 == 0:
                svc.delete_vectors("t", "i", KEK, batch_rows(b).ids)
                with guard:
                    acked.discard(b)
                    deleted.add(b)
                if seen(svc, b) != 0:
                    errors.append(f"batch {b} still found after its delete")
            b += 2

    def reader() -> None:
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        while not stop.is_set():
            with guard:
                known = sorted(acked | deleted)
                stable = set(acked)
            if not known:
                continue
            b = int(rng.choice(known))
            count = seen(svc, b)
            if count not in (0, M):
                errors.append(f"half a batch: {count} of {M} rows of batch {b}")
            if b in stable and b % 3 != 0 and count != M:
                errors.append(f"acknowledged batch {b} missing")

    def maintainer() -> None:
        while not stop.is_set():
            try:
                if trained:
                    svc.train("t", "i", KEK, n_lists=16)
                svc.merge_tail("t", "i", KEK)
            except Contention:
                pass  # a racing compaction: the next round retries

    threads = [started(errors, writer, 0), started(errors, writer, 1), started(errors, maintainer)]
    threads += [started(errors, reader) for _ in range(3)]
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    assert errors == []
    fresh = service(store)  # what was acknowledged is what a cold container reads
    for b in sorted(acked):
        assert seen(fresh, b) == M
    for b in sorted(deleted):
        assert seen(fresh, b) == 0
    assert fresh.num_vectors("t", "i", KEK) == svc.num_vectors("t", "i", KEK) == 3000 + M * len(acked)


def test_cold_lazy_queries_race_writes_and_the_background_fill():
    store = MemoryStore()
    warm = service(store)
    warm.create_index("t", "i", IndexConfig(), kek=KEK)
    base = clustered(6000, D, seed=4)
    warm.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(len(base))], base))
    warm.train("t", "i", KEK, n_lists=32)
    want = {i: warm.query("t", "i", KEK, base[i : i + 1], top_k=5, n_probes=8) for i in range(0, 6000, 500)}
    cold = service(store, lazy_rows=100)
    errors: list[str] = []

    def query(i: int) -> None:
        for _ in range(5):
            if cold.query("t", "i", KEK, base[i : i + 1], top_k=5, n_probes=8) != want[i]:
                errors.append(f"query {i} differs from a fully loaded index")

    def write() -> None:
        for b in range(6):
            cold.upsert("t", "i", KEK, batch_rows(b))
            if seen(cold, b) != M:
                errors.append(f"batch {b} missing right after its upsert")

    threads = [started(errors, query, i) for i in want] + [started(errors, write)]
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and errors == []
    filler = cold.cache.filler(("t", "i"))
    if filler is not None:
        filler.join(timeout=60)
    assert cold.cache.current(("t", "i")).partial is None
    assert cold.num_vectors("t", "i", KEK) == 6000 + 6 * M


@pytest.mark.parametrize("trained", [False, True])
def test_parts_merge_in_the_background_and_answers_stay(trained):
    from ciphervec.engine.memory.parts import next_merge

    store = MemoryStore()
    svc = service(store)
    svc.create_index("t", "i", IndexConfig(metric="cosine"), kek=KEK)
    x = clustered(4000, D, seed=5)
    if trained:
        svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(1000)], x[:1000]))
        svc.train("t", "i", KEK, n_lists=8)
    for lo in range(1000 if trained else 0, 4000, 150):  # many small writes: many small parts
        svc.upsert(
            "t", "i", KEK, RowBatch([f"r{i}" for i in range(lo, min(lo + 150, 4000))], x[lo : lo + 150])
        )
    svc.delete_vectors("t", "i", KEK, ["r5", "r3999"])
    merger = svc.cache.merger(("t", "i"))
    assert merger is not None
    merger.join(timeout=60)
    snap = svc.cache.current(("t", "i"))
    sizes = [p.n for p in snap.parts]
    assert next_merge(snap.parts) is None and len(sizes) <= 9  # at most three of each size tier
    assert [p.start for p in snap.parts] == [0, *np.cumsum(sizes)[:-1].tolist()] and sum(sizes) == snap.n_rows
    cold = service(store)  # one part, loaded whole
    q = x[::97]
    assert svc.query("t", "i", KEK, q, top_k=7, n_probes=8) == cold.query(
        "t", "i", KEK, q, top_k=7, n_probes=8
    )
    assert svc.get("t", "i", KEK, ["r7", "r3000"], ["vector"]) == cold.get(
        "t", "i", KEK, ["r7", "r3000"], ["vector"]
    )


def test_merges_stop_short_of_the_byte_cap_and_answers_stay(monkeypatch):
    from ciphervec.engine.memory import parts

    store = MemoryStore()
    svc = service(store)
    svc.create_index("t", "i", IndexConfig(metric="cosine"), kek=KEK)
    x = clustered(4000, D, seed=6)
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(1000)], x[:1000]))
    svc.train("t", "i", KEK, n_lists=8)
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(1000, 1150)], x[1000:1150]))
    one = svc.cache.current(("t", "i")).parts[-1].nbytes()  # a 150-row write's part
    cap = int(4.5 * one)
    monkeypatch.setattr(parts, "MERGE_BYTES", cap)
    for lo in range(1150, 4000, 150):
        svc.upsert(
            "t", "i", KEK, RowBatch([f"r{i}" for i in range(lo, min(lo + 150, 4000))], x[lo : lo + 150])
        )
    merger = svc.cache.merger(("t", "i"))
    assert merger is not None
    merger.join(timeout=60)
    snap = svc.cache.current(("t", "i"))
    sizes = [p.nbytes() for p in snap.parts]
    assert parts.next_merge(snap.parts) is None
    assert len(sizes) < 21 and all(s <= cap for s in sizes[1:])  # merged, never past the cap
    q = x[::97]
    cold = service(store)  # one part, loaded whole
    assert svc.query("t", "i", KEK, q, top_k=7, n_probes=3) == cold.query(
        "t", "i", KEK, q, top_k=7, n_probes=3
    )
