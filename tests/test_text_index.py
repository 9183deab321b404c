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
from ciphervec.engine.timing import events
from ciphervec.engine.usecases import textparts
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


def ours(svc, query: str, kek: bytes = KEK) -> dict[str, np.float32]:
    hits = svc.text_query("t", "i", kek, TextQuery(query), top_k=100_000)
    return {h["id"]: np.float32(h["score"]) for h in hits}


def rare(live: dict[str, str]) -> str:
    """A term a handful of live rows hold (the search then scores only those rows; common
    terms take the path over every row)."""
    df: dict[str, int] = {}
    for terms_ in analyze(list(live.values())):
        for t in set(terms_):
            df[t] = df.get(t, 0) + 1
    return next(t for t in sorted(df) if 2 <= df[t] <= 5 and t.isalpha())


def same_as_plain(svc, live: dict[str, str], kek: bytes = KEK) -> None:
    for q in [*QUERIES, rare(live), f"{rare(live)} bucket"]:
        want, got = plain_scores(live, q), ours(svc, q, kek)
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
    cache = snap.cached("text-view", lambda: textindex.TextView.of(snap)).terms
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


# -- a cold container's text query from the runs' text objects --------------------------------


def text_objects(store) -> list[str]:
    return sorted(k for k in store.list("t/i/run/") if "-text-" in k)


def lists_held(svc) -> tuple[int, int]:
    """(lists loaded, lists missing) of the cold container's current snapshot."""
    snap = svc.cache.current(svc.heads.open("t", "i", KEK).key)
    if snap.partial is None:
        return -1, 0
    loaded = sum(len(r.loaded) for r in snap.partial.runs)
    return loaded, len(snap.partial.missing())


def trained_with_history(monkeypatch, store, n_lists=8):
    """An index of texts, trained into a run, then overwritten, deleted and grown; returns
    the live texts."""
    texts = corpus(1600)
    rng = np.random.default_rng(7)
    svc = fresh(store, train_threshold=10**9, merge_at=10**6)
    create(svc)
    live = {f"d{i}": texts[i] for i in range(1000)}
    put(svc, live, rng)
    assert svc.train("t", "i", KEK, n_lists=n_lists).trained
    over = {f"d{i}": texts[1599 - i] for i in range(0, 400, 7)}  # newer rows of run ids
    put(svc, over, rng)
    svc.delete_vectors("t", "i", KEK, ["d3", "d5", "d7", "d14"])  # d7, d14: overwritten, then deleted
    new = {f"d{i}": texts[i] for i in range(1000, 1100)}
    put(svc, new, rng)
    live |= over | new
    for gone in ("d3", "d5", "d7", "d14"):
        live.pop(gone)
    return live


def test_a_cold_text_query_reads_the_runs_text_object_not_its_lists(monkeypatch):
    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    assert len(text_objects(store)) == 1  # the training wrote the run's postings beside its lists
    assert all(b"bucket" not in v for k, v in store.items())  # sealed like every object

    Analysed(monkeypatch, fail=True)  # nothing analysed again, cold or not
    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    filled = []  # the background fill would load the rest meanwhile: counted, not run
    monkeypatch.setattr(cold.cache, "fill_later", filled.append)
    hits = cold.text_query("t", "i", KEK, TextQuery(QUERIES[0]), top_k=3, include=["metadata"])
    assert len(filled) == 1
    loaded, missing = lists_held(cold)
    assert 1 <= loaded <= 3 and missing >= 8 - 3  # only the lists holding the three hits
    plain = plain_scores(live, QUERIES[0])
    assert [np.float32(h["score"]) for h in hits] == sorted(plain.values(), reverse=True)[:3]
    assert all(plain[h["id"]] == np.float32(h["score"]) for h in hits)  # bm25s's, bit for bit
    assert all(h["metadata"]["title"] == live[h["id"]] for h in hits)
    same_as_plain(fresh(store, train_threshold=10**9, lazy_rows=1), live)  # every query, cold


@pytest.mark.parametrize("part_rows", [None, 250])
def test_cold_text_queries_agree_once_some_lists_or_a_second_run_are_loaded(monkeypatch, part_rows):
    if part_rows:  # a run's postings in several objects, each ending where a list does
        monkeypatch.setattr(textparts, "PART_ROWS", part_rows)
    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    assert len(text_objects(store)) == (1 if part_rows is None else 4)
    svc = fresh(store, train_threshold=10**9, merge_at=2)
    rng = np.random.default_rng(9)
    texts = corpus(1600)
    later = {f"d{i}": texts[1500 - i] for i in range(0, 1100, 11)}  # overwrites old and new rows
    put(svc, later, rng)
    live |= later
    assert svc.merge_tail("t", "i", KEK) >= 2  # the writes since training become a second run
    head = svc.heads.open("t", "i", KEK)
    assert sum(r.kind == "run" for r in head.body.segments) == 2
    assert len({k.rsplit("-text-", 1)[0] for k in text_objects(store)}) == 2

    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    same_as_plain(cold, live)  # both runs unloaded: the newer one's rows win
    partly = fresh(store, train_threshold=10**9, lazy_rows=1)
    partly.query("t", "i", KEK, rng.standard_normal((1, 8)).astype(np.float32), top_k=5, n_probes=3)
    assert lists_held(partly)[0] >= 3
    same_as_plain(partly, live)  # some lists in memory, the rest from the text objects


def test_filtered_queries_and_runs_without_a_text_object_load_the_lists(monkeypatch):
    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    q, where = QUERIES[0], {"title": {"$exists": True}}
    hits = cold.text_query("t", "i", KEK, TextQuery(q), top_k=100_000, filters=where)
    assert {h["id"]: np.float32(h["score"]) for h in hits} == plain_scores(live, q)
    assert lists_held(cold) == (-1, 0)  # a filter reads every row's metadata: loaded whole

    store = MemoryStore()  # a run written before text objects: its directory lists none
    with monkeypatch.context() as m:
        m.setattr(textparts.TextParts, "add_all", lambda self, rows, members: None)
        live = trained_with_history(m, store)
    assert not text_objects(store)
    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    same_as_plain(cold, live)
    assert lists_held(cold) == (-1, 0)


def test_a_run_trained_out_of_core_has_its_text_objects_too(monkeypatch):
    monkeypatch.setattr(textparts, "PART_ROWS", 300)
    store, rng = MemoryStore(), np.random.default_rng(3)
    svc = fresh(store, train_threshold=10**9)
    create(svc)
    texts = corpus(1400)
    live = {f"d{i}": t for i, t in enumerate(texts[:1200])}
    for lo in range(0, 1200, 200):  # several segments: each list gathers pieces of them
        put(svc, dict(list(live.items())[lo : lo + 200]), rng)
    svc.maintenance.in_memory_bytes = 0
    assert svc.train("t", "i", KEK, n_lists=8).trained
    parts = text_objects(store)
    assert len(parts) >= 3
    over = {f"d{i}": texts[1399 - i] for i in range(0, 300, 3)}
    put(svc, over, rng)
    live |= over
    Analysed(monkeypatch, fail=True)
    read = events().get("run_texts_loaded", 0)
    same_as_plain(fresh(store, train_threshold=10**9, lazy_rows=1), live)
    assert events().get("run_texts_loaded", 0) == read + len(parts)


def test_run_text_objects_round_trip_and_refuse_damage():
    from ciphervec.engine.codec.runtext import RunText
    from ciphervec.engine.codec.terms import FieldTerms
    from ciphervec.engine.memory.textindex import run_text

    texts = corpus(50)
    ft = FieldTerms.of(texts)
    order = np.random.default_rng(0).permutation(50)
    text = run_text([f"d{i}" for i in range(50)], {"title": ft}, order)
    back = RunText.decode(text.encode())
    assert back is not None and back.ids == [f"d{i}" for i in order.tolist()]
    f = back.fields["title"]
    for j, i in enumerate(order.tolist()):  # row j of the run is row i of the batch
        words = analyze([texts[i]])[0]
        assert f.lengths[j] == len(words)
        for w in set(words):
            t = f.vocab.index(w)
            k = int(np.searchsorted(f.terms, t))
            lo, hi = f.ptr[k], f.ptr[k + 1]
            at = lo + int(np.searchsorted(f.rows[lo:hi], j))
            assert f.rows[at] == j and f.tf[at] == words.count(w)
    raw = text.encode()
    for bad in (raw[:-1], raw + b"\0"):
        with pytest.raises(ValueError):
            RunText.decode(bad)
    flipped = bytearray(raw)
    flipped[-5] = 0xFF  # the last tf: negative
    with pytest.raises(ValueError):
        RunText.decode(bytes(flipped))


def test_a_rewrite_under_a_new_key_carries_the_text_object(monkeypatch):
    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    before = text_objects(store)
    new = bytes(range(1, 33))
    svc = fresh(store, retire_grace_seconds=0.0)
    svc.rotate_key("t", "i", KEK, new, None, reencrypt=True)
    assert svc.rewrite("t", "i", new) > 0
    svc.sweep("t", "i", new)
    after = text_objects(store)
    assert len(after) == 1 and after != before  # copied under the new run's name; the old one swept
    read = events().get("run_texts_loaded", 0)
    same_as_plain(fresh(store, train_threshold=10**9, lazy_rows=1), live, new)
    assert events().get("run_texts_loaded", 0) == read + 1  # the copy, read and opened once


def test_cold_hybrid_queries_fuse_as_warm_ones(monkeypatch):
    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    warm = fresh(store, train_threshold=10**9, lazy_rows=0)  # loads whole
    q = np.random.default_rng(11).standard_normal((2, 8)).astype(np.float32)

    def hybrid(svc):
        return svc.hybrid_query(
            "t", "i", KEK, q, TextQuery(QUERIES[1]), top_k=5, n_probes=2, include=["metadata"]
        )

    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    monkeypatch.setattr(cold.cache, "fill_later", lambda head: None)  # keep it partial
    read = events().get("run_texts_loaded", 0)
    got = hybrid(cold)
    assert events().get("run_texts_loaded", 0) == read + 1 and lists_held(cold)[1] > 0
    assert got == hybrid(warm)
    assert all(h["metadata"]["title"] == live[h["id"]] for hits in got for h in hits)


def test_a_run_mostly_written_over_since_ranks_only_its_live_rows():
    store, rng = MemoryStore(), np.random.default_rng(12)
    texts = corpus(2200)
    svc = fresh(store, train_threshold=10**9, merge_at=10**6)
    create(svc)
    live = {f"d{i}": texts[i] for i in range(1000)}
    put(svc, live, rng)
    assert svc.train("t", "i", KEK, n_lists=8).trained
    later = {f"d{i}": texts[2199 - i] for i in range(0, 1200, 2)} | {
        f"n{i}": texts[1000 + i] for i in range(500)
    }
    put(svc, later, rng)  # more ids written since than the run holds: the run's ids are walked
    live |= later
    same_as_plain(fresh(store, train_threshold=10**9, lazy_rows=1), live)


def test_cold_text_queries_while_the_same_container_writes(monkeypatch):
    import threading

    store = MemoryStore()
    live = trained_with_history(monkeypatch, store)
    cold = fresh(store, train_threshold=10**9, lazy_rows=1)
    monkeypatch.setattr(cold.cache, "fill_later", lambda head: None)  # stays partial throughout
    texts, rng = corpus(1600), np.random.default_rng(13)
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                cold.text_query("t", "i", KEK, TextQuery(QUERIES[0]), top_k=5, include=["metadata"])
            except Exception as exc:  # noqa: BLE001 (any failure fails the test below)
                errors.append(exc)
                return

    worker = threading.Thread(target=reader)
    worker.start()
    try:
        for n in range(12):  # overwrites of run rows and of earlier writes, and deletes
            batch = {f"d{(n * 37 + j * 11) % 1100}": texts[(n * 101 + j) % 1600] for j in range(40)}
            put(cold, batch, rng)
            live |= batch
            gone = [f"d{(n * 53 + 7) % 1000}"]
            cold.delete_vectors("t", "i", KEK, gone)
            live.pop(gone[0], None)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors
    assert cold.cache.current(("t", "i")).partial is not None
    same_as_plain(cold, live)  # the shadow the writes grew, read by the cold view
