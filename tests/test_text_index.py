"""The stored, incremental BM25 index: writes analyse only their own rows and store the
terms sealed beside them; merges, trainings and cold containers carry them over instead of
analysing again; the statistics are those of exactly the live rows, score for score as a
plain bm25s index over them, after writes, deletes, overwrites, merges, training and a
cold start; objects written before terms were stored still search."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest

from ciphervec.engine.arrays import text as analysis
from ciphervec.engine.arrays.text import TextConfig, TextQuery, analyze
from ciphervec.engine.codec import segment, terms
from ciphervec.engine.codec.segment import Segment
from ciphervec.engine.errors import CorruptObject
from ciphervec.engine.model import IndexConfig, RowBatch
from ciphervec.infra.storage.memory import MemoryStore
from tests.test_bm25 import QUERIES, corpus
from tests.test_service import fresh

KEK = bytes(range(32))


def plain_scores(live: dict[str, str], query: str) -> dict[str, np.float32]:
    """A plain bm25s index over the live rows' texts: each matching id's score."""
    ids = sorted(live)
    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index(analyze([live[i] for i in ids]), show_progress=False)
    scores = index.get_scores(analyze([query])[0])
    return {ids[j]: scores[j] for j in np.flatnonzero(scores > 0)}


def ours(svc, query: str) -> dict[str, np.float32]:
    hits = svc.text_query("t", "i", KEK, TextQuery(query), top_k=100_000)
    return {h["id"]: np.float32(h["score"]) for h in hits}


def rare(live: dict[str, str]) -> str:
    """A term a handful of live rows hold (the search then scores only those rows; common
    terms take the path over every row)."""
    df: dict[str, int] = {}
    for terms_ in analyze(list(live.values())):
        for t in set(terms_):
            df[t] = df.get(t, 0) + 1
    return next(t for t in sorted(df) if 2 <= df[t] <= 5 and t.isalpha())


def same_as_plain(svc, live: dict[str, str]) -> None:
    for q in [*QUERIES, rare(live), f"{rare(live)} bucket"]:
        want, got = plain_scores(live, q), ours(svc, q)
        assert got == want, q  # the same rows with bit-identical float32 scores


class Analysed:
    """Counts the texts the engine analyses as rows (queries go through ``analyze``)."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.texts = 0
        real = analysis.analyze_ids

        def spy(texts):
            if fail:
                raise AssertionError("rows analysed again")
            self.texts += len(texts)
            return real(texts)

        monkeypatch.setattr(analysis, "analyze_ids", spy)


def create(svc, **kw) -> None:
    text = TextConfig.declare(["title"], None, None, None)
    svc.create_index("t", "i", IndexConfig(dimension=8, text=text), kek=KEK, **kw)


def put(svc, rows: dict[str, str], rng) -> None:
    x = rng.standard_normal((len(rows), 8)).astype(np.float32)
    svc.upsert("t", "i", KEK, RowBatch(list(rows), x, [{"title": t} for t in rows.values()]))


def test_writes_analyse_their_own_rows_once_and_queries_none(monkeypatch):
    texts = corpus(1200)
    store, rng = MemoryStore(), np.random.default_rng(1)
    svc = fresh(store, train_threshold=10**9)
    create(svc)
    put(svc, {f"d{i}": t for i, t in enumerate(texts[:1000])}, rng)
    spy = Analysed(monkeypatch)
    ours(svc, QUERIES[0])
    assert spy.texts == 0  # the first text query builds nothing from the rows
    put(svc, {f"d{i}": texts[i] for i in range(1000, 1100)}, rng)
    assert spy.texts == 100  # one field of the write's own 100 rows, not the index's 1,100
    ours(svc, QUERIES[1])
    assert spy.texts == 100
    stored = [
        segment.decode(svc.heads.read(svc.heads.open("t", "i", KEK), r.name))
        for r in svc.heads.open("t", "i", KEK).body.segments
    ]
    assert all(s.terms is not None and len(s.terms["title"]) == len(s) for s in stored)


def test_statistics_follow_the_live_rows_through_merges_training_and_a_cold_start(monkeypatch):
    texts = corpus(1500)
    store, rng = MemoryStore(), np.random.default_rng(2)
    svc = fresh(store, train_threshold=10**9, merge_at=3)
    create(svc)
    live: dict[str, str] = {}
    for lo in range(0, 900, 300):
        batch = {f"d{i}": texts[i] for i in range(lo, lo + 300)}
        put(svc, batch, rng)
        live |= batch
    same_as_plain(svc, live)
    gone = [f"d{i}" for i in range(0, 900, 4)]
    svc.delete_vectors("t", "i", KEK, gone)
    for i in gone:
        live.pop(i)
    over = {f"d{i}": texts[1499 - i] for i in range(1, 300, 5)}  # overwrites change lengths and terms
    put(svc, over, rng)
    live |= over
    same_as_plain(svc, live)
    assert svc.merge_tail("t", "i", KEK) >= 3  # the stretch of writes becomes one object
    same_as_plain(svc, live)
    assert svc.train("t", "i", KEK, n_lists=8).trained  # the rows become a run of 8 lists
    same_as_plain(svc, live)
    after = {f"d{i}": texts[i] for i in range(900, 1200)}
    put(svc, after, rng)
    live |= after
    svc.delete_vectors("t", "i", KEK, ["d901", "d1", "nope"])
    live.pop("d901"), live.pop("d1")
    same_as_plain(svc, live)
    warm = {q: ours(svc, q) for q in QUERIES}
    Analysed(monkeypatch, fail=True)  # from here on, analysing any row fails the test
    cold = fresh(store, train_threshold=10**9)
    assert {q: ours(cold, q) for q in QUERIES} == warm
    same_as_plain(cold, live)


def test_objects_written_before_terms_were_stored_still_search(monkeypatch):
    texts = corpus(600)
    store, rng = MemoryStore(), np.random.default_rng(3)
    older = fresh(store, train_threshold=10**9)
    create(older)
    with monkeypatch.context() as m:  # a writer from before terms were stored
        m.setattr(Segment, "with_terms", lambda self, fields: self)
        put(older, {f"d{i}": t for i, t in enumerate(texts[:400])}, rng)
    put(older, {f"d{i}": texts[i] for i in range(400, 600)}, rng)  # a newer writer
    head = older.heads.open("t", "i", KEK)
    kinds = [segment.decode(older.heads.read(head, r.name)).terms is None for r in head.body.segments]
    assert kinds == [True, False]
    spy = Analysed(monkeypatch)
    cold = fresh(store, train_threshold=10**9)
    same_as_plain(cold, {f"d{i}": t for i, t in enumerate(texts)})
    assert spy.texts == 400  # only the rows stored without terms


def test_terms_codec_round_trips_and_refuses_damage():
    docs = ["Encrypted buckets hold encrypted keys", "", "the of and", "keys, keys and more keys"]
    ft = terms.FieldTerms.of(docs)
    assert ft.lengths().tolist() == [len(t) for t in analyze(docs)]
    row0 = {ft.vocab[t]: int(c) for t, c in zip(ft.term[: ft.indptr[1]], ft.tf[: ft.indptr[1]], strict=True)}
    assert row0 == {"encrypt": 2, "bucket": 1, "hold": 1, "key": 1}
    seg = Segment("upsert", ["a", "b", "c", "d"], np.ones((4, 2), np.float32), [{"t": d} for d in docs])
    seg = seg.with_terms(("t",))
    back = segment.decode(segment.encode(seg))
    assert back.terms is not None
    for got, want in ((back.terms["t"], ft), (back.take([3, 0]).terms["t"], ft.take([3, 0]))):
        assert [
            [got.vocab[t] for t in got.term[got.indptr[i] : got.indptr[i + 1]]] for i in range(len(got))
        ] == [
            [want.vocab[t] for t in want.term[want.indptr[i] : want.indptr[i + 1]]] for i in range(len(want))
        ]
        assert got.tf.tolist() == want.tf.tolist()
    # rows picked out of two segments, in any order, keep their own terms
    other = Segment("upsert", ["e"], np.ones((1, 2), np.float32), [{"t": "zebra keys"}]).with_terms(("t",))
    picked = terms.pick([(other, 0), (seg, 3), (seg, 0)])
    assert picked is not None
    rows = picked["t"]
    assert [
        sorted(rows.vocab[t] for t in rows.term[rows.indptr[i] : rows.indptr[i + 1]]) for i in range(3)
    ] == [
        ["key", "zebra"],
        ["key", "more"],
        ["bucket", "encrypt", "hold", "key"],
    ]
    assert terms.pick([(Segment("upsert", ["x"]), 0)]) is None
    raw = segment.encode(seg)
    for damaged in (raw[:-3], raw[:-4] + b"\xff\xff\xff\xff"):
        with pytest.raises(CorruptObject):
            segment.decode(damaged)
    assert segment.decode(segment.encode(Segment("upsert", ["a"], np.ones((1, 2), np.float32)))).terms is None


def test_terms_of_another_analyzer_are_analysed_again(monkeypatch):
    seg = Segment("upsert", ["a"], np.ones((1, 2), np.float32), [{"t": "keys"}]).with_terms(("t",))
    raw = segment.encode(seg)
    monkeypatch.setattr(analysis, "ANALYZER", "en-porter2-stop-v2")
    assert segment.decode(raw).terms is None


def test_common_terms_are_scored_once_per_snapshot_within_a_bound(monkeypatch):
    from ciphervec.engine.memory import textindex

    monkeypatch.setattr(textindex, "CACHE_FROM", 1)  # every term is common
    monkeypatch.setattr(textindex, "CACHED_POSTINGS", 300)
    texts = corpus(1000)
    svc, rng = fresh(MemoryStore(), train_threshold=10**9), np.random.default_rng(4)
    create(svc)
    live = {f"d{i}": t for i, t in enumerate(texts)}
    put(svc, live, rng)
    same_as_plain(svc, live)
    snap = svc.cache.snapshot(svc.heads.open("t", "i", KEK))
    cache = snap.cached("bm25-terms", textindex._TermCache)
    assert cache.entries and cache.size == sum(len(r) for r, _ in cache.entries.values()) <= 300
    same_as_plain(svc, live)  # again, partly from the cache
    svc.delete_vectors("t", "i", KEK, [f"d{i}" for i in range(0, 1000, 2)])  # a new snapshot
    same_as_plain(svc, {k: v for k, v in live.items() if int(k[1:]) % 2})


def test_postings_are_grouped_in_numpys_stable_order():
    from ciphervec.engine.memory.textindex import _stable_order

    rng = np.random.default_rng(5)
    for high in (4, 300, 70_000, 2**31 - 1, 5_000_000_000):  # ties galore, ..., past 31 bits
        keys = rng.integers(0, high, 50_000).astype(np.int64)
        assert np.array_equal(_stable_order(keys), np.argsort(keys, kind="stable")), high
    assert len(_stable_order(np.empty(0, dtype=np.int64))) == 0


def test_rows_analysed_in_many_threads_get_the_terms_they_get_alone():
    """Writes analyse their rows in request threads and in a run's parallel list writers;
    each thread has its own stemmer (a PyStemmer instance is not thread-safe)."""
    from concurrent.futures import ThreadPoolExecutor

    texts = corpus(800)
    chunks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
    alone = [analyze(c) for c in chunks]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(analyze, chunks * 3))
    assert together == alone * 3
