"""IndexService over the memory store: semantics, commit protocol, failure atomicity."""

import os
import threading

import numpy as np
import pytest

from ciphervec.engine.arrays.backend import select
from ciphervec.engine.errors import (
    Contention,
    IndexExists,
    IndexNotFound,
    InvalidRequest,
    Unauthorized,
    ValidationFailed,
    WrongKey,
)
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.service import IndexService
from ciphervec.engine.store.manifest import RetryPolicy, SegmentRef
from ciphervec.infra.kms import LocalKeyWrapper
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import BACKEND, clustered


def batch(ids, d=4, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return RowBatch(list(ids), rng.standard_normal((len(ids), d)).astype(np.float32), **kw)


def fresh(store, **kw):
    """Another container over the same store: nothing cached."""
    return IndexService(store, backend=select(BACKEND), retry=RetryPolicy(sleep=lambda s: None), **kw)


def snapshot(store):
    return dict(store.items())


def test_create_twice_is_conflict(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    with pytest.raises(IndexExists):
        service.create_index("t", "i", IndexConfig(), kek=kek)


@pytest.mark.parametrize(
    "config",
    [dict(metric="manhattan"), dict(dimension=-1), dict(storage_precision="int3")],
)
def test_bad_config_is_400(config):
    with pytest.raises(InvalidRequest):
        IndexConfig(**config)


def test_wrong_key_is_401_warm_and_cold(service, store, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, batch("ab"))
    with pytest.raises(WrongKey):
        service.query("t", "i", os.urandom(32), np.zeros((1, 4), np.float32))
    with pytest.raises(WrongKey):
        fresh(store).num_vectors("t", "i", os.urandom(32))
    with pytest.raises(Unauthorized):
        fresh(store).num_vectors("t", "i", None)


def test_other_tenant_sees_nothing(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    with pytest.raises(IndexNotFound):
        service.describe("u", "i", kek)
    assert service.list_indexes("u") == [] and service.list_indexes("t") == ["i"]


def test_upsert_overwrites_and_last_duplicate_wins(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, batch(["a", "b"], metadata=[{"v": 1}, {"v": 1}]))
    service.upsert("t", "i", kek, batch(["a", "a"], seed=1, metadata=[{"v": 2}, {"v": 3}]))
    assert service.num_vectors("t", "i", kek) == 2
    got = service.get("t", "i", kek, ["a", "b", "zz"], ["metadata", "contents"])
    assert got == [
        {"id": "a", "metadata": {"v": 3}, "contents": ""},
        {"id": "b", "metadata": {"v": 1}, "contents": ""},
    ]


def test_delete_then_reupsert(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, batch("abc"))
    assert service.delete_vectors("t", "i", kek, ["a", "nope"]) == 2
    assert sorted(service.list_ids("t", "i", kek)) == ["b", "c"]
    service.upsert("t", "i", kek, batch("a", seed=5))
    assert sorted(service.list_ids("t", "i", kek)) == ["a", "b", "c"]


def test_dimension_detected_then_enforced_and_nothing_written(service, store, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    assert service.describe("t", "i", kek)["dimension"] == 0
    service.upsert("t", "i", kek, batch("ab", d=6))
    assert service.describe("t", "i", kek)["dimension"] == 6
    before = snapshot(store)
    with pytest.raises(ValidationFailed):
        service.upsert("t", "i", kek, batch("c", d=5))
    with pytest.raises(ValidationFailed):
        service.query("t", "i", kek, np.zeros((1, 5), np.float32))
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "make",
    [
        lambda: RowBatch(["a"], np.array([[np.nan, 1, 2, 3]], np.float32)),
        lambda: RowBatch(["a", "b"], np.zeros((1, 4), np.float32)),
        lambda: RowBatch([""], np.zeros((1, 4), np.float32)),
        lambda: RowBatch(["a"], np.zeros((1, 4), np.float32), metadata=[{}, {}]),
        lambda: RowBatch(["a"], np.array([[np.inf, 1, 2, 3]], np.float32)),
    ],
)
def test_bad_batches_are_422(make):
    with pytest.raises(ValidationFailed):
        make()


def test_filters_restrict_candidates_not_just_trim(service, kek):
    x = clustered(3000, 8, seed=1)
    meta = [{"even": i % 2 == 0, "i": i} for i in range(3000)]
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, RowBatch([str(i) for i in range(3000)], x, meta))
    res = service.query("t", "i", kek, x[1:2], top_k=20, filters={"even": True}, include=["metadata"])[0]
    assert len(res) == 20 and all(r["metadata"]["even"] for r in res)
    res = service.query("t", "i", kek, x[1:2], top_k=5, filters={"i": {"$in": [7, 2999]}})[0]
    assert {r["id"] for r in res} == {"7", "2999"}


def test_query_metadata_orders_and_limits(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    meta = [{"n": 3}, {"n": 1}, None, {"n": 2}]
    service.upsert("t", "i", kek, batch("abcd", metadata=meta))
    assert service.query_metadata("t", "i", kek, {}, order_by="n") == ["b", "d", "a", "c"]
    assert service.query_metadata("t", "i", kek, {"n": {"$gt": 1}}, order_by="n", ascending=False) == [
        "a",
        "d",
    ]
    assert service.query_metadata("t", "i", kek, {}, top_k=1, order_by="n") == ["b"]


class RacingStore(MemoryStore):
    """Before each head CAS, another writer bumps the head `races` times."""

    def __init__(self):
        super().__init__()
        self.races = 0
        self.rival = None

    def put_if_match(self, key, data, etag):
        if key.endswith("/head") and self.races > 0 and self.rival is not None:
            self.races -= 1
            rival, self.rival = self.rival, None
            try:
                rival()
            finally:
                self.rival = rival
        return super().put_if_match(key, data, etag)


def test_lost_race_is_retried_and_both_writes_survive(kek):
    store = RacingStore()
    a, b = fresh(store), fresh(store)
    a.create_index("t", "i", IndexConfig(), kek=kek)
    store.rival = lambda: b.upsert("t", "i", kek, batch(["rival"], seed=2))
    store.races = 1
    a.upsert("t", "i", kek, batch(["mine"]))
    assert sorted(fresh(store).list_ids("t", "i", kek)) == ["mine", "rival"]


def test_a_commit_on_a_stale_cached_head_never_edits_it_and_loses_nothing(kek):
    store = RacingStore()
    a, b = fresh(store), fresh(store)
    a.create_index("t", "i", IndexConfig(), kek=kek)
    a.upsert("t", "i", kek, batch(["x"]))
    held = a.heads.held(("t", "i"))
    before = (held.body.to_json(), held.envelope.to_json())
    store.rival = lambda: b.upsert("t", "i", kek, batch(["y"], seed=2))
    store.races = 1  # b commits after a has prepared its change on the cached head
    a.upsert("t", "i", kek, batch(["z"], seed=3))
    assert (held.body.to_json(), held.envelope.to_json()) == before
    assert sorted(fresh(store).list_ids("t", "i", kek)) == ["x", "y", "z"]


def test_endless_contention_is_503_and_leaves_no_orphan(kek):
    store = RacingStore()
    a, b = fresh(store), fresh(store)
    a.heads.retry = RetryPolicy(attempts=3, sleep=lambda s: None)
    a.create_index("t", "i", IndexConfig(), kek=kek)
    store.rival = lambda: b.upsert("t", "i", kek, batch([f"r{os.urandom(2).hex()}"], seed=2))
    store.races = 100
    with pytest.raises(Contention) as info:
        a.upsert("t", "i", kek, batch(["mine"]))
    assert info.value.retry_after >= 1
    store.races = 0
    ids = fresh(store).list_ids("t", "i", kek)
    assert "mine" not in ids and len(ids) == 3
    segs = [k for k in store.list("t/i/seg/")]
    assert len(segs) == 3  # the failed write's segment was removed


def test_a_training_that_cannot_commit_leaves_no_run_objects(kek):
    store = RacingStore()
    a, b = fresh(store), fresh(store)
    a.create_index("t", "i", IndexConfig(), kek=kek)
    a.upsert("t", "i", kek, RowBatch([str(i) for i in range(400)], clustered(400, 8, seed=3)))
    a.heads.retry = RetryPolicy(attempts=3, sleep=lambda s: None)
    store.rival = lambda: b.upsert("t", "i", kek, batch([f"r{os.urandom(2).hex()}"], d=8, seed=2))
    store.races = 100
    with pytest.raises(Contention):
        a.train("t", "i", kek, n_lists=4)
    store.races = 0
    assert not list(store.list("t/i/run/"))  # centroids, directory and every list removed
    assert fresh(store).describe("t", "i", kek)["is_trained"] is False


def test_many_threads_lose_no_write(kek):
    store = MemoryStore()
    services = [fresh(store) for _ in range(3)]
    services[0].create_index("t", "i", IndexConfig(), kek=kek)
    errors = []

    def writer(n):
        svc = services[n % 3]
        try:
            for j in range(10):
                svc.upsert("t", "i", kek, batch([f"w{n}-{j}"], seed=n * 100 + j))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fresh(store).num_vectors("t", "i", kek) == 80


def test_train_compacts_and_keeps_every_row(service, store, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    x = clustered(1200, 8, seed=4)
    for lo in range(0, 1200, 300):
        service.upsert("t", "i", kek, RowBatch([str(i) for i in range(lo, lo + 300)], x[lo : lo + 300]))
    service.delete_vectors("t", "i", kek, ["0", "1"])
    result = service.train("t", "i", kek, n_lists=8)
    assert result.trained and result.n_lists == 8
    service.upsert("t", "i", kek, batch(["late"], d=8))
    other = fresh(store)
    assert other.num_vectors("t", "i", kek) == 1199
    d = other.describe("t", "i", kek)
    assert d["is_trained"] and d["n_lists"] == 8
    res = other.query("t", "i", kek, x[5:6], top_k=1, n_probes=8, include=["distance"])[0]
    assert res[0]["id"] == "5" and res[0]["distance"] == 0.0
    # retired segments are deleted after the grace period
    service.maintenance.clock = lambda: 10**12
    assert service.sweep("t", "i", kek) == 5  # four upserts and one tombstone segment
    # left: the late upsert, the centroids, the run's directory and its 8 lists
    assert len(list(store.list("t/i/seg/"))) == 1 and len(list(store.list("t/i/run/"))) == 2 + 8
    assert fresh(store).num_vectors("t", "i", kek) == 1199
    # a retrain retires the old run with all its lists; the sweep deletes them after the grace
    before = set(store.list("t/i/run/"))
    service.maintenance.clock = lambda: 2 * 10**12
    assert service.train("t", "i", kek, n_lists=4).trained
    service.maintenance.clock = lambda: 3 * 10**12
    service.sweep("t", "i", kek)
    after = set(store.list("t/i/run/"))
    assert not before & after and len(after) == 2 + 4
    assert fresh(store).num_vectors("t", "i", kek) == 1199


def test_too_few_vectors_to_train_stays_exact(service, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, batch("abc"))
    result = service.train("t", "i", kek, n_lists=4)
    assert not result.trained and "at least 8" in result.message
    assert service.describe("t", "i", kek)["is_trained"] is False


def test_auto_training_is_queued_once(store, kek):
    svc = fresh(store, train_threshold=10)
    svc.create_index("t", "i", IndexConfig(), kek=kek)
    assert not svc.upsert("t", "i", kek, batch([str(i) for i in range(10)])).training_triggered
    first = svc.upsert("t", "i", kek, batch(["x"]))
    assert first.training_triggered and first.total == 11 and first.threshold == 10
    assert not svc.upsert("t", "i", kek, batch(["y"])).training_triggered
    assert svc.training_indexes("t") == [("i", "queued")]


def test_delete_index_removes_every_object(service, store, kek):
    service.create_index("t", "i", IndexConfig(), kek=kek)
    service.upsert("t", "i", kek, batch("ab"))
    service.create_index("t", "keep", IndexConfig(), kek=kek)
    service.delete_index("t", "i", kek)
    assert [k for k in store.list("t/i/")] == []
    assert service.list_indexes("t") == ["keep"]
    with pytest.raises(IndexNotFound):
        service.delete_index("t", "i", kek)


def test_names_with_slashes_dots_and_unicode(service, kek):
    for name in ("a/b", "..", ".", "ïndex ✓"):
        service.create_index("t", name, IndexConfig(), kek=kek)
        service.upsert("t", name, kek, batch("a"))
    assert service.list_indexes("t") == sorted(["a/b", "..", ".", "ïndex ✓"])


def test_server_managed_key(store, tmp_path):
    svc = fresh(store, key_wrapper=LocalKeyWrapper(tmp_path))
    svc.create_index("t", "k", IndexConfig(), kms_name="default")
    svc.upsert("t", "k", None, batch("ab"))
    assert fresh(store, key_wrapper=LocalKeyWrapper(tmp_path)).num_vectors("t", "k", None) == 2
    with pytest.raises(WrongKey):
        fresh(store, key_wrapper=LocalKeyWrapper(tmp_path / "other")).num_vectors("t", "k", None)


def test_store_holds_no_plaintext(service, store, kek):
    service.create_index("t", "secret-index", IndexConfig(metric="cosine"), kek=kek)
    vec = np.array([[1.25, -3.5, 7.75, 0.125]], np.float32)
    service.upsert(
        "t",
        "secret-index",
        kek,
        RowBatch(["id-PLAINTEXT-1"], vec, [{"field": "meta-PLAINTEXT"}], ["contents-PLAINTEXT"]),
    )
    service.train("t", "secret-index", kek, n_lists=1)
    blob = b"".join(k.encode() + v for k, v in store.items())
    for needle in (b"PLAINTEXT", vec.tobytes(), vec[0, :2].tobytes(), b"cosine", kek, kek.hex().encode()):
        assert needle not in blob


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric,make", [("euclidean", lambda x: x), ("cosine", unit)])
def test_faiss_holds_the_only_copy_and_rows_stay_exact(service, kek, metric, make):
    x = make(clustered(3000, 24, seed=31))
    service.create_index("t", "one", IndexConfig(metric=metric), kek=kek)
    service.upsert("t", "one", kek, RowBatch([str(i) for i in range(2000)], x[:2000]))
    service.query("t", "one", kek, x[:1], top_k=1)
    snap = service.cache.current(("t", "one"))
    assert snap.parts and all(p.stored is None for p in snap.parts)  # faiss holds the only copy
    service.upsert("t", "one", kek, RowBatch([str(i) for i in range(2000, 3000)], x[2000:]))
    service.delete_vectors("t", "one", kek, ["5"])
    got = service.get("t", "one", kek, ["7", "2500"], ["vector"])
    np.testing.assert_array_equal(np.array([g["vector"] for g in got], np.float32), x[[7, 2500]])
    hits = service.query("t", "one", kek, x[[2500, 5]], top_k=2, include=["distance"])
    assert hits[0][0] == {"id": "2500", "distance": 0.0} and hits[1][0]["id"] != "5"
    service.train("t", "one", kek, n_lists=16)
    res = service.query("t", "one", kek, x[[100]], top_k=1, n_probes=16, include=["distance"])
    assert res[0][0] == {"id": "100", "distance": 0.0}
    assert all(p.stored is None for p in service.cache.current(("t", "one")).parts)


def test_cosine_rows_of_other_norms_keep_both_copies_and_rank_by_cosine(service, kek):
    x = unit(clustered(500, 8, seed=32))
    service.create_index("t", "mix", IndexConfig(metric="cosine"), kek=kek)
    service.upsert("t", "mix", kek, RowBatch([str(i) for i in range(500)], x))
    service.query("t", "mix", kek, x[:1], top_k=1)
    long = (x[3] * 40.0)[None, :]  # same direction, other norm: cosine distance 0 to row 3
    service.upsert("t", "mix", kek, RowBatch(["long"], long))
    snap = service.cache.current(("t", "mix"))
    hits = service.query("t", "mix", kek, x[[3]], top_k=2, include=["distance"])[0]
    assert {h["id"] for h in hits} == {"3", "long"} and all(h["distance"] < 1e-6 for h in hits)
    # the part holding "long" keeps the stored rows beside faiss's normalised ones
    assert any(p.stored is not None for p in snap.parts)
    got = service.get("t", "mix", kek, ["long", "4"], ["vector"])
    np.testing.assert_array_equal(np.array([g["vector"] for g in got], np.float32), np.vstack([long, x[[4]]]))


def build_tail(svc, kek, name="m"):
    """Many small writes: overwrites, deletes, re-upserts, metadata and contents."""
    x = clustered(300, 8, seed=51)
    for lo in range(0, 300, 50):
        ids = [str(i) for i in range(lo, lo + 50)]
        svc.upsert(
            "t",
            name,
            kek,
            RowBatch(
                ids,
                x[lo : lo + 50],
                [{"i": i} for i in range(lo, lo + 50)],
                [f"c{i}" for i in range(lo, lo + 50)],
            ),
        )
    svc.upsert("t", name, kek, RowBatch(["3", "4"], x[[100, 101]], [{"i": "over"}, None]))
    svc.delete_vectors("t", name, kek, ["5", "6", "299"])
    svc.upsert("t", name, kek, RowBatch(["6"], x[[7]]))
    return x


def everything(svc, kek, name="m"):
    ids = sorted(svc.list_ids("t", name, kek))
    return ids, svc.get("t", name, kek, ids, ["vector", "metadata", "contents"])


def test_merge_tail_keeps_every_row_and_shortens_the_head(store, kek):
    svc = fresh(store, merge_at=4)
    svc.create_index("t", "m", IndexConfig(), kek=kek)
    build_tail(svc, kek)
    before = everything(svc, kek)
    snap = svc.cache.current(("t", "m"))
    assert svc.merge_tail("t", "m", kek) == 9
    assert len(svc.heads.held(("t", "m")).body.segments) == 2
    renamed = svc.cache.current(("t", "m"))  # same rows: nothing was reloaded
    assert renamed.ids is snap.ids and renamed.alive is snap.alive
    assert everything(svc, kek) == before
    assert everything(fresh(store), kek) == before  # a cold container reads the merged pair
    svc.maintenance.clock = lambda: 10**12
    svc.sweep("t", "m", kek)
    assert len(list(store.list("t/m/seg/"))) == 2
    assert svc.merge_tail("t", "m", kek) == 0  # two segments: nothing to merge


def test_merge_after_training_keeps_tombstones_over_the_run(store, kek):
    svc = fresh(store, merge_at=2)
    svc.create_index("t", "m", IndexConfig(), kek=kek)
    build_tail(svc, kek)
    svc.train("t", "m", kek, n_lists=4)
    svc.delete_vectors("t", "m", kek, ["10"])
    svc.upsert("t", "m", kek, RowBatch(["new"], np.ones((1, 8), np.float32)))
    before = everything(svc, kek)
    assert svc.merge_tail("t", "m", kek) == 2
    refs = svc.heads.held(("t", "m")).body.segments
    assert [r.kind for r in refs] == ["run", "delete", "run"]  # merged upserts of a trained index: a run
    assert everything(fresh(store), kek) == before and "10" not in before[0]


def test_writes_racing_a_merge_survive(kek):
    store = RacingStore()
    svc, rival = fresh(store, merge_at=2), fresh(store)
    svc.create_index("t", "m", IndexConfig(), kek=kek)
    build_tail(svc, kek)
    store.rival = lambda: rival.upsert("t", "m", kek, RowBatch(["late"], np.ones((1, 8), np.float32)))
    store.races = 1
    svc.merge_tail("t", "m", kek)
    assert "late" in fresh(store).list_ids("t", "m", kek)
    assert len(fresh(store).list_ids("t", "m", kek)) == 300 - 3 + 1 + 1


def test_merge_runs_are_size_tiered():
    from ciphervec.engine.usecases.maintenance import merge_run as _merge_run

    def refs(*rows, snapshot=False):
        out = [SegmentRef(f"s{i}", i, "upsert", r) for i, r in enumerate(rows)]
        return ([SegmentRef("snap", 0, "run", 10**6)] if snapshot else []) + out

    assert len(_merge_run(refs(1000, 10, 1000, 3, snapshot=True))) == 4  # ordinary writes always join
    assert len(_merge_run(refs(64000, *[1000] * 10))) == 10  # a big merge output waits ...
    assert len(_merge_run(refs(64000, *[1000] * 64))) == 65  # ... until newer rows reach its size


def test_a_running_training_shows_each_stage_it_reaches(store, kek, monkeypatch):
    from ciphervec.engine.store.transactions import TrainingStage

    svc = fresh(store, train_threshold=10**9)
    svc.create_index("t", "i", IndexConfig(), kek=kek)
    svc.upsert("t", "i", kek, batch([str(i) for i in range(400)]))
    seen, real = [], svc.heads.commit

    def commit(head, op):  # what training-status shows after each commit of a stage
        done = real(head, op)
        if isinstance(op, TrainingStage):
            seen.append(svc.training_progress("t")["i"])
        return done

    monkeypatch.setattr(svc.heads, "commit", commit)
    assert svc.train("t", "i", kek, n_lists=4).trained
    assert seen == []  # no running mark, nothing to show: no extra commit
    svc.set_training("t", "i", kek, "running")
    assert svc.training_progress("t")["i"]["state"] == "running"
    assert "stage" not in svc.training_progress("t")["i"]
    assert svc.train("t", "i", kek, n_lists=4).trained
    assert [s["stage"] for s in seen] == list(TrainingStage.STAGES)
    assert [s["step"] for s in seen] == list(range(1, len(TrainingStage.STAGES) + 1))
    assert all(s["state"] == "running" and s["steps"] == len(TrainingStage.STAGES) for s in seen)
    head = svc.heads.open("t", "i", kek)
    with pytest.raises(ValueError):
        TrainingStage("guessing", 0.0).apply(head.envelope, head.body)
