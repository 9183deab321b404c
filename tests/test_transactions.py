"""Typed head transactions (engine/store/transactions.py): each operation's change and its conflict
rule, on heads built here, and through a real compare-and-swap that loses a race."""

from __future__ import annotations

import numpy as np
import pytest

from ciphervec.engine.errors import Contention, IndexNotFound, ValidationFailed
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.store import workers
from ciphervec.engine.store.manifest import Centroids, Envelope, HeadBody, SegmentRef
from ciphervec.engine.store.transactions import (
    Append,
    CommitLoad,
    Compact,
    DropRetired,
    Due,
    JobRules,
    MarkDeleting,
    MergeTail,
    Rekey,
    Rewrap,
    SetRewrite,
    SetTraining,
    SwapRewritten,
    TakeOrphans,
)
from ciphervec.infra.storage.memory import MemoryStore
from tests.test_service import fresh

NOW = 1_000_000.0
ELSEWHERE = "otherhost:1:1"  # a worker this host cannot see: its marks hold until stale (an hour)


def rules(threshold: int = 100, now: float = NOW) -> JobRules:
    return JobRules(now, "me:train", "me:rewrite", threshold, retire_grace=900.0)


def head(*segments: SegmentRef, dimension: int = 4) -> tuple[Envelope, HeadBody]:
    body = HeadBody({"dimension": dimension, "metric": "euclidean"}, next_seq=len(segments) + 1)
    body.segments = list(segments)
    return Envelope("uid", 1, "client", b"w", dek_id="d1"), body


def ref(name: str, seq: int, rows: int = 10, kind: str = "upsert", key: str | None = None) -> SegmentRef:
    return SegmentRef(name, seq, kind, rows, key)


def test_append_checks_and_sets_the_dimension_and_marks_what_is_due():
    env, body = head(dimension=0)
    assert Append("seg/a", "upsert", 5, dimension=8).apply(env, body) == Due()
    assert body.config["dimension"] == 8 and [s.name for s in body.segments] == ["seg/a"]
    assert body.next_seq == 2 and body.segments[0].seq == 1
    with pytest.raises(ValidationFailed, match="dimension 4 does not match the index dimension 8"):
        Append("seg/b", "upsert", 5, dimension=4).apply(env, body)
    Append("seg/d", "delete", 3).apply(env, body)  # a delete names no dimension: never refused
    due = Append("seg/c", "upsert", 5, dimension=8, estimate=101, rules=rules()).apply(env, body)
    assert due == Due(training=True) and env.training["state"] == "queued" and env.training["count"] == 101
    # a training already marked by a live worker is not marked again
    assert Append("seg/e", "upsert", 5, dimension=8, estimate=500, rules=rules()).apply(env, body) == Due()


def test_append_marks_an_interrupted_reencryption_again():
    env, body = head(ref("seg/old", 1, key="k0"))
    body.old_keys = {"k0": "AAAA"}
    env.rewrite = workers.mark(ELSEWHERE, NOW - 4000)  # gone stale
    due = Append("seg/new", "upsert", 1, dimension=4, estimate=11, rules=rules()).apply(env, body)
    assert due == Due(rewrite=True) and env.rewrite["worker"] == "me:rewrite"


def test_commit_load_applies_once_and_refuses_a_changed_dimension():
    env, body = head(ref("seg/a", 1))
    op = CommitLoad("job1", (("load/job1/0", 200), ("load/job1/1", 50)), 4, False, rules(threshold=100))
    done = op.apply(env, body)
    assert done.applied and done.count == 260 and done.due == Due(training=True)
    assert [s.seq for s in body.segments] == [1, 2, 3] and body.loads == ["job1"]
    again = op.apply(env, body)  # its id is among the head's loads: nothing applied twice
    assert not again.applied and again.count == 260 and len(body.segments) == 3
    env2, body2 = head()
    assert not CommitLoad("j", (("load/j/0", 5),), 4, True, rules()).apply(env2, body2).applied  # done before
    assert body2.segments == []
    env3, body3 = head(dimension=8)
    with pytest.raises(ValidationFailed, match="changed to 8 during the load"):
        CommitLoad("j", (("load/j/0", 5),), 4, False, rules()).apply(env3, body3)
    assert body3.segments == []


def test_a_batch_load_marks_an_interrupted_reencryption_again():
    env, body = head(ref("seg/old", 1, key="k0"))
    body.old_keys = {"k0": "AAAA"}
    env.rewrite = workers.mark(ELSEWHERE, NOW - 4000)
    done = CommitLoad("j", (("load/j/0", 5),), 4, False, rules()).apply(env, body)
    assert done.due == Due(rewrite=True) and env.rewrite["worker"] == "me:rewrite"


def test_compact_replaces_what_it_read_and_refuses_when_that_changed():
    cent = Centroids("run/c", 4, 2, 30, NOW, 0.97)
    env, body = head(ref("seg/a", 1), ref("seg/b", 2), ref("seg/c", 3))
    env.training = workers.mark("me:train", NOW, state="running")
    Compact(("seg/a", "seg/b"), 2, "run/r", 20, cent).apply(env, body)
    assert [(s.name, s.seq, s.kind) for s in body.segments] == [("run/r", 2, "run"), ("seg/c", 3, "upsert")]
    assert {r["name"] for r in body.retired} == {"seg/a", "seg/b"} and body.centroids == cent
    assert env.training is None
    env, body = head(ref("run/m", 2, kind="run"), ref("seg/c", 3))  # merged meanwhile
    with pytest.raises(Contention):
        Compact(("seg/a", "seg/b"), 2, "run/r", 20, cent).apply(env, body)


def test_merge_tail_swaps_the_tail_it_read_and_refuses_a_changed_head():
    merged = (ref("seg/m", 3, rows=20),)
    env, body = head(ref("run/r", 1, kind="run"), ref("seg/a", 2), ref("seg/b", 3), ref("seg/c", 4))
    MergeTail(("run/r",), ("seg/a", "seg/b"), None, merged, NOW).apply(env, body)
    assert [s.name for s in body.segments] == ["run/r", "seg/m", "seg/c"]
    assert [r["name"] for r in body.retired] == ["seg/a", "seg/b"]
    env, body = head(ref("run/r", 1, kind="run"), ref("seg/a", 2), ref("seg/b", 3))
    body.centroids = Centroids("run/c2", 4, 2, 30, NOW, 0.97)  # trained meanwhile
    with pytest.raises(Contention):
        MergeTail(("run/r",), ("seg/a", "seg/b"), None, merged, NOW).apply(env, body)
    env, body = head(ref("run/x", 1, kind="run"), ref("seg/b", 3))
    with pytest.raises(Contention):
        MergeTail(("run/r",), ("seg/a", "seg/b"), None, merged, NOW).apply(env, body)


def test_drop_retired_and_the_marks_never_conflict():
    env, body = head()
    body.retired = [{"name": "seg/a", "at": 1.0}, {"name": "seg/b", "at": 2.0, "key": "k0"}]
    body.old_keys = {"k0": "AAAA"}
    DropRetired(frozenset({"seg/b", "seg/zz"})).apply(env, body)
    assert body.retired == [{"name": "seg/a", "at": 1.0}] and body.old_keys == {}  # the key went with it
    mark = workers.mark("me:train", NOW, state="running")
    SetTraining(mark).apply(env, body)
    assert env.training == mark and env.training is not mark
    SetTraining(None).apply(env, body)
    SetRewrite({"since": NOW, "worker": "me:rewrite"}).apply(env, body)
    assert env.training is None and env.rewrite["worker"] == "me:rewrite"
    MarkDeleting().apply(env, body)
    assert env.deleting


def test_take_orphans_takes_only_what_nobody_is_doing():
    env, body = head()
    env.training = workers.mark(ELSEWHERE, NOW - 4000, state="running", count=500)  # stale
    assert TakeOrphans(rules()).apply(env, body) == ["train"]
    assert env.training["worker"] == "me:train" and env.training["count"] == 500
    assert TakeOrphans(rules()).apply(env, body) == []  # now a live worker's: not taken twice


def test_rewrap_rekey_and_swap_rewritten():
    env, body = head(ref("seg/a", 1), ref("seg/b", 2))
    body.centroids = Centroids("run/c", 4, 2, 30, NOW, 0.97)
    body.retired = [{"name": "seg/x", "at": 1.0}]
    Rewrap("kms", b"other", "alias/k").apply(env, body)
    assert (env.key_mode, env.wrapped_dek, env.kms_name, env.dek_id) == ("kms", b"other", "alias/k", "d1")
    env.training = workers.mark("me:train", NOW, state="running")
    Rekey("client", b"w2", None, "d2", "k0", "AAAA", {"since": NOW, "worker": "me:rewrite"}).apply(env, body)
    assert env.dek_id == "d2" and env.training is None and env.rewrite["worker"] == "me:rewrite"
    assert {s.key for s in body.segments} == {"k0"} and body.centroids.key == "k0"
    assert body.retired[0]["key"] == "k0" and body.old_keys == {"k0": "AAAA"}
    # seg/b was merged away while its copy was written: only seg/a and the centroids swap
    body.segments = [body.segments[0], ref("seg/m", 2)]
    done = SwapRewritten({"seg/a": "seg/a2", "seg/b": "seg/b2", "run/c": "run/c2"}, NOW).apply(env, body)
    assert done == ["seg/a", "run/c"] and [s.name for s in body.segments] == ["seg/a2", "seg/m"]
    assert body.centroids.name == "run/c2" and body.renamed == {"seg/a": "seg/a2", "run/c": "run/c2"}
    assert env.rewrite is None  # nothing left under the old key


def test_a_commit_that_loses_the_race_applies_its_operation_to_the_new_head():
    """Two containers over one store: the second's Append meets a head the first changed
    after it read it; the CAS fails, the same operation applies to the newest head, and the
    commit returns that head with the outcome."""
    store = MemoryStore()
    a, b = fresh(store), fresh(store)
    a.create_index("t", "i", IndexConfig(dimension=4), kek=bytes(32))
    stale = b.heads.open("t", "i", bytes(32))
    a.upsert("t", "i", bytes(32), RowBatch(["x"], np.ones((1, 4), np.float32)))
    done = b.heads.commit(stale, Append("seg/late", "delete", 1))
    assert done.outcome == Due() and [s.kind for s in done.head.body.segments] == ["upsert", "delete"]
    assert done.head.envelope.generation == stale.envelope.generation + 2
    a.delete_index("t", "i", bytes(32))
    with pytest.raises(IndexNotFound):  # a head being deleted (or gone) takes no operation
        b.heads.commit(done.head, Append("seg/later", "delete", 1))
