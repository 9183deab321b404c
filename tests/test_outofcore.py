"""Out-of-core training: an index whose rows would not fit in memory as float32 trains from
its stored objects in passes. The run it writes holds exactly the live rows (last write
wins, deletes gone) with every stored code kept bit for bit, each row in its nearest
centroid's list; a group budget of one list writes the same run as one pass; text terms,
metadata and contents come along; a failure part-way leaves the head and the store as
they were; and the trained index answers as the in-memory path's does."""

from __future__ import annotations

import numpy as np
import pytest

from ciphervec.engine.arrays import kmeans
from ciphervec.engine.arrays.kernels import normalize, unit_norm
from ciphervec.engine.arrays.text import TextConfig, TextQuery
from ciphervec.engine.codec import run, segment
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.engine.usecases import outofcore
from ciphervec.infra.storage.memory import MemoryStore
from tests.conftest import clustered
from tests.test_bm25 import corpus
from tests.test_service import fresh

KEK = bytes(range(32))
D = 16


def build(store, precision: str, *, trained_first: bool = True):
    """An index with overwrites, deletes, metadata, contents and a text field; trained once
    (in memory) part-way when ``trained_first``, so the next training reads a run too."""
    svc = fresh(store, train_threshold=10**9)
    text = TextConfig.declare(["title"], None, None, None)
    config = IndexConfig(dimension=D, metric="cosine", storage_precision=precision, text=text)
    svc.create_index("t", "i", config, kek=KEK)
    x = clustered(3000, D, seed=5)
    texts = corpus(3000)
    ids = [f"r{i}" for i in range(3000)]

    def put(lo: int, hi: int, shift: float = 0.0) -> None:
        meta = [{"title": texts[i], "n": i} for i in range(lo, hi)]
        contents = [f"doc {i}" for i in range(lo, hi)]
        svc.upsert("t", "i", KEK, RowBatch(ids[lo:hi], x[lo:hi] + shift, meta, contents))

    for lo in range(0, 2000, 250):
        put(lo, lo + 250)
    if trained_first:
        assert svc.train("t", "i", KEK, n_lists=8).trained
    put(2000, 2600)
    put(100, 300, shift=0.25)  # overwrites
    svc.delete_vectors("t", "i", KEK, [f"r{i}" for i in range(500, 650)] + ["never-there"])
    put(2600, 3000)
    svc.delete_vectors("t", "i", KEK, ["r2700"])
    return svc


def stored_rows(svc) -> dict[str, tuple[np.ndarray, dict, str]]:
    """Every live row as the committed objects hold it: id -> (stored values, metadata, contents)."""
    head = svc.heads.open("t", "i", KEK)
    rows: dict[str, tuple[np.ndarray, dict, str]] = {}
    for name in outofcore.objects(svc.heads, head):
        seg = segment.decode(svc.heads.read(head, name))
        if seg.kind == "delete":
            for i in seg.ids:
                rows.pop(i, None)
            continue
        for j, i in enumerate(seg.ids):
            rows[i] = (seg.vectors[j], seg.metadata[j], seg.contents[j])
    return rows


def run_lists(svc) -> tuple[run.Directory, dict[int, segment.Segment]]:
    head = svc.heads.open("t", "i", KEK)
    ref = head.body.segments[0]
    assert ref.kind == "run"
    directory = svc.heads.read_directory(head, ref.name)
    lists = {k: segment.decode(svc.heads.read(head, run.list_name(ref.name, k))) for k in directory.lists()}
    return directory, lists


def out_of_core(svc, monkeypatch, budget: int | None = None) -> None:
    svc.maintenance.in_memory_bytes = 0
    if budget is not None:
        real = outofcore.write
        monkeypatch.setattr(outofcore, "write", lambda *a, **kw: real(*a, **kw, budget=budget))
    calls = {"n": 0}
    real_survey = outofcore.survey

    def survey(*a, **kw):
        calls["n"] += 1
        return real_survey(*a, **kw)

    monkeypatch.setattr(outofcore, "survey", survey)
    result = svc.train("t", "i", KEK, n_lists=16)
    assert result.trained and result.n_lists == 16 and calls["n"] == 1


@pytest.mark.parametrize("precision", ["tq8", "float16", "float32"])
def test_the_run_holds_exactly_the_live_rows_with_their_codes(precision, monkeypatch):
    store = MemoryStore()
    svc = build(store, precision)
    before = stored_rows(svc)
    out_of_core(svc, monkeypatch)
    directory, lists = run_lists(svc)
    assert sum(directory.rows) == len(before) == 3000 - 150 - 1
    head = svc.heads.open("t", "i", KEK)
    assert head.body.segments[0].rows == len(before) and len(head.body.segments) == 1
    centroids = svc.heads.read_centroids(head, head.body.centroids).centroids
    seen = set()
    for k, seg in lists.items():
        assert len(seg) == directory.rows[k]
        for j, i in enumerate(seg.ids):
            values, meta, contents = before[i]
            assert np.array_equal(seg.vectors[j], values)  # the stored codes, bit for bit
            assert seg.metadata[j] == meta and seg.contents[j] == contents
        nearest = kmeans.assign_lists(svc.backend, seg.vectors, centroids, "cosine")
        assert (nearest == k).all()  # every row in its nearest centroid's list
        assert seg.terms is not None and "title" in seg.terms  # carried, not analysed away
        seen.update(seg.ids)
    assert seen == set(before)
    assert directory.unit == unit_norm(np.stack([v for v, _, _ in before.values()]))


def test_one_list_per_pass_writes_the_same_run(monkeypatch):
    runs = []
    for budget in (None, 1):
        store = MemoryStore()
        svc = build(store, "tq8")
        with monkeypatch.context() as m:
            out_of_core(svc, m, budget)
        directory, lists = run_lists(svc)
        runs.append((directory, {k: (s.ids, s.vectors.tobytes()) for k, s in lists.items()}))
    assert runs[0] == runs[1]


def test_answers_like_the_in_memory_training(monkeypatch):
    results = {}
    for mode in ("memory", "outofcore"):
        store = MemoryStore()
        svc = build(store, "float32", trained_first=False)
        if mode == "outofcore":
            out_of_core(svc, monkeypatch)
        else:
            assert svc.train("t", "i", KEK, n_lists=16).trained
        cold = fresh(store)
        q = normalize(clustered(40, D, seed=9))
        hits = cold.query("t", "i", KEK, q, top_k=10, n_probes=16)  # every list: exact
        text = cold.text_query("t", "i", KEK, TextQuery("bucket object"), top_k=20)
        got = cold.get("t", "i", KEK, ["r120", "r600", "r2999"], ["metadata", "contents"])
        results[mode] = ([[h["id"] for h in row] for row in hits], [(h["id"], h["score"]) for h in text], got)
        assert cold.num_vectors("t", "i", KEK) == 3000 - 151
    assert results["memory"] == results["outofcore"]


def test_a_failure_part_way_leaves_the_index_as_it_was(monkeypatch):
    store = MemoryStore()
    svc = build(store, "tq8")
    head = svc.heads.open("t", "i", KEK)
    keys_before = set(dict(store.items()))
    real = svc.heads.write_rows
    calls = {"n": 0}

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk gone")
        return real(*a, **kw)

    monkeypatch.setattr(svc.heads, "write_rows", failing)
    svc.maintenance.in_memory_bytes = 0
    with pytest.raises(OSError):
        svc.train("t", "i", KEK, n_lists=16)
    after = svc.heads.open("t", "i", KEK)
    assert [s.name for s in after.body.segments] == [s.name for s in head.body.segments]
    assert after.body.centroids == head.body.centroids
    assert set(dict(store.items())) - keys_before <= {after.root + "head"}  # no run left behind
    assert fresh(store).num_vectors("t", "i", KEK) == 3000 - 151


def test_groups_split_by_bytes():
    sizes = np.array([10, 0, 5, 20, 1])
    assert outofcore.groups(sizes, 4, budget=15 * 100) == [(0, 3), (3, 4), (4, 5)]
    assert outofcore.groups(sizes, 4, budget=1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert outofcore.groups(sizes, 4, budget=10**9) == [(0, 5)]
