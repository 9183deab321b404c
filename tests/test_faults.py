"""Faults at every store call in turn: an operation that fails part-way leaves the index as
it was or as the operation leaves it — never in between — the index opens, and the next
sweep leaves no object that the head does not name."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from ciphervec.engine.codec import run
from ciphervec.engine.errors import IndexNotFound
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.ports import StoreError
from ciphervec.infra.kms import LocalKeyWrapper
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered
from tests.test_service import fresh

KEK, NEW = bytes(range(32)), bytes(range(1, 33))
GONE = "gone"


class FaultyStore(MemoryStore):
    """The memory store, failing its ``fail_at``-th call with ``fault`` (a store error, or a
    timeout as a network client raises it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at: int | None = None
        self.fault: type[Exception] = StoreError

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.fault("injected fault")

    def get(self, key, if_none_match=None):
        self._tick()
        return super().get(key, if_none_match)

    def put_if_absent(self, key, data):
        self._tick()
        return super().put_if_absent(key, data)

    def put_if_match(self, key, data, etag):
        self._tick()
        return super().put_if_match(key, data, etag)

    def delete(self, key):
        self._tick()
        super().delete(key)

    def list(self, prefix):
        self._tick()
        return iter(list(super().list(prefix)))


def service(store, **kw):
    settings = {"key_wrapper": LocalKeyWrapper(store.kms), "lazy_rows": 0, "train_threshold": 10**9}
    return fresh(store, **(settings | kw))


def state(store):
    """Every row as a cold reader sees it (either key opens it), or GONE."""
    for key in (KEK, NEW, None):
        svc = service(store)
        try:
            ids = sorted(svc.list_ids("t", "i", key))
        except IndexNotFound:
            return GONE
        except Exception:
            continue
        rows = svc.get("t", "i", key, ids, ["vector", "metadata"])
        return {r["id"]: (tuple(np.round(r["vector"], 5)), str(r["metadata"])) for r in rows}
    raise AssertionError("no key opens the index")


def opens(store, key):
    try:
        service(store).num_vectors("t", "i", key)
    except Exception:
        return False
    return True


def unnamed(store):
    """Objects of the index that its head does not name (after a sweep: none)."""
    keys = [k for k in MemoryStore.list(store, "t/i/") if not k.endswith(("/head", ".lock"))]
    try:
        head = service(store).heads.open("t", "i", KEK)
    except Exception:
        try:
            head = service(store).heads.open("t", "i", NEW)
        except IndexNotFound:
            return keys
    named = {s.name for s in head.body.segments} | {r["name"] for r in head.body.retired}
    if head.body.centroids:
        named.add(head.body.centroids.name)
    return [k for k in keys if run.base_name(k[len(head.root) :]) not in named]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A trained index with a write-ahead tail, overwrites and deletes."""
    store = FaultyStore()
    store.kms = tmp_path_factory.mktemp("kms")
    svc = service(store)
    svc.create_index("t", "i", IndexConfig(dimension=8), kek=KEK)
    x = clustered(400, 8, seed=2)
    svc.upsert(
        "t", "i", KEK, RowBatch([f"r{i}" for i in range(300)], x[:300], [{"n": i} for i in range(300)])
    )
    assert svc.train("t", "i", KEK, n_lists=4).trained
    for lo in range(300, 400, 25):
        svc.upsert("t", "i", KEK, RowBatch([f"r{i}" for i in range(lo, lo + 25)], x[lo : lo + 25]))
    svc.delete_vectors("t", "i", KEK, ["r1", "r2", "r350"])
    return store, dict(store._data), x


OPS = {
    "upsert": lambda s, x: s.upsert("t", "i", KEK, RowBatch(["r5", "new"], x[:2] + 1, [{"n": -1}, None])),
    "delete": lambda s, x: s.delete_vectors("t", "i", KEK, ["r7", "r8", "r310"]),
    "train": lambda s, x: s.train("t", "i", KEK, n_lists=3),
    "merge": lambda s, x: s.merge_tail("t", "i", KEK),
    "sweep": lambda s, x: service(s.heads.store, retire_grace_seconds=0).sweep("t", "i", KEK),
    "rotate": lambda s, x: s.rotate_key("t", "i", KEK, NEW, None),
    "reencrypt": lambda s, x: (
        s.rotate_key("t", "i", KEK, NEW, None, reencrypt=True),
        s.rewrite("t", "i", NEW),
    ),
    "delete_index": lambda s, x: s.delete_index("t", "i", KEK),
}


@pytest.mark.parametrize("fault", [StoreError, TimeoutError])
@pytest.mark.parametrize("op", sorted(OPS))
def test_a_fault_at_any_store_call_leaves_before_or_after(baseline, op, fault):
    store, base, x = baseline
    store._data = dict(base)
    store.fail_at = None
    before = state(store)
    store._data = dict(base)
    OPS[op](service(store, merge_at=2), x)
    after = state(store)
    store.calls = 0
    store._data = dict(base)
    OPS[op](service(store, merge_at=2), x)
    total = store.calls
    assert total >= 2
    for k in range(1, total + 1):
        store._data, store.calls, store.fail_at, store.fault = dict(base), 0, k, fault
        with contextlib.suppress(StoreError, TimeoutError):
            OPS[op](service(store, merge_at=2), x)
        store.fail_at = None
        got = state(store)
        assert got in (before, after), f"{op}: fault at call {k} of {total} left a third state"
        if op in ("rotate", "reencrypt"):  # exactly one of the two keys opens it
            assert sum(opens(store, key) for key in (KEK, NEW)) == 1
        if op == "reencrypt" and opens(store, NEW):  # the next rewrite finishes the job
            service(store).rewrite("t", "i", NEW)
            service(store, retire_grace_seconds=0).sweep("t", "i", NEW)
            rotation = service(store).describe("t", "i", NEW)["key_rotation"]
            assert rotation == {"objects_under_old_keys": 0, "old_keys_held": 0, "rewriting": False}
        if got is GONE:  # a delete that failed part-way: the index is gone; the next one finishes
            assert service(store).list_indexes("t") == []
            with contextlib.suppress(IndexNotFound):
                service(store).delete_index("t", "i", KEK)
        else:
            key = KEK if opens(store, KEK) else NEW
            service(store, retire_grace_seconds=0).sweep("t", "i", key)
            assert state(store) == got
        assert unnamed(store) == [], f"{op}: fault at call {k} of {total} left objects behind"


def answers(svc, x, key=KEK):
    """What a container answers: every id, and each query's neighbours with distances."""
    found = svc.query("t", "i", key, x[:20], top_k=5, n_probes=4, include=["distance", "metadata"])
    ids = sorted(svc.list_ids("t", "i", key))
    return ids, [[(r["id"], round(r["distance"], 4), str(r.get("metadata"))) for r in q] for q in found]


WARM_CASES = {
    # another container's writes to sync: new segments, overwrites, deletes
    "sync": lambda other, x: (
        other.upsert("t", "i", KEK, RowBatch(["r10", "w1", "w2"], x[:3] + 2, [{"n": 7}, None, None])),
        other.delete_vectors("t", "i", KEK, ["r11", "r320"]),
    ),
    # another container's training: the warm one takes up a new run and new centroids
    "retrain": lambda other, x: other.train("t", "i", KEK, n_lists=3),
}


@pytest.mark.parametrize("case", sorted(WARM_CASES) + ["adopt", "lazy lists"])
def test_a_warm_container_that_fails_part_way_through_reading_answers_as_a_cold_one(baseline, case):
    """A container holding the index in memory meets a fault at each store call in turn while
    it brings itself up to the head (another container's writes or training to sync; its own
    write to adopt; the IVF lists of a lazily opened run): the call fails or succeeds, and
    the next call, with the store healthy, answers exactly as a cold container does."""
    store, base, x = baseline
    k = 1
    while True:
        store._data = dict(base)
        store.fail_at, store.calls, store.fault = None, 0, StoreError
        warm = service(store, lazy_rows=1) if case == "lazy lists" else service(store)
        if case != "lazy lists":
            answers(warm, x)  # every row in memory
        else:  # the run open, one of its four lists read: the query below reads the others
            warm.query("t", "i", KEK, x[:1], top_k=1, n_probes=1)
        if case in WARM_CASES:
            WARM_CASES[case](service(store), x)
        store.calls, store.fail_at = 0, k
        try:
            if case == "adopt":
                warm.upsert("t", "i", KEK, RowBatch(["r12", "a1"], x[:2] - 1, [None, {"n": 9}]))
            else:
                answers(warm, x)
        except (StoreError, IndexNotFound):
            pass
        reached = store.calls >= k
        store.fail_at = None
        assert answers(warm, x) == answers(service(store), x), (case, k)
        if not reached:
            break  # the operation made fewer than k store calls: every call has had its fault
        k += 1
    assert k > 2, k  # the cases do read the store
