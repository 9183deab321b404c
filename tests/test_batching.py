"""Concurrent single queries searched as one batch answer exactly as they would alone."""

import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.memory.batching import Batcher
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND, clustered

KEK = os.urandom(32)
D = 24


def make(metric: str, trained: bool, seed: int, slots: int | None = None) -> tuple[IndexService, np.ndarray]:
    svc = IndexService(
        MemoryStore(), backend=select(BACKEND), train_threshold=10**9, retry=RetryPolicy(sleep=lambda s: None)
    )
    if slots is not None:
        svc.reader.batcher = Batcher(slots)
    x = clustered(3000, D, seed=seed)
    meta = [{"g": i % 4, "s": f"k{i % 9}"} for i in range(len(x))]
    svc.create_index("t", "i", IndexConfig(metric=metric), kek=KEK)
    svc.upsert("t", "i", KEK, RowBatch([str(i) for i in range(len(x))], x, meta, None))
    svc.delete_vectors("t", "i", KEK, [str(i) for i in range(0, 3000, 37)])
    if trained:
        svc.train("t", "i", KEK, n_lists=16)
    return svc, x


INDEXES = {(m, t): make(m, t, seed=7) for m in ("euclidean", "cosine") for t in (False, True)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metric=st.sampled_from(["euclidean", "cosine"]),
    trained=st.booleans(),
    top_k=st.integers(1, 40),
    n_probes=st.integers(1, 16),
    use_filter=st.booleans(),
    picks=st.lists(st.integers(0, 2999), min_size=2, max_size=12),
    noise=st.floats(0.0, 0.5),
)
def test_a_batch_answers_each_query_as_alone(metric, trained, top_k, n_probes, use_filter, picks, noise):
    svc, x = INDEXES[(metric, trained)]
    reader = svc.reader
    head = svc.heads.open("t", "i", KEK)
    snap = svc.cache.snapshot(head)
    filters = {"s": {"$gte": "k4"}, "g": {"$ne": 2}} if use_filter else None
    mask = reader._filter_mask(snap, filters)
    queries = x[picks] + noise * np.random.default_rng(len(picks)).standard_normal((len(picks), D)).astype(
        np.float32
    )
    vectors = [svc.backend.asarray(queries[i : i + 1]) for i in range(len(picks))]
    together = reader._knn(snap, vectors, top_k, n_probes, mask)
    for vector, (rows, dist) in zip(vectors, together, strict=True):
        ((alone_rows, alone_dist),) = reader._knn(snap, [vector], top_k, n_probes, mask)
        assert rows.tolist() == alone_rows.tolist()
        np.testing.assert_allclose(dist, alone_dist, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("trained", [False, True])
def test_concurrent_queries_form_batches_and_each_gets_its_own_answer(trained):
    svc, x = make("cosine", trained, seed=9, slots=1)
    q = x[::60] + 0.01
    want = [svc.query("t", "i", KEK, v[None, :], top_k=10, n_probes=8, include=["distance"]) for v in q]
    assert svc.reader.batcher.batches == 0  # one at a time: nothing to batch
    got: list = [None] * len(q)
    errors: list[str] = []
    start = threading.Barrier(8)

    def client(w: int) -> None:
        try:
            start.wait()
            for _ in range(5):
                for i in range(w, len(q), 8):
                    got[i] = svc.query(
                        "t", "i", KEK, q[i][None, :], top_k=10, n_probes=8, include=["distance"]
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and got == want
    assert svc.reader.batcher.batches > 0  # eight clients on one slot: queries were batched


def test_an_error_in_a_batch_reaches_every_query_in_it():
    batcher = Batcher(slots=1)
    gate, entered = threading.Event(), threading.Event()

    def slow(vectors):
        entered.set()
        gate.wait()
        return [v * 2 for v in vectors]

    def broken(vectors):
        raise RuntimeError("faiss failed")

    results: dict[int, object] = {}

    def call(i: int, run) -> None:
        try:
            results[i] = batcher.search("k", i, run)
        except RuntimeError as exc:
            results[i] = exc

    leader = threading.Thread(target=call, args=(0, slow))
    leader.start()
    entered.wait()
    waiting = [threading.Thread(target=call, args=(i, broken)) for i in (1, 2, 3)]
    for t in waiting:
        t.start()
    while sum(len(q) for q in batcher._queues.values()) < 3:
        threading.Event().wait(0.01)
    gate.set()
    for t in [leader, *waiting]:
        t.join(timeout=10)
    assert results[0] == 0 and all(isinstance(results[i], RuntimeError) for i in (1, 2, 3))
    assert batcher.batches == 1 and batcher._running == 0


def test_a_batch_runs_on_the_newest_snapshot_its_queries_were_given():
    """Queries that began before and after a write share a batch on the newer snapshot: the
    later one sees the write it must see, and each is answered with that snapshot's rows."""
    svc, x = make("euclidean", False, seed=11, slots=1)
    gate, entered = threading.Event(), threading.Event()
    real = svc.reader._knn

    def slow(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            gate.wait()
        return real(*args, **kwargs)

    svc.reader._knn = slow
    far = x[5] + 100.0  # nearest to nothing in the index until it is written
    results: dict[str, list] = {}

    def ask(name: str, vector: np.ndarray) -> None:
        results[name] = svc.query("t", "i", KEK, vector[None, :], top_k=1)[0]

    def queued(n: int) -> None:
        while sum(len(q) for q in svc.reader.batcher._queues.values()) < n:
            threading.Event().wait(0.01)

    leader = threading.Thread(target=ask, args=("leader", x[1]))
    leader.start()
    entered.wait()
    early = threading.Thread(target=ask, args=("early", far))
    early.start()
    queued(1)
    svc.upsert("t", "i", KEK, RowBatch(["new"], far[None, :]))
    late = threading.Thread(target=ask, args=("late", far))
    late.start()
    queued(2)
    gate.set()
    for t in (leader, early, late):
        t.join(timeout=30)
    assert results["late"][0]["id"] == "new" and results["early"][0]["id"] == "new"
    assert results["leader"][0]["id"] == "1" and svc.reader.batcher.batches == 1


def test_a_batch_runs_on_the_snapshot_with_the_newest_writes_not_the_newest_made():
    """A snapshot synced from an older head (a reader that opened it just before a merge
    renamed the segments) is made later than a writer's snapshot that already holds its
    newest write: the batch runs on the one with the higher last sequence number applied,
    whatever the order they were made in."""
    batcher = Batcher(slots=1)
    gate, entered = threading.Event(), threading.Event()

    def slow(vectors):
        entered.set()
        gate.wait()
        return ["leader"] * len(vectors)

    def on(name):
        return lambda vectors: [name] * len(vectors)

    results: dict[str, object] = {}

    def call(name, run, version):
        results[name] = batcher.search("k", name, run, version)

    leader = threading.Thread(target=call, args=("leader", slow, (1, 1)))
    leader.start()
    entered.wait()
    writer = threading.Thread(target=call, args=("writer", on("has the write"), (7, 10)))
    stale = threading.Thread(target=call, args=("stale", on("lacks the write"), (6, 11)))
    for t in (writer, stale):
        t.start()
        while sum(len(q) for q in batcher._queues.values()) < (1 if t is writer else 2):
            threading.Event().wait(0.01)
    gate.set()
    for t in (leader, writer, stale):
        t.join(timeout=10)
    assert results == {"leader": "leader", "writer": "has the write", "stale": "has the write"}
