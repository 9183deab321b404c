"""Runs grouped by IVF list, and cold containers that read only the lists a query probes."""

import threading
import time

import numpy as np
import pytest

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.codec import run
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.errors import Contention, CorruptObject
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND, clustered

N, D, LISTS = 6000, 16, 64


class CountingStore(MemoryStore):
    """The memory store, counting the bytes read from objects under ``run/``."""

    def __init__(self) -> None:
        super().__init__()
        self.run_bytes = 0
        self.count = threading.Lock()

    def get(self, key, if_none_match=None):
        got = super().get(key, if_none_match)
        if got is not None and "/run/" in key:
            with self.count:
                self.run_bytes += len(got[0])
        return got


def service(store, **kw):
    return IndexService(store, backend=select(BACKEND), retry=RetryPolicy(sleep=lambda s: None), **kw)


def run_size(store):
    """Bytes of every run object (centroids, directory, lists), read without counting."""
    return sum(len(MemoryStore.get(store, k)[0]) for k in store.list("t/i/run/"))


def wait_filled(svc, name):
    worker = svc.cache.filler(("t", name))
    if worker is not None:
        worker.join(timeout=30)
        assert not worker.is_alive()


KEK = bytes(range(32))


@pytest.fixture
def trained():
    """A trained index of clustered rows with metadata, in a store that counts run reads."""
    store = CountingStore()
    svc = service(store)
    x = clustered(N, D, clusters=48, seed=11)
    ids = [f"r{i}" for i in range(N)]
    meta = [{"i": i, "even": i % 2 == 0} for i in range(N)]
    svc.create_index("t", "i", IndexConfig(metric="euclidean"), kek=KEK)
    for lo in range(0, N, 1500):
        svc.upsert("t", "i", KEK, RowBatch(ids[lo : lo + 1500], x[lo : lo + 1500], meta[lo : lo + 1500]))
    assert svc.train("t", "i", KEK, n_lists=LISTS).trained
    store.run_bytes = 0
    return store, x


def answers(svc, q, **kw):
    return [
        [(r["id"], round(r["distance"], 5)) for r in hits]
        for hits in svc.query("t", "i", KEK, q, top_k=10, include=["distance"], **kw)
    ]


def test_run_directory_and_grouping():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    labels = rng.integers(0, 7, 500)
    labels[labels == 3] = 4  # an empty list
    snap = Segment("snapshot", [str(i) for i in range(500)], x, [{"i": i} for i in range(500)], None)
    members = run.group(snap, labels, 7)
    assert [len(m) for m in members] == [int((labels == k).sum()) for k in range(7)]
    for k, rows in enumerate(members):
        part = snap.take(rows) if len(rows) else None
        if part is None:
            assert k == 3
            continue
        want = np.flatnonzero(labels == k)
        assert part.ids == [str(i) for i in want] and part.metadata == [{"i": int(i)} for i in want]
        np.testing.assert_array_equal(part.vectors, x[want])
    d = run.Directory(7, tuple(len(m) for m in members), False, "float16")
    assert run.Directory.from_json(d.to_json(), "run/a") == d and d.lists() == [0, 1, 2, 4, 5, 6]
    with pytest.raises(CorruptObject):
        run.Directory.from_json(b'{"v":1,"n_lists":3,"rows":[1],"unit":true,"dtype":"float32"}', "run/a")
    assert run.base_name("run/abc-12") == "run/abc" and run.base_name("seg/abc") == "seg/abc"


def test_a_list_object_moved_to_another_list_fails_loudly(trained):
    store, x = trained
    head = service(store).heads.open("t", "i", KEK)
    base = head.body.segments[0].name
    first, second = sorted(store.list(f"{head.root}{base}-"))[:2]
    store._data[second] = store._data[first]
    with pytest.raises(CorruptObject):
        service(store, lazy_rows=0).query("t", "i", KEK, x[:1], n_probes=LISTS)


def test_cold_query_reads_only_probed_lists_and_matches_a_full_load(trained):
    store, x = trained
    q = x[::500] + 0.01
    full = answers(service(store, lazy_rows=0), q, n_probes=3)
    store.run_bytes = 0
    cold = service(store, lazy_rows=100)
    with cold.cache.writer(("t", "i")):  # the background fill waits
        assert answers(cold, q[:1], n_probes=3) == full[:1]
        first = store.run_bytes
    # centroids, directory and 3 of 64 lists, not the whole run
    assert 0 < first < 0.12 * run_size(store)
    wait_filled(cold, "i")  # the rest arrives in the background
    assert cold.cache.current(("t", "i")).partial is None
    # ... a few lists per part, then merged into one: a query searches one IVF index
    assert len(cold.cache.current(("t", "i")).parts) == 1
    assert answers(cold, q, n_probes=3) == full
    assert len(cold.list_ids("t", "i", KEK)) == N


def test_a_fill_settles_in_parts_no_merge_may_pass(trained, monkeypatch):
    from ciphervec.engine.memory import parts

    store, x = trained
    q = x[::500] + 0.01
    full = service(store, lazy_rows=0)
    want = answers(full, q, n_probes=3)
    whole = full.cache.current(("t", "i")).parts[0].nbytes()
    cap = whole // 3
    monkeypatch.setattr(parts, "MERGE_BYTES", cap)
    cold = service(store, lazy_rows=100)
    answers(cold, q[:1], n_probes=3)
    wait_filled(cold, "i")  # then merged into as few parts as the cap allows
    got = cold.cache.current(("t", "i")).parts
    assert 3 <= len(got) <= 6 and len(parts.packed(got)) == len(got)  # no two neighbours fit together
    assert all(p.nbytes() <= cap for p in got if p.n > 1)
    assert answers(cold, q, n_probes=3) == want  # several parts answer as one


def test_tail_writes_shadow_rows_of_lists_loaded_later(trained):
    store, x = trained
    far = np.full((1, D), 50.0, np.float32)
    q = np.vstack([x[7:10], far])

    def check_query(svc):
        got = answers(svc, q, n_probes=LISTS)
        flat = [i for hits in got for i, _ in hits]
        assert "r8" not in flat and "r9" not in flat
        assert got[3][0] == ("r7", 0.0)  # the overwrite, at its new place
        assert got[0][0][0] != "r7"  # and no longer at the old one

    def check_rows(svc):
        wait_filled(svc, "i")
        assert svc.num_vectors("t", "i", KEK) == N - 2
        item = svc.get("t", "i", KEK, ["r7", "r8"], ["metadata"])
        assert item == [{"id": "r7", "metadata": {"moved": True}}]

    early = service(store, lazy_rows=100)  # opened (partial) before the writes below
    with early.cache.writer(("t", "i")):  # the background fill waits
        answers(early, x[:1], n_probes=1)
        writer = service(store)
        writer.upsert("t", "i", KEK, RowBatch(["r7"], far, [{"moved": True}]))
        writer.delete_vectors("t", "i", KEK, ["r8", "r9"])
        check_query(early)
    check_rows(early)
    late = service(store, lazy_rows=100)  # opened after them: the tail comes first
    check_query(late)
    check_rows(late)


def test_writes_to_a_partial_state_survive_the_background_fill(trained):
    store, x = trained
    cold = service(store, lazy_rows=100)
    lock = cold.cache.writer(("t", "i"))
    with lock:  # hold the filler back until the writes below are in
        answers(cold, x[:1], n_probes=1)
        cold.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(0, N, 97)], -x[0:N:97]))
        cold.delete_vectors("t", "i", KEK, ["r1", "r2"])
        cold.query("t", "i", KEK, x[:1], top_k=1)  # applies the new tail to the partial state
    wait_filled(cold, "i")
    full = service(store, lazy_rows=0)
    assert cold.num_vectors("t", "i", KEK) == full.num_vectors("t", "i", KEK) == N - 2
    ids = [f"r{i}" for i in range(0, N, 97)] + ["r1", "r3"]
    assert cold.get("t", "i", KEK, ids, ["vector"]) == full.get("t", "i", KEK, ids, ["vector"])
    np.testing.assert_array_equal(
        np.array([r["vector"] for r in cold.get("t", "i", KEK, ["r97"], ["vector"])]), -x[97:98]
    )
    q = x[::300]
    assert answers(cold, q, n_probes=8) == answers(full, q, n_probes=8)


def test_calls_that_need_every_row_complete_the_load(trained):
    store, x = trained
    cold = service(store, lazy_rows=100)
    lock = cold.cache.writer(("t", "i"))
    with lock:
        answers(cold, x[:1], n_probes=1)
        assert cold.cache.current(("t", "i")).partial is not None
        # filters need every row's metadata; get needs any row
        hits = cold.query("t", "i", KEK, x[1:2], top_k=5, n_probes=LISTS, filters={"even": False})
        assert hits[0] and all(int(h["id"][1:]) % 2 == 1 for h in hits[0])
        assert cold.cache.current(("t", "i")).partial is None
    assert len(cold.get("t", "i", KEK, [f"r{i}" for i in range(N)], [])) == N


@pytest.mark.parametrize(
    ("metric", "precision", "scale"),
    [("cosine", "float32", None), ("cosine", "float32", 3.0), ("squared_euclidean", "float16", None)],
)
def test_lazy_and_full_loads_agree(metric, precision, scale):
    store = MemoryStore()
    svc = service(store)
    x = clustered(3000, 12, clusters=24, seed=5)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if scale:  # rows of other norms: cosine keeps a raw copy
        x = x * np.linspace(0.5, scale, len(x), dtype=np.float32)[:, None]
    svc.create_index("t", "i", IndexConfig(metric=metric, storage_precision=precision), kek=KEK)
    svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(len(x))], x))
    assert svc.train("t", "i", KEK, n_lists=32).trained
    q = x[::150] * 1.01
    lazy = service(store, lazy_rows=10)
    first = answers(lazy, q, n_probes=4)
    assert answers(service(store, lazy_rows=0), q, n_probes=4) == first
    wait_filled(lazy, "i")
    assert answers(lazy, q, n_probes=4) == first


def test_small_runs_load_whole(trained):
    store, x = trained
    svc = service(store, lazy_rows=N + 1)
    answers(svc, x[:1], n_probes=1)
    assert svc.cache.current(("t", "i")).partial is None and svc.cache.filler(("t", "i")) is None


def everything(svc):
    ids = sorted(svc.list_ids("t", "i", KEK))
    return ids, svc.get("t", "i", KEK, ids, ["vector", "metadata"])


def test_merged_tails_become_runs_and_the_newest_write_wins_in_any_load_order(trained):
    store, x = trained
    svc = service(store, merge_at=2)
    rng = np.random.default_rng(3)
    moved = [f"r{i}" for i in range(0, 600, 3)]
    svc.upsert("t", "i", KEK, RowBatch(moved, x[:200] * -1.0, [{"v": 1}] * 200))
    svc.upsert("t", "i", KEK, RowBatch([f"n{i}" for i in range(300)], x[1000:1300] + 0.5))
    svc.delete_vectors("t", "i", KEK, ["r1", "r4", "n7"])
    assert svc.merge_tail("t", "i", KEK) == 3
    kinds = [r.kind for r in svc.heads.held(("t", "i")).body.segments]
    assert kinds == ["run", "delete", "run"]
    # newer writes over both runs: a third version of some ids, deletes of others
    again = moved[:50] + ["r2", "n8"]
    svc.upsert(
        "t", "i", KEK, RowBatch(again, rng.standard_normal((52, D)).astype(np.float32), [{"v": 2}] * 52)
    )
    svc.delete_vectors("t", "i", KEK, [moved[60], "n9", "r5"])
    full = service(store, lazy_rows=0)
    want = everything(full)
    assert len(want[0]) == N + 300 - 2 - 1 - 3  # r1 r4 n7 (then r2 n8 back), moved[60] n9 r5
    q = np.vstack([x[::400], x[1000:1300:30] + 0.5, -x[:200:20]])
    expect = answers(full, q, n_probes=6)

    by_query = service(store, lazy_rows=100)
    assert answers(by_query, q, n_probes=6) == expect
    wait_filled(by_query, "i")
    assert everything(by_query) == want

    backwards = service(store, lazy_rows=100)  # newest lists first, the base run last
    head = backwards.heads.open("t", "i", KEK)
    with backwards.cache.writer(("t", "i")):
        snap = backwards.cache.snapshot(head, full=False)
        assert snap.partial is not None and len(snap.partial.runs) == 2
        snap = backwards.cache.load_lists(head, snap, list(reversed(snap.partial.missing())))
        assert snap.partial is None
    assert everything(backwards) == want and answers(backwards, q, n_probes=6) == expect


def test_a_failed_merge_leaves_no_run_objects(trained):
    store, x = trained
    svc = service(store, merge_at=2)
    svc.upsert("t", "i", KEK, RowBatch(["a", "b"], x[:2] + 1))
    svc.upsert("t", "i", KEK, RowBatch(["c"], x[2:3] + 1))
    before = set(store.list("t/i/run/"))
    svc.heads.retry = RetryPolicy(attempts=1, sleep=lambda s: None)
    rival = service(store)
    real = store.put_if_match

    busy = []

    def racing(key, data, etag):  # someone else commits first, every time
        if key.endswith("/head") and not busy:
            busy.append(1)
            try:
                rival.upsert("t", "i", KEK, RowBatch([f"z{len(data)}"], x[3:4]))
            finally:
                busy.clear()
        return real(key, data, etag)

    store.put_if_match = racing
    with pytest.raises(Contention):
        svc.merge_tail("t", "i", KEK)
    store.put_if_match = real
    assert set(store.list("t/i/run/")) == before


class SlowStore(CountingStore):
    """Run list objects take a while to read, so that two readers overlap."""

    def get(self, key, if_none_match=None):
        if "/run/" in key and "-" in key.rsplit("/", 1)[-1]:
            time.sleep(0.003)
        return super().get(key, if_none_match)


def test_a_list_being_read_is_not_read_again_by_a_second_caller(trained):
    """A query racing the background fill of a cold index: both want the same lists; each
    list object is read once, and both callers get every list."""
    store, _ = trained
    slow = SlowStore()
    slow._data = store._data  # the same objects, read slowly and counted
    svc = service(slow)
    head = svc.heads.open("t", "i", KEK)
    name = head.body.segments[0].name
    lists = [(name, k) for k in svc.heads.read_directory(head, name).lists()]
    list_bytes = sum(len(MemoryStore.get(slow, f"t/i/{run.list_name(name, k)}")[0]) for _, k in lists)
    slow.run_bytes, start, got = 0, threading.Barrier(2), {}

    def reader(who, order):
        start.wait()
        got[who] = svc.cache.inflight.fetch(svc.heads, head, order, readers=4)

    threads = [
        threading.Thread(target=reader, args=("a", lists)),
        threading.Thread(target=reader, args=("b", lists[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert slow.run_bytes == list_bytes  # every list object read exactly once
    for who in ("a", "b"):
        assert sorted((n, k) for n, k, _ in got[who]) == sorted(lists)
    rows_a = {k: seg.ids for _, k, seg in got["a"]}
    assert rows_a == {k: seg.ids for _, k, seg in got["b"]}
