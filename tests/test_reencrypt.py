"""rotate_key with reencrypt: a new data key at once, every object rewritten under it online,
nothing lost when the rewrite is interrupted, and no object under the old data key left."""

import threading
import time

import numpy as np
import pytest

from ciphervec.engine.codec import crypto
from ciphervec.engine.errors import KeyRotated, Unauthorized
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.store.manifest import parse_envelope
from ciphervec.engine.store.transactions import SetRewrite
from ciphervec.infra.kms import LocalKeyWrapper
from ciphervec.infra.storage.memory import MemoryStore
from tests.test_api import KEY, app, call, count, create, upsert_b64  # noqa: F401 (app: fixture)
from tests.test_service import fresh

OLD, NEW = bytes(range(32)), bytes(range(1, 33))
DIM = 8


def rows(n, start=0, seed=0):
    rng = np.random.default_rng(seed)
    return RowBatch([f"r{start + i}" for i in range(n)], rng.standard_normal((n, DIM)).astype(np.float32))


def build(store, wrapper, *, trained=True):
    """An index with a trained run, centroids, a tail of segments and a delete."""
    svc = fresh(store, key_wrapper=wrapper, retire_grace_seconds=60.0)
    svc.create_index("t", "i", IndexConfig(dimension=DIM, metric="euclidean"), kek=OLD)
    svc.upsert("t", "i", OLD, rows(400))
    if trained:
        assert svc.train("t", "i", OLD, n_lists=4).trained
    for k in range(3):
        svc.upsert("t", "i", OLD, rows(20, 400 + 20 * k, seed=k + 1))
    svc.delete_vectors("t", "i", OLD, ["r0", "r401"])
    return svc


def swept(store, wrapper, kek):
    """A sweep once the grace period is over (a container whose grace is 0)."""
    fresh(store, key_wrapper=wrapper, retire_grace_seconds=0.0).sweep("t", "i", kek)


def contents(svc, kek):
    ids = sorted(svc.list_ids("t", "i", kek))
    got = svc.get("t", "i", kek, ids, include=["vector"])
    return {g["id"]: np.asarray(g["vector"]).tolist() for g in got}


def data_key(store, kek, wrapper=None):
    env, _ = parse_envelope(store.get("t/i/head")[0])
    if env.key_mode == "kms":
        return wrapper.unwrap(
            env.kms_name, env.wrapped_dek, {"purpose": "ciphervec-dek", "tenant": "t", "index": "i"}
        )
    return crypto.unwrap_data_key(kek, env.wrapped_dek, "t", "i")


def sealed_under(store, dek):
    """Names of the objects (not the head) that ``dek`` opens."""
    cipher, out = crypto.IndexCipher(dek, "t", "i"), []
    for key in store.list("t/i/"):
        if key == "t/i/head":
            continue
        try:
            cipher.decrypt(key[len("t/i/") :], store.get(key)[0])
            out.append(key)
        except Exception:
            pass
    return out


@pytest.mark.parametrize("trained", [True, False])
def test_rotation_then_rewrite_moves_every_object(tmp_path, trained):
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper, trained=trained)
    before = contents(svc, OLD)
    old_dek = data_key(store, OLD)
    query = np.ones((1, DIM), np.float32)
    hits = svc.query("t", "i", OLD, query, top_k=10)

    assert svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True) == "client"
    new_dek = data_key(store, NEW)
    assert new_dek != old_dek
    with pytest.raises(Unauthorized):  # the old key is refused from the commit on
        svc.num_vectors("t", "i", OLD)
    cold = fresh(store, key_wrapper=wrapper)
    with pytest.raises(Unauthorized):
        cold.num_vectors("t", "i", OLD)
    # before the rewrite: the objects are still under the old data key, and readable
    pending = cold.describe("t", "i", NEW)["key_rotation"]
    assert pending["objects_under_old_keys"] > 0 and pending["old_keys_held"] == 1
    assert contents(cold, NEW) == before
    assert cold.query("t", "i", NEW, query, top_k=10) == hits

    rewritten = svc.rewrite("t", "i", NEW)
    assert rewritten == pending["objects_under_old_keys"]
    info = svc.describe("t", "i", NEW)["key_rotation"]
    assert info["objects_under_old_keys"] == 0 and not info["rewriting"]
    assert contents(svc, NEW) == before
    assert svc.query("t", "i", NEW, query, top_k=10) == hits
    assert fresh(store, key_wrapper=wrapper).query("t", "i", NEW, query, top_k=10) == hits

    swept(store, wrapper, NEW)  # past the grace: the old objects go, and the old data key with them
    assert sealed_under(store, old_dek) == []
    assert len(sealed_under(store, new_dek)) == len(list(store.list("t/i/"))) - 1
    assert svc.describe("t", "i", NEW)["key_rotation"]["old_keys_held"] == 0
    assert contents(fresh(store, key_wrapper=wrapper), NEW) == before


def test_client_key_to_kms_and_back_with_reencrypt(tmp_path):
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper)
    before = contents(svc, OLD)
    assert svc.rotate_key("t", "i", OLD, None, "default", reencrypt=True) == "kms"
    svc.rewrite("t", "i", None)
    mid = data_key(store, None, wrapper)
    assert contents(fresh(store, key_wrapper=wrapper), None) == before
    assert svc.rotate_key("t", "i", None, NEW, None, kms_name="default", reencrypt=True) == "client"
    svc.rewrite("t", "i", NEW)
    swept(store, wrapper, NEW)
    assert sealed_under(store, mid) == []
    assert contents(fresh(store, key_wrapper=wrapper), NEW) == before


def test_writes_and_reads_keep_working_during_the_rewrite(tmp_path):
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper)
    expected = contents(svc, OLD)
    svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    stop, acked, errors = threading.Event(), [], []

    def writer(w):
        other = fresh(store, key_wrapper=wrapper)  # another container
        n = 0
        while not stop.is_set():
            batch = rows(1, 10_000 * (w + 1) + n, seed=n)
            other.upsert("t", "i", NEW, batch)
            acked.append((batch.ids[0], batch.vectors[0].tolist()))
            n += 1

    def reader():
        other = fresh(store, key_wrapper=wrapper)
        while not stop.is_set():
            try:
                assert other.num_vectors("t", "i", NEW) >= len(expected)
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)] + [
        threading.Thread(target=reader)
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 30  # (writers that died end the wait; the checks below fail)
        while len(acked) < 10 and time.time() < deadline and all(t.is_alive() for t in threads):
            time.sleep(0.001)
        svc.rewrite("t", "i", NEW)
        while len(acked) < 20 and time.time() < deadline and all(t.is_alive() for t in threads):
            time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors and len(acked) >= 20
    cold = fresh(store, key_wrapper=wrapper)
    got = contents(cold, NEW)
    for rid, vector in acked:
        assert np.allclose(got[rid], vector)
    assert {k: v for k, v in got.items() if k in expected} == expected
    assert cold.describe("t", "i", NEW)["key_rotation"]["objects_under_old_keys"] == 0


def test_a_write_prepared_under_the_old_data_key_is_refused(tmp_path):
    """A writer that opened the index before the rotation cannot commit after it: its
    segment is sealed under the old data key (401, nothing written, nothing left)."""
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper, trained=False)
    head = svc.heads.open("t", "i", OLD)
    fresh(store, key_wrapper=wrapper).rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    keys = set(store.list("t/i/"))
    from ciphervec.engine.codec.segment import Segment

    seg = Segment("upsert", ["late"], np.ones((1, DIM), np.float32))
    with pytest.raises(KeyRotated):
        svc.writer.segment(head, seg)
    assert set(store.list("t/i/")) == keys
    assert "late" not in fresh(store, key_wrapper=wrapper).list_ids("t", "i", NEW)


def test_an_interrupted_rewrite_is_marked_again_by_the_next_write(tmp_path):
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper)
    svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    before = contents(svc, NEW)

    # the rewrite's process died: its mark names a worker that is gone
    head = svc.heads.open("t", "i", NEW)
    svc.heads.commit(head, SetRewrite({"since": head.envelope.rewrite["since"], "worker": "nohost:1:1"}))
    svc.rekeyer.clock = svc.maintenance.clock = lambda: 1e12  # ... or the mark went stale
    assert svc.orphaned_jobs() == [("t", "i", "client", "reencrypt")]
    with pytest.raises(Unauthorized):
        svc.recover("t", "i", OLD)  # only the key that opens the index takes it up
    assert svc.orphaned_jobs() == [("t", "i", "client", "reencrypt")]
    result = svc.upsert("t", "i", NEW, rows(1, 9000))
    assert result.rewrite_due
    assert not svc.upsert("t", "i", NEW, rows(1, 9001)).rewrite_due  # marked once
    assert svc.recover("t", "i", NEW) == []  # ... by reads too
    svc.rekeyer.clock = svc.maintenance.clock = time.time
    svc.rewrite("t", "i", NEW)
    after = contents(fresh(store, key_wrapper=wrapper), NEW)
    assert {k: v for k, v in after.items() if k in before} == before
    assert svc.describe("t", "i", NEW)["key_rotation"]["rewriting"] is False


@pytest.mark.usefixtures("app")
def test_http_rotate_with_reencrypt():
    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    new = NEW.hex()
    status, body, _ = call(
        "POST",
        "/v1/indexes/rotate_key",
        {"index_name": "idx", "index_key": KEY, "new_index_key": new, "reencrypt": True},
    )
    assert status == 200 and body["key_mode"] == "client" and "rewritten" in body["message"]
    assert new not in str(body)
    status, described, _ = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": new})
    assert status == 200 and described["key_rotation"]["objects_under_old_keys"] == 0
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[0] == 401
    assert count(key=new) == 2
    assert upsert_b64("idx", ["c"], [[0, 0, 1, 0]], key=KEY)[0] == 401
    assert upsert_b64("idx", ["c"], [[0, 0, 1, 0]], key=new)[0] == 200 and count(key=new) == 3


@pytest.mark.usefixtures("app")
def test_http_rotation_stands_when_its_rewrite_fails(monkeypatch):
    """The rotation commits first: if the rewrite then fails (a store fault), the answer is
    202 — the new key is the key — and the next request with it queues the rewrite again,
    a read as well as a write."""
    from ciphervec.engine.ports import StoreError
    from ciphervec.handlers import request as rq

    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    rekeyer = rq.app().service.rekeyer

    def broken(*args, **kwargs):
        raise StoreError("injected store fault")

    monkeypatch.setattr(rekeyer, "_copy", broken)
    new = NEW.hex()
    body = {"index_name": "idx", "index_key": KEY, "new_index_key": new, "reencrypt": True}
    status, out, _ = call("POST", "/v1/indexes/rotate_key", body)
    assert status == 202 and out["status"] == "rewriting" and new not in str(out)
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[0] == 401
    described = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": new})[1]
    assert (
        described["key_rotation"]["objects_under_old_keys"] > 0 and not described["key_rotation"]["rewriting"]
    )
    monkeypatch.undo()
    for _ in range(200):  # reads only: each one that finds the rewrite unmarked queues it
        described = call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": new})[1]
        if described["key_rotation"]["objects_under_old_keys"] == 0:
            break
        time.sleep(0.05)
    assert described["key_rotation"]["objects_under_old_keys"] == 0 and count(key=new) == 2


@pytest.mark.usefixtures("app")
def test_http_rotation_stands_when_neither_its_rewrite_nor_giving_back_its_mark_works(monkeypatch):
    """A store fault in the rewrite and another while giving its mark back: the rotation has
    committed, so the answer is still 202 under the new key, never a 500."""
    from ciphervec.engine.ports import StoreError
    from ciphervec.handlers import request as rq

    create()
    upsert_b64("idx", ["a", "b"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    service = rq.app().service

    def broken(*args, **kwargs):
        raise StoreError("injected store fault")

    monkeypatch.setattr(service.rekeyer, "_copy", broken)
    monkeypatch.setattr(service.rekeyer, "unmark", broken)
    new = NEW.hex()
    body = {"index_name": "idx", "index_key": KEY, "new_index_key": new, "reencrypt": True}
    status, out, _ = call("POST", "/v1/indexes/rotate_key", body)
    assert status == 202 and out["status"] == "rewriting" and new not in str(out)
    assert call("POST", "/v1/indexes/describe", {"index_name": "idx", "index_key": KEY})[0] == 401
    assert count(key=new) == 2


def test_a_warm_container_renames_instead_of_reloading(tmp_path):
    """Another container that holds the index whole follows the rewrite by renaming (the
    head lists what was rewritten as what): it reads the head again, not the rows."""
    from ciphervec.engine.timing import events

    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = build(store, wrapper)
    svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    other = fresh(store, key_wrapper=wrapper)
    before_ids = sorted(other.list_ids("t", "i", NEW))  # loads every row
    query = np.ones((1, DIM), np.float32)
    hits = other.query("t", "i", NEW, query, top_k=10)
    svc.rewrite("t", "i", NEW)
    read = events().get("store_bytes_read", 0)
    assert other.query("t", "i", NEW, query, top_k=10) == hits
    head_bytes = len(store.get("t/i/head")[0])
    assert events().get("store_bytes_read", 0) - read <= head_bytes  # the head, not the rows
    assert sorted(other.list_ids("t", "i", NEW)) == before_ids
    swept(store, wrapper, NEW)  # the old objects and the renames go; the other container is fine
    assert svc.heads.open("t", "i", NEW).body.renamed == {}
    assert other.query("t", "i", NEW, query, top_k=10) == hits


def test_writes_refused_by_a_rotation_are_not_counted_as_key_guesses(tmp_path, monkeypatch):
    """KeyRotated is a 401, but the caller's key was right when it asked: it must not lock
    the (API key, index) out the way wrong index keys do."""
    from ciphervec.engine.errors import KeyRotated as Rotated
    from ciphervec.infra.settings import Settings
    from tests.test_api import EVENT_ROOT_KEY, configure

    c = configure(
        Settings(
            store_uri=f"file://{tmp_path}/data",
            keys_uri="memory://",
            root_key=EVENT_ROOT_KEY,
            throttle_failures=2,
        )
    )
    create()

    def raced(*args, **kwargs):  # the commit found the head under a new data key
        raise Rotated("the index's data key was replaced while this request ran")

    monkeypatch.setattr(c.service.writer, "segment", raced)
    statuses = [upsert_b64("idx", [f"r{i}"], [[1, 0, 0, 0]])[0] for i in range(5)]
    assert statuses == [401] * 5  # never 429
    monkeypatch.undo()
    assert upsert_b64("idx", ["ok"], [[1, 0, 0, 0]])[0] == 200
    wrong = "ef" * 32
    assert [upsert_b64("idx", ["x"], [[1, 0, 0, 0]], key=wrong)[0] for _ in range(4)] == [401, 401, 401, 429]


def test_the_old_key_is_freed_without_anyone_sweeping_by_hand(tmp_path):
    """The rewrite sweeps at its end; what is still within the grace period is swept by the
    job the first write after it queues (or, in ciphervec serve, by the worker's timer)."""
    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    now = [time.time()]
    svc = fresh(store, key_wrapper=wrapper, retire_grace_seconds=60.0, clock=lambda: now[0])
    svc.create_index("t", "i", IndexConfig(dimension=DIM), kek=OLD)
    svc.upsert("t", "i", OLD, rows(300))
    old_dek = data_key(store, OLD)
    svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    svc.rewrite("t", "i", NEW)
    assert svc.describe("t", "i", NEW)["key_rotation"]["old_keys_held"] == 1  # within the grace
    assert svc.rekeyer.sweep_delay("t", "i", NEW) == pytest.approx(60.0)
    assert not svc.upsert("t", "i", NEW, rows(1, 500)).rewrite_due
    now[0] += 61
    assert svc.upsert("t", "i", NEW, rows(1, 501)).rewrite_due  # the first write after it
    svc.rewrite("t", "i", NEW)  # what that write queued
    rotation = svc.describe("t", "i", NEW)["key_rotation"]
    assert rotation == {"objects_under_old_keys": 0, "old_keys_held": 0, "rewriting": False}
    assert sealed_under(store, old_dek) == [] and svc.rekeyer.sweep_delay("t", "i", NEW) is None
    assert svc.num_vectors("t", "i", NEW) == 302


def test_the_local_worker_sweeps_when_the_grace_is_over(tmp_path):
    from ciphervec.infra.training import IndexJob, LocalTrainer

    store, wrapper = MemoryStore(), LocalKeyWrapper(tmp_path)
    svc = fresh(store, key_wrapper=wrapper, retire_grace_seconds=0.5)
    svc.create_index("t", "i", IndexConfig(dimension=DIM), kek=OLD)
    svc.upsert("t", "i", OLD, rows(50))
    old_dek = data_key(store, OLD)
    svc.rotate_key("t", "i", OLD, NEW, None, reencrypt=True)
    trainer = LocalTrainer(svc)
    assert trainer.train(IndexJob("t", "i", NEW, kind="reencrypt"), 10).message.startswith("rewrote")
    deadline = time.time() + 10
    while svc.describe("t", "i", NEW)["key_rotation"]["old_keys_held"] and time.time() < deadline:
        time.sleep(0.05)
    assert svc.describe("t", "i", NEW)["key_rotation"]["old_keys_held"] == 0
    assert sealed_under(store, old_dek) == []
